"""Cluster routers (policies/router.py) on hand-built views, and the cluster simulator
(engine/cluster.py) on a synthetic CoE: no JAX, no Ray, milliseconds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from coserve_jax.coe.synthetic import synthetic_cost, synthetic_graph
from coserve_jax.engine.build import build_engine
from coserve_jax.engine.cluster import ClusterSim
from coserve_jax.engine.sim import SimBackend
from coserve_jax.policies.router import Affinity, Mux, NoReplicaError, RoundRobin, build_partition
from coserve_jax.workload.trace import generate_trace
from tests.helpers import MB, graph_of

COST = synthetic_cost(max_batch=8)


@dataclasses.dataclass
class FakeReplica:
    replica_id: int
    expert_bytes: int = 10**12
    pending: int = 0
    alive: bool = True
    kind: str = "cpu"
    lanes: int = 1
    held: frozenset = frozenset()
    cost: object = COST

    @property
    def num_experts(self) -> int:
        return len(self.held)

    def holds(self, expert_id: str) -> bool:
        return expert_id in self.held


@dataclasses.dataclass
class FakeCluster:
    graph: object
    replicas: list


def test_router_module_does_not_import_jax_or_ray():
    code = ("import sys, coserve_jax.policies.router, coserve_jax.engine.cluster; "
            "assert 'jax' not in sys.modules and 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_partition_keeps_each_types_classifier_and_detector_together_and_fits_memory():
    g = synthetic_graph(num_types=24, num_detectors=3, detect_share=0.5, seed=1)
    reps = [FakeReplica(i, expert_bytes=50 * MB) for i in range(3)]
    p = build_partition(g, reps, {t: c.mix for t, c in g.components.items()})
    for t, c in g.components.items():
        assert p.homes[t], t
        for i in p.homes[t]:
            assert c.classifier in p.working_set[i]
            if c.detector is not None:
                assert c.detector in p.working_set[i]
    for i in range(3):
        assert p.bytes_used[i] <= 50 * MB
        assert p.bytes_used[i] == sum(g.experts[e].param_bytes for e in p.working_set[i])


def test_partition_balances_expected_work_and_splits_a_type_hotter_than_a_replica():
    mix = {"hot": 0.5, **{f"t{i}": 0.5 / 20 for i in range(20)}}
    g = graph_of(mix, detectors={t: "det_shared" for t in mix})
    reps = [FakeReplica(i) for i in range(4)]
    p = build_partition(g, reps, mix)
    assert len(p.homes["hot"]) == 2  # 0.5 of the work, a fair share is 0.25: two shares
    loads = list(p.load_s.values())
    assert max(loads) / (sum(loads) / len(loads)) < 1.1
    # the one detector every type leads to is on every replica that serves one of them
    assert all("det_shared" in p.working_set[i] for i in range(4))


def test_partition_prefers_a_replica_that_already_holds_the_detector():
    # Two detector families of equal weight on two replicas: each family stays together.
    mix = {f"a{i}": 0.125 for i in range(4)} | {f"b{i}": 0.125 for i in range(4)}
    dets = {t: ("det_a" if t[0] == "a" else "det_b") for t in mix}
    g = graph_of(mix, detectors=dets)
    p = build_partition(g, [FakeReplica(0), FakeReplica(1)], mix)
    for fam in ("a", "b"):
        assert len({p.homes[f"{fam}{i}"][0] for i in range(4)}) == 1, p.homes


def test_affinity_routes_home_and_spills_when_the_home_queue_is_far_longer():
    mix = {"x": 0.5, "y": 0.5}
    g = graph_of(mix)
    reps = [FakeReplica(0), FakeReplica(1)]
    view = FakeCluster(g, reps)
    r = Affinity(spill_pending=8, spill_ratio=1.25)
    home = r.route(view, "x")
    assert r.route(view, "x") == home and r.route(view, "y") != home
    reps[home].pending = 20
    assert r.route(view, "x") == 1 - home  # 20 >= 8 and > 1.25 x (0 + 1): spill
    assert r.spills == 1
    reps[1 - home].pending = 18
    assert r.route(view, "x") == home  # 20 < 1.25 x 19: no spill


def test_affinity_repartitions_when_a_replica_dies_and_never_routes_to_it():
    g = synthetic_graph(num_types=12, num_detectors=2, seed=0)
    reps = [FakeReplica(i) for i in range(3)]
    view = FakeCluster(g, reps)
    r = Affinity()
    for t in g.components:
        r.route(view, t)
    reps[1].alive = False
    got = {r.route(view, t) for t in g.components}
    assert 1 not in got and got == {0, 2}
    assert r.rebuilds["replicas"] == 1
    for rep in reps:
        rep.alive = False
    with pytest.raises(NoReplicaError):
        r.route(view, "type_000")


def test_affinity_repartitions_on_drift_and_not_on_sampling_noise():
    mix = {f"t{i}": 1 / 8 for i in range(8)}
    g = graph_of(mix)
    reps = [FakeReplica(i) for i in range(2)]
    view = FakeCluster(g, reps)
    r = Affinity(drift_window=400, drift_threshold=0.25)
    for k in range(4000):  # the planned mix: no re-partition
        r.route(view, f"t{k % 8}")
    assert r.rebuilds.get("drift", 0) == 0
    p = r.partition
    hot = [t for t in mix if p.homes[t] == (0,)]
    for k in range(2000):  # every request now goes to replica 0's types
        r.route(view, hot[k % len(hot)])
    assert r.rebuilds["drift"] >= 1
    assert len({h for t in hot for h in r.partition.homes[t]}) == 2  # spread again


def test_mux_prefers_a_holder_then_the_fewest_models_then_holders_when_all_are_full():
    g = graph_of({"x": 0.5, "y": 0.5})
    reps = [FakeReplica(0, held=frozenset({"cls_x", "cls_y"})), FakeReplica(1, held=frozenset({"cls_y"})),
            FakeReplica(2, held=frozenset({"cls_y", "a", "b"}))]
    view = FakeCluster(g, reps)
    m = Mux(max_ongoing=4)
    assert m.route(view, "x") == 0
    reps[0].pending = 4  # the holder is full: the non-full replica with the fewest models
    assert m.route(view, "x") == 1
    reps[1].pending = reps[2].pending = 4  # all full: stay with the holder (Ray's router queue)
    assert m.route(view, "x") == 0


def test_round_robin_skips_dead_replicas():
    g = graph_of({"x": 1.0})
    reps = [FakeReplica(i) for i in range(3)]
    reps[1].alive = False
    rr = RoundRobin()
    assert [rr.route(FakeCluster(g, reps), "x") for _ in range(4)] == [0, 2, 0, 2]


# ---- the cluster simulator --------------------------------------------------------------------
def _cluster(n: int, router, cfg_overrides=()):
    from coserve_jax.api import as_run_config

    g = synthetic_graph(num_types=16, num_detectors=2, seed=3)
    cost = synthetic_cost(max_batch=8)
    cfg = as_run_config(["backend=sim", "arms=[coserve_plus,mux_replica]", "hardware.device_budget=40MB",
                         "hardware.executors.cpu=1", *cfg_overrides])[0]
    arm = cfg.arms[0] if not isinstance(router, Mux) else cfg.arms[1]
    engines = [build_engine(cfg, arm, g, cost, SimBackend(1), "trace") for _ in range(n)]
    placement = getattr(router, "initial_experts", None)
    return g, ClusterSim(g, router, engines, placement)


@pytest.mark.parametrize("router", [Affinity(), Mux(), RoundRobin()], ids=["affinity", "mux", "round_robin"])
def test_cluster_serves_every_request(router):
    g, sim = _cluster(3, router)
    from coserve_jax.config import WorkloadConfig

    reqs = generate_trace(g, WorkloadConfig(num_requests=300, interval_ms=2.0, arrival="poisson"))
    s = sim.run(reqs)
    assert s["requests"]["completed"] == 300 and s["requests"]["failed"] == 0
    assert sum(p["completed"] for p in s["per_replica"]) == 300
    assert s["throughput_rps"] > 0 and s["latency_ms"]["p99"] >= s["latency_ms"]["p50"]


def test_cluster_replica_killed_mid_run_loses_nothing_and_is_routed_around():
    from coserve_jax.config import WorkloadConfig

    router = Affinity()
    g, sim = _cluster(3, router)
    reqs = generate_trace(g, WorkloadConfig(num_requests=400, interval_ms=2.0, arrival="fixed"))
    s = sim.run(reqs, kill_at_s={1: 0.3})
    assert s["requests"]["completed"] + s["requests"]["failed"] == 400
    assert s["requests"]["failed"] == 0  # every request in flight on replica 1 was routed again
    assert s["requests"]["rerouted"] > 0
    assert router.rebuilds["replicas"] == 1
    late = [r for r in sim._reqs.values() if r.request.arrival_s > 0.31]
    assert late and all(r.replica != 1 for r in late)


def test_cluster_is_deterministic():
    from coserve_jax.config import WorkloadConfig

    outs = []
    for _ in range(2):
        g, sim = _cluster(2, Mux(seed=1))
        reqs = generate_trace(g, WorkloadConfig(num_requests=200, interval_ms=1.0, arrival="poisson"))
        s = sim.run(reqs)
        outs.append((s["throughput_rps"], s["switches"], s["latency_ms"]))
    assert outs[0] == outs[1]


def test_serving_stage_caps_the_cluster_and_counts_in_latency():
    """``serving_s``: one first-come-first-served stage in front of the router; with arrivals far
    above 1 / serving_s the cluster serves at most that rate, and latency counts from arrival.
    A stage whose cost falls with the requests in it (measured points) serves at the rate of its
    cost with the stage full, and at its one-at-a-time cost when arrivals are sparse."""
    from coserve_jax.config import WorkloadConfig
    from coserve_jax.engine.cluster import ServingStage

    out = {}
    by_load = [(1, 0.04), (20, 0.01)]
    runs = {("free", 1.0): 0.0, ("fixed", 1.0): 0.02, ("by_load", 1.0): by_load,
            ("fixed", 200.0): 0.04, ("by_load", 200.0): by_load}
    for (name, interval_ms), stage in runs.items():
        g, sim = _cluster(2, Affinity())
        sim.serving = ServingStage(stage)
        reqs = generate_trace(g, WorkloadConfig(num_requests=300 if interval_ms == 1.0 else 30,
                                                interval_ms=interval_ms, arrival="poisson"))
        out[name, interval_ms] = sim.run(reqs)
    staged, free = out["fixed", 1.0], out["free", 1.0]
    assert staged["requests"]["completed"] == 300
    assert free["throughput_rps"] > 1 / 0.02 * 1.2  # the engines alone go faster than the stage
    assert 1 / 0.02 * 0.9 < staged["throughput_rps"] <= 1 / 0.02 * 1.001
    assert staged["latency_ms"]["p50"] > free["latency_ms"]["p50"]
    by_load = out["by_load", 1.0]
    assert 1 / 0.01 * 0.8 < by_load["throughput_rps"] <= 1 / 0.01 * 1.001  # the stage full: 0.01 s each
    sparse, fixed = out["by_load", 200.0]["latency_ms"], out["fixed", 200.0]["latency_ms"]
    assert fixed["p50"] * 0.98 < sparse["p50"] < fixed["p50"] * 1.02  # mostly one in the stage: 0.04 s
    assert ServingStage([(1, 0.04), (20, 0.01)]).seconds(10) == pytest.approx(0.04 - 9 / 19 * 0.03)
    for bad in ([], [(0, 0.01)], [(2, 0.01), (1, 0.02)], [(1, -0.01)]):
        with pytest.raises(ValueError, match="ServingStage.points"):
            ServingStage(bad)


def test_cluster_job_writes_its_tables(tmp_path):
    """``+experiment=cluster_scaling`` in a tiny grid (the job broke once when the composed config
    became typed, with no fast test to notice): scaling.csv has a row per (model, replicas,
    router) with the issue's columns, and results.json every cell."""
    import csv
    import json

    from coserve_jax.config import compose
    from coserve_jax.jobs import run_job

    out = tmp_path / "cluster"
    cfg = compose(["+experiment=cluster_scaling", "cluster.models=[pcb_paper_a]", "cluster.replicas=[1,2]",
                   "cluster.requests_per_replica=40", "cluster.min_requests=80", "cluster.jobs=1",
                   f"cluster.out_dir={out}"])
    run_job(cfg, tmp_path / "run")
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    assert {(r["model"], r["replicas"], r["router"]) for r in rows} == {
        ("pcb_paper_a", n, r) for n in ("1", "2") for r in ("affinity", "mux", "round_robin")}
    for r in rows:
        assert float(r["throughput_rps"]) > 0 and float(r["p99_ms"]) > 0 and int(r["switches"]) >= 0
    assert json.loads((out / "results.json").read_text())
