"""The cluster-scaling study's tables and plots (``+experiment=cluster_scaling``).

``scaling.csv``: one row per (model, replicas, router) with img/s and switches of the
saturated run and the latencies at one offered load per (model, replicas) (``p50_ms``,
``p99_ms``); ``scaling.md`` the same per model plus the targets; ``scaling_*.png`` the plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coserve_jax.report.plots import _new_figure, _save
from coserve_jax.report.table_render import Table, fmt_number, to_markdown, write_table

ROUTER_COLOURS = {"affinity": "#d62728", "mux": "#1f77b4", "round_robin": "#7f7f7f"}
COLUMNS = ["model", "replicas", "router", "arm", "throughput_rps", "throughput_per_replica_rps",
           "speedup_vs_one_replica", "switches", "switches_during_run", "spills", "repartitions",
           "offered_rps_at_load", "p50_ms", "p99_ms", "p50_ms_saturated", "p99_ms_saturated",
           "requests", "failed", "sim_s"]


def scaling_records(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per (model, replicas, router); speedups against the model's one-replica
    coserve_plus (the affinity router at one replica, else the best one-replica run)."""
    cells = results["cells"]
    base: dict[str, float] = {}
    for c in cells:
        if c["replicas"] == 1 and c["saturated"]["arm"] == "coserve_plus":
            base[c["model"]] = max(base.get(c["model"], 0.0), c["saturated"]["throughput_rps"])
    out = []
    for c in cells:
        s, a = c["saturated"], c["at_load"]
        rb = s.get("router", {}).get("rebuilds", {})
        out.append({
            "model": c["model"], "replicas": c["replicas"], "router": c["router"], "arm": s["arm"],
            "throughput_rps": s["throughput_rps"], "throughput_per_replica_rps": s["throughput_per_replica_rps"],
            "speedup_vs_one_replica": s["throughput_rps"] / base[c["model"]] if base.get(c["model"]) else None,
            "switches": s["switches"]["count"], "switches_during_run": s["switches"]["during_run"],
            "spills": s.get("router", {}).get("spills"),
            "repartitions": sum(v for k, v in rb.items() if k != "start") if rb else None,
            "offered_rps_at_load": a.get("offered_rps"),
            "p50_ms": a["latency_ms"]["p50"], "p99_ms": a["latency_ms"]["p99"],
            "p50_ms_saturated": s["latency_ms"]["p50"], "p99_ms_saturated": s["latency_ms"]["p99"],
            "requests": s["requests"]["submitted"], "failed": s["requests"]["failed"] + a["requests"]["failed"],
            "sim_s": s["engine_s"],
        })
    return out


def scaling_table(records: Sequence[Mapping[str, Any]], model: str) -> Table:
    header = ["replicas", "router", "img/s", "img/s per replica", "× one replica", "switches (during run)",
              "spills / re-partitions", "p50 / p99 ms at load (offered img/s)", "p99 ms saturated"]
    rows = []
    recs = [r for r in records if r["model"] == model]
    for r in recs:
        moves = "—" if r["spills"] is None else f"{r['spills']:,} / {r['repartitions']}"
        rows.append([str(r["replicas"]), r["router"], fmt_number(r["throughput_rps"]),
                     fmt_number(r["throughput_per_replica_rps"]), fmt_number(r["speedup_vs_one_replica"]),
                     f"{r['switches']:,} ({r['switches_during_run']:,})", moves,
                     f"{fmt_number(r['p50_ms'])} / {fmt_number(r['p99_ms'])} ({fmt_number(r['offered_rps_at_load'])})",
                     fmt_number(r["p99_ms_saturated"])])
    return Table(f"scaling_{model}", f"Cluster scaling, {model}", header, rows, [dict(r) for r in recs])


def targets(records: Sequence[Mapping[str, Any]], model: str = "pcb_paper_a") -> list[list[str]]:
    """The issue's targets (simulated, model at 25% of the zoo per replica) against the runs."""
    by = {(r["replicas"], r["router"]): r for r in records if r["model"] == model}
    rows = []

    def get(n: int, router: str, key: str) -> float | None:
        r = by.get((n, router))
        return None if r is None else r[key]

    def row(name: str, target: str, value: float | None, ok: bool | None) -> None:
        rows.append([name, target, fmt_number(value), "—" if ok is None else ("yes" if ok else "**no**")])

    s4 = get(4, "affinity", "speedup_vs_one_replica")
    row("affinity, 4 replicas: × one replica's coserve_plus", "≥ 3.5×", s4, None if s4 is None else s4 >= 3.5)
    a4, m4 = get(4, "affinity", "throughput_rps"), get(4, "mux", "throughput_rps")
    v = a4 / m4 if a4 and m4 else None
    row("affinity, 4 replicas: × mux", "≥ 1.5×", v, None if v is None else v >= 1.5)
    s16 = get(16, "affinity", "speedup_vs_one_replica")
    row("affinity, 16 replicas: × one replica", "≥ 12×", s16, None if s16 is None else s16 >= 12)
    for n in sorted({n for n, _ in by}):
        pa, pm = get(n, "affinity", "p99_ms"), get(n, "mux", "p99_ms")
        if pa is not None and pm is not None:
            row(f"p99 at equal load, {n} replicas: affinity vs mux (ms)", "≤ mux", pa, pa <= pm)
    return rows


def plot_scaling(records: Sequence[Mapping[str, Any]], key: str, ylabel: str, out_path: str | Path,
                 log_y: bool = False) -> Path:
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = _new_figure(4.2 * len(models), 3.4, ncols=len(models))
    axes = axes if len(models) > 1 else [axes]
    for ax, model in zip(axes, models):
        for router in dict.fromkeys(r["router"] for r in records):
            pts = sorted((r["replicas"], r[key]) for r in records
                         if r["model"] == model and r["router"] == router and r[key] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=router, color=ROUTER_COLOURS.get(router))
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("replicas")
        ax.set_ylabel(ylabel)
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_path)


def write_scaling_report(results: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    records = scaling_records(results)
    csv_table = Table("scaling", "Cluster scaling", COLUMNS, [], [{k: r[k] for k in COLUMNS} for r in records])
    paths = list(write_table(csv_table, out))
    md = ["# Cluster scaling (generated by `python -m coserve_jax.run +experiment=cluster_scaling`)", ""]
    for model in dict.fromkeys(r["model"] for r in records):
        md += [f"## {model}", "", to_markdown(scaling_table(records, model)), ""]
    md += ["## Targets (pcb_paper_a)", "",
           to_markdown(Table("targets", "Targets against this run", ["target", "wanted", "measured", "met"], targets(records), [])), ""]
    (out / "scaling.md").write_text("\n".join(md))
    paths.append(out / "scaling.md")
    paths.append(plot_scaling(records, "throughput_rps", "img/s (saturated)", out / "scaling_throughput.png",
                              log_y=True))
    paths.append(plot_scaling(records, "throughput_per_replica_rps", "img/s per replica",
                              out / "scaling_per_replica.png"))
    paths.append(plot_scaling(records, "p99_ms", "p99 latency at equal load (ms)", out / "scaling_p99.png",
                              log_y=True))
    paths.append(plot_scaling(records, "switches", "expert switches", out / "scaling_switches.png", log_y=True))
    return paths
