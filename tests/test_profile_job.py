"""The profile job: pure summaries (fast) and the whole job on the tiny demo zoo (slow)."""

from __future__ import annotations

import json
import time

import pytest

from coserve_jax.jobs.profile import fit_errors, usage_from_routes, usage_gap
from coserve_jax.cost.fit import fit_linear_nonneg
from coserve_jax.profiler.microbench import abs_rel_errors


def test_nonnegative_fit_refits_instead_of_clamping():
    assert fit_linear_nonneg([1, 2, 4], [3.0, 5.0, 9.0]) == pytest.approx((2.0, 1.0))
    # a negative slope becomes the mean, not the (large) intercept of the unclamped line
    k, b = fit_linear_nonneg([100, 101, 102], [0.010, 0.009, 0.008])
    assert k == 0.0 and b == pytest.approx(0.009)
    # a negative intercept becomes a line through the origin
    k, b = fit_linear_nonneg([1, 2, 3], [0.5, 2.0, 3.5])
    assert b == 0.0 and k == pytest.approx((0.5 + 4.0 + 10.5) / 14)


def test_heldout_errors_and_usage_summaries():
    assert abs_rel_errors(1.0, 2.0, [3, 6], [5.0, 10.0]) == pytest.approx([0.0, 0.2])
    prof = {"kinds": {"cpu": {"archs": {"a": {"heldout": {"abs_rel_error": [0.1, 0.3],
                                                          "served_abs_rel_error": [0.2]}},
                                        "b": {}}}}}
    assert fit_errors(prof) == [0.1, 0.3] and fit_errors(prof, served=True) == [0.2]
    u = usage_from_routes([("c0",), ("c0", "d0"), ("c1",), ("c0", "d0")], ["c0", "c1", "d0", "d1"])
    assert u == {"c0": 0.75, "c1": 0.25, "d0": 0.5, "d1": 0.0}
    assert usage_gap(u, {"c0": 0.7, "d0": 0.6}) == pytest.approx(0.25)


class _CountingRuntime:
    """Stands in for ``engine.real.Runtime``: records which expert each read and copy was for."""

    A_S, B_S_PER_BYTE = 0.005, 5e-5

    def __init__(self, sizes):
        from types import SimpleNamespace

        self.zoo = SimpleNamespace(graph=SimpleNamespace(experts={
            eid: SimpleNamespace(expert_id=eid, arch=arch, param_bytes=b, checkpoint_path=f"/nowhere/{eid}")
            for eid, (arch, b) in sizes.items()}))
        self.reads, self.puts = [], []

    def restore(self, expert_id, device):
        """A read takes 5 ms + 50 us per byte (what the load fit must recover)."""
        self.reads.append((expert_id, device))
        time.sleep(self.A_S + self.B_S_PER_BYTE * self.zoo.graph.experts[expert_id].param_bytes)
        return [0]

    def put(self, expert_id, host, device):
        self.puts.append(expert_id)
        return [0]


def test_load_sampler_cycles_over_experts_of_each_arch():
    from coserve_jax.profiler.microbench import LoadSampler

    rt = _CountingRuntime({"a0": ("a", 100), "a1": ("a", 100), "a2": ("a", 100), "b0": ("b", 400)})
    s = LoadSampler(rt, device="dev", samples=2, drop_cache=False)
    assert [e.expert_id for e in s.experts] == ["a0", "a1", "b0"]  # samples per arch, sorted
    warm = len(rt.reads)
    for _ in range(4):
        s.sample()
    onto_device = [e for e, dev in rt.reads[warm:] if dev == "dev"]
    # each timed load comes right after an untimed one of the expert sampled before it
    assert onto_device[0::2] == ["b0", "a0", "a1", "b0"]
    timed = onto_device[1::2]
    assert timed == ["a0", "a1", "b0", "a0"] and rt.puts[-4:] == timed
    s.fill(3)
    assert s.count == 9
    fit = s.fit()
    assert fit["disk"]["timings_per_expert"] == 3 and fit["disk"]["samples"]["bytes"] == [100, 100, 400]
    # medians of 3 sleeps of 10 ms (100 B) and 25 ms (400 B); a busy machine only adds time
    assert fit["disk"]["b_s_per_byte"] == pytest.approx(_CountingRuntime.B_S_PER_BYTE, rel=0.5)
    assert fit["disk"]["a_s"] == pytest.approx(_CountingRuntime.A_S, abs=0.004)
    s_host = LoadSampler(rt, device=None, samples=1, drop_cache=False)
    s_host.fill(2)
    assert s_host.fit()["host"]["samples"]["seconds"] == [0.0, 0.0]  # no device: no copy timed


def test_load_sampler_skips_an_expert_whose_checkpoint_does_not_read(caplog):
    """A broken checkpoint is named in a warning and the next expert of its architecture is timed."""
    from coserve_jax.profiler.microbench import LoadSampler
    from coserve_jax.store.checkpoint import CheckpointError

    class _Broken(_CountingRuntime):
        def restore(self, expert_id, device):
            if expert_id == "a0":
                raise CheckpointError("expert a0: checkpoint /nowhere/a0 is corrupt: weight checksum mismatch")
            return super().restore(expert_id, device)

    rt = _Broken({"a0": ("a", 100), "a1": ("a", 100), "a2": ("a", 100), "b0": ("b", 400)})
    with caplog.at_level("WARNING", logger="coserve_jax"):
        s = LoadSampler(rt, device="dev", samples=2, drop_cache=False)
    assert [e.expert_id for e in s.experts] == ["a1", "a2", "b0"]
    assert "expert a0 cannot be loaded" in caplog.text and "/nowhere/a0" in caplog.text
    rt_all_broken = _Broken({"a0": ("a", 100)})
    with pytest.raises(CheckpointError, match="no checkpoint of architecture a reads"):
        LoadSampler(rt_all_broken, device="dev", samples=2, drop_cache=False)


def test_load_contention_ratios_and_a_failing_batch():
    """measure_load_contention: [1.0, r1, ...], never below 1; a batch that fails while loads
    are timed beside it fails the measurement, naming the architecture."""
    import time
    from types import SimpleNamespace

    import jax

    from coserve_jax.profiler.microbench import LoadSampler, measure_load_contention

    rt = _CountingRuntime({"a0": ("a", 100), "a1": ("a", 100)})
    rt.zoo.archs = {"a": SimpleNamespace(input_shape=(2, 2, 1))}
    busy = []

    def restore(expert_id, device):  # a load is slower while batch threads run
        time.sleep(0.001 * (1 + len(busy)))
        return [0]

    def forward(arch):
        def fwd(state, x):
            busy.append(1)
            time.sleep(0.001)
            busy.pop()
            return x
        return fwd

    rt.restore, rt.forward = restore, forward
    loads = LoadSampler(rt, device=None, samples=2, drop_cache=False)
    dev = jax.devices("cpu")[0]
    ratios = measure_load_contention(rt, dev, loads, max_batches=2, arch="a", passes=2)
    assert len(ratios) == 3 and ratios[0] == 1.0 and all(r >= 1.0 for r in ratios)

    def broken(arch):
        calls = []

        def fwd(state, x):  # the untimed first call (compile) works; the batch threads' fail
            calls.append(1)
            if len(calls) > 1:
                raise ValueError("boom")
            return x
        return fwd

    rt.forward = broken
    with pytest.raises(RuntimeError, match="a batch of a failed.*boom"):
        measure_load_contention(rt, dev, loads, max_batches=1, arch="a", passes=1)


def test_load_beside_loads_ratios():
    """measure_load_beside_loads: [1.0, r1], a load slower while another load runs beside it."""
    import threading
    import time

    import jax

    from coserve_jax.profiler.microbench import LoadSampler, measure_load_beside_loads

    rt = _CountingRuntime({"a0": ("a", 100), "a1": ("a", 100)})
    active, lock = [0], threading.Lock()

    def restore(expert_id, device):  # 2 ms, and 2 ms more per other load running when it starts
        with lock:
            others = active[0]
            active[0] += 1
        try:
            time.sleep(0.002 * (1 + others))
        finally:
            with lock:
                active[0] -= 1
        return [0]

    rt.restore = restore
    loads = LoadSampler(rt, device=None, samples=2, drop_cache=False)
    ratios = measure_load_beside_loads(rt, jax.devices("cpu")[0], loads, others=1, passes=2)
    assert len(ratios) == 2 and ratios[0] == 1.0 and ratios[1] > 1.5


def test_batch_contention_beside_batches_loads_and_a_python_thread():
    """measure_batch_contention: [1.0, r1, ...] beside batch threads or load threads, each ratio
    the timed batch's slowdown; measure_batch_beside_python: {duty: ratio}, a batch whose
    Python holds the GIL slows beside a thread that holds it too; failures name what failed."""
    import sys
    import threading
    from types import SimpleNamespace

    import jax

    from coserve_jax.profiler.microbench import (LoadSampler, measure_batch_beside_python,
                                                 measure_batch_contention)

    rt = _CountingRuntime({"a0": ("a", 100), "a1": ("a", 100)})
    rt.zoo.archs = {"a": SimpleNamespace(input_shape=(2, 2, 1))}
    active, lock = [0], threading.Lock()

    def busy(fn):  # count this job as running while fn runs
        with lock:
            active[0] += 1
        try:
            return fn()
        finally:
            with lock:
                active[0] -= 1

    def forward(arch):
        def fwd(state, x):  # 2 ms, and 2 ms more per other job running when it starts
            others = active[0]
            return busy(lambda: (time.sleep(0.002 * (1 + others)), x)[1])
        return fwd

    def restore(expert_id, device):
        return busy(lambda: (time.sleep(0.003), [0])[1])

    rt.forward, rt.restore = forward, restore
    dev = jax.devices("cpu")[0]
    beside_batches = measure_batch_contention(rt, dev, 1, "a", passes=2, timed=4)
    assert len(beside_batches) == 2 and beside_batches[0] == 1.0 and beside_batches[1] > 1.5
    loads = LoadSampler(rt, device=None, samples=2, drop_cache=False)
    beside_loads = measure_batch_contention(rt, dev, 2, "a", loads=loads, passes=2, timed=4)
    assert len(beside_loads) == 3 and beside_loads[1] > 1.5 and beside_loads[2] > beside_loads[1]

    t, work = time.perf_counter(), 0
    while time.perf_counter() - t < 0.003:  # how much pure Python runs in ~3 ms here
        sum(range(20))
        work += 1

    def python_forward(arch):
        def fwd(state, x):  # a fixed amount of pure Python: it needs the GIL throughout
            for _ in range(work):
                sum(range(20))
            return x
        return fwd

    rt.forward = python_forward
    # With CPython's default 5 ms switch interval a 3 ms forward either runs whole inside its
    # thread's turn or waits a turn out, and a median of 8 lands on either; 0.5 ms turns share
    # the GIL evenly within each forward (~x2 beside a thread that never pauses).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        gil = measure_batch_beside_python(rt, dev, "a", duties=(0.2, 1.0), passes=2, timed=4)
    finally:
        sys.setswitchinterval(interval)
    assert set(gil) == {0.2, 1.0} and min(gil.values()) >= 1.0 and gil[1.0] > 1.3
    with pytest.raises(ValueError, match="duties"):
        measure_batch_beside_python(rt, dev, "a", duties=(0.0,))

    def broken_restore(expert_id, device):  # the timed side's own read works; the load threads' fail
        if threading.current_thread() is not threading.main_thread():
            raise OSError("disk gone")
        return [0]

    rt.restore = broken_restore
    with pytest.raises(RuntimeError, match="a load failed while batches were timed.*disk gone"):
        measure_batch_contention(rt, dev, 1, "a", loads=loads, passes=1, timed=2)


def _tiny_zoo_available() -> bool:
    try:
        from coserve_jax.coe import zoo
    except Exception:  # noqa: BLE001 - the demo zoo is optional until it lands
        return False
    return hasattr(zoo, "zoo_config") and hasattr(zoo, "build_or_load_zoo")


@pytest.mark.slow
@pytest.mark.skipif(not _tiny_zoo_available(), reason="the demo zoo builder (coserve_jax.coe.zoo) is not ready")
def test_profile_job_on_the_tiny_zoo(tmp_path, monkeypatch):
    from coserve_jax.config import compose
    from coserve_jax.jobs import run_job
    from coserve_jax.cost.model import CostModel

    monkeypatch.setenv("COSERVE_JAX_CACHE", str(tmp_path / "cache"))
    cfg = compose(["+experiment=profile", "model=pcb_tiny", "profiler.repeats=2", "profiler.load_samples=2",
                   "profiler.router_sample=30"])
    res = run_job(cfg, tmp_path / "run")
    p = res["profile"]
    assert p["fit_median_abs_error"] is not None and p["served_median_abs_error"] is not None
    assert set(p["per_arch"]) and all(a["param_bytes"] > 0 for a in p["per_arch"].values())
    assert any(k.endswith("/dropped") for k in p["load_fits"]) and any(k.endswith("/kept") for k in p["load_fits"])
    assert p["usage"]["router_requests"] == 30
    prof = json.loads((tmp_path / "run" / "profile.json").read_text())
    CostModel(prof)  # the measured profile is a valid cost model
    # loads are timed between batch rounds: 2 archs x 2 rounds spread over 2 experts per arch,
    # then topped up to three timings each
    assert prof["kinds"]["cpu"]["loads"]["disk"]["timings_per_expert"] >= 3
    # loads timed beside 0, 1, ... threads serving CPU batches (one per CPU executor)
    slowdown = prof["host"]["load_slowdown_beside_batches"]
    assert len(slowdown) == 1 + cfg.hardware.executors.cpu and slowdown[0] == 1.0 and min(slowdown) >= 1.0
    assert CostModel(prof).load_slowdown == tuple(slowdown)
    # ... and beside the other load threads' loads
    beside = prof["host"]["load_slowdown_beside_loads"]
    assert len(beside) == cfg.backend.load_threads and beside[0] == 1.0 and min(beside) >= 1.0
    assert CostModel(prof).load_slowdown_loads == tuple(beside)
    assert (tmp_path / "run" / "profile_summary.md").is_file()
