"""The jobs an experiment config can ask for (``job: serve | zoo | profile | plan | cluster``), each writing
its run dir (``rundir.py``); ``prepare.py`` sets up what jobs that run arms need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from coserve_jax.config import ConfigError
from coserve_jax.jobs.cluster import run_scaling_job
from coserve_jax.jobs.plan import run_plan_job
from coserve_jax.jobs.profile import run_profile_job
from coserve_jax.jobs.serve import run_serve_job
from coserve_jax.jobs.zoo import run_zoo_job

JOBS = {"serve": run_serve_job, "zoo": run_zoo_job, "profile": run_profile_job, "plan": run_plan_job,
        "cluster": run_scaling_job}


def run_job(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the config's ``job`` (default: serve) with its run dir at ``out_dir``."""
    job = cfg.get("job", "serve")
    if job not in JOBS:
        raise ConfigError(f"job: unknown job {job!r}; one of {', '.join(JOBS)}")
    return JOBS[job](cfg, out_dir)
