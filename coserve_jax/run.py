"""Hydra entry point: ``python -m coserve_jax.run [+experiment=NAME] [overrides] [-m]``.

Builds (or reuses) the model, runs the experiment's job and writes results.json in the run dir.
No logic lives here.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from coserve_jax.config import ConfigError, NoFeasibleArmError, register_schema
from coserve_jax.jobs import run_job
from coserve_jax.profiler.objective import infeasible, objective

log = logging.getLogger("coserve_jax")

# Hydra composes conf/ onto the typed schema (coserve_jax/config/schema.py): a wrong type or an
# unknown key stops the run while it composes, naming the field. Every job then starts by
# checking the rest (as_run_config), before any work.
register_schema()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns search.objective_arm's img/s when set (what a sweeper such as Optuna maximises)."""
    # Orbax logs every restore at INFO through absl; keep the run's log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    out_dir = cfg.get("output_dir") or HydraConfig.get().runtime.output_dir
    try:
        results = run_job(cfg, out_dir)
    except NoFeasibleArmError as e:
        score = infeasible(cfg, e)
        if score is not None:
            return score
        log.error("config error: %s", e)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One sweep point where no arm fits (its results.json says why) must not stop the
            # sweep's other points: exiting here would end the whole multirun.
            log.error("this sweep point ran no arm (%s); the sweep goes on", out_dir)
            return None
        sys.exit(2)
    except ConfigError as e:
        score = infeasible(cfg, e)
        if score is not None:
            return score
        log.error("config error: %s", e)
        sys.exit(2)
    return objective(cfg, results)


if __name__ == "__main__":
    main()
