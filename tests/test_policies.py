"""The paper's worked examples as table-driven policy tests. No JAX is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coserve_jax.policies.base import _MEMOS, added_latency_s, queue_total_s
from coserve_jax.policies.eviction import FIFO, LRU, Belady, QueueAware, TwoStage
from coserve_jax.policies.placement import NextGroup, RoundRobinByUsage
from coserve_jax.policies.scheduling import FCFS, LatencyAware, RoundRobin
from coserve_jax.types import Task, Tier
from coserve_jax.engine.state import RequestState
from tests.helpers import MB, graph_of, make_resident, requests_of, sim_engine


def loads(engine) -> list[str]:
    return [d[2] for d in engine.decisions if d[0] == "load"]


def test_policies_do_not_import_jax():
    # Policies and the loop are pure Python: importing them in a fresh process must not load JAX.
    code = ("import sys, coserve_jax.policies.scheduling, coserve_jax.policies.eviction, "
            "coserve_jax.policies.placement, coserve_jax.engine.loop, coserve_jax.engine.sim; "
            "assert 'jax' not in sys.modules, 'policies or the loop imported jax'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arranging, expected_loads", [(False, 4), (True, 2)])
def test_fig3_fcfs_thrash_is_avoided_by_arranging(arranging, expected_loads):
    # Fig. 3: requests A B A B, pool holds one expert. FCFS loads 4 times; arranging 2.
    g = graph_of({"A": 0.5, "B": 0.5})
    eng = sim_engine(g, FCFS(arranging=arranging), LRU(), pool_bytes=[4 * MB + 1_600_000])
    s = eng.run(requests_of(["A", "B", "A", "B"], g))
    assert s["requests"]["completed"] == 4
    assert len(loads(eng)) == expected_loads


def test_fig4_lru_evicts_the_popular_expert_probability_keeps_it():
    # Fig. 4: pool holds X (popular, used long ago) and Y (rare, used just now); Z must load.
    g = graph_of({"X": 0.7, "Y": 0.1, "Z": 0.2})
    for policy, victim in [(LRU(), "cls_X"), (TwoStage(), "cls_Y")]:
        eng = sim_engine(g, FCFS(), policy, pool_bytes=[8 * MB])
        pool = eng.executors[0].pool
        make_resident(pool, ("cls_X", 4 * MB), ("cls_Y", 4 * MB))
        pool.touch("cls_X")
        pool.touch("cls_Y")
        assert policy.rank(eng, pool, pool.evictable())[0] == victim


def test_fig8_assign_minimises_the_longest_queue():
    # Two executors. Executor 0 already holds A and has a long queue; executor 1 is short but
    # would have to load A. Adding to 0 keeps the longest queue shorter than loading on 1.
    g = graph_of({"A": 0.5, "B": 0.5})
    eng = sim_engine(g, LatencyAware(), TwoStage(), pool_bytes=[8 * MB, 8 * MB])
    make_resident(eng.executors[0].pool, ("cls_A", 4 * MB))
    make_resident(eng.executors[1].pool, ("cls_B", 4 * MB))
    for i in range(4):
        eng.executors[0].enqueue(Task(i, "cls_A", 0, 0.0), join=True)
    eng.executors[1].enqueue(Task(10, "cls_B", 0, 0.0), join=True)
    cost = eng.cost  # k=2 ms, b=4 ms, load = 20 ms + 2 ns/B (28 ms for 4 MB)
    q0 = cost.batch_latency_s("cpu", "cls", 4)
    q1 = cost.batch_latency_s("cpu", "cls", 1)
    add0 = cost.batch_latency_s("cpu", "cls", 5) - q0
    add1 = cost.batch_latency_s("cpu", "cls", 1) + cost.load_latency_s("cpu", Tier.DISK, 4 * MB)
    assert queue_total_s(eng, eng.executors[0]) == pytest.approx(q0)
    assert added_latency_s(eng, eng.executors[1], Task(20, "cls_A", 0, 0.0)) == pytest.approx(add1)
    assert max(q0 + add0, q1) < max(q0, q1 + add1)
    assert LatencyAware().assign(eng, Task(20, "cls_A", 0, 0.0)) == 0


def test_fig8_tie_goes_to_smallest_added_latency():
    # Executor 2 has a long queue, so placing A on 0 or 1 leaves the same longest queue (a tie);
    # executor 1 holds A, so it adds no switch latency and wins the tie.
    g = graph_of({"A": 0.5, "B": 0.5})
    eng = sim_engine(g, LatencyAware(), TwoStage(), pool_bytes=[8 * MB, 8 * MB, 8 * MB])
    make_resident(eng.executors[1].pool, ("cls_A", 4 * MB))
    make_resident(eng.executors[2].pool, ("cls_B", 4 * MB))
    for i in range(200):
        eng.executors[2].enqueue(Task(i, "cls_B", 0, 0.0), join=True)
    assert queue_total_s(eng, eng.executors[2]) > 0.1
    assert LatencyAware().assign(eng, Task(1000, "cls_A", 0, 0.0)) == 1


def test_fig9_arrange_then_split():
    # Queue A A B; three more A arrive: arranged behind the A group, then split to max batch 4.
    g = graph_of({"A": 0.5, "B": 0.5})
    eng = sim_engine(g, FCFS(arranging=True), TwoStage(), pool_bytes=[16 * MB], max_batch=4)
    s = eng.run(requests_of(["A", "A", "B", "A", "A", "A"], g))
    batches = [d for d in eng.decisions if d[0] == "batch"]
    assert [(b[2], b[3]) for b in batches] == [("cls_A", (0, 1, 3, 4)), ("cls_A", (5,)), ("cls_B", (2,))]
    assert s["requests"]["completed"] == 6
    assert len(loads(eng)) == 2


def test_fig10_two_stage_eviction_order():
    # Pool: P1 (usage .5), P2 (.1), D_orphan (subsequent; its preliminary P3 not pooled, large),
    # D_small_orphan (subsequent, orphan, smaller), D_live (subsequent of P1, pooled).
    g = graph_of({"P1": 0.5, "P2": 0.1, "P3": 0.2, "P4": 0.2},
                 detectors={"P1": "D_live", "P3": "D_orphan", "P4": "D_small_orphan"},
                 sizes={"D_orphan": 12 * MB, "D_small_orphan": 6 * MB, "D_live": 8 * MB})
    eng = sim_engine(g, FCFS(), TwoStage(), pool_bytes=[40 * MB])
    pool = eng.executors[0].pool
    make_resident(pool, ("cls_P1", 4 * MB), ("cls_P2", 4 * MB), ("D_orphan", 12 * MB),
                  ("D_small_orphan", 6 * MB), ("D_live", 8 * MB))
    order = TwoStage().rank(eng, pool, pool.evictable())
    # Stage 1: orphans, largest first. Stage 2: ascending usage probability.
    usage = g.usage_probs()
    assert order[:2] == ["D_orphan", "D_small_orphan"]
    rest = order[2:]
    assert [usage[e] for e in rest] == sorted(usage[e] for e in rest)


def test_fifo_and_lru_rank_by_admission_and_use():
    g = graph_of({"A": 0.3, "B": 0.3, "C": 0.4})
    eng = sim_engine(g, FCFS(), FIFO(), pool_bytes=[12 * MB])
    pool = eng.executors[0].pool
    make_resident(pool, ("cls_A", 4 * MB), ("cls_B", 4 * MB), ("cls_C", 4 * MB))
    pool.touch("cls_A")
    assert FIFO().rank(eng, pool, pool.evictable()) == ["cls_A", "cls_B", "cls_C"]
    assert LRU().rank(eng, pool, pool.evictable()) == ["cls_B", "cls_C", "cls_A"]


def test_queue_aware_keeps_queued_experts_by_next_use():
    g = graph_of({"A": 0.1, "B": 0.1, "C": 0.8})
    eng = sim_engine(g, FCFS(arranging=True), QueueAware(), pool_bytes=[12 * MB])
    pool = eng.executors[0].pool
    make_resident(pool, ("cls_A", 4 * MB), ("cls_B", 4 * MB), ("cls_C", 4 * MB))
    ex = eng.executors[0]
    ex.enqueue(Task(1, "cls_B", 0, 0.0), join=True)
    ex.enqueue(Task(2, "cls_A", 0, 0.0), join=True)
    # C is not queued -> first, despite its high probability; then A (used after B); B last.
    assert QueueAware().rank(eng, pool, pool.evictable()) == ["cls_C", "cls_A", "cls_B"]


def test_belady_reads_the_future():
    g = graph_of({"A": 0.3, "B": 0.3, "C": 0.4})
    eng = sim_engine(g, FCFS(), Belady(), pool_bytes=[8 * MB])
    reqs = requests_of(["A", "B", "C", "A", "C", "A"], g)
    eng.enable_future(reqs)
    pool = eng.executors[0].pool
    make_resident(pool, ("cls_A", 4 * MB), ("cls_B", 4 * MB))
    for r in reqs[:3]:  # the first three are queued: next uses now A at 3, B never
        eng.future.consume(r.request_id, f"cls_{r.component_type}")
    assert eng.future.next_use("cls_A") == 3 and eng.future.next_use("cls_B") == float("inf")
    assert Belady().rank(eng, pool, pool.evictable())[0] == "cls_B"


def test_round_robin_and_initialisation_by_usage():
    g = graph_of({"A": 0.4, "B": 0.3, "C": 0.2, "D": 0.1})
    eng = sim_engine(g, RoundRobin(), TwoStage(), pool_bytes=[8 * MB, 4 * MB])
    rr = RoundRobin()
    assert [rr.assign(eng, Task(i, "cls_A", 0, 0)) for i in range(4)] == [0, 1, 0, 1]
    plan = RoundRobinByUsage().initial_experts(eng)
    assert plan == {0: ["cls_A", "cls_C"], 1: ["cls_B"]}


def test_next_group_prefetch_names_the_next_missing_expert():
    g = graph_of({"A": 0.5, "B": 0.5})
    eng = sim_engine(g, FCFS(arranging=True), QueueAware(), pool_bytes=[8 * MB])
    make_resident(eng.executors[0].pool, ("cls_A", 4 * MB))
    ex = eng.executors[0]
    ex.enqueue(Task(1, "cls_A", 0, 0.0), join=True)
    ex.enqueue(Task(2, "cls_B", 0, 0.0), join=True)
    assert NextGroup().prefetch(eng, 0) == ["cls_B"]


def test_prefetch_never_evicts_what_queued_work_on_a_shared_pool_needs():
    from coserve_jax.coe.synthetic import synthetic_cost
    from coserve_jax.engine.loop import EngineLoop
    from coserve_jax.engine.sim import SimBackend
    from coserve_jax.engine.state import ExecutorState
    from coserve_jax.policies.eviction import LRU
    from coserve_jax.store.pool import Pool

    g = graph_of({"A": 0.4, "B": 0.4, "C": 0.2})
    backend = SimBackend(1)
    shared = Pool("dev0:cpu", "cpu", 8 * MB)  # two executors, one pool: holds two experts
    executors = [ExecutorState(i, "cpu", 0, shared, {"cls": 16}, backend.now) for i in range(2)]
    eng = EngineLoop(graph=g, cost=synthetic_cost(max_batch=16), executors=executors, host_cache=None,
                 scheduler=FCFS(arranging=True), eviction=QueueAware(), host_eviction=LRU(),
                 initialiser=None, prefetcher=NextGroup(), backend=backend, routing="trace",
                 check_invariants=True)
    eng.record_decisions = True
    make_resident(shared, ("cls_A", 4 * MB), ("cls_B", 4 * MB))
    ex0, ex1 = executors
    ex0.enqueue(Task(1, "cls_C", 0, 0.0), join=True)
    ex1.enqueue(Task(2, "cls_A", 0, 0.0), join=True)
    ex1.enqueue(Task(3, "cls_B", 0, 0.0), join=True)
    eng._prefetch(ex0)  # the other executor's queue needs both residents: no prefetch
    assert not [d for d in eng.decisions if d[0] in ("load", "evict")]
    assert shared.holds("cls_A") and shared.holds("cls_B")
    ex1.drop_expert("cls_B")  # now cls_B is needed by no queue: it may make room
    eng._prefetch(ex0)
    assert [d[:3] for d in eng.decisions if d[0] in ("load", "evict")] == [
        ("evict", "dev0:cpu", "cls_B"), ("load", "dev0:cpu", "cls_C")]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from("ABC"), min_size=20, max_size=80), st.integers(0, 3), st.integers(9, 14))
def test_a_prefetch_without_room_is_retried_only_after_something_changed(types, gap_ms, pool_mb):
    # The loop skips a prefetch that found no room while the pool and the queues and running
    # batches of the executors sharing it are unchanged: the run's decisions are exactly those
    # of trying it after every event.
    def run(memo: bool):
        eng, pool, executors = dynamic_engine(pool_mb * MB, n_exec=2, prefetcher=NextGroup(depth=2, max_inflight=2))
        eng.scheduler = LatencyAware(arranging=True, work_conserving=True)
        attempts = []
        begin = eng._begin_load
        eng._begin_load = lambda ex, e, **k: attempts.append(e) or begin(ex, e, **k)
        if not memo:
            eng._no_room = type("Forget", (dict,), {"get": lambda self, k, d=None: None})()
        out = eng.run(requests_of(types, eng.graph, gap_ms / 1000))
        return eng.decisions, out["requests"], attempts

    remembered, forgot = run(True), run(False)
    assert remembered[:2] == forgot[:2]
    assert len(remembered[2]) <= len(forgot[2])


def test_a_prefetch_without_room_is_retried_when_a_running_batch_frees_it():
    # Nothing queued changes when a batch ends, but its pin and working memory go: the prefetch
    # that found no room while it ran must be tried again.
    eng, pool, (ex0, ex1) = dynamic_engine(9 * MB, n_exec=2, prefetcher=NextGroup())
    make_resident(pool, ("cls_A", 4 * MB), ("cls_B", 4 * MB))
    ex0.enqueue(Task(1, "cls_A", 0, 0.0), join=True)
    eng._requests[1] = RequestState(request=requests_of(["A"], eng.graph)[0])
    eng._dispatch(ex0, 0.0)  # runs cls_A: pinned, 100 kB of working memory held
    ex1.enqueue(Task(2, "cls_C", 0, 0.0), join=True)
    eng._prefetch(ex1)  # cls_C + a full batch's 1.6 MB: only cls_B may go, 4.9 MB < 5.6 MB
    eng._prefetch(ex1)
    assert not [d for d in eng.decisions if d[0] in ("load", "evict")]
    eng._handle(eng.backend.next_event(None))  # the batch ends
    assert ex0.running is None and not ex0.groups
    eng._prefetch(ex1)
    assert [d[2] for d in eng.decisions if d[0] == "load"] == ["cls_C"]


def dynamic_engine(pool_bytes: int, n_exec: int = 1, prefetcher=None, reserve: int = 0):
    """Executors sharing one pool whose batches take working memory from its free bytes
    (synthetic cost: 100 kB per image, max batch 16)."""
    from coserve_jax.coe.synthetic import synthetic_cost
    from coserve_jax.engine.loop import EngineLoop
    from coserve_jax.engine.sim import SimBackend
    from coserve_jax.engine.state import ExecutorState
    from coserve_jax.policies.eviction import LRU
    from coserve_jax.store.pool import Pool

    g = graph_of({"A": 0.4, "B": 0.4, "C": 0.2})
    backend = SimBackend(1)
    shared = Pool("dev0:cpu", "cpu", pool_bytes)
    executors = [ExecutorState(i, "cpu", 0, shared, {"cls": 16}, backend.now, dynamic_batch_memory=True,
                               initial_reserve_bytes=reserve) for i in range(n_exec)]
    eng = EngineLoop(graph=g, cost=synthetic_cost(max_batch=16), executors=executors, host_cache=None,
                 scheduler=FCFS(arranging=True), eviction=QueueAware(), host_eviction=LRU(),
                 initialiser=RoundRobinByUsage() if reserve else None, prefetcher=prefetcher,
                 backend=backend, routing="trace", check_invariants=True)
    eng.record_decisions = True
    return eng, shared, executors


def test_dynamic_batch_memory_splits_to_what_free_bytes_hold():
    from coserve_jax.types import Request

    eng, pool, (ex,) = dynamic_engine(8 * MB + 500_000)
    make_resident(pool, ("cls_A", 4 * MB), ("cls_B", 4 * MB))

    def arrive(ids, t):
        for i in ids:
            eng._arrive(Request(i, t, 0.0, eng.graph.truth_route(t, "ok"), "ok"), None)

    arrive(range(10), "A")
    arrive([10], "B")
    eng._dispatch(ex, 0.0)
    # cls_B has queued work, so it stays: 0.5 MB free holds 5 images of 100 kB, not 10.
    assert len(ex.running.tasks) == 5 and ex.running.held_bytes == 500_000
    assert pool.held_bytes == 500_000 and pool.free_bytes == 0
    eng._handle(eng.backend.next_event(None))  # the batch ends: its memory goes back
    assert ex.running is None and pool.held_bytes == 0
    ex.drop_expert("cls_B")  # now no queued work needs cls_B
    arrive(range(20, 31), "A")  # A's group: 5 + 11 = 16 images, 1.6 MB
    eng._dispatch(ex, eng.backend.now())
    # The full batch needs 1.6 MB: cls_B, needed by nothing queued, is evicted for it.
    assert len(ex.running.tasks) == 16 and ex.running.held_bytes == 1_600_000
    assert [d[2] for d in eng.decisions if d[0] == "evict"] == ["cls_B"]


def test_dynamic_batch_memory_waits_when_loads_hold_the_bytes_and_serves_everything():
    # A pool that holds one expert and one image's memory at a time still serves every request.
    eng, pool, _ = dynamic_engine(4 * MB + 100_000, n_exec=2)
    s = eng.run(requests_of(["A", "B", "C", "A", "B", "C"] * 5, eng.graph))
    assert s["requests"]["completed"] == 30
    assert s["batches"]["count"] == 30  # never more than one image's memory
    assert max(s["peak_bytes"].values()) <= 4 * MB + 100_000


def test_prefetch_leaves_a_full_batch_free_with_dynamic_batch_memory():
    for pool_bytes, expect_load in [(9 * MB, False), (9 * MB + 600_000, True)]:
        eng, pool, (ex,) = dynamic_engine(pool_bytes, prefetcher=NextGroup())
        make_resident(pool, ("cls_A", 4 * MB))
        ex.enqueue(Task(1, "cls_A", 0, 0.0), join=True)
        ex.enqueue(Task(2, "cls_C", 0, 0.0), join=True)
        eng._prefetch(ex)  # cls_C (4 MB) plus one full batch (16 x 100 kB) must fit in the free bytes
        assert (pool.loading == {"cls_C": 4 * MB}) == expect_load, pool_bytes


def test_initial_fill_keeps_the_batch_reserve_free_with_dynamic_batch_memory():
    eng, pool, _ = dynamic_engine(12 * MB, n_exec=2, reserve=2 * MB)
    eng.initialise()
    # 12 MB less 2 x 2 MB of reserve holds two 4 MB experts, not three.
    assert len(pool.resident) == 2
    assert pool.held_bytes == 0 and pool.free_bytes == 4 * MB


def test_next_group_depth_and_inflight_per_executor_kind():
    g = graph_of({"A": 0.5, "B": 0.3, "C": 0.2})
    eng = sim_engine(g, FCFS(arranging=True), QueueAware(), pool_bytes=[16 * MB])
    ex = eng.executors[0]
    for i, t in enumerate(["cls_A", "cls_B", "cls_C"]):
        ex.enqueue(Task(i, t, 0, 0.0), join=True)
    assert NextGroup(depth={"cpu": 2}).prefetch(eng, 0) == ["cls_A", "cls_B"]
    assert NextGroup(depth={"gpu": 1}).prefetch(eng, 0) == []
    assert NextGroup(max_inflight={"gpu": 1}).inflight_limit("cpu") == 0
    assert NextGroup(max_inflight=3).inflight_limit("cpu") == 3
    with pytest.raises(ValueError, match="NextGroup.depth"):
        NextGroup(depth=-1)
    with pytest.raises(ValueError, match="NextGroup.max_inflight"):
        NextGroup(max_inflight={"cpu": -2})


def test_next_group_fastest_kind_only_leaves_cpu_helpers_beside_gpus_out():
    g = graph_of({"A": 0.5, "B": 0.5})
    eng = sim_engine(g, FCFS(arranging=True), QueueAware(), pool_bytes=[16 * MB, 16 * MB])
    for ex in eng.executors:
        ex.enqueue(Task(ex.executor_id, "cls_A", 0, 0.0), join=True)
    pf = NextGroup(depth={"gpu": 1, "cpu": 2}, fastest_kind_only=True)
    assert pf.prefetch(eng, 0) == ["cls_A"]  # CPU executors only: the CPU is the fastest kind
    eng.executors[1].kind = "gpu"  # an engine's executors keep their kinds: a new prefetcher
    pf = NextGroup(depth={"gpu": 1, "cpu": 2}, fastest_kind_only=True)
    assert pf.prefetch(eng, 0) == [] and pf.prefetch(eng, 1) == ["cls_A"]
    assert pf.prefetch(eng, 0) == []  # its memo keeps the answer


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["enqueue", "join", "take", "drop", "load", "begin", "finish", "cancel",
                                           "evict"]),
                          st.integers(0, 5), st.integers(1, 20)), max_size=400))
def test_memos_follow_queue_and_pool_changes_exactly(ops):
    # queue_total_s updates its memo change by change (ExecutorState.changes, Pool.changes);
    # after any mix of queue and pool changes it must equal a rescan of the queue exactly
    # (integer nanoseconds), including after a change list was trimmed (> 256 changes).
    g = graph_of({t: 1 / 6 for t in "ABCDEF"})
    eng = sim_engine(g, LatencyAware(), LRU(), pool_bytes=[40 * MB])
    ex, pool = eng.executors[0], eng.executors[0].pool
    experts = [f"cls_{t}" for t in "ABCDEF"]
    picker, prefetcher = LatencyAware(work_conserving=True), NextGroup(depth=2, max_inflight=2)
    for n, (op, k, m) in enumerate(ops):
        e = experts[k]
        if op in ("enqueue", "join"):
            ex.enqueue(Task(n, e, 0, 0.0), join=op == "join")
        elif op == "take" and ex.groups:
            ex.take(k % len(ex.groups), m)
        elif op == "drop":
            ex.drop_expert(e)
        elif op == "load" and not pool.holds(e) and pool.free_bytes >= 4 * MB:
            make_resident(pool, (e, 4 * MB))
        elif op == "begin" and not pool.holds(e) and pool.free_bytes >= 4 * MB:
            pool.begin_load(e, 4 * MB)  # held, not resident, until it finishes
        elif op == "finish" and e in pool.loading:
            pool.finish_load(e)
        elif op == "cancel" and e in pool.loading:
            pool.cancel_load(e)
        elif op == "evict" and e in pool.resident:
            pool.evict(e)
        if n % 7 == 0 or n == len(ops) - 1:
            followed = queue_total_s(eng, ex)
            _MEMOS.pop(ex)
            assert queue_total_s(eng, ex) == followed
            assert ex.num_queued == sum(len(grp.tasks) for grp in ex.groups)
        if ex.groups and n % 3 == 0:
            # The work-conserving pick and the prefetch follow the same changes (policies.base.QueuedWhere).
            first = next((i for i, grp in enumerate(ex.groups) if grp.expert_id in pool.resident), 0)
            assert picker.pick_group(eng, 0) == first
            lacking = list(dict.fromkeys(grp.expert_id for grp in ex.groups if not pool.holds(grp.expert_id)))
            assert prefetcher.prefetch(eng, 0) == lacking[:2]
