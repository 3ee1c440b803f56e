"""Synthetic CoE graphs and cost models for tests, examples and the simulator (no JAX).

Not a model zoo: a graph of expert *metadata* with a Zipf-like component mix, and a Profile with
round figures, so policies and the engine loop can be exercised in milliseconds.
"""

from __future__ import annotations

import numpy as np

from coserve_jax.coe.graph import CoEGraph, ComponentType
from coserve_jax.cost.model import SCHEMA, CostModel
from coserve_jax.types import ExpertInfo, Role


def synthetic_graph(num_types: int = 12, num_detectors: int = 3, detect_share: float = 0.5,
                    zipf: float = 1.0, cls_bytes: int = 4_000_000, det_bytes: int = 8_000_000,
                    p_damaged: float = 0.05, seed: int = 0) -> CoEGraph:
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, num_types + 1) ** zipf
    w = rng.permutation(w / w.sum())
    experts = [ExpertInfo(f"cls_{i:03d}", Role.PRELIMINARY, "cls", cls_bytes, (32, 32, 3))
               for i in range(num_types)]
    experts += [ExpertInfo(f"det_{j}", Role.SUBSEQUENT, "det", det_bytes, (32, 32, 3))
                for j in range(num_detectors)]
    comps = []
    for i in range(num_types):
        det = f"det_{i % num_detectors}" if num_detectors and i < int(round(detect_share * num_types)) else None
        comps.append(ComponentType(f"type_{i:03d}", f"cls_{i:03d}", det, float(w[i]), p_damaged,
                                   0.02 if det else 0.0, 0.02 if det else 0.0))
    return CoEGraph(experts, comps)


def synthetic_profile(kinds: tuple[str, ...] = ("cpu",), k_s: float = 0.002, b_s: float = 0.004,
                      max_batch: int = 16, load_a_s: float = 0.02, load_b_s_per_byte: float = 2e-9,
                      act_bytes_per_image: int = 100_000, archs: tuple[str, ...] = ("cls", "det")) -> dict:
    """Round figures for ``archs`` (the first a classifier, the others 1.5x slower detectors)."""
    arch = {"k_s": k_s, "b_s": b_s, "max_batch": max_batch, "compile_s": 0.0,
            "activation_bytes": {"1": act_bytes_per_image, str(max_batch): act_bytes_per_image * max_batch}}
    fit = {"a_s": load_a_s, "b_s_per_byte": load_b_s_per_byte}
    per_arch = {a: dict(arch, k_s=k_s * (1.0 if i == 0 else 1.5)) for i, a in enumerate(archs)}
    return {
        "schema": SCHEMA,
        "device": {"name": "synthetic"},
        "kinds": {k: {"archs": {a: dict(v) for a, v in per_arch.items()},
                      "loads": {"disk": dict(fit), "host": {"a_s": load_a_s / 4, "b_s_per_byte": load_b_s_per_byte / 4}}}
                  for k in kinds},
        "host_cache_loads": {"disk": dict(fit)},
    }


def synthetic_cost(**kw) -> CostModel:
    return CostModel(synthetic_profile(**kw))
