"""The jobs an experiment config can ask for (``job: serve | zoo | profile | plan``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from coserve_jax.config import ConfigError

log = logging.getLogger("coserve_jax")


def run_job(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    job = cfg.get("job", "serve")
    if job == "serve":
        from coserve_jax.api import run_experiment
        from coserve_jax.config import NoFeasibleArmError

        try:
            results = run_experiment(cfg, out_dir)
        except NoFeasibleArmError as e:
            if e.results is not None:
                print_arm_table(e.results, out_dir)  # every arm: "infeasible: <reason>"
            raise
        print_arm_table(results, out_dir)
        return results
    if job == "zoo":
        from coserve_jax.coe.zoo_job import run_zoo_job

        return run_zoo_job(cfg, out_dir)
    if job == "profile":
        from coserve_jax.profiler.job import run_profile_job

        return run_profile_job(cfg, out_dir)
    if job == "plan":
        from coserve_jax.profiler.plan_job import run_plan_job

        return run_plan_job(cfg, out_dir)
    if job == "cluster":
        from coserve_jax.serve.scaling import run_scaling_job

        return run_scaling_job(cfg, out_dir)
    raise ConfigError(f"job: unknown job {job!r}; one of serve, zoo, profile, plan, cluster")


def print_arm_table(results: dict[str, Any], out_dir: str | Path) -> None:
    from coserve_jax.report.runs import load_run
    from coserve_jax.report.table_render import to_markdown
    from coserve_jax.report.tables import arm_table

    c = results["config"]
    print(f"\n{results['experiment']}: model={c['model']} hardware={c['hardware']} backend={c['backend']} "
          f"requests={c['num_requests']} arriving every {c['interval_ms']} ms ({c['arrival']}), "
          f"device budget {c['device_budget']} = {c['device_budget_bytes'] / 2**20:.1f} MiB")
    print(to_markdown(arm_table(load_run(out_dir))))
    print(f"\nresults: {Path(out_dir) / 'results.json'}")
