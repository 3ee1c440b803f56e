"""Fast host-side (numpy) initialisation of a model state from its abstract shapes.

Flax initialisers run JAX's threefry RNG, and XLA compiles one program per kernel shape:
~0.5-0.8 s each on 2 CPU cores, so a tiny YOLO took ~12 s to build eagerly (and a paper-scale
ResNet-101 far longer). Drawing the same distributions with numpy takes milliseconds. Used to
start training and for untrained (paper-scale) experts; not bit-identical to Flax's init.
``host_init_into`` writes straight into flat arrays (the synthetic paper-size zoo's checkpoints).
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
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        rule = _rule(spec, path)
        if rule == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return (_truncated_normal(rng, shape) * np.sqrt(1.0 / fan_in)).astype(dtype)
        return (np.ones if rule == "ones" else np.zeros)(shape, dtype)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(abstract))
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, pure)
    return state


def _rule(spec: ArchSpec, path: tuple) -> str:
    """How a leaf starts: "kernel" (random, scaled by fan-in), "ones" (BatchNorm scales and
    variances) or "zeros" (biases, BatchNorm means)."""
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
        return "kernel"
    if name in ("scale", "var"):
        return "ones"
    if name in ("bias", "mean"):
        return "zeros"
    raise ValueError(f"host init of {spec.name}: no rule for leaf {jax.tree_util.keystr(path)}")


def host_init_into(spec: ArchSpec, seed: int, views: list[np.ndarray]) -> None:
    """Fill ``views`` (one flat array per leaf, in the order of ``jax.tree.leaves`` of the pure
    state, e.g. slices of a checkpoint's packed vectors) with a fresh state of ``spec``, in place:
    LeCun-uniform kernels (uniform in +-sqrt(3 / fan_in): the variance of LeCun-normal, drawn
    ~4x faster, which matters for paper-size zoos: ~44M weights per ResNet101), zero biases and
    BatchNorm means, unit BatchNorm scales and variances. Deterministic in ``seed``."""
    _, abstract = abstract_state(spec)
    paths = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(abstract))[0]
    if len(paths) != len(views):
        raise ValueError(f"host_init_into({spec.name}): {len(views)} views for {len(paths)} leaves")
    rng = np.random.default_rng((seed, 16381))
    for (path, leaf), out in zip(paths, views):
        if out.size != int(np.prod(leaf.shape)):
            raise ValueError(f"host_init_into({spec.name}): view of {out.size} for leaf {jax.tree_util.keystr(path)} "
                             f"of shape {tuple(leaf.shape)}")
        rule = _rule(spec, path)
        if rule == "kernel":
            limit = np.sqrt(3.0 / int(np.prod(leaf.shape[:-1])))
            rng.random(out=out, dtype=out.dtype)  # in place, [0, 1); the GIL is released meanwhile
            out *= 2 * limit
            out -= limit
        else:
            out.fill(1 if rule == "ones" else 0)


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance normal truncated to 2 standard deviations (as ``jax.nn.initializers``)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z / 0.87962566103423978  # std of a unit normal truncated to [-2, 2]
