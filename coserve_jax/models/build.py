"""Building models from specs, abstract (allocation-free) states, sizes, eval mode."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from coserve_jax.models.resnet import ResNet
from coserve_jax.models.spec import ArchSpec
from coserve_jax.models.yolo import Yolo


def build_model(spec: ArchSpec, rngs: nnx.Rngs) -> nnx.Module:
    """A fresh model of ``spec``: ``model(x[B,H,W,C] float32) -> logits float32[B, num_outputs]``.

    The model starts in training mode (BatchNorm uses batch statistics); call ``eval_mode``
    before serving.
    """
    if spec.family == "resnet":
        return ResNet(spec, rngs)
    if spec.family == "yolo":
        return Yolo(spec, rngs)
    raise ValueError(f"ArchSpec {spec.name!r}: unknown family {spec.family!r}")


def eval_mode(model: nnx.Module) -> nnx.Module:
    """Switch BatchNorm to running averages (deterministic inference) in place; returns model."""
    model.eval()
    return model


@functools.lru_cache(maxsize=64)
def abstract_state(spec: ArchSpec) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStructs) of an eval-mode model, without allocating weights.

    The graphdef is in eval mode, so ``nnx.merge(graphdef, state)(x)`` is deterministic.
    """
    def make() -> nnx.Module:
        return eval_mode(build_model(spec, nnx.Rngs(0)))

    abstract = nnx.eval_shape(make)
    return nnx.split(abstract)


def param_count(spec: ArchSpec) -> int:
    """Trainable parameters (``nnx.Param``; what papers quote, BatchNorm statistics excluded)."""
    _, state = abstract_state(spec)
    params = state.filter(nnx.Param)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def param_bytes(spec: ArchSpec) -> int:
    """Bytes of the full inference state (parameters + BatchNorm statistics) as stored and loaded."""
    _, state = abstract_state(spec)
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)))
