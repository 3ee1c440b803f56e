"""Shared fixtures: a tiny trained zoo built once per session, composed configs, a real-engine runner.

XLA reads its host device count when JAX initialises, so the flag is set here, at import time,
before any test module imports jax: four CPU devices, which tests of several devices spread
executors over with ``hardware.cpu_devices`` (the default hardware uses one).
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=4"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import dataclasses  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

# The real-engine zoo: model=pcb_tiny with 24 component types (24 classifiers + 2 detectors).
# The default tiny zoo has 8 experts whose batch-1 activations (37 KB) outweigh an expert (21 KB):
# at hardware.device_budget=25% each of two executors would get 12.5% of 8 experts, less than one
# expert plus one batch. 26 experts make the paper's 25% budget feasible for every arm and give
# the no-retrace check many experts per architecture. Builds in ~10 s.
TINY_TYPES = 24


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def script():
    """``script(name)``: ``scripts/<name>.py`` as a module (scripts/ is not a package; a script may
    import its neighbours, so the folder is importable while it loads)."""
    import importlib.util
    import sys

    def load(name: str) -> Any:
        sys.path.insert(0, str(SCRIPTS))
        try:
            spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(SCRIPTS))
        return module

    return load


@dataclasses.dataclass
class RealSetup:
    """What the real-engine tests share: config overrides, the model, its cost model and runtime."""

    cache_dir: Path
    overrides: list[str]
    model: Any  # coserve_jax.runner.model.Model
    cost: Any  # CostModel (measured once per zoo, cached in the zoo dir)
    runtime: Any  # engine.real.Runtime

    def cfg(self, *extra: str):
        """A typed RunConfig of the tiny zoo plus ``extra`` Hydra overrides."""
        from coserve_jax.api import as_run_config

        return as_run_config([*self.overrides, *extra])[0]

    def runner(self, *extra: str, model: Any = None, runtime: Any = None):
        """An ArmRunner over the shared model/cost/runtime (or a given model and runtime)."""
        from coserve_jax.api import ArmRunner

        return ArmRunner(self.cfg(*extra), model or self.model, self.cost, runtime or self.runtime)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("coserve_cache")


@pytest.fixture(scope="session")
def tiny_overrides(tiny_cache) -> list[str]:
    """Hydra overrides selecting the session's tiny zoo (its own zoo and compilation caches)."""
    # profiler.max_drift=null: runs reuse the session's cached profile unchecked, so no busy moment
    # re-measures it mid-session (tests/test_profile_trust.py tests the check).
    return ["model=pcb_tiny", f"+model.zoo.num_types={TINY_TYPES}", f"+model.zoo.cache_dir={tiny_cache}",
            f"backend.compilation_cache_dir={tiny_cache / 'jax_cache'}", "backend.stall_timeout_s=20",
            "profiler.max_drift=null"]


@pytest.fixture(scope="session")
def real(tiny_overrides, tiny_cache) -> RealSetup:
    """The tiny zoo built once, its measured cost model and one shared Runtime."""
    from coserve_jax.api import as_run_config, load_cost_model, load_model, make_runtime

    logging.getLogger("absl").setLevel(logging.WARNING)
    cfg = as_run_config(tiny_overrides)[0]
    model = load_model(cfg, progress=False)
    runtime = make_runtime(cfg, model)
    cost = load_cost_model(cfg, model, runtime, progress=False)
    yield RealSetup(tiny_cache, list(tiny_overrides), model, cost, runtime)
    runtime.close()


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory) -> Path:
    """The session's cache of synthetic zoos (tests/test_synth.py, tests/test_gpu.py)."""
    return tmp_path_factory.mktemp("synth_cache")


@pytest.fixture(scope="session")
def tiny_zoo(synth_cache):
    """model=pcb_synth_tiny, drawn once per session (~1 s, plus tracing its three architectures)."""
    from coserve_jax.coe.synth import SynthConfig, build_or_load_synth_zoo

    return build_or_load_synth_zoo(SynthConfig.tiny(cache_dir=str(synth_cache)), progress=False)


@pytest.fixture
def transfer_guard():
    """Implicit host<->device transfers raise (explicit device_put / device_get pass)."""
    import jax

    before = jax.config.jax_transfer_guard
    jax.config.update("jax_transfer_guard", "disallow")
    try:
        yield
    finally:
        jax.config.update("jax_transfer_guard", before or "allow")
