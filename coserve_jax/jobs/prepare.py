"""What a job that runs arms needs once: JAX's devices, the model, its JAX runtime (real backend)
and the cost model of the profile the run uses (profiler/cache.py)."""

from __future__ import annotations

from coserve_jax.config import RunConfig
from coserve_jax.profiler.cache import load_cost_model
from coserve_jax.runner.arms import ArmRunner
from coserve_jax.runner.devices import configure_jax_devices
from coserve_jax.runner.model import load_model, make_runtime


def prepare_runner(cfg: RunConfig, progress: bool = True) -> ArmRunner:
    """An ArmRunner for ``cfg``, with everything it needs loaded (or built, or measured) once."""
    real = cfg.backend.name == "real"
    if real:
        configure_jax_devices(cfg.hardware.cpu_devices)
    model = load_model(cfg, progress)
    runtime = make_runtime(cfg, model) if real else None
    return ArmRunner(cfg, model, load_cost_model(cfg, model, runtime, progress), runtime)
