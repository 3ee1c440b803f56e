"""Plot of a black-box search against the planner (``+experiment=search_sim``;
``scripts/search_vs_planner.py``): best img/s found so far per trial, with reference arms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from coserve_jax.report.plots import _new_figure, _save, arm_colour


def plot_search_convergence(trials: Mapping[str, Sequence[float]], refs: Mapping[str, Mapping[str, float]],
                            planner_runs: Mapping[str, int], out_path: str | Path) -> Path:
    """One panel per hardware: each trial's img/s (dots) and the best so far (line); reference
    arms' img/s on the same sample as dashed lines; the planner's number of simulated runs as a
    vertical line (what the search had found with as many)."""
    names = list(trials)
    fig, axes = _new_figure(5.0 * len(names), 3.8, ncols=len(names))
    axes = np.atleast_1d(axes)
    for ax, hw in zip(axes, names, strict=True):
        values = np.asarray(trials[hw], dtype=float)
        x = np.arange(1, len(values) + 1)
        ok = values > 0
        floor = 0.97 * min([*values[ok], *refs.get(hw, {}).values()], default=1.0)
        ax.plot(x[ok], values[ok], "o", markersize=3, color="grey", alpha=0.6, label="trial")
        if (~ok).any():  # infeasible trials score 0: drawn on the floor so they do not squash the axis
            ax.plot(x[~ok], np.full((~ok).sum(), floor), "x", color="black", label="infeasible (0)")
        ax.step(x, np.maximum.accumulate(values), where="post", color="black", label="search: best so far")
        ax.set_ylim(bottom=floor * 0.995)
        for arm, value in refs.get(hw, {}).items():
            ax.axhline(value, color=arm_colour(arm), linestyle="--", linewidth=1, label=f"{arm} ({value:.1f})")
        if hw in planner_runs:
            ax.axvline(planner_runs[hw], color=arm_colour("coserve_best"), linestyle=":", linewidth=1,
                       label=f"planner's {planner_runs[hw]} runs (coserve_best)")
        ax.set_xlabel("trial (simulated run)")
        ax.set_ylabel("img/s on the sample trace")
        ax.set_title(hw, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Black-box search (Optuna TPE) vs the paper's planner", fontsize=10)
    return _save(fig, out_path)
