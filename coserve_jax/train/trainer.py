"""optax training of many experts of one architecture, ``jax.vmap``-ed over stacked parameters.

Experts are trained in groups of ``group_size``: one jitted step trains every expert of a group
on its own batch (parameters, optimizer state and BatchNorm statistics stacked on a leading
axis). On an accelerator one group holds all experts. On CPU XLA lowers a vmapped convolution
to a grouped convolution that ran ~5x slower per image than plain convolutions (measured on 2
cores: 48 tiny ResNets at batch 32, 2.4 ms vs 0.43 ms per image-step; ``lax.map`` was worse), so
the CPU default is groups of one: the same vmapped step, compiled once, called per expert.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx

from coserve_jax.models import ArchSpec, build_model, host_init_state


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings shared by the experts of one call."""

    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    group_size: int | None = None  # None: all experts on an accelerator, 1 on CPU

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate}")


def default_group_size(num_experts: int) -> int:
    """All experts in one vmapped step on an accelerator; one at a time on CPU (see module doc)."""
    return num_experts if jax.default_backend() != "cpu" else 1


def train_experts(spec: ArchSpec, datasets: Sequence[tuple[np.ndarray, np.ndarray]],
                  settings: TrainSettings,
                  on_step: Callable[[int], None] | None = None) -> list[nnx.State]:
    """Train one expert of ``spec`` per dataset ``(x[N,H,W,C] float32, y[N] int labels)``.

    Returns each expert's full state (parameters + BatchNorm statistics) as an ``nnx.State`` of
    numpy arrays, ready for ``save_expert`` and for ``nnx.merge`` with ``abstract_state(spec)[0]``.
    ``on_step(n)`` is called after each step with the number of experts it advanced.
    """
    for i, (x, y) in enumerate(datasets):
        if x.shape[1:] != spec.input_shape:
            raise ValueError(f"dataset {i}: images are {x.shape[1:]}, {spec.name} expects {spec.input_shape}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"dataset {i}: {len(x)} images but {len(y)} labels")
    group = settings.group_size or default_group_size(len(datasets))
    tx, step = _make_step(spec, settings.learning_rate, settings.steps)
    rng = np.random.default_rng((settings.seed, 31337))
    out: list[nnx.State] = []
    for g0 in range(0, len(datasets), group):
        part = datasets[g0: g0 + group]
        # Host (numpy) init: XLA would compile a random-number program per kernel shape.
        inits = [host_init_state(spec, settings.seed * 100_003 + g0 + i) for i in range(len(part))]
        state = jax.tree.map(lambda *xs: np.stack(xs), *inits)
        params = state.filter(nnx.Param)
        rest = state.filter(lambda _, v: not isinstance(v, nnx.Param))
        opt = jax.vmap(tx.init)(params)
        for _ in range(settings.steps):
            xb, yb = _sample(part, settings.batch_size, rng)
            params, rest, opt, _loss = step(params, rest, opt, xb, yb)
            if on_step is not None:
                on_step(len(part))
        merged = nnx.merge_state(params, rest)
        host = jax.tree.map(np.asarray, merged)
        for i in range(len(part)):
            out.append(jax.tree.map(lambda a, i=i: a[i], host))
    return out


def _sample(part, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in part:
        idx = rng.integers(0, len(x), size=batch_size)
        xs.append(x[idx])
        ys.append(y[idx])
    return np.stack(xs), np.stack(ys).astype(np.int32)


@functools.lru_cache(maxsize=16)
def _make_step(spec: ArchSpec, learning_rate: float, steps: int):
    """(optimizer, jitted vmapped train step); cached per (arch, schedule) to compile once per process."""
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(spec, nnx.Rngs(0))))[0]
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))

    def loss_fn(params, rest, x, y):
        # Re-wrap the non-trained state inside this trace: NNX refuses to update BatchNorm
        # statistics created at an outer trace level.
        rest = jax.tree.map(lambda a: a, rest)
        model = nnx.merge(graphdef, params, rest)
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, nnx.split(model, nnx.Param, ...)[2]

    def step_one(params, rest, opt, x, y):
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), rest, opt, loss

    return tx, jax.jit(jax.vmap(step_one), donate_argnums=(0, 1, 2))
