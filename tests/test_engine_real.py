"""The real engine (JAX executors, Orbax loads) on a tiny trained zoo, with JAX's transfer guard on.

Outputs equal each expert run alone; one compile per (arch, device, bucket); faults end every
request completed or failed with a reason (never lost, never hung); a too-small budget is a
start-up error; the paper's baselines and the all-resident bound at a 25% budget; the public API.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from coserve_jax.api import Engine, Model, RequestFailed, make_trace
from coserve_jax.coe.graph import CLASSIFY_VERDICTS, DETECT_VERDICTS
from coserve_jax.coe.zoo import Zoo
from coserve_jax.config import ConfigError
from coserve_jax.engine.real import Runtime, bucket_size
from coserve_jax.types import Request

pytestmark = pytest.mark.usefixtures("transfer_guard")

# Runs take ~1 s; the stall timeout is 20 s (conftest), so any wait on it breaks this bound.
WALL_LIMIT_S = 15.0


# ---- helpers ------------------------------------------------------------------------------------
def run_one(real, arm: str, *extra: str, n: int = 80, model=None, runtime=None, injector=None,
            edit=None, warm: bool = True):
    """Run one arm over a generated trace; ``edit(requests, images)`` may corrupt inputs first."""
    runner = real.runner(f"arms=[{arm}]", f"workload.num_requests={n}", *extra, model=model, runtime=runtime)
    if warm:
        runner.warm_up(runner.cfg.arms)
    requests = make_trace(runner.cfg, runner.model.graph)
    images = runner.images(requests)
    if edit is not None:
        requests, images = edit(requests, images)
    engine = runner.new_engine(runner.cfg.arms[0], requests, fault_injector=injector)
    engine.keep_outputs = engine.record_decisions = True
    t0 = time.perf_counter()
    try:
        summary = engine.run(requests, images)
    finally:
        engine.backend.close()
    wall = time.perf_counter() - t0
    assert wall < WALL_LIMIT_S, f"run took {wall:.1f} s: something waited on a stall timeout"
    assert_accounted(summary, engine, len(requests))
    return summary, engine, requests


def assert_accounted(summary, engine, n: int) -> None:
    """Every submitted request ended completed or failed with a reason; none was lost."""
    r = summary["requests"]
    assert r["submitted"] == n and r["completed"] + r["failed"] == n, r
    assert sum(r["failure_reasons"].values()) == r["failed"]
    states = engine.request_states()
    assert len(states) == n and all(rs.done for rs in states.values())
    assert sum(rs.failed is not None for rs in states.values()) == r["failed"]
    for ex in engine.executors:
        assert not ex.groups and ex.running is None
        assert ex.pool.used_bytes <= ex.pool.budget_bytes


def failed_states(engine):
    return {rid: rs for rid, rs in engine.request_states().items() if rs.failed is not None}


def zoo_copy(real, tmp_path: Path, edit) -> tuple[Model, Runtime]:
    """A copy of the session zoo (never the cache itself), edited, with its own Runtime."""
    root = tmp_path / "zoo"
    shutil.copytree(real.model.zoo.root, root)
    edit(root)
    zoo = Zoo(root)
    return Model(zoo.graph, zoo), Runtime(zoo, str(real.cache_dir / "jax_cache"))


def busiest_type(real, *extra: str, n: int = 80) -> tuple[str, int]:
    """The component type with the most requests in the trace (and that count)."""
    runner = real.runner(f"workload.num_requests={n}", *extra)
    counts = Counter(r.component_type for r in make_trace(runner.cfg, runner.model.graph))
    return counts.most_common(1)[0]


def reference_logits(zoo, expert_id: str, image: np.ndarray, cache: dict) -> np.ndarray:
    """The expert alone and unbatched (a batch of one, no padding), through its own jit, not the engine's."""
    arch = zoo.expert(expert_id).arch
    if arch not in cache:
        graphdef = zoo.graphdef(arch)
        cache[arch] = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    if expert_id not in cache:
        cache[expert_id] = zoo.restore(expert_id)
    with jax.transfer_guard("allow"):  # the reference moves numpy in on purpose
        return np.asarray(cache[arch](cache[expert_id], image[None]))[0]


# ---- correctness ----------------------------------------------------------------------------
def test_outputs_equal_each_expert_alone(real):
    """Batched (max batch > 1), padded, on two executors on two devices: every task's logits = the expert alone."""
    summary, engine, requests = run_one(real, "coserve", "hardware.device_budget=200%", "hardware.cpu_devices=2", n=120)
    assert summary["requests"]["completed"] == 120
    batches = [d for d in engine.decisions if d[0] == "batch"]
    assert max(len(d[3]) for d in batches) > 1, "no batch held more than one request"
    assert {d[1] for d in batches} == {0, 1}, "both executors should serve"
    assert {ex.device_index for ex in engine.executors} == {0, 1}
    zoo, graph, models = real.model.zoo, real.model.graph, {}
    for rs in engine.request_states().values():
        assert rs.experts[0] == graph.preliminary(rs.request.component_type)
        assert len(rs.outputs) == len(rs.experts)
        for expert_id, out in zip(rs.experts, rs.outputs):
            np.testing.assert_allclose(out, reference_logits(zoo, expert_id, rs.image, models), atol=1e-5)
        # the route the engine took is the one the expert's own outputs give
        if len(rs.experts) == 2:
            assert graph.route_from_output(rs.request, rs.experts[0], rs.outputs[0]).next_expert == rs.experts[1]


def test_no_retrace_across_experts_in_a_run(real):
    """After warm-up a whole run over many experts of each architecture neither traces nor compiles."""
    runner = real.runner("arms=[coserve_plus,samba]", "workload.num_requests=150", "hardware.device_budget=25%")
    rt = real.runtime
    runner.warm_up(runner.cfg.arms)
    traces = dict(rt.traces)
    compiled = {a: f._cache_size() for a, f in rt._fwd.items()}
    requests = make_trace(runner.cfg, runner.model.graph)
    images = runner.images(requests)
    used: dict[str, set] = {}
    for arm in runner.cfg.arms:
        summary, engine = runner.run_arm(arm, requests, images, progress=False)
        assert summary["requests"]["completed"] == 150
        assert summary["switches"]["count"] > 0
        arrivals = summary["loop_busy_s"]["arrival"]  # the loop's own time, as the profiler prices it
        assert arrivals["handled"] == 150 and 0 < arrivals["per_handled_s"] < arrivals["total_s"]
        # A completion's busy time as a line over the tasks it completed (the profiler's
        # loop_s_per_event and loop_s_per_task): it passes through their mean.
        events = summary["loop_busy_s"]["event"]
        assert events["base_s"] >= 0 and events["per_task_s"] >= 0 and events["base_s"] + events["per_task_s"] > 0
        mean_tasks = summary["tasks_completed"] / events["handled"]
        if events["base_s"] > 0:
            assert events["base_s"] + events["per_task_s"] * mean_tasks == pytest.approx(events["per_handled_s"])
        # Each batch's hand-offs between the loop and its worker (the simulator's batch_handoff_s).
        handoff, batches = summary["batch_handoff_s"], summary["batches"]["count"]
        assert handoff["samples"]["after_forward"] == handoff["samples"]["to_worker"] == batches
        assert 0 < handoff["samples"]["to_loop"] <= batches
        assert 0 < handoff["after_forward_s"] < 0.1 and 0 < handoff["to_loop_s"] < 0.1
        assert handoff["total_s"] == pytest.approx(sum(handoff[f"{p}_s"] for p in ("to_worker", "after_forward", "to_loop")))
        mean = handoff["mean"]  # the tails too
        assert mean["after_forward_s"] > 0 and mean["total_s"] == pytest.approx(
            max(0.0, sum(mean[f"{p}_s"] for p in ("to_worker", "after_forward", "to_loop"))))
        for rs in engine.request_states().values():
            for e in rs.experts:
                used.setdefault(runner.model.graph.experts[e].arch, set()).add(e)
    assert all(len(experts) >= 2 for experts in used.values()), used
    assert rt.traces == traces
    assert {a: f._cache_size() for a, f in rt._fwd.items()} == compiled


def test_forward_compiles_once_per_arch_device_bucket(real):
    """Runtime.forward over every expert on both devices: one trace per arch, one compile per device."""
    import chex

    zoo, rt = real.model.zoo, real.runtime
    devices = [rt.device("cpu", 0), rt.device("cpu", 1)]
    b = bucket_size(3)
    for arch in zoo.archs:
        experts = [e for e, info in zoo.graph.experts.items() if info.arch == arch]
        fwd = rt.forward(arch)
        before_traces, before_compiled = rt.traces.get(arch, 0), fwd._cache_size()
        for dev in devices:
            x = jax.device_put(np.zeros((b, *zoo.archs[arch].input_shape), np.float32), dev)
            for e in experts:
                jax.block_until_ready(fwd(rt.restore(e, dev), x))
        assert rt.traces[arch] - before_traces <= 1
        assert fwd._cache_size() - before_compiled <= len(devices)
        # the same padded forward, checked by chex: many experts, one trace
        graphdef = zoo.graphdef(arch)
        chex.clear_trace_counter()  # the lambda below is one code object for every arch
        checked = jax.jit(chex.assert_max_traces(lambda s, x, g=graphdef: nnx.merge(g, s)(x), n=1))
        x0 = jax.device_put(np.zeros((b, *zoo.archs[arch].input_shape), np.float32), devices[0])
        for e in experts:
            jax.block_until_ready(checked(zoo.restore(e, device=devices[0]), x0))


# ---- faults -----------------------------------------------------------------------------------
def test_bad_inputs_fail_only_their_requests(real, caplog):
    def edit(requests, images):
        images = list(images)
        images[3] = np.zeros((16, 16, 3), np.float32)
        images[5] = images[5].astype(np.float64)
        images[7] = np.full_like(images[7], np.nan)
        n = len(requests)
        requests = [*requests, Request(n, "no_such_type", requests[-1].arrival_s)]
        return requests, [*images, images[0]]

    with caplog.at_level("WARNING", logger="coserve_jax"):
        summary, engine, _ = run_one(real, "coserve", edit=edit)
    failed = failed_states(engine)
    assert sorted(failed) == [3, 5, 7, 80]
    assert "shape (16, 16, 3)" in failed[3].failed
    assert "dtype float64" in failed[5].failed
    assert "NaN" in failed[7].failed
    assert "no_such_type" in failed[80].failed
    assert summary["requests"]["completed"] == 80 - 3
    for rid in failed:
        assert f"request {rid} failed" in caplog.text


@pytest.mark.parametrize("arm", ["coserve", "coserve_plus"])
def test_missing_checkpoint_fails_only_that_experts_requests(real, tmp_path, caplog, arm):
    ctype, count = busiest_type(real)
    expert = real.model.graph.preliminary(ctype)
    model, runtime = zoo_copy(real, tmp_path, lambda root: shutil.rmtree(root / "experts" / expert))
    with caplog.at_level("WARNING", logger="coserve_jax"):
        summary, engine, _ = run_one(real, arm, model=model, runtime=runtime)
    failed = failed_states(engine)
    assert len(failed) == count and summary["requests"]["completed"] == 80 - count
    for rs in failed.values():
        assert rs.request.component_type == ctype
        assert expert in rs.failed and "missing" in rs.failed
    # the broken expert is logged once, naming its path and the reason; its requests only in a total
    path = str(model.zoo.expert(expert).checkpoint_path)
    broken = [r for r in caplog.records if "cannot be loaded" in r.getMessage()]
    assert len(broken) == 1 and expert in broken[0].getMessage() and path in broken[0].getMessage()
    assert "missing" in broken[0].getMessage() and "request " not in caplog.text
    assert f"{count} of 80 requests failed (load failed: {count})" in caplog.text
    assert summary["switches"]["failed_attempts"] >= real.cfg().backend.load_retries + 1


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no leftovers of the restore
def test_corrupt_checkpoint_fails_only_that_experts_requests(real, tmp_path):
    """A truncated detector checkpoint: the requests routed to it fail, the rest complete."""
    detector = "det_0"

    def truncate(root):
        big = max((f for f in (root / "experts" / detector).rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])

    model, runtime = zoo_copy(real, tmp_path, truncate)
    summary, engine, _ = run_one(real, "coserve", "hardware.device_budget=50%", n=120, model=model, runtime=runtime)
    failed = failed_states(engine)
    assert failed, "no request reached the corrupt detector"
    for rs in failed.values():
        assert detector in rs.failed and "corrupt or unreadable" in rs.failed
        assert rs.experts and rs.experts[0] != detector  # the classifier ran, the detector could not load
    for rs in engine.request_states().values():
        if rs.failed is None:
            assert detector not in rs.experts


def test_bit_flipped_checkpoint_is_detected(real, tmp_path):
    from coserve_jax.store.checkpoint import CheckpointError

    def flip(root):
        big = max((f for f in (root / "experts" / "cls_000").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
        b = bytearray(big.read_bytes())
        b[len(b) // 2] ^= 0x01
        big.write_bytes(bytes(b))

    model, _ = zoo_copy(real, tmp_path, flip)
    with pytest.raises(CheckpointError):
        model.zoo.restore("cls_000")


def _loader_fault(expert: str, failures: float):
    """Raise on the first ``failures`` demand loads of ``expert`` (inf: every time)."""
    seen = Counter()

    def inject(kind, job):
        if kind == "load" and job.expert_id == expert and not job.initial:
            seen[job.pool_id] += 1
            if seen[job.pool_id] <= failures:
                raise OSError(f"injected read error #{seen[job.pool_id]}")

    inject.seen = seen
    return inject


@pytest.mark.parametrize("arm", ["samba", "coserve"])
def test_transient_load_failure_is_retried(real, arm):
    ctype, _ = busiest_type(real)
    expert = real.model.graph.preliminary(ctype)
    inject = _loader_fault(expert, failures=2)  # load_retries=2: the third attempt succeeds
    summary, engine, _ = run_one(real, arm, injector=inject)
    assert summary["requests"]["failed"] == 0 and summary["requests"]["completed"] == 80
    assert summary["switches"]["failed_attempts"] == 2 * len(inject.seen)


@pytest.mark.parametrize("arm", ["samba", "coserve", "coserve_plus"])
def test_permanent_load_failure_fails_only_that_experts_requests(real, arm, caplog):
    ctype, count = busiest_type(real)
    expert = real.model.graph.preliminary(ctype)
    inject = _loader_fault(expert, failures=float("inf"))
    with caplog.at_level("WARNING", logger="coserve_jax"):
        summary, engine, _ = run_one(real, arm, injector=inject)
    retries = real.cfg().backend.load_retries
    failed = failed_states(engine)
    assert len(failed) == count and summary["requests"]["completed"] == 80 - count
    for rs in failed.values():
        assert rs.request.component_type == ctype
        assert f"expert {expert} after {retries + 1} attempts" in rs.failed and "injected read error" in rs.failed
    assert summary["requests"]["failure_reasons"] == {"load failed": count}
    assert all(n >= retries + 1 for n in inject.seen.values())
    assert f"load of {expert}" in caplog.text


def test_failing_batch_fails_only_its_requests(real):
    ctype, count = busiest_type(real)
    expert = real.model.graph.preliminary(ctype)

    def inject(kind, job):
        if kind == "batch" and job.expert_id == expert:
            raise RuntimeError("injected batch fault")

    summary, engine, _ = run_one(real, "coserve", "hardware.device_budget=100%", injector=inject)
    failed = failed_states(engine)
    assert len(failed) == count and summary["requests"]["completed"] == 80 - count
    for rs in failed.values():
        assert rs.failed.startswith(f"batch failed: expert {expert}") and "injected batch fault" in rs.failed
    # the pool is usable after the fault: the expert stayed unpinned
    for ex in engine.executors:
        assert not ex.pool.pinned


# ---- budgets and the paper's baselines ----------------------------------------------------------
@pytest.mark.parametrize("budget", ["1%", "30KB"])
def test_too_small_budget_is_a_startup_error(real, budget):
    runner = real.runner("arms=[coserve]", f"hardware.device_budget={budget}")
    with pytest.raises(ConfigError, match=r"hardware\.device_budget.*largest expert"):
        runner.new_engine(runner.cfg.arms[0])
    with pytest.raises(ConfigError, match=r"hardware\.device_budget"):
        runner.warm_up(runner.cfg.arms)


def test_baselines_and_all_resident_at_a_quarter_budget(real):
    """The Done-when check: arms=[samba,samba_fifo,samba_parallel,all_resident] device_budget=25%."""
    runner = real.runner("arms=[samba,samba_fifo,samba_parallel,all_resident]", "hardware.device_budget=25%",
                         "workload.num_requests=160")
    runner.warm_up(runner.cfg.arms)
    requests = make_trace(runner.cfg, runner.model.graph)
    images = runner.images(requests)
    for arm in runner.cfg.arms:
        engine = runner.new_engine(arm, requests)
        engine.record_decisions = True
        try:
            s = engine.run(requests, images)
        finally:
            engine.backend.close()
        assert s["requests"]["completed"] == s["requests"]["submitted"] == 160, arm.name
        for pool, peak in s["peak_bytes"].items():
            assert peak <= s["budgets_bytes"][pool], (arm.name, pool)
        loads = Counter((d[1], d[2]) for d in engine.decisions if d[0] == "load")
        pools = {ex.pool.pool_id for ex in engine.executors}
        if arm.name == "all_resident":
            # the ceiling: one never-evicting pool per device; each used expert loads exactly once
            used = {e for rs in engine.request_states().values() for e in rs.experts}
            resident = {e for p in engine.pools() for e in p.resident}
            assert used <= resident
            assert set(loads.values()) == {1} and {e for _, e in loads} == resident
            assert s["switches"]["reloads"] == 0 and s["switches"]["evictions"] == 0
            assert s["switches"]["distinct_experts"] == s["switches"]["count"] == len(loads)
        else:
            assert s["switches"]["count"] > 0 and s["switches"]["during_run"] > 0
            assert len(pools) == (2 if arm.name == "samba_parallel" else 1)


# ---- the public API -----------------------------------------------------------------------------
def test_public_engine_submit_run_close(real):
    engine = Engine.from_config([*real.overrides, "workload.num_requests=30"], arm="coserve")
    try:
        requests = make_trace(engine.cfg, engine.model.graph)
        futures = []
        t_submit = time.perf_counter()
        for i, r in enumerate(requests):
            image = engine.model.zoo.render(r)
            if i == 4:
                image = np.zeros((8, 8, 3), np.float32)
            futures.append(engine.submit(image, r.component_type))
        bad_type = engine.submit(engine.model.zoo.render(requests[0]), "no_such_type")
        verdicts = set()
        for i, f in enumerate(futures):
            if i == 4:
                with pytest.raises(RequestFailed, match=r"shape \(8, 8, 3\)"):
                    f.result(timeout=30)
                continue
            out = f.result(timeout=30)
            comp = engine.model.graph.component(requests[i].component_type)
            assert out["experts"][0] == comp.classifier
            # the verdict is the last expert's: a detector's after an "ok" classification
            if len(out["experts"]) == 2:
                assert out["experts"][1] == comp.detector and out["verdict"] in DETECT_VERDICTS
            else:
                assert out["verdict"] in CLASSIFY_VERDICTS
                assert comp.detector is None or out["verdict"] == "damaged"
            assert 0 < out["latency_s"] < time.perf_counter() - t_submit
            verdicts.add(out["verdict"])
        assert verdicts
        with pytest.raises(RequestFailed, match="no_such_type"):
            bad_type.result(timeout=30)
        summary = engine.run(requests)
        assert summary["requests"]["completed"] == 30
    finally:
        engine.close()
    assert engine._thread is not None and not engine._thread.is_alive()
    assert not any(w.is_alive() for w in engine._engine.backend._workers.values())
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(np.zeros((32, 32, 3), np.float32), requests[0].component_type)


def test_real_backend_accounts_the_loops_busy_time_per_kind(real):
    """A real run's loop time splits into waits and busy time per arrival and per completion
    (what the profiler's loop measurement reads)."""
    _, engine, requests = run_one(real, "coserve")
    be = engine.backend
    assert be.charged["arrival"] == len(requests)
    assert 0 < be.charged["event"] <= be.events_handled  # the initial loads are awaited before serving
    assert all(s > 0 for s in be.busy_s.values()) and be.wait_s > 0  # it waited for batches and loads
    assert be.wait_s + sum(be.busy_s.values()) <= be.now()


def test_batch_handoffs_count_a_wake_up_only_when_the_loop_waited_for_it():
    """``BatchHandoffs``: to_worker from the end of the dispatching charge, after_forward from the
    forward's end to the event, to_loop only when the loop was already waiting when the event came
    (else the loop was busy: its own cost, charged per event in the simulator)."""
    from coserve_jax.engine.events import BatchDone
    from coserve_jax.engine.real import BatchHandoffs
    from coserve_jax.types import Batch

    h = BatchHandoffs(keep=2)
    for b in (1, 2):
        h.dispatched(b)
    h.charged(10.0)
    h.dispatched(3)  # dispatched after that charge: stamped by the next one
    h.charged(11.0)
    # batch 1: worker began at 10.1, forward 0.5 s, event at 10.7; the loop waited since 10.0
    h.taken(BatchDone(Batch(1, 0, "e", ()), 0.5, at_s=10.7, started_s=10.1), taken_s=10.8, waited_since_s=10.0)
    # batch 2: the loop was busy when its event came (waited only from 12.0)
    h.taken(BatchDone(Batch(2, 0, "e", ()), 0.5, at_s=11.0, started_s=10.3), taken_s=12.1, waited_since_s=12.0)
    h.taken(BatchDone(Batch(3, 0, "e", ()), 0.5, at_s=12.0, started_s=11.2), taken_s=12.3, waited_since_s=None)
    out = h.summary()
    assert out["samples"] == {"to_worker": 2, "after_forward": 2, "to_loop": 1}  # keep=2: the last two
    assert out["to_worker_s"] == pytest.approx((0.3 + 0.2) / 2)
    assert out["after_forward_s"] == pytest.approx((0.2 + 0.3) / 2)
    assert out["to_loop_s"] == pytest.approx(0.1)
    assert out["total_s"] == pytest.approx(0.25 + 0.25 + 0.1)
    assert out["mean"]["total_s"] == pytest.approx(out["total_s"])  # two samples: mean = median
    assert BatchHandoffs().summary()["total_s"] == BatchHandoffs().summary()["mean"]["total_s"] == 0.0
    h = BatchHandoffs()  # a tail: the mean sees it, the median does not
    for b, after in ((1, 0.1), (2, 0.1), (3, 0.7)):
        h.taken(BatchDone(Batch(b, 0, "e", ()), 0.5, at_s=1.0 + 0.5 + after, started_s=1.0), taken_s=3.0,
                waited_since_s=None)
    out = h.summary()
    assert out["after_forward_s"] == pytest.approx(0.1) and out["mean"]["after_forward_s"] == pytest.approx(0.3)


def test_profiler_times_the_loop_on_as_many_executors_as_the_hardware_serves_with(real, monkeypatch):
    """``measure_serving_loop_s`` serves with the hardware's executors even when they outnumber
    the devices (the default CPU hardware: two executors on one host device). Capping them at the
    device count timed a one-executor loop, whose assignments cost nothing, and priced the
    simulated loop ~35% below the real one."""
    import jax

    from coserve_jax.api import ArmRunner
    from coserve_jax.profiler import loop_overhead

    seen = []
    run_arm = ArmRunner.run_arm

    def spy(self, arm, *a, **k):
        summary, engine = run_arm(self, arm, *a, **k)
        seen.append(len(engine.executors))
        return summary, engine

    monkeypatch.setattr(ArmRunner, "run_arm", spy)
    n = len(jax.devices("cpu")) + 1  # more executors than host devices
    out = loop_overhead.measure_serving_loop_s(real.runtime, real.cost.profile, {"cpu": n}, num_requests=120)
    assert seen == [n] * 4  # one untimed run, three timed
    assert set(out) == {"loop_s_per_arrival", "loop_s_per_event", "loop_s_per_task", "batch_handoff_s"}
    assert out["loop_s_per_arrival"] > 0 and all(v >= 0 for v in out.values())
