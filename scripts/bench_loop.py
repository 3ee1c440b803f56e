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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from coserve_jax.api import run_experiment
from coserve_jax.engine.loop import EngineLoop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["coserve", "coserve_plus", "all_resident"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")

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


if __name__ == "__main__":
    sys.exit(main())
