"""The cluster simulation job (``job: cluster``; ``+experiment=cluster_scaling``).

``simulate`` runs one cluster (``serve.replicas`` replicas of ``serve.arm`` behind
``serve.router``) on a trace in the cluster simulator (``engine/cluster.py``). The job sweeps a
grid (models x replica counts x routers) twice: once with arrivals well above capacity
(``throughput_rps``, switches: what the cluster can do), then at one offered load per (model,
replicas), ``cluster.load_fraction`` of the slowest router's saturated img/s, Poisson arrivals,
for the latencies every router reaches under the same load (``p50_ms``, ``p99_ms``). It writes
results.json, scaling.csv/.md and plots into ``cluster.out_dir`` (report/cluster.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.config import CONF_DIR, ConfigError, RunConfig, as_run_config
from coserve_jax.config.serve import ServeConfig, parse_serve
from coserve_jax.cost.model import CostModel
from coserve_jax.cost.paper_profiles import paper_profile
from coserve_jax.engine.build import build_engine
from coserve_jax.engine.cluster import ClusterSim
from coserve_jax.engine.sim import SimBackend
from coserve_jax.metrics.results import git_sha, write_json_atomic
from coserve_jax.report.cluster import write_scaling_report
from coserve_jax.runner.model import load_model
from coserve_jax.types import Request
from coserve_jax.workload.trace import make_trace

log = logging.getLogger("coserve_jax")


def cluster_model(cfg: RunConfig) -> tuple[CoEGraph, Any]:
    """The CoE graph and the per-replica cost model: a paper-scale graph with the hardware's
    paper profile, or a zoo's graph (demo or synthetic) with a measured ``hardware.profile`` file."""
    hw = cfg.hardware
    graph = load_model(cfg, progress=False).graph
    if hw.profile:
        return graph, CostModel.load(hw.profile)
    if hw.paper_profile:
        archs: dict[str, dict[str, Any]] = {}
        for e in graph.experts.values():
            archs.setdefault(e.arch, {"param_bytes": e.param_bytes, "input_shape": list(e.input_shape)})
        return graph, CostModel(paper_profile(dict(hw.paper_profile), archs))
    raise ConfigError("hardware.profile: the cluster simulator needs a profile file (a measured "
                      "profile.json) or hardware.paper_profile")


def make_router(serve: ServeConfig) -> Any:
    """A fresh router object of serve.router (its policy's _target_ and arguments)."""
    return instantiate(dict(serve.router.policy))


def simulate(cfg: RunConfig, serve: ServeConfig, graph: CoEGraph, cost: Any, requests: Sequence[Request],
             kill_at_s: Mapping[int, float] | None = None,
             serving_s: float | Sequence[tuple[float, float]] = 0.0) -> dict[str, Any]:
    """One simulated cluster on one trace: its summary (engine/cluster.py); ``serving_s``: the
    serving layer's seconds per request, or (requests in it, seconds) points (``ClusterSim``,
    ``ServingStage``; 0: not modelled)."""
    arm = next((a for a in cfg.arms if a.name == serve.arm), None)
    if arm is None:
        raise ConfigError(f"serve.arm: {serve.arm!r} must be listed in arms={[a.name for a in cfg.arms]}")
    engines = []
    for _ in range(serve.replicas):
        backend = SimBackend.for_cost(cost, cfg.backend.load_threads, loop_shares_host=cfg.backend.loop_shares_host)
        engines.append(build_engine(cfg, arm, graph, cost, backend, "trace"))
    router = make_router(serve)
    placement = getattr(router, "initial_experts", None)
    out = ClusterSim(graph, router, engines, placement, serving_s=serving_s).run(requests, kill_at_s)
    out["router_name"], out["arm"] = serve.router.name, arm.name
    return out


# ---- the scaling grid ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    replicas: tuple[int, ...]
    routers: tuple[str, ...]
    requests_per_replica: int
    min_requests: int
    rate_per_replica_rps: float  # saturation runs: offered img/s per replica (well above capacity)
    load_fraction: float  # latency runs: this share of the slowest router's saturated img/s
    jobs: int
    out_dir: str | None

    def num_requests(self, replicas: int) -> int:
        """Trace length of a cell with this many replicas."""
        return max(self.min_requests, self.requests_per_replica * replicas)

    def saturated_interval_ms(self, replicas: int) -> float:
        """Mean time between arrivals of a saturation run with this many replicas."""
        return 1e3 / (self.rate_per_replica_rps * replicas)


def parse_grid(raw: Mapping[str, Any] | None) -> Grid:
    if not raw:
        raise ConfigError("cluster: the cluster job needs a `cluster` section (+experiment=cluster_scaling)")
    g = dict(raw)
    try:
        grid = Grid(tuple(g["models"]), tuple(int(n) for n in g["replicas"]), tuple(g["routers"]),
                    int(g["requests_per_replica"]), int(g["min_requests"]), float(g["rate_per_replica_rps"]),
                    float(g["load_fraction"]), int(g.get("jobs", 1)), g.get("out_dir"))
    except KeyError as e:
        raise ConfigError(f"cluster.{e.args[0]}: required") from None
    if not grid.replicas or min(grid.replicas) < 1:
        raise ConfigError(f"cluster.replicas: whole numbers >= 1, got {list(grid.replicas)}")
    if not 0 < grid.load_fraction < 1:
        raise ConfigError(f"cluster.load_fraction: must be in (0, 1), got {grid.load_fraction}")
    return grid


def model_raw(cfg: DictConfig, model: str) -> dict[str, Any]:
    """The composed config as plain data with ``conf/model/<model>.yaml`` as its model (what a
    cell rebuilds its RunConfig from). Plain data: the composed tree is typed, and a model node
    cannot be swapped in it."""
    path = Path(CONF_DIR) / "model" / f"{model}.yaml"
    if not path.exists():
        raise ConfigError(f"cluster.models: no model config {path}")
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    raw["model"] = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)  # ${model.name} is this model's


def run_cell(raw: dict[str, Any], router: str, replicas: int, num_requests: int, interval_ms: float,
             arrival: str) -> dict[str, Any]:
    """One grid cell (runs in a worker process): rebuild the model, run, summarise."""
    cfg = as_run_config(OmegaConf.create(raw))[0]
    serve = dataclasses.replace(parse_serve(raw["serve"]).with_router(router), replicas=replicas)
    wl = dataclasses.replace(cfg.workload, num_requests=num_requests, interval_ms=interval_ms, arrival=arrival)
    cfg = dataclasses.replace(cfg, workload=wl)
    graph, cost = cluster_model(cfg)
    out = simulate(cfg, serve, graph, cost, make_trace(cfg, graph))
    out.update(model=cfg.model.name, offered_rps=1e3 / interval_ms if interval_ms else None,
               num_requests=num_requests)
    return out


def run_scaling_job(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    grid = parse_grid(OmegaConf.to_container(cfg.get("cluster"), resolve=True) if cfg.get("cluster") else None)
    parse_serve(OmegaConf.to_container(cfg.serve, resolve=True))  # fail fast on a bad serve group
    out = Path(grid.out_dir or out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raws = {m: model_raw(cfg, m) for m in grid.models}
    for raw in raws.values():
        as_run_config(OmegaConf.create(raw))  # validate every model's config before any cell runs

    cells = [(m, n, r) for m in grid.models for n in grid.replicas for r in grid.routers]
    sat: dict[tuple, dict[str, Any]] = {}
    load: dict[tuple, dict[str, Any]] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, grid.jobs)) as pool:
        futs = {pool.submit(run_cell, raws[m], r, n, grid.num_requests(n), grid.saturated_interval_ms(n),
                            "poisson"): (m, n, r) for m, n, r in cells}
        for f in concurrent.futures.as_completed(futs):
            sat[futs[f]] = f.result()
            s = sat[futs[f]]
            log.info("saturated %s n=%d %s: %.1f img/s, %d switches (%.1f s)", *futs[f], s["throughput_rps"],
                     s["switches"]["count"], s["engine_s"])
        offered = {(m, n): grid.load_fraction * min(sat[(m, n, r)]["throughput_rps"] for r in grid.routers)
                   for m in grid.models for n in grid.replicas}
        futs = {pool.submit(run_cell, raws[m], r, n, grid.num_requests(n), 1e3 / offered[(m, n)], "poisson"): (m, n, r)
                for m, n, r in cells}
        for f in concurrent.futures.as_completed(futs):
            load[futs[f]] = f.result()
            s = load[futs[f]]
            log.info("at load %s n=%d %s: p99 %.0f ms (%.1f s)", *futs[f], s["latency_ms"]["p99"] or -1,
                     s["engine_s"])
    results = {"experiment": cfg.get("experiment"), "git_sha": git_sha(), "grid": dataclasses.asdict(grid),
               "cpu_count": os.cpu_count(),
               "cells": [{"model": m, "replicas": n, "router": r, "saturated": sat[(m, n, r)],
                          "at_load": load[(m, n, r)]} for m, n, r in cells]}
    write_json_atomic(out / "results.json", results)
    write_scaling_report(results, out)
    return results
