"""The cost model a run uses: ``hardware.profile`` (a pinned file), the paper's machines
(``hardware.paper_profile``), or this machine's measured profile of a trained zoo, cached in the
zoo's folder by what it measured and checked against live timings before a real run reuses it
(``trust.py``)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import jax

from coserve_jax.config import ConfigError, RunConfig
from coserve_jax.cost.model import CostModel
from coserve_jax.cost.paper_profiles import paper_profile
from coserve_jax.metrics.results import write_json_atomic
from coserve_jax.profiler.microbench import PATHS_VERSION, measure_profile
from coserve_jax.profiler.trust import check_profile, profile_age
from coserve_jax.runner.model import Model, make_runtime

log = logging.getLogger(__name__)


def load_cost_model(cfg: RunConfig, model: Model, runtime: Any = None, progress: bool = True) -> CostModel:
    """hardware.profile if given; else the paper's constants; else measured here (cached).

    A cached measured profile is checked against live timings before a real-backend run reuses
    it, and measured again (and cached again) when it drifted more than ``profiler.max_drift``
    (``profiler/trust.py``; null: no check). What was found is the returned cost model's
    ``trust`` dict, results.json's ``profile_check``: ``source`` (cached, measured, file, paper),
    ``age_s`` and ``age_from`` (the loaded profile's ``measured_at``, else its file's mtime),
    ``checked``, ``measurements`` (each with its ``drift``), ``max_drift``, ``passes``,
    ``check_s``, ``refreshed`` and, when refreshed, ``after_refresh`` (the new profile's check).
    A ``hardware.profile`` file is never checked: it is pinned on purpose (a fixed profile for
    the simulator, maybe of other hardware), and re-measuring would overwrite the user's file or
    silently ignore it."""
    hw = cfg.hardware
    if hw.profile:
        cost = CostModel.load(hw.profile)
        age, age_from = profile_age(cost.profile, hw.profile)
        cost.trust = {"source": "file", "path": str(hw.profile), "age_s": age, "age_from": age_from,
                      "checked": False, "refreshed": False}
        return cost
    if hw.paper_profile:
        archs = {}
        for e in model.graph.experts.values():
            archs.setdefault(e.arch, {"param_bytes": e.param_bytes, "input_shape": list(e.input_shape)})
        cost = CostModel(paper_profile(dict(hw.paper_profile), archs))
        cost.trust = {"source": "paper", "checked": False, "refreshed": False}
        return cost
    if not model.trained:
        raise ConfigError("hardware.profile: a paper-scale model needs hardware.profile or hardware.paper_profile")
    kinds = sorted(hw.executors)
    p = cfg.profiler
    path = profile_cache_path(cfg, model)
    max_drift = p.max_drift
    rt = runtime

    def measure() -> CostModel:
        prof = measure_profile(rt, kinds, batch_sizes=p.batch_sizes, repeats=p.repeats, load_samples=p.load_samples,
                               drop_cache=hw.drop_page_cache, seed=cfg.seed, progress=progress,
                               executors=dict(hw.executors), loop_requests=p.loop_requests,
                               cpu_devices=hw.cpu_devices, load_threads=cfg.backend.load_threads)
        write_json_atomic(path, prof)
        return CostModel(prof)

    def check(c: CostModel) -> dict[str, Any]:
        return check_profile(rt, c, kinds, drop_cache=hw.drop_page_cache, seed=cfg.seed, max_drift=max_drift)

    trust: dict[str, Any] = {"source": "cached", "path": str(path), "max_drift_allowed": max_drift,
                             "checked": False, "refreshed": False}
    try:
        if path.exists() and not p.refresh:
            cost = CostModel.load(path)
            trust["age_s"], trust["age_from"] = profile_age(cost.profile, path)
            if cfg.backend.name != "real" or max_drift is None:
                cost.trust = trust  # the simulator runs no JAX here; null max_drift: no check
                return cost
            rt = rt or make_runtime(cfg, model)
            trust.update(check(cost), checked=True)
            if trust["max_drift"] <= max_drift:
                log.info("profile %s (%.0f s old): max drift %.2f <= profiler.max_drift=%g (checked in %.1f s)",
                         path.name, trust["age_s"] or 0.0, trust["max_drift"], max_drift, trust["check_s"])
                cost.trust = trust
                return cost
            log.warning("profile %s (%.0f s old) drifted: max drift %.2f > profiler.max_drift=%g; "
                        "measuring this machine's profile again", path.name, trust["age_s"] or 0.0,
                        trust["max_drift"], max_drift)
            cost = measure()
            after = check(cost)
            trust.update(refreshed=True, after_refresh=after)
            (log.info if after["max_drift"] <= max_drift else log.warning)(
                "re-measured profile %s: max drift %.2f (profiler.max_drift=%g)", path.name, after["max_drift"],
                max_drift)
        else:
            rt = rt or make_runtime(cfg, model)
            cost = measure()
            trust.update(source="measured", age_s=0.0, age_from="measured_at")
    finally:
        if runtime is None and rt is not None:
            rt.close()
    cost.trust = trust
    return cost


def profile_cache_path(cfg: RunConfig, model: Model) -> Path:
    """Where this machine's measured profile of a trained zoo is cached (keyed by what it measured)."""
    hw = cfg.hardware
    kinds = sorted(hw.executors)
    p = cfg.profiler
    settings = {"batch_sizes": list(p.batch_sizes), "repeats": p.repeats, "load_samples": p.load_samples}
    key = json.dumps({"devices": [str(d) for d in jax.devices()], "kinds": kinds, "settings": settings,
                      "drop": hw.drop_page_cache, "jax": jax.__version__,
                      "reader_processes": cfg.backend.load_processes > 0, "paths": PATHS_VERSION,
                      "load_threads": cfg.backend.load_threads,
                      "executors": dict(hw.executors)}, sort_keys=True)
    return Path(model.zoo.root) / f"profile-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
