"""Plots of what a run's engine did, per arm: latency CDF and throughput over time (from
``requests.csv``), pool occupancy over time (from ``timeline-<arm>.json`` counters) and where
the time went (``results.json`` ``time_s``).

Same style as ``plots.py`` (Agg canvas, 150 dpi, one colour per arm). ``plot_run`` writes the
plots its inputs allow; ``missing_inputs`` says which it skipped and why.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch

from coserve_jax.metrics.records import by_arm, find_records, read_records
from coserve_jax.metrics.timeline import PID_MEMORY
from coserve_jax.report.aggregate import ordered_arms
from coserve_jax.report.plots import _new_figure, _save, arm_colour
from coserve_jax.report.runs import RunRecord

# results.json time_s keys, in stacking order: executor time first (compute, waiting for a load,
# idle: they partition each executor's serving time), then work beside it (hatched).
EXECUTOR_TIME = (("compute", "compute"), ("load_wait", "load waited"), ("idle", "idle"))
BESIDE_TIME = (("load_hidden", "load hidden (I/O under compute or idle)"), ("scheduling", "scheduling (loop)"))
_BESIDE_COLOURS = ("#c7e9c0", "#fdd0a2")
_EXEC_COLOURS = ("#1f77b4", "#d62728", "#bdbdbd")


def _timelines(run: RunRecord) -> dict[str, Path]:
    """Each arm's timeline file (``timeline-<arm>.json``, or gzipped beside it as ``.json.gz``)."""
    out = {}
    for arm, entry in run.arms.items():
        name = (entry.get("timeline") or {}).get("file") if isinstance(entry, dict) else None
        for path in ([run.path / name, run.path / f"{name}.gz"] if name else []):
            if path.is_file():
                out[arm] = path
                break
    return out


def read_trace(path: str | Path) -> dict[str, Any]:
    """A timeline JSON, plain or gzipped."""
    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if str(path).endswith(".gz") else raw)


def missing_inputs(run: RunRecord) -> list[str]:
    """Why plots of this run were skipped (empty: none were)."""
    notes = []
    if find_records(run.path) is None:
        notes.append(f"`{run.label}`: no requests.csv — latency CDF and throughput over time skipped")
    if not _timelines(run):
        notes.append(f"`{run.label}`: no timeline (run with metrics.timeline=true) — pool occupancy skipped")
    if not any(isinstance(a, dict) and a.get("time_s") for a in run.arms.values()):
        notes.append(f"`{run.label}`: no time_s in results.json — time breakdown skipped")
    return notes


def plot_run(run: RunRecord, out_dir: str | Path, stem: str) -> list[Path]:
    """Every plot this run's files allow, named ``<stem>_<plot>.png``."""
    out_dir = Path(out_dir)
    written = []
    path = find_records(run.path)
    if path is not None:
        rows = by_arm(read_records(path))
        written.append(plot_latency_cdf(rows, out_dir / f"{stem}_latency_cdf.png", run.label))
        written.append(plot_throughput_over_time(rows, out_dir / f"{stem}_throughput_over_time.png", run.label))
    timelines = _timelines(run)
    if timelines:
        written.append(plot_pool_occupancy(timelines, out_dir / f"{stem}_pool_occupancy.png", run.label))
    if any(isinstance(a, dict) and a.get("time_s") for a in run.arms.values()):
        written.append(plot_time_breakdown(run.arms, out_dir / f"{stem}_time_breakdown.png", run.label))
    return written


def plot_latency_cdf(rows: dict[str, list[dict[str, Any]]], out_path: str | Path, label: str = "") -> Path:
    """Share of completed requests within each latency, per arm (log x)."""
    fig, ax = _new_figure(6.5, 4.0)
    for arm in ordered_arms(rows):
        lat = np.sort([r["latency_s"] * 1e3 for r in rows[arm] if r["latency_s"] is not None])
        if lat.size:
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post", color=arm_colour(arm),
                    label=f"{arm} (p50 {np.percentile(lat, 50):,.0f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, arrival to verdict)")
    ax.set_ylabel("share of completed requests")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"Latency CDF — {label}" if label else "Latency CDF")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out_path)


def plot_throughput_over_time(rows: dict[str, list[dict[str, Any]]], out_path: str | Path, label: str = "",
                              windows: int = 40) -> Path:
    """One panel per arm (each over its own span): completions per second in ``windows`` equal
    windows from the first arrival; the shaded band is when requests arrived."""
    arms = ordered_arms(rows)
    fig = _new_figure(7.0, 0.8 + 1.5 * len(arms))[0]
    fig.clear()  # one panel per arm instead of _new_figure's single row
    axes = fig.subplots(len(arms), 1, squeeze=False)[:, 0]
    for ax, arm in zip(axes, arms, strict=True):
        done = [r["finish_s"] for r in rows[arm] if r["latency_s"] is not None]
        arrivals = [r["arrival_s"] for r in rows[arm]]
        span = max(done, default=1.0) or 1.0
        width = span / windows
        edges = np.linspace(0.0, span, windows + 1)
        rate = np.histogram(done, bins=edges)[0] / width
        ax.axvspan(min(arrivals, default=0.0), max(arrivals, default=0.0), color="grey", alpha=0.15,
                   label="arrivals")
        ax.step(edges, np.append(rate, rate[-1:]), where="post", color=arm_colour(arm),
                label=f"{arm}: {len(done) / span:,.0f} img/s overall; windows of {width:.3g} s")
        ax.set_ylabel("img/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper right")
    axes[-1].set_xlabel("time since the first arrival (s)")
    fig.suptitle(f"Throughput over time (completions per second) — {label}" if label
                 else "Throughput over time (completions per second)", fontsize=10)
    return _save(fig, out_path)


def pool_counters(trace: dict[str, Any]) -> tuple[float, dict[str, list[tuple[float, dict[str, int]]]]]:
    """(serving start s, {pool: [(t s, {resident, loading, batch} bytes), ...]}) from a timeline."""
    start = 0.0
    pools: dict[str, list[tuple[float, dict[str, int]]]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "i" and e["name"] == "serving starts":
            start = e["ts"] / 1e6
        elif e["ph"] == "C" and e["pid"] == PID_MEMORY and e["name"].startswith("pool "):
            pools.setdefault(e["name"][len("pool "):], []).append((e["ts"] / 1e6, e["args"]))
    return start, pools


def plot_pool_occupancy(timelines: dict[str, Path], out_path: str | Path, label: str = "") -> Path:
    """One panel per arm: each pool's bytes in use (solid: resident + loading + batch memory;
    dotted: resident experts only) over time from serving start; dashed: its budget when it is
    within the panel's range (an unlimited pool's is not drawn)."""
    arms = ordered_arms(timelines)
    fig = _new_figure(7.5, 1.0 + 2.0 * len(arms))[0]
    fig.clear()  # one panel per arm instead of _new_figure's single row
    axes = fig.subplots(len(arms), 1, squeeze=False)[:, 0]  # own x range each: runs differ 20x in length
    styles = ("-", "--", "-.", ":")
    for ax, arm in zip(axes, arms, strict=True):
        trace = read_trace(timelines[arm])
        start, pools = pool_counters(trace)
        budgets = trace.get("otherData", {}).get("budgets_bytes", {})
        peak = 1
        for i, (pool, points) in enumerate(sorted(pools.items())):
            t = [p[0] - start for p in points]
            used = [sum(p[1].values()) / 2**20 for p in points]
            resident = [p[1]["resident"] / 2**20 for p in points]
            colour = f"C{i}"
            ax.step(t, used, where="post", color=colour, linewidth=1.2, label=f"{pool}")
            ax.step(t, resident, where="post", color=colour, linewidth=0.8, linestyle=":")
            peak = max(peak, max(used, default=0))
            budget = budgets.get(pool)
            if budget is not None and budget / 2**20 <= 1.5 * peak:
                ax.axhline(budget / 2**20, color=colour, linestyle=styles[1], linewidth=0.8)
        ax.set_ylabel("MiB")
        ax.set_title(arm, fontsize=9, color=arm_colour(arm), loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right", ncol=3)
    axes[-1].set_xlabel("time since serving started (s; negative: initial loads)")
    fig.suptitle(f"Pool occupancy — {label}" if label else "Pool occupancy", fontsize=10)
    return _save(fig, out_path)


def plot_time_breakdown(arms: dict[str, Any], out_path: str | Path, label: str = "") -> Path:
    """Where the time went, per arm, as shares of its executors' serving time (so arms whose
    runs differ 20x in length compare): compute, waiting for a load and idle add up to 100%;
    load hidden (I/O that overlapped compute or idle) and scheduling (the loop's policy calls)
    ran beside them and are stacked above, hatched. Above each bar: seconds per executor."""
    names = [a for a in ordered_arms(arms) if isinstance(arms[a], dict) and arms[a].get("time_s")]
    fig, ax = _new_figure(max(5.5, 1.5 + 0.8 * len(names)), 4.2)
    for x, arm in enumerate(names):
        t = arms[arm]["time_s"]
        n = max(1, len(arms[arm].get("executors") or []))
        total = sum(float(t.get(k) or 0.0) for k, _ in EXECUTOR_TIME) or 1.0
        bottom = 0.0
        for (key, _), colour in zip(EXECUTOR_TIME, _EXEC_COLOURS, strict=True):
            v = 100 * float(t.get(key) or 0.0) / total
            ax.bar(x, v, 0.6, bottom=bottom, color=colour, edgecolor="black", linewidth=0.4)
            bottom += v
        for (key, _), colour in zip(BESIDE_TIME, _BESIDE_COLOURS, strict=True):
            v = 100 * float(t.get(key) or 0.0) / total
            ax.bar(x, v, 0.6, bottom=bottom, color=colour, edgecolor="black", linewidth=0.4, hatch="//")
            bottom += v
        ax.annotate(f"{total / n:.3g} s", (x, bottom), textcoords="offset points", xytext=(0, 2),
                    ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    for tick, arm in zip(ax.get_xticklabels(), names, strict=True):
        tick.set_color(arm_colour(arm))
    ax.set_ylabel("% of the executors' serving time")
    ax.set_title(f"Where the time went — {label}" if label else "Where the time went")
    handles = [Patch(facecolor=c, edgecolor="black", label=lab) for (_, lab), c in zip(EXECUTOR_TIME, _EXEC_COLOURS, strict=True)]
    handles += [Patch(facecolor=c, edgecolor="black", hatch="//", label=lab)
                for (_, lab), c in zip(BESIDE_TIME, _BESIDE_COLOURS, strict=True)]
    fig.legend(handles=handles, fontsize=7, loc="outside right upper")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path)
