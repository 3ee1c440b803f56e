"""Does black-box search beat the paper's planner? Task A1, simulated, on both paper machines.

    python scripts/search_vs_planner.py                 # ~6 min on 2 cores: both machines
    python scripts/search_vs_planner.py --trials 10 --hardware numa_3080ti --out /tmp/s   # quicker

Per hardware profile (run dirs under --runs, default ``runs/search``, .gitignored):
1. ``+experiment=search_sim``: Optuna (TPE, seeded) picks --trials configurations of the arm
   ``search`` (coserve_plus's policies; executors per kind, expert fraction, prefetch depth,
   batch memory searched), each one simulated run on the sample trace (workload seed 1000);
2. ``+experiment=plan``: the paper's planner (executor sweep, decay window) on the same sample,
   writing the plan ``coserve_best`` reads; and again with ``planner.arm=coserve_plus`` for the
   arm ``plus_planned`` (coserve_plus's policies with the planner's executors and split), so
   the planner and the search are also compared on the same policies;
3. evaluation: one run of coserve_casual, coserve_best, coserve_plus, plus_planned, search (its
   best parameters) and all_resident per trace: the sample (seed 1000) and three fresh traces
   (seeds 0, 1, 2) the search never saw.
Then ``summary.md``/``summary.csv``, the best parameters and plans, and ``convergence.png`` go
to --out (default ``experiments/search``). Everything is simulated, hence deterministic.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import yaml

from reproduce_paper import ROOT, coserve, run  # same folder: scripts/

ARMS = ("coserve_casual", "coserve_best", "coserve_plus", "plus_planned", "search", "all_resident")
HOW = {"coserve_casual": "fixed: the hardware's executors, 75/25 split",
       "coserve_best": "planner: executor sweep, then decay window",
       "coserve_plus": "hand-set (experiments/coserve_plus)",
       "plus_planned": "planner, measuring coserve_plus",
       "search": "Optuna TPE over 5 knobs",
       "all_resident": "ceiling (unlimited memory)"}
SAMPLE_SEED = 1000
EVAL_SEEDS = (SAMPLE_SEED, 0, 1, 2)
TASK = ["workload.num_requests=2500", "workload.interval_ms=4"]


def sweep_values(sweep: Path) -> list[float]:
    """Each trial's img/s, in trial order."""
    dirs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [json.loads((d / "results.json").read_text())["arms"]["search"]["throughput_rps"]
            if (d / "results.json").is_file() else 0.0 for d in dirs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", nargs="+", default=["numa_3080ti", "uma_m2"])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "search")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "search")
    args = ap.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.runs / "search_vs_planner.log"
    rows, trials, refs, planner_runs = [], {}, {}, {}
    for hw in args.hardware:
        sweep, plan_dir = args.runs / f"sweep_{hw}", args.runs / f"plan_{hw}"
        shutil.rmtree(sweep, ignore_errors=True)
        run(coserve("+experiment=search_sim", f"hardware={hw}", f"hydra.sweeper.n_trials={args.trials}",
                    f"hydra.sweep.dir={sweep}"), log)
        best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
        plan_file = args.out / f"plan_{hw}.yaml"
        run(coserve("+experiment=plan", "model=pcb_paper_a", f"hardware={hw}", "backend=sim", *TASK,
                    "planner.sample_requests=2500", f"planner.output={plan_file}", f"hydra.run.dir={plan_dir}"), log)
        plan = json.loads((plan_dir / "results.json").read_text())
        planner_runs[hw] = sum(len(m.get("samples_rps") or [1]) for m in plan["measurements"])
        plus_plan_file, plus_plan_dir = args.out / f"plan_plus_{hw}.yaml", args.runs / f"plan_plus_{hw}"
        run(coserve("+experiment=plan", "model=pcb_paper_a", f"hardware={hw}", "backend=sim", *TASK,
                    "planner.sample_requests=2500", "planner.arm=coserve_plus", "arms=[coserve_plus]",
                    f"planner.output={plus_plan_file}", f"hydra.run.dir={plus_plan_dir}"), log)
        plus_plan = json.loads((plus_plan_dir / "results.json").read_text())
        plus_planner_runs = sum(len(m.get("samples_rps") or [1]) for m in plus_plan["measurements"])
        (args.out / f"best_{hw}.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
        evals = {}
        for seed in EVAL_SEEDS:
            d = args.runs / f"eval_{hw}_seed{seed}"
            run(coserve("+experiment=search_sim", "hydra.mode=RUN", f"hardware={hw}", f"workload.seed={seed}",
                        f"arms=[{','.join(ARMS)}]", f"planner.output={plan_file}", "metrics.requests=false",
                        f"arm_catalog.plus_planned.plan={plus_plan_file}",
                        *[f"{k}={v}" for k, v in best["best_params"].items()], f"hydra.run.dir={d}"), log)
            evals[seed] = json.loads((d / "results.json").read_text())["arms"]
        trials[hw] = sweep_values(sweep)
        refs[hw] = {a: evals[SAMPLE_SEED][a]["throughput_rps"] for a in ("coserve_best", "plus_planned", "coserve_plus")}
        runs_needed = {"coserve_casual": 0, "coserve_best": planner_runs[hw], "coserve_plus": 0,
                       "plus_planned": plus_planner_runs, "search": len(trials[hw]), "all_resident": 0}
        for arm in ARMS:
            fresh = [evals[s][arm]["throughput_rps"] for s in EVAL_SEEDS if s != SAMPLE_SEED]
            rows.append({"hardware": hw, "arm": arm, "chosen by": HOW[arm], "simulated runs": runs_needed[arm],
                         "sample img/s": round(evals[SAMPLE_SEED][arm]["throughput_rps"], 2),
                         **{f"seed {s} img/s": round(evals[s][arm]["throughput_rps"], 2) for s in EVAL_SEEDS[1:]},
                         "mean of fresh seeds": round(sum(fresh) / len(fresh), 2),
                         "switches (seed 0)": evals[0][arm]["switches"]["count"],
                         "executors": "+".join(f"{n}{k[0].upper()}" for k, n in
                                               sorted(_executors(evals[0][arm]).items(), key=lambda kv: kv[0] != "gpu"))})
    with (args.out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = list(rows[0])
    md = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    md += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    (args.out / "summary.md").write_text("\n".join(md) + "\n")
    sys.path.insert(0, str(ROOT))
    from coserve_jax.report.search_plots import plot_search_convergence

    plot_search_convergence(trials, refs, planner_runs, args.out / "convergence.png")
    (args.out / "trials.json").write_text(json.dumps({"trials_rps": trials, "planner_runs": planner_runs}, indent=1))
    print("\n".join(md))


def _executors(arm: dict) -> dict[str, int]:
    """Executors per kind of an evaluated arm, from its executor list."""
    out: dict[str, int] = {}
    for ex in arm["executors"]:
        out[ex["kind"]] = out.get(ex["kind"], 0) + 1
    return out


if __name__ == "__main__":
    main()
