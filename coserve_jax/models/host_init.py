"""Fast host-side (numpy) initialisation of a model state from its abstract shapes.

Flax initialisers run JAX's threefry RNG, and XLA compiles one program per kernel shape:
~0.5-0.8 s each on 2 CPU cores, so a tiny YOLO took ~12 s to build eagerly (and a paper-scale
ResNet-101 far longer). Drawing the same distributions with numpy takes milliseconds. Used to
start training and for untrained (paper-scale) experts; not bit-identical to Flax's init.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from coserve_jax.models.build import abstract_state
from coserve_jax.models.spec import ArchSpec


def host_init_state(spec: ArchSpec, seed: int) -> nnx.State:
    """A fresh state of ``spec`` as numpy arrays, drawn like Flax's defaults: LeCun truncated-normal
    kernels (fan-in), zero biases and BatchNorm means, unit BatchNorm scales and variances.
    Deterministic in ``seed``."""
    _, abstract = abstract_state(spec)
    rng = np.random.default_rng((seed, 8191))

    def draw(path, leaf) -> np.ndarray:
        name = str(getattr(path[-1], "key", path[-1]))
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return (_truncated_normal(rng, shape) * np.sqrt(1.0 / fan_in)).astype(dtype)
        if name in ("scale", "var"):
            return np.ones(shape, dtype)
        if name in ("bias", "mean"):
            return np.zeros(shape, dtype)
        raise ValueError(f"host_init_state({spec.name}): no rule for leaf {jax.tree_util.keystr(path)}")

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(abstract))
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, pure)
    return state


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance normal truncated to 2 standard deviations (as ``jax.nn.initializers``)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z / 0.87962566103423978  # std of a unit normal truncated to [-2, 2]
