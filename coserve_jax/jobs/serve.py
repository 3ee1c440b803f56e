"""``job: serve`` (the default; ``python -m coserve_jax.run``): every arm of the config on one
workload, side by side; results.json, the trace and a table of the arms in the run dir."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from coserve_jax.config import NoFeasibleArmError, RunConfig, as_run_config, budget_bytes
from coserve_jax.jobs.prepare import prepare_runner
from coserve_jax.jobs.rundir import run_dir, write_run_record
from coserve_jax.metrics.records import ArmRecords, write_arm_records
from coserve_jax.metrics.results import git_sha
from coserve_jax.report.runs import load_run
from coserve_jax.report.table_render import to_markdown
from coserve_jax.report.tables import arm_table
from coserve_jax.runner.arms import arm_policy
from coserve_jax.runner.model import zoo_summary
from coserve_jax.workload.trace import make_trace, save_trace

log = logging.getLogger(__name__)


def run_serve_job(cfg: RunConfig | DictConfig | Sequence[str] | None, out_dir: str | Path,
                  progress: bool = True) -> dict[str, Any]:
    """run_experiment, then the arms' table on stdout (also when no arm fits: each says why)."""
    try:
        results = run_experiment(cfg, out_dir, progress)
    except NoFeasibleArmError as e:
        if e.results is not None:
            print_arm_table(e.results, out_dir)  # every arm: "infeasible: <reason>"
        raise
    print_arm_table(results, out_dir)
    return results


def run_experiment(cfg: RunConfig | DictConfig | Sequence[str] | None = None,
                   out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every arm of the config on one workload; write results.json in out_dir.

    An arm whose memory budget cannot hold the largest expert plus its batches (a BudgetError)
    is decided infeasible at start-up, before any arm runs: results.json reports it as
    ``arms[name] = {"infeasible": reason, "policy": {...}}`` and the other arms run. When no arm
    fits, results.json records every arm's reason and a NoFeasibleArmError lists them. Other
    config errors stop the run.
    """
    run_cfg, resolved = as_run_config(cfg)
    out = run_dir(out_dir or run_cfg.output_dir or "outputs/latest")
    runner = prepare_runner(run_cfg, progress)
    model, cost = runner.model, runner.cost
    try:
        infeasible = {arm.name: reason for arm in run_cfg.arms if (reason := runner.infeasible(arm))}
        for name, reason in infeasible.items():
            log.warning("arm %s is infeasible, not run: %s", name, reason)
        feasible = [arm for arm in run_cfg.arms if arm.name not in infeasible]
        requests = make_trace(run_cfg, model.graph)
        save_trace(out / "trace.json", requests, {"workload": dataclasses.asdict(run_cfg.workload)})
        compile_s = runner.warm_up(feasible) if feasible else 0.0
        images = runner.images(requests)
        runs: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in feasible}
        recorded: dict[str, list[ArmRecords]] = {arm.name: [] for arm in feasible}
        for r in range(run_cfg.repeats):
            # Interleaved (A B C A B C ...) so that drift on a shared machine hits every arm alike.
            # An arm whose runs already add up to repeat_until_s is measured well enough.
            for arm in feasible:
                if r and sum(s["engine_s"] for s in runs[arm.name]) >= run_cfg.repeat_until_s:
                    continue
                summary, engine = runner.run_arm(arm, requests, images, progress)
                runs[arm.name].append(summary)
                recorded[arm.name].append(ArmRecords.of(arm.name, engine, run_cfg.metrics))
                log.info("%s (run %d/%d): %.1f img/s, %d switches", arm.name, r + 1, run_cfg.repeats,
                         summary["throughput_rps"], summary["switches"]["count"])
    finally:
        runner.close()
    arms = {arm.name: ({"infeasible": infeasible[arm.name], "policy": arm_policy(arm)}
                       if arm.name in infeasible else median_run(runs[arm.name]))
            for arm in run_cfg.arms}
    records = write_arm_records(out, run_cfg.metrics,
                                {name: recorded[name][arm.get("repeats", {}).get("kept", 0)]
                                 for name, arm in arms.items() if name in recorded},
                                {"backend": run_cfg.backend.name, "experiment": run_cfg.experiment,
                                 "clock": "virtual" if run_cfg.backend.name == "sim" else "wall"})
    for name, timeline in records.get("timelines", {}).items():
        arms[name]["timeline"] = timeline
    hw = run_cfg.hardware
    total = model.graph.total_bytes
    results = {
        "experiment": run_cfg.experiment,
        "config": {
            "model": run_cfg.model.name, "workload": run_cfg.workload.name, "hardware": hw.name,
            "backend": run_cfg.backend.name, "seed": run_cfg.seed, "git_sha": git_sha(),
            "profile_sha": cost.sha, "task": run_cfg.workload.task,
            "num_requests": len(requests), "interval_ms": run_cfg.workload.interval_ms,
            "arrival": run_cfg.workload.arrival,
            "device_budget": hw.device_budget,
            "device_budget_bytes": budget_bytes(hw, "device_budget", total),
            "host_budget": hw.host_budget, "drop_page_cache": hw.drop_page_cache,
            "routing": runner.routing, "executors": dict(hw.executors), "repeats": run_cfg.repeats,
            **device_config(run_cfg),
        },
        "zoo": zoo_summary(model),
        "compile_s": compile_s,
        "profile_check": runner.profile_check,
        "arms": arms,
        "records": records.get("requests"),
    }
    write_run_record(out, results, resolved, profile=cost.profile)
    if not feasible:
        raise NoFeasibleArmError("no arm fits its memory budget, none ran:\n"
                                 + "\n".join(f"  {name}: {reason}" for name, reason in infeasible.items()),
                                 results)
    return results


def device_config(cfg: RunConfig) -> dict[str, Any]:
    """results.json config: the device settings (engine/devices.py), as given."""
    hw = cfg.hardware
    return {"cpu_devices": hw.cpu_devices, "gpu_devices": None if hw.gpu_devices is None else list(hw.gpu_devices),
            "device_budgets": hw.device_budgets, "host_tier": cfg.backend.host_tier}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every repeat's throughput and switches beside."""
    ordered = sorted(runs, key=lambda s: s["throughput_rps"])
    kept = ordered[(len(ordered) - 1) // 2]
    out = dict(kept)
    if len(runs) > 1:
        out["repeats"] = {"throughput_rps": [s["throughput_rps"] for s in runs],
                          "switches": [s["switches"]["count"] for s in runs],
                          "kept": next(i for i, s in enumerate(runs) if s is kept)}
    return out


def print_arm_table(results: dict[str, Any], out_dir: str | Path) -> None:
    c = results["config"]
    print(f"\n{results['experiment']}: model={c['model']} hardware={c['hardware']} backend={c['backend']} "
          f"requests={c['num_requests']} arriving every {c['interval_ms']} ms ({c['arrival']}), "
          f"device budget {c['device_budget']} = {c['device_budget_bytes'] / 2**20:.1f} MiB")
    print(to_markdown(arm_table(load_run(out_dir))))
    print(f"\nresults: {Path(out_dir) / 'results.json'}")
