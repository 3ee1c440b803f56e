"""Timelines (Chrome/Perfetto traces) and per-request records, on both backends.

A timeline must show every batch and load once, its counters must stay within each pool's
budget, and its batch spans must add up to the engine's own compute seconds per executor.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from coserve_jax.api import run_experiment
from coserve_jax.config import ConfigError, compose, parse_config
from coserve_jax.metrics.records import find_records, read_records, write_records

SIM = ["+experiment=task_a1", "workload.num_requests=120", "repeats=1"]


def test_host_contention_simulates_the_host_model(script):
    """What the simulator's host model predicts for one job beside others, on a 2-core host."""
    from types import SimpleNamespace

    sim = script("host_contention").simulated
    cost = SimpleNamespace(host_cores=2, load_slowdown=(1.0, 1.5), load_slowdown_loads=(1.0, 1.25))
    assert sim(cost, 2, "batch", "batch", 1) == pytest.approx(2.0)  # one core each; a batch may use two
    assert sim(cost, 2, "batch", "load", 2) == pytest.approx(3.0)  # 2/3 core each
    assert sim(cost, 2, "load", "batch", 1) == pytest.approx(1.5)  # its core, capped at 1/1.5
    assert sim(cost, 2, "load", "load", 1) == pytest.approx(1.25)  # its core, capped at 1/1.25
    assert sim(cost, 2, "batch", "python", 0, duty=1.0) == pytest.approx(2.0, rel=1e-3)  # the loop takes a core
    assert 1.0 < sim(cost, 2, "batch", "python", 0, duty=0.5) < 2.0


def check_trace(trace: dict, arm: dict, load_lanes: int) -> None:
    """Schema, one event per batch and load, counters within budget, seconds that add up."""
    assert set(trace) >= {"traceEvents", "displayTimeUnit"} and trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    for e in events:
        assert e["ph"] in {"X", "C", "i", "M"} and isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert isinstance(e["name"], str) and isinstance(e.get("args", {}), dict), e
        if e["ph"] != "M":
            assert isinstance(e["ts"], float | int), e
        if e["ph"] == "X":
            assert e["dur"] >= 0, e
        if e["ph"] == "i":
            assert e["s"] in {"g", "p", "t"}, e
    json.dumps(trace)  # plain JSON
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    batches = [e for e in events if e["ph"] == "X" and e["cat"] == "batch"]
    loads = [e for e in events if e["ph"] == "X" and e["cat"] == "load"]
    # every batch once (engine batch ids are 1..count), every load once
    assert sorted(e["args"]["batch_id"] for e in batches) == list(range(1, arm["batches"]["count"] + 1))
    assert sum(e["args"]["size"] for e in batches) == arm["tasks_completed"]
    assert len([e for e in loads if e["args"]["kind"] != "failed"]) == arm["switches"]["count"]
    assert Counter(e["args"]["kind"] == "initial" for e in loads)[True] == arm["switches"]["initial"]
    assert {e["tid"] for e in loads} <= set(range(load_lanes))
    assert all((2, e["tid"]) in names for e in loads)
    evictions = [e for e in events if e["ph"] == "i" and e["cat"] == "evict"]
    assert len(evictions) == arm["switches"]["evictions"]
    # per executor: batch spans add up to the engine's compute seconds, waits to its wait_load
    for ex in arm["executors"]:
        assert (1, ex["id"]) in names
        mine = [e for e in events if e["ph"] == "X" and e["pid"] == 1 and e["tid"] == ex["id"]]
        compute = sum(e["dur"] for e in mine if e["cat"] == "batch") / 1e6
        wait = sum(e["dur"] for e in mine if e["cat"] == "wait") / 1e6
        assert compute == pytest.approx(ex["time_s"].get("compute", 0.0), rel=1e-9, abs=1e-9)
        assert wait == pytest.approx(ex["time_s"].get("wait_load", 0.0), rel=1e-9, abs=1e-9)
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in mine)
        assert all(a[1] <= b[0] + 1e-3 for a, b in zip(spans, spans[1:])), "an executor does one thing at a time"
    # memory counters: never above the budget; their peak is results.json's peak_bytes
    budgets = trace["otherData"]["budgets_bytes"]
    peak: dict[str, int] = {}
    for e in events:
        if e["ph"] == "C" and e["name"].startswith("pool "):
            pool = e["name"][len("pool "):]
            total = sum(e["args"].values())
            assert total <= budgets[pool], (pool, total)
            peak[pool] = max(peak.get(pool, 0), total)
    assert peak == arm["peak_bytes"]


def test_sim_run_writes_a_timeline_per_arm_and_request_records(tmp_path: Path, script) -> None:
    res = run_experiment([*SIM, "arms=[samba,coserve,coserve_plus]", "metrics.timeline=true"], out_dir=tmp_path,
                         progress=False)
    for name, arm in res["arms"].items():
        assert arm["timeline"]["file"] == f"timeline-{name}.json"
        trace = json.loads((tmp_path / arm["timeline"]["file"]).read_text())
        assert trace["otherData"]["clock"] == "virtual" and trace["otherData"]["arm"] == name
        check_trace(trace, arm, load_lanes=2)
        for e in trace["traceEvents"]:  # virtual time: a batch span is the backend's own figure
            if e["ph"] == "X" and e["cat"] == "batch":
                assert e["args"]["run_s"] == pytest.approx(e["dur"] / 1e6, rel=1e-9)
                assert e["args"]["predicted_s"] > 0  # the cost model's, alone
    # scripts/host_contention.py --runs: each arm's batches against their predictions
    table = script("host_contention").serving(tmp_path)
    assert sorted(r["arm"] for r in table) == sorted(res["arms"])
    for r in table:  # beside other batches a simulated batch is never faster than alone
        assert r["batches"] > 0 and r["median"] >= 1 - 1e-9 and r["beside_batch_batches"] <= r["batches"]
    # ... and each arm's loads against theirs, by batches beside and phase
    loads = script("host_contention").serving_loads(tmp_path)
    assert {r["arm"] for r in loads} == set(res["arms"])
    for r in loads:  # nor is a simulated load
        assert r["loads"] > 0 and r["median"] >= 1 - 1e-9
        assert r["phase"] in ("burst", "after") and r["beside"] in ("0", "1", "2+")
    # ... and each wait for a load split into its hand-offs and the load (samba waits on every one)
    waits = {r["arm"]: r for r in script("host_contention").serving_waits(tmp_path)}
    assert "samba" in waits
    for r in waits.values():
        assert r["waits"] > 0 and r["load_ms"] > 0 and r["before_ms"] >= -1e-9
        assert r["before_ms"] + r["load_ms"] + r["after_ms"] == pytest.approx(r["wait_ms"], rel=1e-6)
    rows = read_records(tmp_path / res["records"])
    assert Counter(r["arm"] for r in rows) == {a: 120 for a in res["arms"]}
    for name, arm in res["arms"].items():
        mine = [r for r in rows if r["arm"] == name]
        lat = [r["latency_s"] * 1e3 for r in mine if r["latency_s"] is not None]
        assert len(lat) == arm["requests"]["completed"]
        assert np.percentile(lat, 50) == pytest.approx(arm["latency_ms"]["p50"], rel=1e-6)
        assert all(r["arrival_s"] <= r["start_s"] <= r["finish_s"] for r in mine)
        assert all(r["experts"] and r["verdict"] == r["truth"] for r in mine)  # trace routing


def test_timeline_is_off_by_default_and_capped(tmp_path: Path, caplog) -> None:
    res = run_experiment([*SIM, "arms=[coserve]"], out_dir=tmp_path / "off", progress=False)
    assert "timeline" not in res["arms"]["coserve"] and not list((tmp_path / "off").glob("timeline-*"))
    assert find_records(tmp_path / "off") is not None
    with caplog.at_level(logging.WARNING):
        res = run_experiment([*SIM, "arms=[coserve]", "metrics.timeline=true", "metrics.timeline_max_events=50",
                              "metrics.requests=false"], out_dir=tmp_path / "cap", progress=False)
    assert res["arms"]["coserve"]["timeline"]["written"] is False
    assert "metrics.timeline_max_events=50" in caplog.text
    assert not list((tmp_path / "cap").glob("timeline-*")) and find_records(tmp_path / "cap") is None


@pytest.mark.parametrize("override, field", [
    ("metrics.timeline=maybe", "metrics.timeline"),  # yes/no/on/off are booleans to OmegaConf
    ("metrics.timeline_max_events=0", "metrics.timeline_max_events"),
    ("metrics.requests_gzip_over_bytes=-1", "metrics.requests_gzip_over_bytes"),
    ("+metrics.timeline_path=x", "metrics"),
    ("search.objective_arm=nope", "search.objective_arm"),
])
def test_bad_metrics_config_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(compose(["backend=sim", override]))


def test_records_are_gzipped_above_the_threshold(tmp_path: Path) -> None:
    rows = [("a", i, "t", "0.0", "0.1", "0.2", "0.2", "e1+e2", "ok", "", "ok") for i in range(50)]
    assert write_records(tmp_path, rows, gzip_over_bytes=10**6).name == "requests.csv"
    path = write_records(tmp_path, rows, gzip_over_bytes=100)
    assert path.name == "requests.csv.gz" and not (tmp_path / "requests.csv").exists()
    back = read_records(path)
    assert len(back) == 50 and back[3]["request_id"] == 3 and back[0]["latency_s"] == 0.2


@pytest.mark.usefixtures("transfer_guard")
def test_real_timeline_matches_the_engines_compute_seconds(real) -> None:
    """Real backend (wall clock, JAX profiler annotations on): the same invariants; the worker's
    own seconds for each forward fit inside its batch span."""
    from coserve_jax.metrics.timeline import Timeline
    from coserve_jax.workload.trace import generate_trace

    runner = real.runner("arms=[coserve_plus]", "workload.num_requests=60", "hardware.device_budget=25%",
                         "metrics.timeline=true", "metrics.jax_annotations=true")
    arm = runner.cfg.arms[0]
    runner.warm_up([arm])
    requests = generate_trace(runner.model.graph, runner.cfg.workload)
    summary, engine = runner.run_arm(arm, requests, runner.images(requests), progress=False)
    assert isinstance(engine.timeline, Timeline)
    trace = engine.timeline.to_trace({"clock": "wall"})
    check_trace(trace, summary, load_lanes=runner.cfg.backend.load_threads)
    batches = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "batch"]
    assert all(0 < e["args"]["run_s"] <= e["dur"] / 1e6 + 1e-6 for e in batches)


def test_report_plots_latency_throughput_occupancy_and_time(tmp_path: Path, capsys) -> None:
    """python -m coserve_jax.report RUN_DIR: the four plots beside the tables (into RUN_DIR/report);
    a run without a timeline skips pool occupancy with a note; gzipped timelines are read."""
    from coserve_jax.report.cli import main

    on, off = tmp_path / "on", tmp_path / "off"
    run_experiment([*SIM, "arms=[coserve,all_resident]", "metrics.timeline=true"], out_dir=on, progress=False)
    timeline = on / "timeline-coserve.json"
    (on / "timeline-coserve.json.gz").write_bytes(gzip.compress(timeline.read_bytes()))
    timeline.unlink()  # the report reads the gzipped copy (how large timelines are committed)
    run_experiment([*SIM, "arms=[coserve]"], out_dir=off, progress=False)
    assert main([str(on), "--kind", "arms"]) == 0
    for plot in ("latency_cdf", "throughput_over_time", "pool_occupancy", "time_breakdown"):
        path = on / "report" / f"arms_on_{plot}.png"
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", plot
    assert main([str(off), "--out", str(tmp_path / "r"), "--kind", "arms"]) == 0
    assert "pool occupancy skipped" in capsys.readouterr().out
    assert (tmp_path / "r" / "arms_off_latency_cdf.png").is_file()
    assert not (tmp_path / "r" / "arms_off_pool_occupancy.png").exists()
