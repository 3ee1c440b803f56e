"""Table builders: runs → `Table`s with the paper's value and the ratio beside ours.

Comparison cells read ``ours (paper) ×ratio`` with ratio = ours / paper (2 decimals); a value
averaged over several runs (seeds) says so in the notes. Every builder takes the list of
`RunRecord`s from `runs.load_runs` and returns one `Table` (or a list for per-run tables).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coserve_jax.report import paper_values as pv
from coserve_jax.report.aggregate import (
    Grid,
    Stat,
    _hashable,
    arms_in,
    budget_sweep,
    group_sort_key,
    latency_ms,
    metric_grid,
    ordered_arms,
    peak_bytes,
    switch_count,
    throughput_rps,
    throughput_rps_incl_init,
)
from coserve_jax.report.runs import RunRecord
from coserve_jax.report.table_render import (
    EMPTY,
    Table,
    comparison_cell,
    fmt_bytes,
    fmt_number,
    ratio,
)

PaperLookup = Callable[[str, str, str], float | None]
RangeLookup = Callable[[str, str], tuple[int, int] | None]

CELL_NOTE = "Cells: ours (paper) ×ours/paper; (lo–hi) is a range the paper states for that arm."
BASELINE_NOTE = (
    "Paper img/s for samba, samba_fifo, samba_parallel are derived as CoServe Best / speedup "
    "label, assuming the labels are printed in the order samba / samba_fifo / samba_parallel "
    "(paper_values.BASELINE_LABEL_ORDER)."
)
MAPPING_NOTE = "Paper's CoServe Best ↔ coserve_best; the ablation's full CoServe ↔ coserve."
VARIANT_NOTE = (
    "Variants are set against the paper arm they are a setup of (paper_values.PAPER_ARM_OF): "
    "samba_casual_split (Samba-CoE with CoServe Casual's 25% batch reserve and the CPU pool's host RAM "
    "idle, the configuration before issue #22) ↔ Samba-CoE, samba_parallel_gpu ↔ Samba-CoE Parallel, "
    "none_gpu / em_gpu / em_ra_gpu / coserve_gpu (GPU executors only) ↔ None / EM / EM+RA / full. "
    "The paper most likely fed the CPU executor, as samba_parallel / none / em / em_ra do: its Parallel "
    "has 'as many executors as CoServe' (the CPU one included), its ablation base an 'even distribution', "
    "and its None / EM / EM+RA img/s and assigning step are near the CPU-fed rungs' "
    "(experiments/paper_tables/README.md, Fairness item 2)."
)
INIT_NOTE = (
    "img/s is throughput_rps, counted from the first arrival: the initial preloads (time_s.init) are "
    "not counted, and this is what every paper figure is compared with (the paper does not say whether "
    "its img/s include them). throughput_incl_init: the same, counted from the start of initialisation."
)
ORACLE_NOTE = (
    "oracle: the Belady-on-trace reference (coserve_plus with Belady eviction on the known trace), not a "
    "bound: with experts of varying sizes, several pools and scheduling feedback other arms can beat it. "
    "all_resident is the ceiling."
)
SWITCH_NOTE = (
    "Switches compared with the paper are loads during the run (switches.during_run): the paper's "
    "counts start after initialisation. `+N pre` beside a cell: the arm's initial preloads, where any "
    "(switches.count = during the run + preloads, DESIGN §1)."
)


def throughput_table(runs: list[RunRecord], arms: list[str] | None = None) -> Table:
    """(a) img/s per (hardware, task) × arm, beside Fig. 13/15's values."""
    return _comparison_table(
        runs, "throughput_rps", "throughput", "Throughput (img/s) — paper Fig. 13/15",
        arms, pv.paper_throughput_rps, None,
        [CELL_NOTE, BASELINE_NOTE, MAPPING_NOTE, VARIANT_NOTE, INIT_NOTE, *_oracle_note(runs),
         *_mixed_budget_notes(runs)])


def throughput_incl_init_table(runs: list[RunRecord], arms: list[str] | None = None) -> Table:
    """img/s counted from the start of initialisation (the preloads' seconds counted), beside
    the paper's figures (which the main comparison sets against throughput_rps)."""
    return _comparison_table(
        runs, "throughput_rps_incl_init", "throughput_incl_init",
        "Throughput counted from initialisation (img/s) — paper Fig. 13/15 beside",
        arms, pv.paper_throughput_rps, None,
        [CELL_NOTE, INIT_NOTE, BASELINE_NOTE, VARIANT_NOTE, *_mixed_budget_notes(runs)])


def switches_table(runs: list[RunRecord], arms: list[str] | None = None) -> Table:
    """(b) expert switches during the run per (hardware, task) × arm, beside Fig. 14/16's
    values, with the initial preloads beside each cell."""
    return _comparison_table(
        runs, "switches_during_run", "switches", "Expert switches during the run — paper Fig. 14/16",
        arms, pv.paper_switches, pv.paper_switch_range,
        [CELL_NOTE, SWITCH_NOTE, MAPPING_NOTE, *_mixed_budget_notes(runs)], beside="initial_preloads")


def ablation_table(runs: list[RunRecord]) -> Table:
    """(c) the ablation ladder none → em → em_ra → coserve: img/s and switches (Fig. 15/16)."""
    tput, sw = metric_grid(runs, "throughput_rps"), metric_grid(runs, "switches_during_run")
    pre = metric_grid(runs, "initial_preloads")
    present = {a for by_arm in tput.values() for a in by_arm}
    arms = list(pv.ABLATION_ARMS) + [a for a in pv.GPU_ABLATION_ARMS if a in present]
    header = ["hardware", "task", *(f"{a} img/s" for a in arms), *(f"{a} switches" for a in arms)]
    rows, records = [], []
    for group in _groups(tput, sw):
        row = list(group)
        for metric, grid, lookup, rng, beside in (
            ("throughput_rps", tput, pv.paper_throughput_rps, None, None),
            ("switches", sw, pv.paper_switches, pv.paper_switch_range, pre),
        ):
            for arm in arms:
                stat = grid.get(group, {}).get(arm)
                cell, record = _compare(group, arm, stat, lookup, rng,
                                        integers=not metric.startswith("throughput_rps"),
                                        beside=(beside or {}).get(group, {}).get(arm))
                row.append(cell)
                records.append({"metric": metric, **record})
        rows.append(row)
    return Table("ablation", "Ablation ladder — paper Fig. 15 (img/s) and Fig. 16 (switches)",
                 header, rows, records,
                 [CELL_NOTE, SWITCH_NOTE, MAPPING_NOTE, INIT_NOTE,
                  *([VARIANT_NOTE] if present & set(pv.GPU_ABLATION_ARMS) else []),
                  *_seed_notes(tput), *_mixed_budget_notes(runs)])


def speedup_table(runs: list[RunRecord], baseline: str = "samba") -> Table:
    """(d) each arm's img/s over ``baseline``'s in the same (hardware, task), vs the paper's."""
    grid = metric_grid(runs, "throughput_rps")
    arms = [a for a in arms_in(grid) if a != baseline]
    header = ["hardware", "task", *arms]
    rows, records = [], []
    for group, by_arm in grid.items():
        base = by_arm.get(baseline)
        paper_base = pv.paper_throughput_rps(*group, baseline)
        row = list(group)
        for arm in arms:
            stat = by_arm.get(arm)
            ours = stat.mean / base.mean if stat and base and base.mean else None
            paper_arm = pv.paper_throughput_rps(*group, arm)
            paper = ratio(paper_arm, paper_base)
            row.append(comparison_cell(ours, paper, integers=False))
            records.append({"hardware": group[0], "task": group[1], "arm": arm,
                            "ours_speedup": ours, "paper_speedup": paper,
                            "ratio": ratio(ours, paper)})
        rows.append(row)
    notes = [f"Speedup = arm img/s / {baseline} img/s in the same run group.", CELL_NOTE]
    if pv.paper_arm(baseline) in pv.DERIVED_BASELINE_ARMS:
        notes.append("Paper speedups of coserve_best over samba* are Fig. 13's labels. "
                     + BASELINE_NOTE)
    if baseline in pv.PAPER_ARM_OF:
        notes.append(VARIANT_NOTE)
    return Table(f"speedup_vs_{baseline}", f"Speedup over {baseline} — paper Fig. 13 labels",
                 header, rows, records, notes)


def arm_tables(runs: list[RunRecord]) -> list[Table]:
    """(e) one generic table per run: every arm's img/s, switches, latency, peak memory and
    distance to the Belady-on-trace reference (``oracle``) and the ``all_resident`` ceiling."""
    return [arm_table(run) for run in runs]


def arm_table(run: RunRecord) -> Table:
    """(e) for one run: arm, img/s (and counted from initialisation), switches, p50/p99 ms, peak
    bytes, % of the Belady-on-trace reference (oracle) and of all_resident."""
    header = ["arm", "img/s", "img/s incl. init", "switches", "p50 ms", "p99 ms", "peak memory",
              "% of Belady ref. (oracle)", "% of all_resident"]
    bounds = {b: throughput_rps(run.arms.get(b) or {}) for b in ("oracle", "all_resident")}
    hw, task = run.hardware, run.task
    rows, records = [], []
    infeasible = run.infeasible
    for name in ordered_arms(set(run.arms) | set(infeasible)):
        if name in infeasible:
            # Not run: its memory budget cannot hold it (results.json arms[name].infeasible).
            rows.append([name, f"infeasible: {infeasible[name]}", *([""] * (len(header) - 2))])
            records.append({"run": run.label, "hardware": hw, "task": task, "arm": name,
                            "infeasible": infeasible[name]})
            continue
        arm = run.arms[name] if isinstance(run.arms[name], dict) else {}
        rps, sw = throughput_rps(arm), switch_count(arm)
        rps_init = throughput_rps_incl_init(arm)
        p50, p99, peak = latency_ms(arm, "p50"), latency_ms(arm, "p99"), peak_bytes(arm)
        pct = {b: _percent(rps, v) for b, v in bounds.items()}
        paper_rps = pv.paper_throughput_rps(hw, task, name)
        paper_sw = pv.paper_switches(hw, task, name)
        rows.append([
            name,
            comparison_cell(rps, paper_rps, integers=False) or EMPTY,
            fmt_number(rps_init, integers=False),
            comparison_cell(sw, paper_sw, pv.paper_switch_range(hw, name)) or EMPTY,
            fmt_number(p50), fmt_number(p99), fmt_bytes(peak),
            _fmt_percent(pct["oracle"]), _fmt_percent(pct["all_resident"]),
        ])
        records.append({
            "run": run.label, "hardware": hw, "task": task, "arm": name,
            "throughput_rps": rps, "throughput_rps_incl_init": rps_init, "paper_throughput_rps": paper_rps,
            "throughput_ratio": ratio(rps, paper_rps),
            "switches": sw, "paper_switches": paper_sw, "switches_ratio": ratio(sw, paper_sw),
            "latency_p50_ms": p50, "latency_p99_ms": p99, "peak_bytes": peak,
            "pct_of_oracle": pct["oracle"], "pct_of_all_resident": pct["all_resident"],
        })
    where = " ".join(x for x in (hw, task) if x)
    title = f"Arms — {run.label}" + (f" ({where})" if where else "")
    notes = [CELL_NOTE, "peak memory: sum of the per-pool/device peaks in peak_bytes.",
             "% of a reference: arm img/s / its img/s × 100 (empty when the run lacks it).",
             "img/s incl. init: counted from the start of initialisation (the initial preloads), "
             "not from the first arrival.", ORACLE_NOTE]
    if infeasible:
        notes.append("infeasible: the arm did not run; its memory budget cannot hold the largest "
                     "expert plus its batches (the reason names the setting to raise).")
    return Table(f"arms_{_slug(run.label)}", title, header, rows, records, notes)


def budget_table(runs: list[RunRecord]) -> Table:
    """(f) memory-budget sweep: for each ``hardware.device_budget``, img/s and switches per
    arm (runs without a budget are left out)."""
    tput, sw = budget_sweep(runs, "throughput_rps"), budget_sweep(runs, "switches")
    infeasible = _infeasible_by_budget(runs)
    arms = ordered_arms({a for pts in tput.values() for _, by_arm in pts for a in by_arm}
                        | {a for pts in sw.values() for _, by_arm in pts for a in by_arm}
                        | {a for by_budget in infeasible.values() for names in by_budget.values()
                           for a in names})
    header = ["hardware", "task", "device_budget", *(f"{a} img/s" for a in arms),
              *(f"{a} switches" for a in arms)]
    rows, records = [], []
    for group, points in tput.items():
        sw_points = dict(sw.get(group, []))
        for budget, by_arm in points:
            sw_by_arm = sw_points.get(budget, {})
            out = infeasible.get(group, {}).get(budget, set())
            rows.append([*group, str(budget),
                         *(_stat_cell(by_arm.get(a), integers=False, infeasible=a in out) for a in arms),
                         *(_stat_cell(sw_by_arm.get(a), infeasible=a in out) for a in arms)])
            for a in arms:
                t, s = by_arm.get(a), sw_by_arm.get(a)
                if not (t or s) and a in out:
                    records.append({"hardware": group[0], "task": group[1], "device_budget": budget,
                                    "arm": a, "throughput_rps": None, "switches": None,
                                    "n_runs": 0, "infeasible": True})
                if t or s:
                    records.append({"hardware": group[0], "task": group[1],
                                    "device_budget": budget, "arm": a,
                                    "throughput_rps": t.mean if t else None,
                                    "switches": s.mean if s else None,
                                    "n_runs": max(x.n for x in (t, s) if x)})
    skipped = sum(1 for r in runs if r.device_budget is None)
    notes = ["device_budget: hardware.device_budget of the resolved config "
             "(.hydra/config.yaml), else results.json config.device_budget."]
    if skipped:
        notes.append(f"{skipped} run(s) without a device_budget left out.")
    if any(infeasible.values()):
        notes.append("infeasible: the arm did not run at that budget (it cannot hold the largest "
                     "expert plus its batches); see the run's arms table for the reason.")
    return Table("budget_sweep", "Memory-budget sweep (img/s, switches)", header, rows,
                 records, notes)


def _comparison_table(runs: list[RunRecord], metric: str, name: str, title: str,
                      arms: list[str] | None, lookup: PaperLookup,
                      range_lookup: RangeLookup | None, notes: list[str],
                      beside: str | None = None) -> Table:
    grid = metric_grid(runs, metric)
    extra = metric_grid(runs, beside) if beside else {}
    arms = arms if arms is not None else arms_in(grid)
    rows, records = [], []
    for group, by_arm in grid.items():
        row = list(group)
        for arm in arms:
            cell, record = _compare(group, arm, by_arm.get(arm), lookup, range_lookup,
                                    integers=not metric.startswith("throughput_rps"),
                                    beside=extra.get(group, {}).get(arm))
            row.append(cell)
            records.append(record)
        rows.append(row)
    return Table(name, title, ["hardware", "task", *arms], rows, records,
                 [*notes, *_seed_notes(grid)])


def _compare(group: tuple[str, str], arm: str, stat: Stat | None, lookup: PaperLookup,
             range_lookup: RangeLookup | None, integers: bool = True,
             beside: Stat | None = None) -> tuple[str, dict[str, Any]]:
    """One comparison cell and its record; ``beside`` (initial preloads) is appended as ``+N pre``."""
    hw, task = group
    ours = stat.mean if stat else None
    paper = lookup(hw, task, arm)
    rng = range_lookup(hw, arm) if range_lookup and paper is None else None
    record = {
        "hardware": hw, "task": task, "arm": arm, "ours": ours,
        "ours_std": stat.std if stat else None, "n_runs": stat.n if stat else 0,
        "paper": paper, "ratio": ratio(ours, paper),
        "paper_range_lo": rng[0] if rng else None, "paper_range_hi": rng[1] if rng else None,
        "paper_derived": bool(paper is not None and pv.paper_arm(arm) in pv.DERIVED_BASELINE_ARMS
                              and lookup is pv.paper_throughput_rps),
    }
    cell = comparison_cell(ours, paper, rng if stat else None, integers)
    if beside is not None and stat is not None:
        record["initial_preloads"] = beside.mean
        if beside.mean > 0:
            cell += f" +{fmt_number(beside.mean)} pre"
    return cell, record


def _oracle_note(runs: list[RunRecord]) -> list[str]:
    return [ORACLE_NOTE] if any("oracle" in r.arms for r in runs) else []


def _groups(*grids: Grid) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for grid in grids:
        seen.extend(g for g in grid if g not in seen)
    return sorted(seen, key=group_sort_key)


def _seed_notes(grid: Grid) -> list[str]:
    counts = {s.n for by_arm in grid.values() for s in by_arm.values()}
    if counts - {1}:
        return [f"Values are means over runs of the same (hardware, task, arm); runs per cell: "
                f"{', '.join(str(n) for n in sorted(counts))} (n_runs and ours_std in the CSV)."]
    return []


def _mixed_budget_notes(runs: list[RunRecord]) -> list[str]:
    """Warn when one (hardware, task) row averages runs of different device budgets."""
    budgets: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        budgets.setdefault(run.group, set()).add(str(run.device_budget))
    mixed = {g: b for g, b in budgets.items() if len(b) > 1}
    return [f"Warning: {hw} {task} averages runs of different device budgets "
            f"({', '.join(sorted(b))}); see the budget table." for (hw, task), b in mixed.items()]


def _infeasible_by_budget(runs: list[RunRecord]) -> dict[tuple[str, str], dict[Any, set[str]]]:
    """(hardware, task) → {device_budget: arms reported infeasible there}, keyed like
    aggregate.budget_sweep's points."""
    out: dict[tuple[str, str], dict[Any, set[str]]] = {}
    for run in runs:
        if run.device_budget is None or not run.infeasible:
            continue
        out.setdefault(run.group, {}).setdefault(_hashable(run.device_budget), set()).update(run.infeasible)
    return out


def _stat_cell(stat: Stat | None, integers: bool = True, infeasible: bool = False) -> str:
    if stat is None:
        return "infeasible" if infeasible else ""
    spread = f" ±{fmt_number(stat.std, integers=integers)}" if stat.n > 1 else ""
    return fmt_number(stat.mean, integers=integers) + spread


def _percent(value: float | None, bound: float | None) -> float | None:
    return value / bound * 100 if value is not None and bound else None


def _fmt_percent(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.1f}%"


def _slug(text: str) -> str:
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")
    return slug or "run"
