"""Command line: run dirs → tables (.md, .csv) and plots (.png) in an output folder.

    python -m coserve_jax.report outputs/2025-01-01/12-00-00 multirun/sweep --out report/ \
        --kind all
    python -m coserve_jax.report RUN --out report/ --executor-sweep sweep.json --board A
    python -m coserve_jax.report RUN      # into RUN/report/

A run dir's requests.csv and timeline-<arm>.json (``metrics.timeline=true``) add per-arm plots:
latency CDF, throughput over time, pool occupancy, where the time went (``timeline_plots``).

Prints the Markdown of every table to stdout and writes ``report.md`` (all tables) beside the
per-table files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from coserve_jax.report import paper_values as pv
from coserve_jax.report import plots, tables, timeline_plots
from coserve_jax.report.runs import ReportInputError, RunRecord, load_runs
from coserve_jax.report.table_render import Table, to_markdown, write_table

KINDS = ("paper", "arms", "ablation", "budget", "all")


def build_tables(runs: list[RunRecord], kind: str) -> list[Table]:
    """The tables of one report kind (``all``: every kind, in KINDS order)."""
    if kind == "all":
        return [t for k in KINDS[:-1] for t in build_tables(runs, k)]
    if kind == "paper":
        out = [tables.throughput_table(runs), tables.throughput_incl_init_table(runs),
               tables.switches_table(runs), tables.speedup_table(runs)]
        if any("samba_casual_split" in r.arms for r in runs):
            out.append(tables.speedup_table(runs, "samba_casual_split"))  # before issue #22
        return out
    if kind == "ablation":
        return [tables.ablation_table(runs)]
    if kind == "arms":
        return tables.arm_tables(runs)
    if kind == "budget":
        return [tables.budget_table(runs)]
    raise ValueError(f"unknown report kind {kind!r}; choose from {', '.join(KINDS)}")


def build_plots(runs: list[RunRecord], kind: str, out_dir: Path) -> list[Path]:
    """Write the plots of one report kind into ``out_dir``; kinds without data are skipped."""
    if kind == "all":
        return [p for k in KINDS[:-1] for p in build_plots(runs, k, out_dir)]
    arm_names = {a for r in runs for a in r.arms}
    if kind == "paper":
        return [plots.plot_throughput(runs, out_dir / "fig13_throughput.png"),
                plots.plot_switches(runs, out_dir / "fig14_switches.png")]
    if kind == "ablation":
        return plots.plot_ablation(runs, out_dir) if arm_names & {*pv.ABLATION_ARMS, *pv.GPU_ABLATION_ARMS} else []
    if kind == "arms":
        # A run where no arm fitted its budget (all infeasible) has nothing to plot.
        named = [(r, t) for r, t in zip(runs, tables.arm_tables(runs), strict=True) if r.arms]
        return [p for r, t in named
                for p in (plots.plot_arms(r, out_dir / f"{t.name}.png"),
                          *timeline_plots.plot_run(r, out_dir, t.name))]
    if kind == "budget":
        has_budget = any(r.device_budget is not None for r in runs)
        return [plots.plot_budget_sweep(runs, out_dir / "budget_sweep.png")] if has_budget \
            else []
    raise ValueError(f"unknown report kind {kind!r}; choose from {', '.join(KINDS)}")


def build_planner_plots(out_dir: Path, executor_sweep: Path | None,
                        decay_window: Path | None, board: str | None) -> list[Path]:
    """Fig. 17/18 plots from the planner's JSON files, with the paper's values for ``board``."""
    written = []
    if executor_sweep is not None:
        data = _read_json(executor_sweep)
        written.append(plots.plot_executor_sweep(
            data, out_dir / "fig17_executor_sweep.png",
            paper_best=pv.FIG17_BEST_EXECUTORS.get(board or "")))
    if decay_window is not None:
        data = _read_json(decay_window)
        written.append(plots.plot_decay_window(
            data, out_dir / "fig18_decay_window.png", paper=pv.FIG18_SEARCH.get(board or "")))
    return written


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, write the report, print its Markdown; 2 on bad input (message on
    stderr naming the path)."""
    args = _parser().parse_args(argv)
    out_dir = Path(args.out) if args.out is not None else args.run_dirs[0] / "report"
    try:
        runs = load_runs(args.run_dirs)
        built = build_tables(runs, args.kind)
        out_dir.mkdir(parents=True, exist_ok=True)
        for table in built:
            write_table(table, out_dir)
        pngs = build_plots(runs, args.kind, out_dir)
        pngs += build_planner_plots(out_dir, args.executor_sweep, args.decay_window,
                                    args.board)
    except ReportInputError as err:
        print(f"coserve_jax.report: error: {err}", file=sys.stderr)
        return 2
    notes = [n for r in runs for n in timeline_plots.missing_inputs(r)] if args.kind in ("arms", "all") else []
    markdown = _report_markdown(runs, built, pngs, notes)
    (out_dir / "report.md").write_text(markdown)
    print(markdown)
    return 0


def _report_markdown(runs: list[RunRecord], built: list[Table], pngs: list[Path],
                     notes: list[str] = ()) -> str:
    lines = [f"# Report: {len(runs)} run(s)", ""]
    lines += [f"- `{r.label}`: hardware {r.hardware or '?'}, task {r.task or '?'}, "
              f"arms {', '.join(r.arms) or 'none'}"
              + (f" (infeasible, not run: {', '.join(r.infeasible)})" if r.infeasible else "")
              for r in runs]
    lines.append("")
    lines += [to_markdown(t) for t in built]
    if pngs:
        lines.append("### Plots\n")
        lines += [f"![{p.stem}]({p.name})" for p in pngs]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportInputError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: top level is not a JSON object")
    return data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coserve_jax.report",
        description="Turn run directories (results.json) into Markdown/CSV tables and PNG "
                    "plots, with the CoServe paper's values and ours/paper ratios.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run dirs, Hydra multirun dirs, or results.json files "
                             "(searched recursively)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the first RUN_DIR's report/)")
    parser.add_argument("--kind", choices=KINDS, default="all", help="which report (default all)")
    parser.add_argument("--executor-sweep", type=Path, default=None,
                        help="planner JSON {candidates: [{name, throughput_rps}], chosen} → "
                             "Fig. 17 plot")
    parser.add_argument("--decay-window", type=Path, default=None,
                        help="planner JSON {trace: [...], chosen} → Fig. 18 plot")
    parser.add_argument("--board", choices=("A", "B"), default=None,
                        help="paper board for the Fig. 17/18 overlays")
    return parser
