"""``job: plan`` (``python -m coserve_jax.run +experiment=plan``): the allocation planner.

Measures the ``planner.arm`` arm (default ``coserve``) on a sample trace of
``planner.sample_requests`` requests (its own seed, so the plan is not fitted to the evaluation
trace) with the configured backend — the simulator on a profile's cost model, or the real engine:

1. executor-count sweep (Fig. 17): every candidate of ``planner.candidates`` at the split
   ``planner.sweep_expert_fraction`` (default: the arm's / hardware's), best one kept. A
   candidate whose shares cannot hold the largest expert plus a batch at that split is measured
   with the smallest pools that hold the largest expert (marked in the table), and one that no
   split makes feasible is recorded as infeasible (0 img/s);
2. decay-window search (Fig. 18) over N experts for the fast processors' pools with the chosen
   counts (``search.decay_window_search``); N is translated into the arm's ``expert_fraction``
   by ``search.fraction_for_experts``.

Every configuration is measured ``planner.repeats`` times on the real backend (the median
counts; the simulator is deterministic and runs once): on a shared CPU machine one run of a
~1 s sample varies by ±10%, as much as the differences the search is looking for.

The sweep comes first because the executor count changes what N means per executor (the device
budget is split evenly among a kind's executors) and moves throughput more than the split; the
paper also reports the two separately (Fig. 17 at fixed memory, Fig. 18 for the chosen counts).

Writes into the run dir: ``plan.yaml`` (executors, expert_fraction, n_experts, provenance),
copied to ``planner.output`` when set (the arm ``coserve_best`` reads that path);
``results.json`` with ``plan``, ``decay_window`` and ``executor_sweep``;
``executor_sweep.{md,csv,json,png}`` and ``decay_window.{md,csv,json,png}``.

The paper's rule for slow processors (CPU executors beside GPUs: reserve the maximum batch,
experts get the rest) is recorded as ``expert_fraction_by_kind.cpu``; the engine applies each
kind's fraction (``engine/build.py``), falling back to ``expert_fraction``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from coserve_jax.config import ArmConfig, ConfigError, RunConfig, parse_bytes
from coserve_jax.metrics.results import git_sha, write_json_atomic
from coserve_jax.profiler import search
from coserve_jax.cost.model import CostModel
from coserve_jax.report.plan_tables import decay_table, plan_plots, sweep_table
from coserve_jax.report.table_render import to_markdown, write_table

log = logging.getLogger("coserve_jax")


# ---- settings -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlannerSettings:
    """``cfg.planner`` validated (conf/planner/default.yaml documents every field)."""

    arm: str = "coserve"
    sample_requests: int | None = 1000  # None: workload.num_requests
    sample_seed: int | None = None
    repeats: int = 3
    w0: float = 15.0
    error_margin: float = 0.05
    refine_points: int = 3
    max_experts: int | None = None
    keep_best_measured: bool = True
    candidates: tuple[str, ...] | None = None
    sweep_expert_fraction: float | None = None
    output: str | None = None

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> PlannerSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"planner: unknown key(s) {unknown}; known: {sorted(names)}")
        s = cls(**raw)
        if s.sample_requests is not None and (not isinstance(s.sample_requests, int) or s.sample_requests < 1):
            raise ConfigError(f"planner.sample_requests: must be a whole number >= 1, got {s.sample_requests!r}")
        if not isinstance(s.repeats, int) or s.repeats < 1:
            raise ConfigError(f"planner.repeats: must be a whole number >= 1, got {s.repeats!r}")
        if not isinstance(s.w0, (int, float)) or not 0 < s.w0 < 100:
            raise ConfigError(f"planner.w0: must be in (0, 100) experts, got {s.w0!r}")
        if not isinstance(s.error_margin, (int, float)) or not 0 < s.error_margin < 1:
            raise ConfigError(f"planner.error_margin: must be in (0, 1), got {s.error_margin!r}")
        if not isinstance(s.refine_points, int) or s.refine_points < 0:
            raise ConfigError(f"planner.refine_points: must be a whole number >= 0, got {s.refine_points!r}")
        if s.max_experts is not None and (not isinstance(s.max_experts, int) or s.max_experts < 1):
            raise ConfigError(f"planner.max_experts: must be null or a whole number >= 1, got {s.max_experts!r}")
        f = s.sweep_expert_fraction
        if f is not None and (not isinstance(f, (int, float)) or not 0 < f < 1):
            raise ConfigError(f"planner.sweep_expert_fraction: must be null or in (0, 1), got {f!r}")
        cands = s.candidates
        if cands is not None:
            if isinstance(cands, str):
                cands = [cands]
            try:
                cands = tuple(search.format_executors(search.parse_executors(c)) for c in cands)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if not cands:
                raise ConfigError("planner.candidates: list at least one candidate, or null for the defaults")
        return dataclasses.replace(s, w0=float(s.w0), error_margin=float(s.error_margin), candidates=cands)


def plan_output_path(output: str | None) -> Path | None:
    """``planner.output`` with ``~`` and environment variables expanded (None: no copy)."""
    if output in (None, ""):
        return None
    return Path(os.path.expandvars(os.path.expanduser(str(output))))


# ---- memory arithmetic for one executor layout ----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
    """What N experts mean for one set of executor counts (the fast kind's pools).

    The engine gives every executor kind the same ``expert_fraction`` of its share, so the
    fraction must also leave the other kinds' pools room for the largest expert (``min_fraction``)
    and their batch reserve room for a batch of one (``max_fraction``).
    """

    executors: dict[str, int]
    fast_kind: str
    budget_bytes: int          # the fast kind's budget, shared evenly by its executors
    sizes_by_usage: tuple[int, ...]
    min_fraction: float
    max_fraction: float
    n_min: int
    n_max: int
    slow_fraction: float | None  # CPU beside GPU: reserve-the-maximum-batch fraction

    def fraction(self, n_experts: int) -> float:
        """``expert_fraction`` for N experts, rounded up to 6 decimals (what the plan stores)."""
        f = search.fraction_for_experts(self.sizes_by_usage, n_experts, self.budget_bytes,
                                        self.executors[self.fast_kind])
        return min(math.ceil(max(f, self.min_fraction) * 1e6) / 1e6, 0.999999)


def kind_shares(cfg: RunConfig, total_bytes: int, executors: dict[str, int]) -> dict[str, int]:
    """Bytes per executor of each kind, as ``engine.build.plan_executors`` splits budgets on one
    device (the planner searches one device's split; several devices are not planned yet)."""
    hw = cfg.hardware
    if hw.cpu_devices > 1 or hw.device_budgets or (hw.gpu_devices is not None and len(hw.gpu_devices) > 1):
        raise ConfigError("hardware.cpu_devices: the planner searches the split of one device; plan with "
                          "hardware.cpu_devices=1, one GPU and no hardware.device_budgets")
    out = {}
    for kind, n in executors.items():
        if kind == "cpu" and "gpu" in executors:
            if hw.cpu_pool_budget is None:
                raise ConfigError("hardware.cpu_pool_budget: required when CPU executors run beside GPU ones")
            out[kind] = parse_bytes(hw.cpu_pool_budget, "hardware.cpu_pool_budget", total_bytes) // n
        else:
            out[kind] = parse_bytes(hw.device_budget, "hardware.device_budget", total_bytes) // n
    return out


def layout_for(cfg: RunConfig, graph: Any, cost: CostModel, executors: dict[str, int],
               max_experts_cap: int | None = None) -> Layout:
    """Budgets, the feasible range of N, and the slow processors' split for these counts."""
    total = graph.total_bytes
    fast = "gpu" if "gpu" in executors else "cpu"
    shares = kind_shares(cfg, total, executors)
    usage = graph.usage_probs()
    order = sorted(usage, key=lambda e: (-usage[e], e))  # as RoundRobinByUsage deals them
    sizes = tuple(int(graph.experts[e].param_bytes) for e in order)
    archs = sorted({e.arch for e in graph.experts.values()})
    largest = max(sizes)
    f_lo = max(largest / share for share in shares.values())
    f_hi = min(1 - max(cost.activation_bytes(k, a, 1) for a in archs) / share for k, share in shares.items())
    if f_lo > f_hi:
        raise ConfigError(f"hardware.device_budget: with executors {search.format_executors(executors)} no "
                          f"expert_fraction leaves every pool the largest expert plus a batch of one "
                          f"(shares {shares} B); raise the budgets or use fewer executors")
    budget = shares[fast] * executors[fast]
    n_max = search.max_experts(sizes, budget, executors[fast], max_fraction=f_hi)
    if max_experts_cap is not None:
        n_max = min(n_max, max_experts_cap)
    slow = None
    if fast == "gpu" and executors.get("cpu"):
        act = max(cost.activation_bytes("cpu", a, cost.max_batch("cpu", a)) for a in archs)
        try:
            slow = search.reserve_max_batch_fraction(shares["cpu"], act)
        except ValueError as e:
            raise ConfigError(f"hardware.cpu_pool_budget: {e}") from None
    return Layout(dict(executors), fast, budget, sizes, f_lo, f_hi,
                  search.min_experts(sizes, executors[fast]), n_max, slow)


# ---- the job ------------------------------------------------------------------------------------
def run_plan_job(cfg: DictConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Sweep executor counts, search the memory split, write the plan; return results.json."""
    from coserve_jax.api import ArmRunner, as_run_config, make_trace

    run_cfg, resolved = as_run_config(cfg)
    settings = PlannerSettings.from_mapping(dict(run_cfg.planner))
    arm = _planner_arm(run_cfg, settings.arm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_sample = settings.sample_requests or run_cfg.workload.num_requests
    sample_seed = settings.sample_seed if settings.sample_seed is not None else run_cfg.workload.seed + 1000
    sample_cfg = dataclasses.replace(run_cfg, workload=dataclasses.replace(
        run_cfg.workload, num_requests=n_sample, seed=sample_seed, trace_path=None))
    runner = ArmRunner.prepare(sample_cfg, progress)
    model, cost = runner.model, runner.cost
    sample = make_trace(sample_cfg, model.graph)
    from coserve_jax.engine.build import plan_executors

    images = runner.images(sample)
    measured: list[dict[str, Any]] = []  # every configuration measured, in order
    repeats = settings.repeats if run_cfg.backend.name == "real" else 1  # the simulator repeats itself exactly

    def measure(executors: dict[str, int], fraction: float | None, stage: str) -> float:
        """Median img/s of ``planner.repeats`` runs of the sample (0 when infeasible)."""
        trial = dataclasses.replace(arm, executors=dict(executors), expert_fraction=fraction, plan=None)
        rows = []
        try:
            runner.warm_up([trial])
            for _ in range(repeats):
                summary, _ = runner.run_arm(trial, sample, images, progress=False)
                rows.append(summary)
        except ConfigError as e:  # e.g. a share too small for the largest expert plus a batch
            log.warning("plan: %s with expert_fraction=%s is infeasible: %s",
                        search.format_executors(executors), fraction, e)
            measured.append({"stage": stage, "executors": search.format_executors(executors),
                             "expert_fraction": fraction, "throughput_rps": 0.0, "error": str(e)})
            return 0.0
        samples = [float(r["throughput_rps"]) for r in rows]
        rps = float(statistics.median(samples))
        measured.append({"stage": stage, "executors": search.format_executors(executors),
                         "expert_fraction": fraction, "throughput_rps": rps, "samples_rps": samples,
                         "switches": statistics.median(r["switches"]["count"] for r in rows),
                         "failed": max(r["requests"]["failed"] for r in rows)})
        return rps

    def feasible(executors: dict[str, int], fraction: float | None) -> bool:
        trial = dataclasses.replace(arm, executors=dict(executors), expert_fraction=fraction, plan=None)
        try:
            plan_executors(sample_cfg, trial, model.graph, cost)
        except ConfigError:
            return False
        return True

    def sweep_fraction_for(executors: dict[str, int]) -> float | None:
        """The sweep's split, or — where it cannot hold the largest expert plus a batch — the
        smallest pools that hold the largest expert (every other byte for batches)."""
        if feasible(executors, sweep_fraction):
            return sweep_fraction
        try:
            f = layout_for(run_cfg, model.graph, cost, executors).min_fraction
        except ConfigError:
            return sweep_fraction  # infeasible at any split: measured (and recorded) as 0 img/s
        return min(math.ceil(f * 1e6) / 1e6, 0.999999)

    # 1. executor counts
    has_gpu = "gpu" in run_cfg.hardware.executors
    candidates = settings.candidates or search.default_candidates(has_gpu)
    missing = sorted({k for c in candidates for k in search.parse_executors(c) if k not in cost.kinds})
    if missing:
        raise ConfigError(f"planner.candidates: the profile has no figures for {missing} executors "
                          f"(it has {list(cost.kinds)}); list candidates of those kinds only")
    sweep_fraction = settings.sweep_expert_fraction
    sweep_fractions: dict[str, float | None] = {}
    infeasible: set[str] = set()

    def measure_candidate(ex: dict[str, int]) -> float:
        f = sweep_fractions[search.format_executors(ex)] = sweep_fraction_for(ex)
        rps = measure(ex, f, "executor_sweep")
        if "error" in measured[-1]:
            infeasible.add(search.format_executors(ex))
        return rps

    with _bar(progress, len(candidates), "executor sweep") as bar:
        sweep = search.executor_sweep(candidates, measure_candidate, progress=bar)
    chosen_ex = search.parse_executors(sweep.chosen)

    # 2. memory split for the chosen counts
    layout = layout_for(run_cfg, model.graph, cost, chosen_ex, settings.max_experts)
    if layout.n_max < layout.n_min:
        raise ConfigError(f"hardware.device_budget: {sweep.chosen} executors cannot hold one expert each "
                          f"plus a batch of one; raise hardware.device_budget")
    with _bar(progress, None, "decay window") as bar:
        dw = search.decay_window_search(
            lambda n: measure(chosen_ex, layout.fraction(n), f"decay_window:{n}"), layout.n_max,
            w0=settings.w0, error_margin=settings.error_margin, n_min_experts=layout.n_min,
            refine_points=settings.refine_points,
            progress=None if bar is None else lambda p: bar(f"N={p.n_experts}: {p.throughput_rps:.2f} img/s"))
    n_pick = dw.chosen
    pick = {"executors": chosen_ex, "expert_fraction": layout.fraction(n_pick), "n_experts": n_pick,
            "throughput_rps": dw.chosen_rps, "source": "decay_window"}
    if pick["throughput_rps"] is None:  # midpoint rule: measure the pick once
        pick["throughput_rps"] = measure(chosen_ex, pick["expert_fraction"], f"decay_window:{n_pick}")
    ok = [m for m in measured if "error" not in m]
    best = max(ok, key=lambda m: m["throughput_rps"])
    default_fraction = (sweep_fraction if sweep_fraction is not None
                        else (arm.expert_fraction if arm.expert_fraction is not None
                              else run_cfg.hardware.expert_fraction))
    pick_layout = layout
    if settings.keep_best_measured and pick["throughput_rps"] < (1 - settings.error_margin) * best["throughput_rps"]:
        pick_layout = layout_for(run_cfg, model.graph, cost, search.parse_executors(best["executors"]),
                                 settings.max_experts)
        pick = _pick_from(best, default_fraction, pick_layout)
    pick_vs_best = pick["throughput_rps"] / best["throughput_rps"] if best["throughput_rps"] > 0 else 1.0

    # 3. outputs
    provenance = {
        "experiment": run_cfg.experiment, "model": run_cfg.model.name, "hardware": run_cfg.hardware.name,
        "backend": run_cfg.backend.name, "arm": arm.name, "sample_requests": n_sample,
        "sample_seed": sample_seed, "w0": settings.w0, "error_margin": settings.error_margin,
        "device_budget": run_cfg.hardware.device_budget, "git_sha": git_sha(), "profile_sha": cost.sha,
        "run_dir": str(out.resolve()),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    plan = {
        "executors": dict(pick["executors"]),
        "expert_fraction": pick["expert_fraction"],
        "n_experts": pick["n_experts"],
        "expert_fraction_by_kind": {pick_layout.fast_kind: pick["expert_fraction"],
                                    **({"cpu": round(pick_layout.slow_fraction, 6)}
                                       if pick_layout.slow_fraction else {})},
        "throughput_rps": pick["throughput_rps"],
        "pick_vs_best": pick_vs_best,
        "source": pick["source"],
        "provenance": provenance,
    }
    plan_path = out / "plan.yaml"
    plan_path.write_text(_plan_yaml(plan))
    copied = plan_output_path(settings.output)
    if copied is not None:
        copied.parent.mkdir(parents=True, exist_ok=True)
        tmp = copied.with_name(f".{copied.name}.{os.getpid()}.tmp")
        shutil.copyfile(plan_path, tmp)
        os.replace(tmp, copied)

    sweep_d = dict(sweep.as_dict(), expert_fraction=default_fraction, repeats=repeats)
    for c in sweep_d["candidates"]:
        f = sweep_fractions.get(c["name"], sweep_fraction)
        c["expert_fraction"] = f if f is not None else default_fraction
        c["fallback_fraction"] = f != sweep_fraction
        c["infeasible"] = c["name"] in infeasible
    dw_d = dict(dw.as_dict(), executors=sweep.chosen, fast_kind=layout.fast_kind, repeats=repeats,
                n_min_experts=layout.n_min, n_max_experts=layout.n_max,
                budget_bytes=layout.budget_bytes,
                expert_fraction={str(p.n_experts): layout.fraction(p.n_experts) for p in dw.trace})
    write_json_atomic(out / "executor_sweep.json", sweep_d)
    write_json_atomic(out / "decay_window.json", dw_d)
    tables = [sweep_table(sweep_d), decay_table(dw_d)]
    for t in tables:
        write_table(t, out)
    board = (run_cfg.model.board or "").upper() if run_cfg.model.kind == "paper" else ""
    pngs = plan_plots(sweep_d, dw_d, out, model=run_cfg.model.name, hardware=run_cfg.hardware.name,
                      backend=run_cfg.backend.name, board=board)
    results = {
        "experiment": run_cfg.experiment,
        "job": "plan",
        "config": {"model": run_cfg.model.name, "workload": run_cfg.workload.name, "hardware": run_cfg.hardware.name,
                   "backend": run_cfg.backend.name, "seed": run_cfg.seed, "git_sha": provenance["git_sha"],
                   "profile_sha": cost.sha, "num_requests": n_sample,
                   "interval_ms": run_cfg.workload.interval_ms, "arrival": run_cfg.workload.arrival,
                   "device_budget": run_cfg.hardware.device_budget, "executors": dict(run_cfg.hardware.executors)},
        "plan": dict(plan, path=str(plan_path), output=str(copied) if copied else None,
                     best_measured=best),
        "executor_sweep": sweep_d,
        "decay_window": dw_d,
        "measurements": measured,
        "files": {"tables": [f"{t.name}.md" for t in tables], "plots": [p.name for p in pngs]},
    }
    write_json_atomic(out / "results.json", results)
    write_json_atomic(out / "profile.json", cost.profile)
    (out / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)) if resolved else "")
    print()
    for t in tables:
        print(to_markdown(t))
    print(f"plan: {plan['executors']} expert_fraction={plan['expert_fraction']} (N={plan['n_experts']}), "
          f"{plan['throughput_rps']:.2f} img/s on the sample, {100 * pick_vs_best:.1f}% of the best measured")
    print(f"plan file: {plan_path}" + (f" (copied to {copied})" if copied else ""))
    runner.close()
    return results


def _planner_arm(cfg: RunConfig, name: str) -> ArmConfig:
    for a in cfg.arms:
        if a.name == name:
            return a
    raise ConfigError(f"planner.arm: {name!r} is not in arms={[a.name for a in cfg.arms]}; "
                      f"the plan experiment measures arms=[{name}]")


def _pick_from(m: dict[str, Any], default_fraction: float | None, layout: Layout) -> dict[str, Any]:
    """The best measured configuration as a plan (keep_best_measured fallback). A sweep
    measurement's split is the sweep's (``default_fraction`` where it ran with null); N is then
    the number of experts by usage that split's pools hold (``layout``: the pick's executors)."""
    ex = search.parse_executors(m["executors"])
    f = m["expert_fraction"] if m["expert_fraction"] is not None else default_fraction
    n = None
    if m["stage"].startswith("decay_window:"):
        n = int(m["stage"].split(":")[1])
    elif f is not None:
        n = search.max_experts(layout.sizes_by_usage, layout.budget_bytes,
                               layout.executors[layout.fast_kind], max_fraction=f)
    return {"executors": ex, "expert_fraction": f, "n_experts": n,
            "throughput_rps": m["throughput_rps"], "source": f"best_measured ({m['stage']})"}


def _plan_yaml(plan: dict[str, Any]) -> str:
    head = ("# Allocation plan written by python -m coserve_jax.run +experiment=plan (coserve_jax.profiler.plan_job).\n"
            "# The arm coserve_best reads executors and expert_fraction from this file.\n")
    return head + OmegaConf.to_yaml(OmegaConf.create(plan))


class _bar:
    """A tqdm bar whose ``__call__(text)`` advances it with a status line (None when off)."""

    def __init__(self, on: bool, total: int | None, desc: str):
        self.on, self.total, self.desc, self.tq = on, total, desc, None

    def __enter__(self) -> Callable[[str], None] | None:
        if not self.on:
            return None
        from tqdm.auto import tqdm

        self.tq = tqdm(total=self.total, desc=self.desc, unit="run", leave=False, disable=None)

        def step(text: str) -> None:
            self.tq.set_postfix_str(text)
            self.tq.update()
        return step

    def __exit__(self, *exc: Any) -> None:
        if self.tq is not None:
            self.tq.close()
