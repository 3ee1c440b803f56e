"""Hydra entry point: ``python -m coserve_jax.run [+experiment=NAME] [overrides] [-m]``.

Builds (or reuses) the model, runs the experiment's job and writes results.json in the run dir.
No logic lives here.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from coserve_jax.config import ConfigError

log = logging.getLogger("coserve_jax")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns search.objective_arm's img/s when set (what a sweeper such as Optuna maximises)."""
    from coserve_jax.jobs import run_job
    from coserve_jax.profiler.objective import infeasible, objective

    # Orbax logs every restore at INFO through absl; keep the run's log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    out_dir = cfg.get("output_dir") or HydraConfig.get().runtime.output_dir
    try:
        results = run_job(cfg, out_dir)
    except ConfigError as e:
        score = infeasible(cfg, e)
        if score is not None:
            return score
        log.error("config error: %s", e)
        sys.exit(2)
    return objective(cfg, results)


if __name__ == "__main__":
    main()
