"""The model a run serves — a zoo of Orbax checkpoints (trained demo experts, or the synthetic
paper-size zoo's untrained ones) or a paper-scale graph (simulator only) — and the JAX runtime
that serves a zoo's experts."""

from __future__ import annotations

import dataclasses
from typing import Any

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.coe.paper import build_paper_graph
from coserve_jax.coe.synth import SynthConfig, build_or_load_synth_zoo, synth_config
from coserve_jax.coe.zoo import Zoo, ZooConfig, build_or_load_zoo, zoo_config
from coserve_jax.config import ConfigError, RunConfig
from coserve_jax.engine.real import Runtime


@dataclasses.dataclass
class Model:
    graph: CoEGraph
    zoo: Zoo | None = None  # the CoE on disk (demo or synthetic zoo); None for a paper-scale graph

    @property
    def trained(self) -> bool:
        return self.zoo is not None


def load_model(cfg: RunConfig, progress: bool = True) -> Model:
    """The configured CoE: a paper board's graph, or the demo or synthetic zoo (built once, then
    cached)."""
    if cfg.model.kind == "paper":
        return Model(build_paper_graph(cfg.model.board, seed=cfg.model.seed,
                                       tail_types=cfg.model.tail_types))
    if cfg.model.kind == "synth":  # untrained paper-size experts (coe/synth.py)
        zoo = build_or_load_synth_zoo(synth_config_of(cfg), progress=progress)
        return Model(zoo.graph, zoo)
    zoo = build_or_load_zoo(zoo_config_of(cfg), progress=progress)
    return Model(zoo.graph, zoo)


def zoo_config_of(cfg: RunConfig) -> ZooConfig:
    """The demo zoo's ZooConfig: ``model.zoo``'s fields on its preset (errors name the field)."""
    try:
        return zoo_config(cfg.model.zoo.overrides(), seed=cfg.model.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def synth_config_of(cfg: RunConfig) -> SynthConfig:
    """The synthetic zoo's SynthConfig: ``model.zoo``'s fields on its preset (errors name the field)."""
    try:
        return synth_config(cfg.model.zoo.overrides(), seed=cfg.model.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_runtime(cfg: RunConfig, model: Model) -> Runtime:
    """The real backend's runtime for a trained zoo: devices, jitted forwards, checkpoint readers."""
    return Runtime(model.zoo, cfg.backend.compilation_cache_dir, load_processes=cfg.backend.load_processes)


def zoo_summary(model: Model) -> dict[str, Any]:
    """results.json's ``zoo`` block: experts, bytes, component types (and a trained zoo's accuracy)."""
    g = model.graph
    out: dict[str, Any] = {"num_experts": len(g.experts), "total_bytes": g.total_bytes,
                           "num_component_types": len(g.components)}
    if model.trained:
        out["accuracy"] = model.zoo.manifest.get("accuracy")
        out["root"] = str(model.zoo.root)
    return out
