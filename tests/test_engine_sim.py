"""The shared engine loop on the simulator backend: determinism, accounting, errors (no JAX)."""

from __future__ import annotations

import json

import pytest

from coserve_jax.coe.synthetic import synthetic_cost, synthetic_graph
from coserve_jax.config import BudgetError, ConfigError, NoFeasibleArmError, compose, parse_config
from coserve_jax.engine.build import build_engine, plan_executors
from coserve_jax.engine.sim import SimBackend
from coserve_jax.workload.trace import generate_trace, load_trace, save_trace


def run_arm(arm: str, seed: int = 0, n: int = 300, **kw):
    cfg = parse_config(compose([f"arms=[{arm}]", "backend=sim", f"workload.num_requests={n}",
                                f"workload.seed={seed}", *kw.get("overrides", [])]))
    graph = synthetic_graph(num_types=24, num_detectors=4)
    reqs = generate_trace(graph, cfg.workload)
    eng = build_engine(cfg, cfg.arms[0], graph, synthetic_cost(), SimBackend(2), "trace")
    eng.record_decisions = True
    if cfg.arms[0].sees_future:
        eng.enable_future(reqs)
    return eng.run(reqs), eng


@pytest.mark.parametrize("arm", ["samba", "coserve", "coserve_plus", "oracle"])
def test_same_seed_same_schedule(arm):
    s1, e1 = run_arm(arm, seed=3)
    s2, e2 = run_arm(arm, seed=3)
    assert e1.decisions == e2.decisions
    assert s1["throughput_rps"] == s2["throughput_rps"]
    _, e3 = run_arm(arm, seed=4)
    assert e3.decisions != e1.decisions


def test_all_resident_loads_each_used_expert_exactly_once():
    s, eng = run_arm("all_resident")
    used = {e for rs in eng.request_states().values() for e in rs.experts}
    assert s["switches"]["reloads"] == 0
    assert s["switches"]["evictions"] == 0
    assert s["switches"]["distinct_experts"] == s["switches"]["count"]
    assert used <= {e for p in eng.pools() for e in p.resident}
    assert s["switches"]["count"] <= len(eng.graph.experts)
    assert s["requests"]["completed"] == 300


def test_arranging_and_assigning_cut_switches():
    sw = {a: run_arm(a)[0]["switches"]["count"] for a in ["samba", "em_ra", "coserve"]}
    assert sw["coserve"] < sw["samba"]
    assert sw["em_ra"] < sw["samba"]


def test_time_breakdown_adds_up():
    s, eng = run_arm("coserve")
    t = s["time_s"]
    assert t["compute"] > 0 and t["load"] > 0
    assert t["load_hidden"] + t["load_wait"] >= t["load"] - 1e-9


def test_trace_round_trip(tmp_path):
    cfg = parse_config(compose(["backend=sim", "workload.num_requests=50"]))
    graph = synthetic_graph()
    reqs = generate_trace(graph, cfg.workload)
    save_trace(tmp_path / "t.json", reqs)
    assert load_trace(tmp_path / "t.json", graph) == reqs


@pytest.mark.parametrize("override, field", [
    ("workload.num_requests=0", "workload.num_requests"),
    ("workload.arrival=sometimes", "workload.arrival"),
    ("hardware.device_budget=lots", "hardware.device_budget"),
    ("hardware.expert_fraction=1.5", "hardware.expert_fraction"),
    ("arms=[samba,nope]", "arms"),
    ("backend.routing=guess", "backend.routing"),
    ("+hardware.executors.tpu=2", "hardware.executors.tpu"),
    ("arm_catalog.coserve_plus.batch_memory=elastic", "arm_catalog.coserve_plus.batch_memory"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(compose(["backend=sim", override]))


def test_unknown_component_type_fails_only_that_request():
    from coserve_jax.types import Request

    cfg = parse_config(compose(["backend=sim", "arms=[coserve]", "workload.num_requests=40",
                                "hardware.device_budget=40%"]))
    graph = synthetic_graph()
    reqs = generate_trace(graph, cfg.workload)
    reqs.append(Request(len(reqs), "no_such_type", 0.001))
    eng = build_engine(cfg, cfg.arms[0], graph, synthetic_cost(), SimBackend(), "trace")
    s = eng.run(reqs)
    assert s["requests"]["submitted"] == 41
    assert s["requests"]["completed"] == 40
    assert s["requests"]["failed"] == 1
    (reason,) = s["requests"]["failure_reasons"]
    assert "no_such_type" in reason


@pytest.mark.parametrize("cores", [2, 1])
def test_sim_host_shares_cores_max_min_fairly(cores):
    """Two batches (each may use every core) and a load (one core) on the host."""
    from types import SimpleNamespace

    from coserve_jax.engine.events import BatchDone, LoadDone
    from coserve_jax.types import Batch, LoadJob, Tier

    be = SimBackend(2, host_cores=cores)
    for i in range(2):
        be.start_batch(Batch(i, i, f"cls_{i}", (), predicted_s=1.0),
                       SimpleNamespace(kind="cpu", device_index=i, executor_id=i), [])
    be.start_load(LoadJob(7, "ex0:cpu", "cls_9", 1, Tier.DISK, 0, predicted_s=0.2))
    done = {}
    while (ev := be.next_event(None)) is not None:
        done["load" if isinstance(ev, LoadDone) else f"b{ev.batch.batch_id}"] = be.now()
        assert isinstance(ev, (LoadDone, BatchDone))
    if cores == 2:
        # load: 0.2 s of work at 2/3 speed = 0.3 s; by then each batch did 0.1 s of its 1.0 s,
        # then the two batches share 2 cores (1 each: half speed): 0.9 s more take 1.8 s.
        assert done["load"] == pytest.approx(0.3)
        assert done["b0"] == pytest.approx(2.1) and done["b1"] == pytest.approx(2.1)
    else:
        # one core shared by 3 jobs: the load needs 0.6 s; then 0.8 s left per batch at 1/2 speed.
        assert done["load"] == pytest.approx(0.6)
        assert done["b0"] == pytest.approx(2.2) and done["b1"] == pytest.approx(2.2)


def test_sim_caps_a_host_load_beside_batches_at_the_measured_slowdown():
    """load_slowdown [1, 2, 4]: a load runs at most 1/2 speed beside one CPU batch, 1/4 beside
    two, whatever its core share; batches keep their max-min shares."""
    from types import SimpleNamespace

    from coserve_jax.engine.events import LoadDone
    from coserve_jax.types import Batch, LoadJob, Tier

    be = SimBackend(2, host_cores=2, load_slowdown=(1.0, 2.0, 4.0))
    be.start_batch(Batch(0, 0, "cls_0", (), predicted_s=1.0), SimpleNamespace(kind="cpu", device_index=0, executor_id=0), [])
    be.start_load(LoadJob(7, "ex0:cpu", "cls_9", 1, Tier.DISK, 0, predicted_s=0.2))
    done = {}
    while (ev := be.next_event(None)) is not None:
        done["load" if isinstance(ev, LoadDone) else "batch"] = be.now()
    # Max-min gives the load its core (0.2 s); the cap halves its speed: 0.4 s. The batch runs at
    # 1/2 (one of its two cores) meanwhile: 0.2 s of work, then 0.8 s alone: done at 1.2 s.
    assert done["load"] == pytest.approx(0.4) and done["batch"] == pytest.approx(1.2)
    be = SimBackend(2, host_cores=2, load_slowdown=(1.0, 2.0, 4.0))
    for i in range(3):  # beyond the list: its last ratio
        be.start_batch(Batch(i, i, f"cls_{i}", (), predicted_s=10.0),
                       SimpleNamespace(kind="cpu", device_index=i, executor_id=i), [])
    be.start_load(LoadJob(7, "ex0:cpu", "cls_9", 1, Tier.DISK, 0, predicted_s=0.2))
    assert isinstance(ev := be.next_event(None), LoadDone) and be.now() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="load_slowdown"):
        SimBackend(1, load_slowdown=(1.0, 0.5))


def test_sim_caps_host_loads_beside_other_loads_and_batches_at_the_product():
    """load_slowdown_loads [1, 1.5]: two host loads at once each run at 1/1.5 speed although two
    cores give each its own; beside a batch too, at 1/(2 x 1.5)."""
    from types import SimpleNamespace

    from coserve_jax.engine.events import LoadDone
    from coserve_jax.types import Batch, LoadJob, Tier

    def loads_end(batches: int, **kw) -> list[float]:
        be = SimBackend(2, host_cores=2, **kw)
        for i in range(batches):
            be.start_batch(Batch(i, i, f"cls_{i}", (), predicted_s=10.0),
                           SimpleNamespace(kind="cpu", device_index=i, executor_id=i), [])
        for i in range(2):
            be.start_load(LoadJob(7 + i, f"ex{i}:cpu", f"cls_{9 + i}", 1, Tier.DISK, i, predicted_s=0.2))
        ends = []
        while len(ends) < 2:
            if isinstance(be.next_event(None), LoadDone):
                ends.append(be.now())
        return ends

    assert loads_end(0) == pytest.approx([0.2, 0.2])  # core sharing alone: a core each
    assert loads_end(0, load_slowdown_loads=(1.0, 1.5)) == pytest.approx([0.3, 0.3])
    # beside a batch: max-min gives each load 2/3 of a core, the caps 1/(2 x 1.5) = 1/3
    assert loads_end(1, load_slowdown=(1.0, 2.0), load_slowdown_loads=(1.0, 1.5)) == pytest.approx([0.6, 0.6])
    with pytest.raises(ValueError, match="load_slowdown_loads"):
        SimBackend(1, load_slowdown_loads=(1.0, 0.9))


def test_sim_loop_charges_arrivals_and_completions_their_own_costs():
    """The loop's time per arrival and per completion come from the profile, separately."""
    be = SimBackend(1, loop_s_per_event=3e-4, loop_s_per_arrival=5e-5)
    be.charge("arrival")
    assert be.now() == pytest.approx(5e-5)
    be.charge()
    assert be.now() == pytest.approx(3.5e-4)
    # A completion's cost grows with the tasks it completes (the loop routes each).
    per_task = SimBackend(1, loop_s_per_event=2e-4, loop_s_per_task=2.5e-5)
    per_task.charge("event", 20)
    assert per_task.now() == pytest.approx(7e-4)
    per_task.charge("event", 0)  # a load's completion
    per_task.charge("arrival", 5)  # an arrival is one task, priced as such
    assert per_task.now() == pytest.approx(9e-4 + 2e-4)
    with pytest.raises(ValueError, match="loop_s_per_task"):
        SimBackend(1, loop_s_per_task=-1e-6)
    # Without a separate arrival cost, an arrival costs what a completion does (older profiles).
    old = SimBackend(1, loop_s_per_event=2e-5)
    old.charge("arrival")
    old.charge("event")
    assert old.now() == pytest.approx(4e-5)



@pytest.mark.parametrize("shares", [True, False])
def test_sim_loop_takes_a_host_core_while_busy(shares):
    """The loop's own work runs on the host beside CPU batches: while it is busy, a batch that
    may use both cores gets one (2 cores: the loop takes the other)."""
    from types import SimpleNamespace

    from coserve_jax.engine.events import BatchDone
    from coserve_jax.types import Batch

    be = SimBackend(1, host_cores=2, loop_s_per_event=0.5, loop_shares_host=shares)
    be.start_batch(Batch(1, 0, "cls_0", (), predicted_s=1.0), SimpleNamespace(kind="cpu", device_index=0), [])
    assert be.next_event(0.0) is None  # the batch runs (dispatched by an earlier piece of the loop's work)
    be.charge()  # 0.5 s of loop work: the batch runs at half speed meanwhile (0.25 s of its 1.0 s)
    ev = be.next_event(None)
    assert isinstance(ev, BatchDone)
    assert be.now() == pytest.approx(1.25 if shares else 1.0)
    # A GPU batch does not share the host with the loop.
    gpu = SimBackend(1, host_cores=2, loop_s_per_event=0.5, loop_shares_host=True)
    gpu.start_batch(Batch(2, 0, "cls_0", (), predicted_s=1.0), SimpleNamespace(kind="gpu", device_index=0), [])
    gpu.next_event(0.0)
    gpu.charge()
    gpu.next_event(None)
    assert gpu.now() == pytest.approx(1.0)


def test_sim_jobs_the_loop_dispatches_start_when_its_work_is_done():
    """A load or batch the loop starts while handling an event starts once the loop's charge for
    that event has passed, as the real loop's hand-off does (its work before the dispatch, and
    the executor's or load thread's wake-up, sit between a completion and the next job: ~0.3 ms
    from a load to its batch and ~0.6-0.9 ms from a batch to the next load on this machine,
    where the profile measured 0.65 ms per event). Without a charge, at the next look at events."""
    from types import SimpleNamespace

    from coserve_jax.engine.events import BatchDone, LoadDone
    from coserve_jax.types import Batch, LoadJob, Tier

    be = SimBackend(1, loop_s_per_event=0.25, loop_s_per_arrival=0.125)
    be.start_load(LoadJob(7, "ex0:gpu", "cls_9", 1, Tier.DISK, 0, predicted_s=1.0))
    be.charge("arrival")
    assert isinstance(be.next_event(None), LoadDone) and be.now() == pytest.approx(1.125)
    be.start_batch(Batch(1, 0, "cls_9", (), predicted_s=0.5), SimpleNamespace(kind="gpu", device_index=0), [])
    be.charge()
    assert isinstance(be.next_event(None), BatchDone) and be.now() == pytest.approx(1.875)  # 1.125 + 0.25 + 0.5
    be.start_load(LoadJob(8, "ex0:gpu", "cls_3", 1, Tier.DISK, 0, predicted_s=1.0))  # no charge follows
    assert isinstance(be.next_event(None), LoadDone) and be.now() == pytest.approx(2.875)


def test_sim_batch_handoff_is_a_fixed_delay_after_the_compute():
    """A batch's completion reaches the loop ``batch_handoff_s`` after its compute, however the
    host is shared: two CPU batches on one core share it (each 1.0 s of work ends at 2.0 s),
    their hand-offs do not (both completions at 2.0 + 0.25 s, not 2.5 s). The batch's seconds
    count the hand-off, as the real executor is busy until the loop takes its completion."""
    from types import SimpleNamespace

    from coserve_jax.coe.synthetic import synthetic_cost
    from coserve_jax.engine.events import BatchDone
    from coserve_jax.types import Batch

    be = SimBackend(1, host_cores=1, batch_handoff_s=0.25)
    for i in range(2):
        be.start_batch(Batch(i, i, "cls_0", (), predicted_s=1.0), SimpleNamespace(kind="cpu", device_index=0), [])
    done = []
    while (ev := be.next_event(None)) is not None:
        assert isinstance(ev, BatchDone)
        done.append((ev.batch.batch_id, be.now(), ev.seconds))
    assert [b for b, _, _ in done] == [0, 1]
    assert [t for _, t, _ in done] == pytest.approx([2.25, 2.25])
    assert [s for _, _, s in done] == pytest.approx([2.25, 2.25])
    with pytest.raises(ValueError, match="batch_handoff_s"):
        SimBackend(1, batch_handoff_s=-1e-3)
    # A profile's figure reaches the backend the runner builds; without one there is no delay.
    cost = synthetic_cost()
    assert SimBackend.for_cost(cost).batch_handoff_s == 0.0
    cost.profile.setdefault("overheads", {})["batch_handoff_s"] = 4e-4
    assert SimBackend.for_cost(cost).batch_handoff_s == pytest.approx(4e-4)


# ---- shared hardware: split loads (issue #22, item 3) -----------------------------------------
def _drain(be) -> dict[int, float]:
    """Run a backend's events to the end: load id -> when it finished."""
    from coserve_jax.engine.loop import LoadDone

    done = {}
    while (ev := be.next_event(None)) is not None:
        assert isinstance(ev, LoadDone)
        done[ev.job.load_id] = be.now()
    return done


def test_two_concurrent_loads_share_the_disk_while_their_cpu_parts_overlap():
    """A split load = disk read (the one disk's bandwidth, shared) + deserialise (one host core).
    One alone: 1.0 s read + 0.5 s CPU = 1.5 s. Two at once on two lanes: the reads share the disk
    (each at half speed: 2.0 s, twice one read alone), then the CPU parts run side by side on two
    of the host's cores (2.5 s, not 3.0 s); one lane serialises them (1.5 s, then 3.0 s)."""
    from coserve_jax.types import LoadJob, Tier

    def job(i: int, pool: str = "ex0:gpu") -> LoadJob:
        return LoadJob(i, pool, f"cls_{i}", 1, Tier.DISK, 0, predicted_s=1.5, parts=(("disk", 1.0), ("cpu", 0.5)))

    alone = SimBackend(2, host_cores=4)
    alone.start_load(job(1))
    assert _drain(alone) == {1: pytest.approx(1.5)}
    two = SimBackend(2, host_cores=4)
    two.start_load(job(1))
    two.start_load(job(2, "ex1:cpu"))  # any pool: the disk is the machine's
    assert _drain(two) == {1: pytest.approx(2.5), 2: pytest.approx(2.5)}
    # The disk parts took twice one read: both left the disk at 2.0 s (2.5 - the 0.5 s CPU part).
    one_core = SimBackend(2, host_cores=1)  # CPU parts on one core share it: 2.0 + 2 x 0.5
    one_core.start_load(job(1))
    one_core.start_load(job(2))
    assert _drain(one_core) == {1: pytest.approx(3.0), 2: pytest.approx(3.0)}
    one_lane = SimBackend(1, host_cores=4)
    one_lane.start_load(job(1))
    one_lane.start_load(job(2))
    assert _drain(one_lane) == {1: pytest.approx(1.5), 2: pytest.approx(3.0)}


def test_copies_to_one_gpu_share_its_link_and_unsplit_loads_share_nothing():
    """Two host -> GPU copies (the "link" part) share the GPU's link: 0.2 s each instead of 0.1;
    a load the profile does not split (no parts) into a GPU pool runs alone as before."""
    from coserve_jax.types import LoadJob, Tier

    be = SimBackend(2)
    for i in (1, 2):
        be.start_load(LoadJob(i, f"ex{i}:gpu", f"cls_{i}", 1, Tier.HOST, i, predicted_s=0.1, parts=(("link", 0.1),)))
    assert _drain(be) == {1: pytest.approx(0.2), 2: pytest.approx(0.2)}
    be = SimBackend(2)
    for i in (1, 2):
        be.start_load(LoadJob(i, f"ex{i}:gpu", f"cls_{i}", 1, Tier.DISK, i, predicted_s=0.1))
    assert _drain(be) == {1: pytest.approx(0.1), 2: pytest.approx(0.1)}


def test_cpu_parts_of_loads_share_the_host_with_cpu_batches():
    """A CPU part is a one-core job in the host's max-min sharing: beside a batch on 2 cores it
    gets its core, the batch the other (half speed), as unsplit host loads did before."""
    from types import SimpleNamespace

    from coserve_jax.engine.loop import BatchDone, LoadDone
    from coserve_jax.types import Batch, LoadJob, Tier

    be = SimBackend(1, host_cores=2)
    be.start_batch(Batch(0, 0, "cls_0", (), predicted_s=1.0), SimpleNamespace(kind="cpu", device_index=0), [])
    be.start_load(LoadJob(1, "ex1:gpu", "cls_1", 1, Tier.DISK, 1, predicted_s=0.6,
                          parts=(("disk", 0.2), ("cpu", 0.4))))
    done = {}
    while (ev := be.next_event(None)) is not None:
        done["load" if isinstance(ev, LoadDone) else "batch"] = be.now()
        assert isinstance(ev, (LoadDone, BatchDone))
    # 0-0.2 s: the read (the batch alone on the host); 0.2-0.6 s: the CPU part on one core, the
    # batch at half speed (0.2 s of work); then the batch's last 0.6 s alone: 1.2 s.
    assert done["load"] == pytest.approx(0.6) and done["batch"] == pytest.approx(1.2)


def test_the_engine_splits_loads_only_where_the_profile_does():
    """Load jobs carry the profile's parts (summing to the predicted seconds); a profile without
    ``parts`` (measured demo profiles) gives undivided loads, simulated as before."""
    import copy

    from coserve_jax.cost.model import CostModel
    from coserve_jax.types import Tier

    prof = copy.deepcopy(synthetic_cost().profile)
    prof["kinds"]["cpu"]["loads"]["disk"]["parts"] = {"disk": 0.25, "cpu": 0.75}
    split = CostModel(prof)
    parts = split.load_parts_s("cpu", Tier.DISK, 4_000_000)
    assert [r for r, _ in parts] == ["disk", "cpu"]
    assert sum(s for _, s in parts) == pytest.approx(split.load_latency_s("cpu", Tier.DISK, 4_000_000))
    assert synthetic_cost().load_parts_s("cpu", Tier.DISK, 4_000_000) == ()
    for cost, split_expected in ((split, True), (synthetic_cost(), False)):
        cfg = parse_config(compose(["backend=sim", "arms=[coserve]", "workload.num_requests=60",
                                    "hardware.device_budget=40%"]))
        graph = synthetic_graph()
        eng = build_engine(cfg, cfg.arms[0], graph, cost, SimBackend(2), "trace")
        seen: list = []
        start = eng.backend.start_load

        def spy(job, seen=seen, start=start):
            seen.append(job)
            start(job)

        eng.backend.start_load = spy
        assert eng.run(generate_trace(graph, cfg.workload))["requests"]["completed"] == 60
        assert seen and all(bool(j.parts) == split_expected for j in seen)
        assert all(sum(s for _, s in j.parts) == pytest.approx(j.predicted_s) for j in seen if j.parts)


def test_throughput_incl_init_counts_the_initial_preloads():
    s, _ = run_arm("coserve")
    assert s["init_s"] == s["time_s"]["init"] > 0
    done = s["requests"]["completed"]
    assert s["throughput_rps"] == pytest.approx(done / s["wall_s"])
    assert s["throughput_rps_incl_init"] == pytest.approx(done / (s["wall_s"] + s["init_s"]))
    assert s["throughput_rps_incl_init"] < s["throughput_rps"]


# ---- infeasible arms (issue #16, item 4) -----------------------------------------------------
# synthetic_graph(): 12 classifiers of 4 MB and 3 detectors of 8 MB (72 MB; largest 8 MB);
# synthetic_cost(): 100 kB of working memory per image, up to 16 (1.6 MB). hardware=cpu: 2 executors.
def _synthetic_run(monkeypatch, tmp_path, *overrides: str):
    """run_job (the serve job of python -m coserve_jax.run) on the synthetic graph and cost model."""
    from coserve_jax.jobs import prepare, run_job
    from coserve_jax.runner.model import Model

    monkeypatch.setattr(prepare, "load_model", lambda *a, **k: Model(synthetic_graph()))
    monkeypatch.setattr(prepare, "load_cost_model", lambda *a, **k: synthetic_cost())
    cfg = compose(["backend=sim", "repeats=1", "workload.num_requests=80", *overrides])
    return run_job(cfg, tmp_path)


def test_an_infeasible_arm_is_reported_and_the_others_run(monkeypatch, tmp_path, capsys):
    # 12 MB: samba's one executor holds 8 MB + a 1.6 MB batch; coserve's two 6 MB shares cannot.
    res = _synthetic_run(monkeypatch, tmp_path, "arms=[samba,coserve]", "hardware.device_budget=12000000")
    assert list(res["arms"]) == ["samba", "coserve"]
    samba, coserve = res["arms"]["samba"], res["arms"]["coserve"]
    assert samba["requests"]["completed"] == 80 and "infeasible" not in samba
    assert set(coserve) == {"infeasible", "policy"}
    assert coserve["infeasible"].startswith("hardware.device_budget: each cpu executor gets 6000000 B")
    assert "largest expert (8000000 B)" in coserve["infeasible"]
    assert coserve["policy"]["name"] == "coserve"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["arms"]["coserve"] == coserve and on_disk["arms"]["samba"]["throughput_rps"] > 0
    out = capsys.readouterr().out
    assert "| coserve | infeasible: hardware.device_budget: each cpu executor gets 6000000 B" in out
    assert "| samba | " in out


def test_all_arms_infeasible_is_a_clear_error(monkeypatch, tmp_path, capsys):
    # 9 MB: samba's 9 MB - 1.6 MB, coserve's 4.5 MB shares and coserve_plus's 9 MB - 2 x 1.6 MB < 8 MB.
    with pytest.raises(NoFeasibleArmError) as err:
        _synthetic_run(monkeypatch, tmp_path, "arms=[samba,coserve,coserve_plus]", "hardware.device_budget=9000000")
    msg = str(err.value)
    assert msg.startswith("no arm fits its memory budget, none ran:")
    for arm in ("samba", "coserve", "coserve_plus"):
        assert f"\n  {arm}: hardware.device_budget: " in msg
    assert "pool shared by 2 executor(s)" in msg  # coserve_plus: checked as one pool
    # results.json (and the printed table) still say why each arm did not run.
    arms = json.loads((tmp_path / "results.json").read_text())["arms"]
    assert list(arms) == ["samba", "coserve", "coserve_plus"]
    assert all(set(a) == {"infeasible", "policy"} and a["infeasible"] in msg for a in arms.values())
    out = capsys.readouterr().out
    assert out.count("| infeasible: hardware.device_budget: ") == 3


def test_other_config_errors_still_stop_the_run(monkeypatch, tmp_path):
    """Only budget fit makes an arm infeasible: a kind the profile lacks stops the whole run."""
    with pytest.raises(ConfigError, match=r"hardware\.executors\.gpu") as err:
        _synthetic_run(monkeypatch, tmp_path, "arms=[samba,coserve]", "+hardware.executors.gpu=1",
                       "hardware.cpu_pool_budget=50%")
    assert not isinstance(err.value, BudgetError)


def test_a_shared_pool_is_checked_as_one_pool():
    """coserve_plus's one pool per device must hold the largest expert plus both executors' batches;
    the same bytes split per executor cannot hold the largest expert."""
    import dataclasses

    graph, cost = synthetic_graph(), synthetic_cost()
    largest = max(e.param_bytes for e in graph.experts.values())
    cfg = parse_config(compose(["backend=sim", "arms=[coserve_plus]", "hardware.device_budget=12000000",
                                "workload.num_requests=120"]))
    arm = cfg.arms[0]
    assert arm.share_pool
    plans = plan_executors(cfg, arm, graph, cost)  # feasible
    assert len(plans) == 2 and len({p.device_index for p in plans}) == 1
    assert all(p.budget_bytes - p.reserved_bytes < largest for p in plans)  # no one share holds it
    assert sum(p.budget_bytes - p.reserved_bytes for p in plans) >= largest  # the pool does
    with pytest.raises(BudgetError, match=r"hardware\.device_budget: each cpu executor gets 6000000 B"):
        plan_executors(cfg, dataclasses.replace(arm, share_pool=False), graph, cost)
    # ... and the engine serves with it, within the pool's bytes.
    eng = build_engine(cfg, arm, graph, cost, SimBackend(2), "trace")
    eng.check_invariants = True
    s = eng.run(generate_trace(graph, cfg.workload))
    assert s["requests"]["completed"] == 120
    assert all(peak <= s["budgets_bytes"][pid] for pid, peak in s["peak_bytes"].items())
    # Below largest + both batches (8 MB + 2 x 1.6 MB), the shared pool is infeasible too.
    small = parse_config(compose(["backend=sim", "arms=[coserve_plus]", "hardware.device_budget=11000000"]))
    with pytest.raises(BudgetError, match=r"cpu pool shared by 2 executor\(s\) on device 0 gets 11000000 B.*"
                                          r"largest expert \(8000000 B\) plus their batches \(3200000 B\)"):
        plan_executors(small, small.arms[0], graph, cost)


def test_backends_implement_their_protocols():
    """Every method of Backend (OnlineBackend for the real one) exists on each backend with the
    protocol's parameters, so the protocol cannot drift from what callers use."""
    import inspect

    from coserve_jax.engine.events import Backend, OnlineBackend
    from coserve_jax.engine.real import RealBackend

    def methods(proto):
        return {n: inspect.signature(f) for n, f in vars(proto).items()
                if inspect.isfunction(f) and not n.startswith("_")}

    for backend, protocols in ((SimBackend, (Backend,)), (RealBackend, (Backend, OnlineBackend))):
        for proto in protocols:
            for name, sig in methods(proto).items():
                assert hasattr(backend, name), f"{backend.__name__} lacks {proto.__name__}.{name}"
                assert list(inspect.signature(getattr(backend, name)).parameters) == list(sig.parameters), (
                    f"{backend.__name__}.{name}{inspect.signature(getattr(backend, name))} != {proto.__name__}.{name}{sig}")
    assert {"now", "start_load", "next_event", "close"} <= set(methods(Backend))
    assert {"post", "has_events", "bind_pool"} <= set(methods(OnlineBackend))


def test_preload_holds_a_working_set_evicting_only_experts_outside_it():
    """``EngineLoop.preload`` (a router's working set for a serving replica): experts no pool
    holds are dealt over the executors; room is made by evicting only experts outside the set;
    what no pool can fit is skipped; a held expert is not loaded twice."""
    from coserve_jax.policies.eviction import LRU
    from coserve_jax.policies.scheduling import FCFS
    from tests.helpers import MB, graph_of, make_resident, sim_engine

    g = graph_of({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25, "e": 0.0}, sizes={"cls_e": 20 * MB})
    eng = sim_engine(g, FCFS(), LRU(), pool_bytes=[9 * MB, 9 * MB])
    ex0, ex1 = eng.executors
    make_resident(ex0.pool, ("cls_a", 4 * MB), ("cls_b", 4 * MB))
    assert eng.preload(["cls_c", "cls_a", "cls_e", "cls_d"]) == 2  # a held, e fits no pool
    while eng.busy:
        assert eng.step(None)
    assert set(ex0.pool.resident) == {"cls_a", "cls_c"}  # b (outside the set) made room for c
    assert set(ex1.pool.resident) == {"cls_d"}
    assert eng.metrics.evictions == 1
    assert eng.preload(["cls_c", "cls_a", "cls_d"]) == 0  # all held: nothing to do
