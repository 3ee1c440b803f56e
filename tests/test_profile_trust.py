"""Profile trust (profiler/cache.py load_cost_model, profiler/trust.py): a cached measured profile is checked
against live timings before a real run reuses it, and measured again when it drifted."""

from __future__ import annotations

import copy
import json
import logging
import os
import time

import pytest

from coserve_jax.config import ConfigError
from coserve_jax.profiler.trust import drift, profile_age, range_drift

# Cheap profiles (a few seconds on the tiny zoo) under their own cache key: the session's other
# tests keep theirs. tests/conftest.py turns the check off for them (profiler.max_drift=null).
CHEAP = ["profiler.repeats=3", "profiler.load_samples=2", "profiler.max_drift=0.25"]


def test_drift_is_symmetric_and_measured_against_the_live_range():
    assert drift(1.0, 1.0) == 0.0
    assert drift(3.0, 1.0) == pytest.approx(2.0) and drift(1.0, 3.0) == pytest.approx(2.0)
    assert drift(0.0, 1.0) == float("inf") and drift(0.0, 0.0) == 0.0
    timings = [1.0, 1.1, 1.2, 5.0, 9.0]  # fastest 1.0, median 1.2
    assert range_drift(timings, 1.1) == 0.0  # inside [fastest, median]
    assert range_drift(timings, 0.5) == pytest.approx(1.0)  # even the fastest is 2x slower
    assert range_drift(timings, 3.6) == pytest.approx(2.0)  # a profile 3x too slow
    # noise alone (slow outliers) does not read as a slower machine
    assert range_drift([1.0, 1.0, 1.0, 4.0, 4.0], 1.0) == 0.0


def test_profile_age_from_measured_at_else_the_file_mtime(tmp_path):
    f = tmp_path / "p.json"
    f.write_text("{}")
    os.utime(f, (1000.0, 1000.0))
    assert profile_age({"measured_at": 1500.0}, f, now=2000.0) == (500.0, "measured_at")
    assert profile_age({}, f, now=2000.0) == (1000.0, "mtime")
    assert profile_age({}, tmp_path / "missing.json", now=2000.0) == (None, None)


@pytest.mark.parametrize("value", ["0", "-0.1", "abc", "nan", "true"])
def test_max_drift_must_be_a_positive_number(value):
    from coserve_jax.api import as_run_config

    with pytest.raises(ConfigError, match=r"profiler\.max_drift"):
        as_run_config([f"profiler.max_drift={value}"])
    assert as_run_config([])[0].profiler.max_drift == 0.25
    assert as_run_config(["profiler.max_drift=null"])[0].profiler.max_drift is None


@pytest.fixture(scope="module")
def trust_setup(tiny_overrides):
    """The tiny zoo, a Runtime and an accurate cheap profile measured here (cached).

    While this module runs, profiles skip the serving-loop overheads (~12 s of a cheap profile's
    ~25 s here, stubbed out): the check compares batches and loads only, measured for real."""
    from coserve_jax.api import as_run_config, load_cost_model, load_model, make_runtime, profile_cache_path
    from coserve_jax.profiler import loop_overhead

    logging.getLogger("absl").setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_overhead, "measure_serving_loop_s",
                   lambda *a, **k: {"loop_s_per_arrival": 0.0, "loop_s_per_event": 0.0})
        cfg = as_run_config([*tiny_overrides, *CHEAP])[0]
        model = load_model(cfg, progress=False)
        rt = make_runtime(cfg, model)
        try:
            fresh = as_run_config([*tiny_overrides, *CHEAP, "profiler.refresh=true"])[0]
            good = load_cost_model(fresh, model, rt, progress=False)
            yield [*tiny_overrides, *CHEAP], cfg, model, rt, good, profile_cache_path(cfg, model)
        finally:
            rt.close()


def test_a_fresh_profile_records_when_it_was_measured(trust_setup):
    _, _, _, _, good, path = trust_setup
    assert good.trust["source"] == "measured" and good.trust["age_s"] == 0.0
    assert not good.trust["checked"] and not good.trust["refreshed"]
    assert json.loads(path.read_text())["measured_at"] == pytest.approx(time.time(), abs=600)


def test_a_profile_three_times_off_is_detected_logged_and_refreshed(trust_setup, caplog):
    from coserve_jax.api import ArmRunner, load_cost_model
    from coserve_jax.metrics.results import write_json_atomic
    from coserve_jax.cost.model import CostModel

    _, cfg, model, rt, good, path = trust_setup
    bad = copy.deepcopy(good.profile)
    for ad in bad["kinds"]["cpu"]["archs"].values():
        ad["k_s"] *= 3
        ad["b_s"] *= 3
    del bad["measured_at"]  # a profile from before measured_at: its age is the file's
    write_json_atomic(path, bad)
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    with caplog.at_level(logging.INFO):
        cost = load_cost_model(cfg, model, rt, progress=False)  # serving-loop overheads stubbed (fixture)
    t = cost.trust
    assert t["source"] == "cached" and t["checked"] and t["refreshed"]
    assert t["age_from"] == "mtime" and t["age_s"] == pytest.approx(3600, abs=300)
    assert t["max_drift"] > 0.25 and t["max_drift_allowed"] == 0.25
    batches = [m for m in t["measurements"] if m["what"] == "batch"]
    loads = [m for m in t["measurements"] if m["what"] == "load"]
    assert {m["arch"] for m in batches} == {m["arch"] for m in loads} == set(bad["kinds"]["cpu"]["archs"])
    assert all(m["drift"] > 0.25 and m["median_s"] < m["predicted_s"] for m in batches)
    assert "profile check: cpu" in caplog.text and "drifted" in caplog.text
    # measured again and cached again; its own check is far closer than the 3x profile's (a
    # bound of 0.25 itself would be flaky on a busy 2-core machine)
    cached = CostModel.load(path)
    assert cached.sha == cost.sha != CostModel(bad).sha and "measured_at" in cached.profile
    after = t["after_refresh"]
    assert after["max_drift"] < t["max_drift"]
    assert all(m["drift"] < 1.0 for m in after["measurements"] if m["what"] == "batch")
    assert ArmRunner(cfg, model, cost, rt).profile_check is t  # what results.json records


def test_an_accurate_profile_is_reused_and_a_null_bound_skips_the_check(trust_setup):
    from coserve_jax.api import as_run_config, load_cost_model
    from coserve_jax.metrics.results import write_json_atomic

    overrides, _, model, rt, good, path = trust_setup
    write_json_atomic(path, good.profile)
    mtime = path.stat().st_mtime
    # A bound no live timing can exceed: checked and recorded, never re-measured (whether a
    # 0.25 bound holds at this moment depends on the machine's other load).
    huge = as_run_config([*overrides, "profiler.max_drift=1e6"])[0]
    cost = load_cost_model(huge, model, rt, progress=False)
    t = cost.trust
    assert t["checked"] and not t["refreshed"] and t["passes"] == 1 and cost.sha == good.sha
    assert t["age_from"] == "measured_at" and 0 <= t["age_s"] < 600
    assert len(t["measurements"]) == 4 and all(m["repeats"] == 5 for m in t["measurements"])
    assert t["max_drift"] == max(m["drift"] for m in t["measurements"]) and t["check_s"] < 20
    assert path.stat().st_mtime == mtime
    for extra in (["profiler.max_drift=null"], ["backend=sim"]):  # no check: nothing timed
        t = load_cost_model(as_run_config([*overrides, *extra])[0], model, rt, progress=False).trust
        assert not t["checked"] and not t["refreshed"] and "measurements" not in t
    assert path.stat().st_mtime == mtime
