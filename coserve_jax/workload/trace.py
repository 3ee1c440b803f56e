"""Seeded request traces: which component image arrives when, with its ground truth.

Boards are scanned component by component; with many boards and a scan order that interleaves
types, each image's type is an independent draw from the component mix (the layouts' counts).
Each request carries its ground-truth verdict and route (for trace-driven routing and accuracy)
and an ``image_seed`` from which the real backend renders the image deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.config import ConfigError, RunConfig, WorkloadConfig
from coserve_jax.metrics.results import read_json, write_json_atomic
from coserve_jax.types import Request

TRACE_SCHEMA = "coserve_jax.trace/1"


def arrival_times_s(n: int, wl: WorkloadConfig, rng: np.random.Generator) -> np.ndarray:
    gap_s = wl.interval_ms / 1e3
    if wl.arrival == "fixed":
        return np.arange(n) * gap_s
    if wl.arrival == "poisson":
        return np.concatenate([[0.0], np.cumsum(rng.exponential(gap_s, n - 1))]) if n else np.zeros(0)
    # bursty: burst_size requests at once, bursts spaced so the mean gap is interval_ms.
    return (np.arange(n) // wl.burst_size) * wl.burst_size * gap_s


def generate_trace(graph: CoEGraph, wl: WorkloadConfig) -> list[Request]:
    """Draw ``wl.num_requests`` requests from the graph's component mix (seeded by wl.seed)."""
    rng = np.random.default_rng([wl.seed, 0x7ACE])
    comps = list(graph.components.values())
    mix = np.array([c.mix for c in comps])
    types = rng.choice(len(comps), size=wl.num_requests, p=mix / mix.sum())
    u = rng.random(wl.num_requests)
    times = arrival_times_s(wl.num_requests, wl, rng)
    seeds = rng.integers(0, 2**31 - 1, size=wl.num_requests)
    out = []
    for i in range(wl.num_requests):
        c = comps[types[i]]
        if u[i] < c.p_damaged:
            truth = "damaged"
        elif c.detector is not None and u[i] < c.p_damaged + c.p_misaligned:
            truth = "misaligned"
        elif c.detector is not None and u[i] < c.p_damaged + c.p_misaligned + c.p_reversed:
            truth = "reversed"
        else:
            truth = "ok"
        out.append(Request(i, c.name, float(times[i]), graph.truth_route(c.name, truth), truth, int(seeds[i])))
    return out


def save_trace(path: str | Path, requests: Sequence[Request], meta: dict | None = None) -> None:
    rows = [[r.request_id, r.component_type, r.arrival_s, r.truth, r.image_seed, list(r.route)]
            for r in requests]
    write_json_atomic(path, {"schema": TRACE_SCHEMA, "meta": meta or {}, "requests": rows})


def load_trace(path: str | Path, graph: CoEGraph) -> list[Request]:
    """Read a saved trace; every component type must be known to the graph."""
    data = read_json(path, ConfigError, "workload.trace_path")
    if data.get("schema") != TRACE_SCHEMA:
        raise ConfigError(f"workload.trace_path: {path} is not a {TRACE_SCHEMA} trace")
    out = []
    for row in data["requests"]:
        rid, ctype, t, truth, seed, route = row
        graph.component(ctype)  # raises a clear error on an unknown type
        out.append(Request(int(rid), ctype, float(t), tuple(route), truth, seed))
    return out


def make_trace(cfg: RunConfig, graph: CoEGraph) -> list[Request]:
    """The run's requests: ``workload.trace_path`` replayed, else generated from the workload."""
    if cfg.workload.trace_path:
        return load_trace(cfg.workload.trace_path, graph)
    return generate_trace(graph, cfg.workload)
