"""What a serve run returns to a Hydra sweeper (``search.objective_arm``; ``+experiment=search_sim``).

A sweeper such as Optuna's calls the task function once per trial and needs a float back: the
named arm's ``throughput_rps`` (maximised). A configuration that cannot run at all (a budget
too small for its executors: a BudgetError at start-up) scores ``INFEASIBLE_RPS``, as the
planner records infeasible candidates, so one bad corner of the space does not end the sweep.
Any other ConfigError (a typo, a bad value) still stops the run, and with it the sweep.
"""

from __future__ import annotations

import logging
from typing import Any

from coserve_jax.config import BudgetError, ConfigError

log = logging.getLogger(__name__)

INFEASIBLE_RPS = 0.0


def objective_arm(cfg: Any) -> str | None:
    """The arm a sweep optimises, or None when the run is not a search trial."""
    search = cfg.get("search") if hasattr(cfg, "get") else None
    return None if search is None else search.get("objective_arm")


def objective(cfg: Any, results: dict[str, Any] | None) -> float | None:
    """The objective arm's img/s from a serve job's results (None when the run is no search)."""
    arm = objective_arm(cfg)
    if arm is None or results is None:
        return None
    result = results["arms"][arm]
    if "infeasible" in result:  # the run reported the arm infeasible and ran the others
        log.warning("search trial infeasible, scored %.1f img/s: %s", INFEASIBLE_RPS, result["infeasible"])
        return INFEASIBLE_RPS
    return float(result["throughput_rps"])


def infeasible(cfg: Any, error: ConfigError) -> float | None:
    """A search trial whose configuration cannot run (BudgetError) scores INFEASIBLE_RPS;
    any other error, or outside a search, None (the caller then reports it and stops)."""
    if objective_arm(cfg) is None or not isinstance(error, BudgetError):
        return None
    log.warning("search trial infeasible, scored %.1f img/s: %s", INFEASIBLE_RPS, error)
    return INFEASIBLE_RPS
