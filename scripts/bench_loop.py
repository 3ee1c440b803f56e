"""The engine loop's own Python cost per request, on the simulator (no JAX work, no wall clock).

    python scripts/bench_loop.py [--arms coserve coserve_plus all_resident] [--rounds 5] [overrides ...]

Runs the default demo workload (2,000 requests, ``pcb_demo``, the cached profile) on
``backend=sim`` so that all the process does while an arm serves is the loop, the policies and
the simulator's bookkeeping; for each arm it takes the loop thread's CPU time (``time.thread_time``
around ``EngineLoop.run``) and the policies' share (``time_s.scheduling``, which on the simulator
is host seconds spent in assign/arrange/eviction ranking/prefetch), per request, over
``--rounds`` interleaved rounds (median and min). The real engine pays the same Python per
request on top of its forwards and loads; the default run's ``time_s.scheduling`` share of wall
time is what issue #18 bounds (<= 3%). Compare two commits by running this in each checkout.

``--micro`` instead times the loop's ``_enqueue`` (assign + arrange + enqueue) alone: 5,000
tasks of 60 experts over 2 executors with LatencyAware arranging, on a simulated engine with no
requests in flight (thread CPU time per task). ``--micro --steady`` times ``LatencyAware.assign``
alone (``perf_counter`` per call, min over rounds) with the queues held near 20 tasks by taking
16 off the head group of a queue past 20 every 8 tasks, and 8 experts resident per pool: the
arrival-time decision as the demo makes it, without the rest of the loop.

``--breakdown`` instead runs each arm once (``--backend real`` or ``sim``) with every loop
method and policy call below wrapped, and prints calls per request and microseconds per call
(wall and the loop thread's CPU). Nested calls count in their callers too, and each wrapper
adds about 1.5 us to a call (its ``thread_time`` reads), so use the figures to compare, not as
the loop's cost (the plain run's ``time_s.scheduling`` is that).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time

from coserve_jax.api import run_experiment
from coserve_jax.coe.graph import CoEGraph, ComponentType
from coserve_jax.coe.synthetic import synthetic_cost
from coserve_jax.engine.loop import EngineLoop
from coserve_jax.engine.sim import SimBackend
from coserve_jax.engine.state import ExecutorState
from coserve_jax.policies import eviction, placement, scheduling
from coserve_jax.policies.eviction import LRU
from coserve_jax.policies.scheduling import LatencyAware
from coserve_jax.store.pool import Pool
from coserve_jax.types import ExpertInfo, Role, Task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["coserve", "coserve_plus", "all_resident"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--micro", action="store_true", help="time _enqueue alone (see above)")
    ap.add_argument("--steady", action="store_true", help="with --micro: assign alone, queues held short")
    ap.add_argument("--breakdown", action="store_true", help="calls and us per call of the loop's parts")
    ap.add_argument("--backend", choices=["sim", "real"], default="sim", help="with --breakdown")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.steady and not args.micro:
        ap.error("--steady goes with --micro")
    if args.micro:
        return micro_steady(args.rounds) if args.steady else micro(args.rounds)
    if args.breakdown:
        return breakdown(args.arms, args.backend, args.overrides)

    loop_cpu: list[float] = []
    orig = EngineLoop.run

    def timed_run(self, *a, **k):
        t = time.thread_time()
        try:
            return orig(self, *a, **k)
        finally:
            loop_cpu.append(time.thread_time() - t)

    EngineLoop.run = timed_run  # type: ignore[method-assign]
    rows: dict[str, dict[str, list[float]]] = {a: {"loop": [], "sched": []} for a in args.arms}
    n_req = None
    for _ in range(args.rounds):
        for arm in args.arms:  # interleaved: a drift of the machine's speed hits every arm alike
            loop_cpu.clear()
            with tempfile.TemporaryDirectory() as out:
                res = run_experiment(["backend=sim", f"arms=[{arm}]", "repeats=1", *args.overrides],
                                     out_dir=out, progress=False)
            x = res["arms"][arm]
            n_req = x["requests"]["submitted"]
            rows[arm]["loop"].append(sum(loop_cpu) / n_req)
            rows[arm]["sched"].append(x["time_s"]["scheduling"] / n_req)
    print(f"### Loop cost per request, simulated demo ({n_req} requests, {args.rounds} rounds, median [min])\n")
    print("| arm | loop CPU, us/request | policies (time_s.scheduling), us/request |")
    print("| --- | --- | --- |")
    for arm, r in rows.items():
        print(f"| {arm} | {statistics.median(r['loop']) * 1e6:.1f} [{min(r['loop']) * 1e6:.1f}] "
              f"| {statistics.median(r['sched']) * 1e6:.1f} [{min(r['sched']) * 1e6:.1f}] |")
    return 0


def micro(rounds: int, n_types: int = 60, n_tasks: int = 5000) -> int:
    """``_enqueue`` per task on a fresh simulated engine per round (median and min of rounds)."""
    graph, tasks = _flat_workload(n_types, n_tasks)
    per_task = []
    for _ in range(rounds):
        engine = _two_executors(graph, 100_000_000, LatencyAware(arranging=True))
        t = time.thread_time()
        for task in tasks:
            engine._enqueue(task)
        per_task.append((time.thread_time() - t) / n_tasks)
    print(f"_enqueue: {statistics.median(per_task) * 1e6:.1f} us per task (min {min(per_task) * 1e6:.1f}; "
          f"{n_tasks} tasks, {n_types} experts, 2 executors, {rounds} rounds)")
    return 0


def micro_steady(rounds: int, n_types: int = 54, n_tasks: int = 20000) -> int:
    """``LatencyAware.assign`` per call with short queues (see the module docstring)."""
    graph, tasks = _flat_workload(n_types, n_tasks)
    per_call = []
    for _ in range(rounds):
        scheduler = LatencyAware(arranging=True)
        engine = _two_executors(graph, 40_000_000, scheduler)
        executors = engine.executors
        for ex in executors:
            for j in range(8):
                e = f"cls_{2 * j + ex.executor_id}"
                ex.pool.begin_load(e, 4_000_000)
                ex.pool.finish_load(e)
        spent = 0.0
        for k, task in enumerate(tasks):
            t = time.perf_counter()
            eid = scheduler.assign(engine, task)
            spent += time.perf_counter() - t
            ex = executors[eid]
            ex.enqueue(task, task.expert_id in ex.queued_experts)
            if k % 8 == 7:
                for ex in executors:
                    if ex.num_queued > 20:
                        ex.take(0, 16)
        per_call.append(spent / n_tasks)
    print(f"LatencyAware.assign, queues near 20 tasks: {min(per_call) * 1e6:.2f} us per call (min of {rounds} "
          f"rounds; median {statistics.median(per_call) * 1e6:.2f}; {n_tasks} tasks, {n_types} experts, 2 executors)")
    return 0


def breakdown(arms: list[str], backend: str, overrides: list[str]) -> int:
    """Each arm once with its loop's parts wrapped (see the module docstring)."""
    stats: dict[str, list[float]] = {}
    targets = [(EngineLoop, ["_arrive", "_enqueue", "_finish_task", "_on_batch_done", "_on_load_done",
                             "_dispatch_all", "_dispatch", "_launch", "_prefetch", "_begin_load"]),
               (scheduling.LatencyAware, ["assign"]), (scheduling.FCFS, ["assign"]),
               (scheduling.RoundRobin, ["assign"]), (scheduling._Ordering, ["arrange", "pick_group"]),
               (placement.NextGroup, ["prefetch"])]
    targets += [(cls, ["rank"]) for cls in (eviction.LRU, eviction.FIFO, eviction.TwoStage, eviction.QueueAware,
                                            eviction.Belady)]
    originals = []
    for cls, names in targets:
        for name in names:
            f = getattr(cls, name)  # EngineLoop's load methods are LoadSide's
            originals.append((cls, name, cls.__dict__.get(name)))
            setattr(cls, name, _timed(f"{cls.__name__}.{name}", f, stats))
    try:
        for arm in arms:
            stats.clear()
            with tempfile.TemporaryDirectory() as out:
                res = run_experiment([f"backend={backend}", f"arms=[{arm}]", "repeats=1", *overrides],
                                     out_dir=out, progress=False)
            x = res["arms"][arm]
            n = x["requests"]["submitted"]
            print(f"\n### {arm} ({backend}): {x['throughput_rps']:,.1f} img/s, time_s.scheduling "
                  f"{x['time_s']['scheduling'] / n * 1e6:.1f} us per request\n")
            print("| part | calls per request | wall us per call | CPU us per call | wall us per request |")
            print("| --- | --- | --- | --- | --- |")
            for name, (calls, wall, cpu) in sorted(stats.items()):
                print(f"| {name} | {calls / n:.2f} | {wall / calls * 1e6:.1f} | {cpu / calls * 1e6:.1f} "
                      f"| {wall / n * 1e6:.1f} |")
    finally:
        for cls, name, own in originals:
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
    return 0


def _timed(name: str, f, stats: dict[str, list[float]]):
    def timed(*a, **k):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return f(*a, **k)
        finally:
            s = stats.setdefault(name, [0, 0.0, 0.0])
            s[0] += 1
            s[1] += time.perf_counter() - t
            s[2] += time.thread_time() - c
    return timed


def _two_executors(graph: CoEGraph, pool_bytes: int, scheduler: LatencyAware) -> EngineLoop:
    """A simulated engine of two CPU executors, each with its own pool, max batch 16, LRU."""
    backend = SimBackend(1)
    executors = [ExecutorState(i, "cpu", 0, Pool(f"ex{i}:cpu", "cpu", pool_bytes), {"cls": 16}, backend.now)
                 for i in range(2)]
    return EngineLoop(graph=graph, cost=synthetic_cost(max_batch=16), executors=executors, host_cache=None,
                      scheduler=scheduler, eviction=LRU(), host_eviction=LRU(), initialiser=None, prefetcher=None,
                      backend=backend, routing="trace")


def _flat_workload(n_types: int, n_tasks: int) -> tuple[CoEGraph, list[Task]]:
    """n_types component types, each its own classifier of 4 MB and no detector, and n_tasks
    tasks of them drawn uniformly (seed 0)."""
    experts = [ExpertInfo(f"cls_{i}", Role.PRELIMINARY, "cls", 4_000_000, (32, 32, 3)) for i in range(n_types)]
    graph = CoEGraph(experts, [ComponentType(f"t{i}", f"cls_{i}", None, 1 / n_types, 0.0) for i in range(n_types)])
    rnd = random.Random(0)
    return graph, [Task(i, f"cls_{rnd.randrange(n_types)}", 0, 0.0) for i in range(n_tasks)]


if __name__ == "__main__":
    sys.exit(main())
