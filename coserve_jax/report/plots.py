"""matplotlib plots (Agg, 150 dpi PNG): paper-style grouped bars, budget sweeps, the
planner's executor sweep (Fig. 17) and decay-window trace (Fig. 18).

Figures are built on `matplotlib.figure.Figure` with an explicit Agg canvas, so importing this
module never changes the global pyplot backend. Every arm keeps one colour in every plot
(`arm_colour`). Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from coserve_jax.report import paper_values as pv
from coserve_jax.report.aggregate import (
    BudgetSweep,
    Grid,
    arms_in,
    budget_sweep,
    metric_grid,
    ordered_arms,
    parse_budget,
    throughput_rps,
)
from coserve_jax.report.runs import RunRecord

DPI = 150
ARM_COLOURS = {
    "samba": "#8c564b", "samba_fifo": "#c49c94", "samba_parallel": "#e377c2",
    "samba_casual_split": "#5c3a32", "samba_parallel_gpu": "#f7b6d2",
    "none": "#7f7f7f", "em": "#9edae5", "em_ra": "#17becf",
    "none_gpu": "#c7c7c7", "em_gpu": "#dbdb8d", "em_ra_gpu": "#bcbd22", "coserve_gpu": "#aec7e8",
    "coserve_casual": "#ff7f0e", "coserve": "#1f77b4", "coserve_best": "#2ca02c",
    "coserve_plus": "#d62728", "oracle": "#9467bd", "all_resident": "#393b79",
}
# Legend labels where the arm key is not what the arm is (the key stays: committed results use it).
ARM_LABELS = {"oracle": "Belady-on-trace ref. (oracle)"}
_FALLBACK = ("#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#f7b6d2",
             "#dbdb8d", "#637939", "#843c39")
OURS_HATCH = "//"

PaperLookup = Callable[[str, str, str], float | None]


def arm_colour(arm: str) -> str:
    """The arm's fixed colour (unknown arms get a stable colour from their name)."""
    return ARM_COLOURS.get(arm) or _FALLBACK[zlib.crc32(arm.encode()) % len(_FALLBACK)]


def _new_figure(width_in: float, height_in: float, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _save(fig: Figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    return out_path


def plot_comparison(grid: Grid, out_path: str | Path, *, title: str, ylabel: str,
                    paper_lookup: PaperLookup, arms: list[str] | None = None) -> Path:
    """Grouped bars like the paper's Fig. 13-16: one panel per hardware, one group per task;
    for each arm the paper's value (solid) beside ours (hatched, ± std over runs), in the
    arm's colour. Arms absent from ``grid`` are skipped."""
    arms = [a for a in (arms or arms_in(grid)) if any(a in g for g in grid.values())]
    hardwares = list(dict.fromkeys(hw for hw, _ in grid))
    tasks_per_hw = max((sum(1 for g in grid if g[0] == hw) for hw in hardwares), default=1)
    width_in = min(16.0, max(6.0, 2.5 + tasks_per_hw * len(arms) * 0.3))
    fig = Figure(figsize=(width_in, 0.5 + 3.2 * max(1, len(hardwares))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(hardwares)), 1, squeeze=False)[:, 0]
    slot = 0.8 / max(1, 2 * len(arms))
    for ax, hw in zip(axes, hardwares, strict=False):
        groups = [g for g in grid if g[0] == hw]
        for i, arm in enumerate(arms):
            colour = arm_colour(arm)
            for g, group in enumerate(groups):
                x = g - 0.4 + (2 * i + 0.5) * slot
                paper = paper_lookup(*group, arm)
                if paper is not None:
                    ax.bar(x, paper, slot, color=colour, edgecolor="black", linewidth=0.5)
                stat = grid[group].get(arm)
                if stat is not None:
                    ax.bar(x + slot, stat.mean, slot, color="white", edgecolor=colour,
                           hatch=OURS_HATCH, linewidth=1.0,
                           yerr=stat.std if stat.n > 1 else None, ecolor="black", capsize=2)
        ax.set_xticks(range(len(groups)), [task for _, task in groups])
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_xlabel(f"task ({hw})")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{hw}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    handles = [Patch(facecolor=arm_colour(a), edgecolor="black", label=ARM_LABELS.get(a, a)) for a in arms]
    handles += [Patch(facecolor="grey", edgecolor="black", label="paper (solid)"),
                Patch(facecolor="white", edgecolor="grey", hatch=OURS_HATCH,
                      label="ours (hatched)")]
    fig.legend(handles=handles, fontsize=7, loc="outside right upper")
    return _save(fig, out_path)


def plot_throughput(runs: list[RunRecord], out_path: str | Path) -> Path:
    """Fig. 13 style: img/s per (hardware, task) × arm, paper beside ours."""
    return plot_comparison(metric_grid(runs, "throughput_rps"), out_path,
                           title="Throughput — ours vs paper Fig. 13/15",
                           ylabel="throughput (img/s)", paper_lookup=pv.paper_throughput_rps)


def plot_switches(runs: list[RunRecord], out_path: str | Path) -> Path:
    """Fig. 14 style: expert switches per (hardware, task) × arm, paper beside ours."""
    return plot_comparison(metric_grid(runs, "switches"), out_path,
                           title="Expert switches — ours vs paper Fig. 14/16",
                           ylabel="expert switches (count)", paper_lookup=pv.paper_switches)


def plot_ablation(runs: list[RunRecord], out_dir: str | Path) -> list[Path]:
    """Fig. 15 (img/s) and Fig. 16 (switches) for the ablation arms none/em/em_ra/coserve (and
    the GPU-only rungs none_gpu ... coserve_gpu where the runs have them)."""
    out_dir = Path(out_dir)
    present = {a for r in runs for a in r.arms}
    arms = list(pv.ABLATION_ARMS) + [a for a in pv.GPU_ABLATION_ARMS if a in present]
    return [
        plot_comparison(metric_grid(runs, "throughput_rps"), out_dir / "fig15_ablation.png",
                        title="Ablation throughput — ours vs paper Fig. 15",
                        ylabel="throughput (img/s)", paper_lookup=pv.paper_throughput_rps,
                        arms=arms),
        plot_comparison(metric_grid(runs, "switches"), out_dir / "fig16_ablation.png",
                        title="Ablation switches — ours vs paper Fig. 16",
                        ylabel="expert switches (count)", paper_lookup=pv.paper_switches,
                        arms=arms),
    ]


def plot_arms(run: RunRecord, out_path: str | Path) -> Path:
    """One run's arms: img/s bars, with the Belady-on-trace reference (``oracle``) and the
    all_resident ceiling as lines."""
    names = [a for a in ordered_arms(run.arms)
             if isinstance(run.arms[a], dict) and throughput_rps(run.arms[a]) is not None]
    fig, ax = _new_figure(max(5.0, 1.0 + 0.6 * len(names)), 4.0)
    values = [throughput_rps(run.arms[a]) for a in names]
    ax.bar(range(len(names)), values, color=[arm_colour(a) for a in names],
           edgecolor="black", linewidth=0.5, hatch=OURS_HATCH)
    for bound, style in (("oracle", ":"), ("all_resident", "--")):
        value = throughput_rps(run.arms.get(bound) or {})
        if value is not None:
            ax.axhline(value, color=arm_colour(bound), linestyle=style, label=ARM_LABELS.get(bound, bound))
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("throughput (img/s)")
    ax.set_xlabel("arm")
    ax.set_title(f"Arms — {run.label}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path)


def plot_budget_sweep(runs: list[RunRecord], out_path: str | Path) -> Path:
    """Line plot: img/s (left) and switches (right) vs hardware.device_budget, per arm."""
    return plot_budget_sweep_data(budget_sweep(runs, "throughput_rps"),
                                  budget_sweep(runs, "switches"), out_path)


def plot_budget_sweep_data(throughput: BudgetSweep, switches: BudgetSweep,
                           out_path: str | Path) -> Path:
    """`plot_budget_sweep` from `aggregate.budget_sweep` outputs."""
    fig, (ax_t, ax_s) = _new_figure(11.0, 4.2, ncols=2)
    budgets = [b for pts in (*throughput.values(), *switches.values()) for b, _ in pts]
    keys = [parse_budget(b) for b in budgets]
    kinds = {k[0] for k in keys if k}
    numeric = bool(keys) and all(keys) and len(kinds) == 1
    scale, xlabel = (1.0, "device budget (fraction of device memory)") if kinds == {0} \
        else (2.0**30, "device budget (GiB)")
    categories = list(dict.fromkeys(str(b) for b in budgets))
    styles = ("-", "--", ":", "-.")

    def x_of(budget: Any) -> float:
        key = parse_budget(budget)
        return key[1] / scale if numeric and key else categories.index(str(budget))

    for ax, sweep, ylabel in ((ax_t, throughput, "throughput (img/s)"),
                              (ax_s, switches, "expert switches (count)")):
        for gi, (group, points) in enumerate(sweep.items()):
            arms = ordered_arms({a for _, by_arm in points for a in by_arm})
            for arm in arms:
                xs = [x_of(b) for b, by_arm in points if arm in by_arm]
                ys = [by_arm[arm].mean for _, by_arm in points if arm in by_arm]
                label = arm if len(sweep) == 1 else f"{arm} ({group[0]} {group[1]})"
                ax.plot(xs, ys, marker="o", color=arm_colour(arm),
                        linestyle=styles[gi % len(styles)], label=label)
        ax.set_xlabel(xlabel if numeric else "device budget")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax_t.set_title("Throughput vs device memory budget")
    ax_s.set_title("Expert switches vs device memory budget")
    if ax_t.get_legend_handles_labels()[0]:
        ax_t.legend(fontsize=7)
    return _save(fig, out_path)


def plot_executor_sweep(sweep: dict[str, Any], out_path: str | Path, *,
                        paper_best: str | None = None, title: str | None = None) -> Path:
    """Fig. 17 style: img/s per executor candidate (``"3G+1C"``), the chosen one highlighted.

    ``sweep``: ``{"candidates": [{"name": str, "throughput_rps": float}], "chosen": str}``;
    ``paper_best`` (e.g. ``paper_values.FIG17_BEST_EXECUTORS["A"]``) is marked with a star.
    """
    candidates = sweep.get("candidates") or []
    chosen = sweep.get("chosen")
    names = [str(c.get("name")) for c in candidates]
    values = [float(c.get("throughput_rps") or 0.0) for c in candidates]
    fig, ax = _new_figure(max(5.0, 1.0 + 0.7 * len(names)), 4.0)
    colours = ["#2ca02c" if n == chosen else "#aec7e8" for n in names]
    ax.bar(range(len(names)), values, color=colours, edgecolor="black", linewidth=0.5)
    if paper_best in names:
        i = names.index(paper_best)
        ax.plot(i, values[i], marker="*", markersize=14, color="black", linestyle="none",
                label=f"paper's best ({paper_best})")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("executors (G = GPU, C = CPU)")
    ax.set_ylabel("throughput (img/s)")
    ax.set_title(title or f"Executor-count sweep (chosen: {chosen})")
    ax.legend(handles=[Patch(facecolor="#2ca02c", label=f"chosen ({chosen})"),
                       Patch(facecolor="#aec7e8", label="other candidates"),
                       *ax.get_legend_handles_labels()[0]], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path)


def plot_decay_window(search: dict[str, Any], out_path: str | Path, *,
                      paper: dict[str, Any] | None = None, title: str | None = None) -> Path:
    """Fig. 18 style: measured img/s vs experts loaded, the linear fit f(N) = kN + b, each
    window's bounds, the final window shaded and the chosen count marked.

    ``search``: ``{"trace": [{"n_experts", "throughput_rps", "fit_rps", "window": [lo, hi],
    "error"}], "chosen": int}``; ``paper`` (e.g. ``paper_values.FIG18_SEARCH["A"]``) overlays
    the paper's final window and choice.
    """
    trace = sorted(search.get("trace") or [], key=lambda p: p["n_experts"])
    chosen = search.get("chosen")
    fig, ax = _new_figure(7.0, 4.2)
    xs = [p["n_experts"] for p in trace]
    ax.plot(xs, [p["throughput_rps"] for p in trace], marker="o", color="#1f77b4",
            label="measured")
    fit = [(p["n_experts"], p["fit_rps"]) for p in trace if p.get("fit_rps") is not None]
    if fit:
        fit_x, fit_y = zip(*fit, strict=True)
        ax.plot(fit_x, fit_y, linestyle="--", color="#ff7f0e", label="linear fit f(N) = kN + b")
    for p in trace:
        if p.get("error") is not None:
            ax.annotate(f"{100 * p['error']:.1f}%", (p["n_experts"], p["throughput_rps"]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=6)
    windows = list(dict.fromkeys(tuple(p["window"]) for p in trace if p.get("window")))
    for i, (lo, hi) in enumerate(windows):
        y = 0.03 + 0.035 * (i % 8)
        ax.plot([lo, hi], [y, y], transform=ax.get_xaxis_transform(), color="grey",
                marker="|", linewidth=1, label="search windows" if i == 0 else None)
    if windows:
        ax.axvspan(*windows[-1], color="#2ca02c", alpha=0.12, label="final window")
    if chosen is not None:
        ax.axvline(chosen, color="#2ca02c", linestyle=":", label=f"chosen N = {chosen}")
    if paper:
        ax.axvspan(*paper["window"], facecolor="none", edgecolor="black", hatch="..",
                   alpha=0.4, label="paper's final window")
        ax.plot(paper["chosen_experts"], paper["throughput_rps"], marker="*", markersize=12,
                color="black", linestyle="none", label="paper's choice")
    ax.set_xlabel("experts loaded (N)")
    ax.set_ylabel("throughput (img/s)")
    ax.set_title(title or "Decay-window memory search")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out_path)
