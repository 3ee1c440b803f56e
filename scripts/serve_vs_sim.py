"""Real vs simulated cluster: the same setup served for real (``python -m coserve_jax.serve``'s
app, loopback HTTP, ``scripts/loadgen.py``) and in the cluster simulator.

    python scripts/serve_vs_sim.py --replicas 2 --rate 400 --requests 400 --out experiments/cluster/real_vs_sim.json

Bounded: calibration passes, one load run (``--requests`` sends within ``--duration-s``),
then the app stops; ``--rounds N`` repeats calibration and load run N times on the same server,
compares each load run with the simulation of its own calibration, and reports the median ratio
(``summary``): the machine's speed drifts between runs by about as much as the 15% target. Calibration (``loadgen.serving_overhead_s``): ``--calibrate`` requests one at
a time, then 4x as many from each of ``--calibrate-clients`` closed-loop clients, give the
serving path's round trip less the engine's latency and its CPU per request. The simulator gets
the replicas' measured profile and the load generator's request mix and arrival times, and runs
four times: the engines alone (the serving layer not modelled), and with the serving layer as
one first-come-first-served stage (``ClusterSim.serving_s``) of (a) its CPU seconds per request
one at a time, or (b) its CPU seconds per request as measured with 1 and each
``--calibrate-clients`` requests in flight, as a function of the requests in the stage
(``ServingStage``), both over the cores its processes leave free (they pipeline across cores),
or (c) its unloaded round trip (no overlap at all).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import runpy
import statistics
import sys
import time
from pathlib import Path



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--router", default="affinity")
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--calibrate", type=int, default=60, help="closed-loop requests measuring the serving path")
    ap.add_argument("--calibrate-clients", type=int, nargs="+", default=[4, 16, 64],
                    help="clients of the closed loops that measure it under load (4 x --calibrate requests each)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="calibration + load run pairs on the same server, each compared with its own "
                         "simulation; the summary takes the median ratio over them")
    ap.add_argument("--overrides", nargs="*", default=["model=pcb_demo"])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {a.rounds}")
    from omegaconf import OmegaConf

    from coserve_jax.api import as_run_config
    from coserve_jax.config import compose
    from coserve_jax.config.serve import parse_serve
    from coserve_jax.serve.launch import replica_config, start
    from coserve_jax.jobs.cluster import cluster_model, simulate

    overrides = [*a.overrides, f"serve.replicas={a.replicas}", f"serve.router={a.router}", "serve.ray.num_cpus=2"]
    t0 = time.time()
    server = start(overrides)
    startup_s = time.time() - t0
    loadgen = runpy.run_path(str(Path(__file__).with_name("loadgen.py")))
    items = loadgen["workload"](a.overrides, a.requests)
    offsets = loadgen["arrival_offsets_s"](len(items), a.rate, "poisson", 1.0, 0)
    measured = []  # per round: (one at a time, under load, the load run)
    try:
        loadgen["serving_overhead_s"](server.url, items, 10)  # every replica's first requests: not measured
        for _ in range(a.rounds):
            serving = loadgen["serving_overhead_s"](server.url, items, a.calibrate)
            loaded = [loadgen["serving_overhead_s"](server.url, items, 4 * a.calibrate, concurrency=c)
                      for c in sorted(set(a.calibrate_clients) - {1})]
            measured.append((serving, loaded, loadgen["run"](server.url, items, offsets, a.duration_s, 60.0,
                                                             1000.0, 256)))
    finally:
        server.shutdown()
    # The simulator: same model, replicas, arm, router and profile; the load generator's types and times.
    cfg = compose(overrides)
    serve_cfg = parse_serve(OmegaConf.to_container(cfg.serve, resolve=True))
    raw = replica_config(cfg, serve_cfg)
    from coserve_jax.api import Engine

    with Engine.from_config(OmegaConf.create(raw), arm=serve_cfg.arm) as eng:
        profile_path = eng.cost.trust.get("path")
    raw["hardware"]["profile"] = profile_path
    raw["backend"]["name"] = "sim"
    run_cfg = as_run_config(OmegaConf.create(raw))[0]
    graph, cost = cluster_model(run_cfg)
    from coserve_jax.api import make_trace

    wl = dataclasses.replace(run_cfg.workload, num_requests=len(items))
    trace = make_trace(dataclasses.replace(run_cfg, workload=wl), graph)
    reqs = [dataclasses.replace(r, arrival_s=float(t)) for r, t in zip(trace, offsets)]
    keys = ("throughput_rps", "latency_ms", "switches", "requests")
    cores = os.cpu_count() or 1

    def cpu_stage_s(cal: dict) -> float | None:
        # the serving path as one server of its CPU seconds per request spread over the cores
        # its processes leave free when idle
        return cal["cpu_s"] / max(0.1, cores - cal["idle_cores"]) if cal["cpu_s"] else None

    def compared(serving: dict, loaded: list[dict], real: dict) -> dict:
        """One round: its calibrations, its load run, and the simulator with each stage."""
        by_load = [(cal["concurrency"], cpu_stage_s(cal)) for cal in (serving, *loaded)]
        stages = {"sim": 0.0,  # the engines alone
                  "sim_serving_cpu": cpu_stage_s(serving),  # calibrated one request at a time
                  # ... and with 1, 4, 16, 64 requests in flight (--calibrate-clients)
                  "sim_serving_cpu_by_load": None if None in dict(by_load).values() else by_load,
                  # ... or of its unloaded round trip (a serial pipeline: no overlap between requests)
                  "sim_serving_round_trip": serving["median_s"]}
        out = {"serving_calibration": serving, "serving_calibration_loaded": loaded, "real": real}
        for name, serving_s in stages.items():
            if serving_s is None:
                continue
            sim = simulate(run_cfg, serve_cfg, graph, cost, reqs, serving_s=serving_s)
            out[name] = {"serving_s": serving_s, **{k: sim[k] for k in keys},
                         "real_over_sim_img_s": real["achieved_rps"] / sim["throughput_rps"]}
        return out

    rounds = [compared(*m) for m in measured]
    out = {"replicas": a.replicas, "router": a.router, "model": run_cfg.model.name, "offered_rps": a.rate,
           "requests": len(items), "startup_s": startup_s, "cores": cores, **rounds[0]}
    if a.rounds > 1:  # each round against its own simulation; the median ratio over them
        out["rounds"] = rounds
        out["summary"] = {name: {"real_over_sim_img_s": [r[name]["real_over_sim_img_s"] for r in rounds],
                                 "median": statistics.median(r[name]["real_over_sim_img_s"] for r in rounds)}
                          for name in rounds[0] if name.startswith("sim") and all(name in r for r in rounds)}
        out["summary"]["real_img_s"] = [r["real"]["achieved_rps"] for r in rounds]
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.write_text(json.dumps(out, indent=2) + "\n")
    sys.exit(0 if all(r["real"]["lost"] == 0 for r in rounds) else 1)


if __name__ == "__main__":
    main()
