"""The planner's tables and plots (``+experiment=plan``, jobs/plan.py): the executor-count sweep
(Fig. 17 style) and the decay-window memory search (Fig. 18 style), from the dicts the planner
writes as ``executor_sweep.json`` and ``decay_window.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coserve_jax.report import paper_values as pv
from coserve_jax.report.plots import plot_decay_window, plot_executor_sweep
from coserve_jax.report.table_render import Table, fmt_number

PAPER_MACHINES = ("numa_3080ti", "uma_m2")


def sweep_table(sweep: dict[str, Any]) -> Table:
    best = sweep["best_rps"] or 1.0
    rows, records = [], []
    for c in sweep["candidates"]:
        chosen = c["name"] == sweep["chosen"]
        f = c.get("expert_fraction")
        ftxt = "reserve best batch" if f is None else f"{f:.3f}"
        if c.get("fallback_fraction"):
            ftxt += " *"
        if c.get("infeasible"):
            ftxt = "infeasible"
        rows.append([c["name"], ftxt, fmt_number(c["throughput_rps"], integers=False),
                     f"{100 * c['throughput_rps'] / best:.1f}%", "✓" if chosen else ""])
        records.append({"executors": c["name"], "expert_fraction": f, "fallback_fraction": bool(c.get("fallback_fraction")),
                        "infeasible": bool(c.get("infeasible")), "throughput_rps": c["throughput_rps"],
                        "vs_best": c["throughput_rps"] / best, "chosen": chosen})
    notes = [f"expert_fraction while sweeping: {sweep.get('expert_fraction')} "
             "(null: reserve the profiled best batch, capped at hardware.max_batch_memory_fraction)"]
    if any(c.get("fallback_fraction") for c in sweep["candidates"]):
        notes.append("*: that split cannot hold the largest expert plus a batch with these counts; measured "
                     "with the smallest pools that hold the largest expert (the rest for batches)")
    if any(c.get("infeasible") for c in sweep["candidates"]):
        notes.append("infeasible: no split leaves each executor's share the largest expert plus a batch of one "
                     "(recorded as 0 img/s)")
    if sweep.get("repeats", 1) > 1:
        notes.append(f"img/s: median of {sweep['repeats']} runs of the sample")
    return Table("executor_sweep", "Executor-count sweep (Fig. 17 style)",
                 ["executors", "expert_fraction", "img/s", "vs best", "chosen"], rows, records, notes=notes)


def decay_table(dw: dict[str, Any]) -> Table:
    rows, records = [], []
    for p in dw["trace"]:
        f = dw["expert_fraction"].get(str(p["n_experts"]))
        rows.append([str(p["n_experts"]), f"{f:.3f}" if f is not None else "—",
                     fmt_number(p["throughput_rps"], integers=False),
                     fmt_number(p["fit_rps"], integers=False),
                     "—" if p["error"] is None else f"{100 * p['error']:.1f}%",
                     f"{p['window'][0]}–{p['window'][1]}", "refine" if p.get("refine") else "bound"])
        records.append({"n_experts": p["n_experts"], "expert_fraction": f, "throughput_rps": p["throughput_rps"],
                        "fit_rps": p["fit_rps"], "error": p["error"], "window_lo": p["window"][0],
                        "window_hi": p["window"][1], "refine": bool(p.get("refine"))})
    lo, hi = dw["final_window"]
    return Table("decay_window", "Decay-window memory search (Fig. 18 style)",
                 ["N experts", "expert_fraction", "img/s", "fit f(N)", "shortfall", "window", "point"],
                 rows, records,
                 notes=[f"executors {dw['executors']}; w0 = {dw['w0']:g}, decay = {dw['decay']:.2f}, "
                        f"error margin {100 * dw['error_margin']:.0f}%; stopped by {dw['stopped_by']}",
                        f"final window {lo}–{hi}; chosen N = {dw['chosen']} (best measured inside the window)",
                        f"feasible N: {dw['n_min_experts']}–{dw['n_max_experts']} "
                        f"({dw['fast_kind']} budget {dw['budget_bytes'] / 2**20:.1f} MiB)"]
                 + ([f"img/s: median of {dw['repeats']} runs of the sample"] if dw.get("repeats", 1) > 1 else []))


def plan_plots(sweep: dict[str, Any], dw: dict[str, Any], out: Path, *, model: str, hardware: str,
               backend: str, board: str = "") -> list[Path]:
    """``executor_sweep.png`` and ``decay_window.png`` of a plan run. For a paper board (``board``
    "A" or "B"; "" otherwise) they mark the paper's Fig. 17 pick on its machines and its Fig. 18
    search on the NUMA machine."""
    title = f"{model} on {hardware} ({backend})"
    return [
        plot_executor_sweep(sweep, out / "executor_sweep.png",
                            paper_best=pv.FIG17_BEST_EXECUTORS.get(board) if hardware in PAPER_MACHINES else None,
                            title=f"Executor sweep — {title}"),
        plot_decay_window(dw, out / "decay_window.png",
                          paper=pv.FIG18_SEARCH.get(board) if hardware == "numa_3080ti" else None,
                          title=f"Decay-window search — {title}"),
    ]
