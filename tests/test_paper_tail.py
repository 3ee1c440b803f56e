"""The concentrated usage tail of the paper-scale boards (coe/paper.py, ``model.tail_types``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from coserve_jax.coe.paper import (
    NUM_DETECTORS,
    NUM_TYPES,
    TOP_K,
    TOP_K_SHARE,
    build_paper_graph,
    derived_tail_types,
    tasks_per_image_by_arch,
)
from coserve_jax.config import ConfigError, WorkloadConfig, compose, parse_config
from coserve_jax.workload.trace import generate_trace

CONF = Path(__file__).resolve().parents[1] / "conf"
N_DET = sum(NUM_DETECTORS.values())


def _distinct_on_trace(board: str, tail_types: int | None, n: int = 2500, seed: int = 0) -> int:
    g = build_paper_graph(board, 0, tail_types)
    trace = generate_trace(g, WorkloadConfig(num_requests=n, seed=seed))
    return len({e for r in trace for e in r.route})


@pytest.mark.parametrize("board", ["a", "b"])
@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("tail_types", [None, 20, 41, 69, 150, 300])
def test_top35_share_stays_at_fig11_with_a_tail(board, seed, tail_types):
    cdf = build_paper_graph(board, seed, tail_types).usage_cdf()
    assert cdf[TOP_K - 1] == pytest.approx(TOP_K_SHARE, abs=1e-6)


@pytest.mark.parametrize("board", ["a", "b"])
def test_mix_falls_on_35_plus_k_types_and_the_rest_get_zero(board):
    k = 58
    g = build_paper_graph(board, 0, k)
    assert len(g.components) == NUM_TYPES[board]  # every type and expert stays in the CoE
    in_mix = [c for c in g.components.values() if c.mix > 0]
    assert len(in_mix) == TOP_K + k
    usage = g.usage_probs()
    assert sum(u > 0 for u in usage.values()) == TOP_K + k + N_DET
    trace = generate_trace(g, WorkloadConfig(num_requests=3500, seed=3))
    assert {r.component_type for r in trace} <= {c.name for c in in_mix}


@pytest.mark.parametrize("board", ["a", "b"])
def test_a_tail_over_all_types_is_the_uniform_tail(board):
    full = build_paper_graph(board, 0, NUM_TYPES[board] - TOP_K)
    none = build_paper_graph(board, 0, None)
    assert [c.mix for c in full.components.values()] == [c.mix for c in none.components.values()]


@pytest.mark.parametrize("board", ["a", "b"])
def test_distinct_experts_on_a_task_fall_with_k(board):
    touched = [_distinct_on_trace(board, k) for k in (None, 200, 100, 69, 30)]
    assert touched == sorted(touched, reverse=True) and len(set(touched)) == len(touched)
    assert touched[0] > 300  # the uniform tail: nearly every expert (the switch-count puzzle)
    # With K <= ~150 every type in the mix is drawn in a 2,500-image task: D = 35 + K + 12.
    assert touched[2:] == [TOP_K + k + N_DET for k in (100, 69, 30)]


def test_deterministic_per_seed_with_a_tail():
    def snapshot(board, seed, k):
        g = build_paper_graph(board, seed, k)
        return [(c.name, c.detector, c.mix, c.p_damaged) for c in g.components.values()]

    assert snapshot("a", 3, 69) == snapshot("a", 3, 69)
    assert snapshot("b", 0, 58) == snapshot("b", 0, 58)
    assert snapshot("a", 3, 69) != snapshot("a", 4, 69)
    in_mix = lambda seed: {c.name for c in build_paper_graph("a", seed, 69).components.values()  # noqa: E731
                           if c.mix > 0}
    assert in_mix(3) == in_mix(3) and in_mix(3) != in_mix(4)  # a seeded subset of the types
    assert _distinct_on_trace("a", 69, seed=5) == _distinct_on_trace("a", 69, seed=5)


def test_derived_k_and_model_yamls():
    # Module docstring: D <= (Fig. 18 GPU N + 17 CPU-pool experts) + Fig. 14 NUMA switches of
    # the board's smaller task; D = 35 head + 12 detectors + K.
    assert derived_tail_types("a") == 35 + 17 + 64 - 35 - 12 == 69
    assert derived_tail_types("b") == 34 + 17 + 54 - 35 - 12 == 58
    assert (derived_tail_types("a", with_cpu_pool=False), derived_tail_types("b", False)) == (52, 41)
    for board in "ab":
        cfg = OmegaConf.load(CONF / "model" / f"pcb_paper_{board}.yaml")
        assert cfg.tail_types == derived_tail_types(board)


@pytest.mark.parametrize("board", ["a", "b"])
def test_tasks_per_image_with_the_tail_match_the_profiles(board):
    # The hardware profiles' tasks_per_request (0.17 / 0.12 detection tasks per image) must
    # still describe the concentrated mix.
    mixes = [tasks_per_image_by_arch(build_paper_graph(board, s, derived_tail_types(board)))
             for s in range(10)]
    hw = OmegaConf.load(CONF / "hardware" / "numa_3080ti.yaml").paper_profile.tasks_per_request
    for arch, t in hw.items():
        assert float(t) == pytest.approx(np.mean([m[arch] for m in mixes]), abs=0.03)


# ---- config --------------------------------------------------------------------------------
def _parse(*overrides: str):
    return parse_config(compose(["backend=sim", "hardware=numa_3080ti", *overrides]))


def test_config_default_and_the_uniform_override():
    assert _parse("model=pcb_paper_a").model.tail_types == 69
    assert _parse("model=pcb_paper_b").model.tail_types == 58
    assert _parse("model=pcb_paper_a", "model.tail_types=null").model.tail_types is None
    assert _parse("model=pcb_paper_b", "model.tail_types=100").model.tail_types == 100


@pytest.mark.parametrize("value,match", [
    ("0", r"model\.tail_types: must be in \[1, 317\]"),
    ("318", r"model\.tail_types: must be in \[1, 317\]"),
    ("many", r"model\.tail_types: must be a whole number"),
    ("2.5", r"model\.tail_types: must be a whole number"),
    ("true", r"model\.tail_types: must be a whole number"),
    ("5", r"model\.tail_types: 5 is too few"),
])
def test_config_rejects_bad_tail_types(value, match):
    with pytest.raises(ConfigError, match=match):
        _parse("model=pcb_paper_a", f"model.tail_types={value}")


def test_tail_types_is_only_for_paper_models():
    with pytest.raises(ConfigError, match=r"model\.tail_types: only paper models"):
        parse_config(compose(["backend=sim", "+model.tail_types=50"]))
