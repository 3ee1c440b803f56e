"""One cell of the cluster scaling sweep, timed: the simulator's own speed (issue #20's target:
the 32-replica, 3,000-type cell in under a minute on 2 cores).

    python scripts/bench_cluster_cell.py --model pcb_gen_3k --replicas 32 --router round_robin \\
        [--out summary.json] [--offered-rps R] [overrides ...]

Composes ``+experiment=cluster_scaling`` (plus any Hydra overrides) and runs the cell as the job
does (``jobs/cluster.py``: ``model_raw``, ``run_cell``): the saturated run by default, a Poisson
trace of ``Grid.num_requests(replicas)`` images offered at ``rate_per_replica_rps`` x replicas;
``--offered-rps`` runs it at that load instead (the job's latency runs). Prints the wall seconds
of the whole cell (graph, trace, engines, simulation), of the simulation alone (``engine_s``)
and the process's CPU seconds for the cell (steadier on a shared machine). ``--out`` writes the
cell's summary as sorted JSON without its wall-clock figures (``engine_s``; each replica's
``time_s.scheduling``, host seconds spent in policies), so two commits' summaries compare byte
for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from coserve_jax.config import compose
from coserve_jax.jobs.cluster import model_raw, parse_grid, run_cell


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pcb_gen_3k")
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--router", default="round_robin")
    ap.add_argument("--offered-rps", type=float, default=None, help="run at this load (default: saturated)")
    ap.add_argument("--out", type=Path, default=None, help="write the summary (no wall-clock figures) here")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)

    cfg = compose(["+experiment=cluster_scaling", *args.overrides])
    grid = parse_grid(OmegaConf.to_container(cfg.cluster, resolve=True))
    n = args.replicas
    interval_ms = 1e3 / args.offered_rps if args.offered_rps else grid.saturated_interval_ms(n)
    t, cpu = time.perf_counter(), time.process_time()
    out = run_cell(model_raw(cfg, args.model), args.router, n, grid.num_requests(n), interval_ms, "poisson")
    wall_s, cpu_s = time.perf_counter() - t, time.process_time() - cpu
    engine_s = out.pop("engine_s")
    for rep in out["per_replica"]:
        rep["time_s"].pop("scheduling", None)
    print(f"{args.model} x{n} {args.router}: {out['throughput_rps']:.1f} img/s, "
          f"{out['switches']['count']} switches; wall {wall_s:.1f} s (simulation {engine_s:.1f} s), CPU {cpu_s:.1f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, sort_keys=True, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
