"""Pull metrics out of runs and average them per (hardware, task) × arm.

Runs that share a (hardware, task) group and an arm (e.g. seeds) are averaged; ``n`` says how
many runs a value is the mean of.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

from coserve_jax.report.runs import RunRecord

# Canonical arm order for columns and legends; unknown arms follow, sorted.
ARM_ORDER = (
    "samba", "samba_casual_split", "samba_fifo", "samba_parallel", "samba_parallel_gpu",
    "none", "em", "em_ra", "none_gpu", "em_gpu", "em_ra_gpu",
    "coserve_casual", "coserve", "coserve_gpu", "coserve_best", "coserve_plus", "oracle", "all_resident",
)
TASK_ORDER = ("A1", "A2", "B1", "B2")
HARDWARE_ORDER = ("NUMA", "UMA")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def throughput_rps(arm: dict[str, Any]) -> float | None:
    """An arm's ``throughput_rps`` (img/s)."""
    return _num(arm.get("throughput_rps"))


def throughput_rps_incl_init(arm: dict[str, Any]) -> float | None:
    """An arm's img/s counted from the start of initialisation (``throughput_rps_incl_init``;
    older results: completed / (wall_s + time_s.init))."""
    value = _num(arm.get("throughput_rps_incl_init"))
    if value is not None:
        return value
    wall, done = _num(arm.get("wall_s")), _num((arm.get("requests") or {}).get("completed"))
    init = _num((arm.get("time_s") or {}).get("init"))
    return done / (wall + init) if None not in (wall, done, init) and wall + init > 0 else None


def switch_count(arm: dict[str, Any]) -> float | None:
    """An arm's ``switches.count`` (a bare number under ``switches`` is accepted too)."""
    switches = arm.get("switches")
    return _num(switches.get("count")) if isinstance(switches, dict) else _num(switches)


def switches_during_run(arm: dict[str, Any]) -> float | None:
    """An arm's ``switches.during_run``: loads while serving, after the initial preloads. The
    paper's switch counts start after initialisation, so comparisons with it use this."""
    switches = arm.get("switches")
    return _num(switches.get("during_run")) if isinstance(switches, dict) else None


def initial_preloads(arm: dict[str, Any]) -> float | None:
    """Loads before serving: ``switches.count - switches.during_run``."""
    count, during = switch_count(arm), switches_during_run(arm)
    return None if count is None or during is None else count - during


def latency_ms(arm: dict[str, Any], quantile: str) -> float | None:
    """An arm's ``latency_ms[quantile]`` (quantile: p50, p95, p99)."""
    lat = arm.get("latency_ms")
    return _num(lat.get(quantile)) if isinstance(lat, dict) else None


def peak_bytes(arm: dict[str, Any]) -> float | None:
    """Peak bytes: the sum over ``peak_bytes``' pools/devices (or the number itself)."""
    peak = arm.get("peak_bytes")
    if isinstance(peak, dict):
        values = [v for v in (_num(x) for x in peak.values()) if v is not None]
        return float(sum(values)) if values else None
    return _num(peak)


METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "throughput_rps": throughput_rps,
    "throughput_rps_incl_init": throughput_rps_incl_init,
    "switches": switch_count,
    "switches_during_run": switches_during_run,
    "initial_preloads": initial_preloads,
}


@dataclasses.dataclass(frozen=True)
class Stat:
    """The mean of ``n`` runs' values (``std`` is 0 for a single run)."""

    mean: float
    std: float
    n: int


def summarise(values: list[float]) -> Stat | None:
    """Mean, standard deviation and count; None for no values."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stat(statistics.fmean(values), std, len(values))


Grid = dict[tuple[str, str], dict[str, Stat]]


def metric_grid(runs: list[RunRecord], metric: str) -> Grid:
    """(hardware, task) → {arm: Stat} for ``metric`` in METRICS, averaged over runs."""
    get = METRICS[metric]
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run in runs:
        for arm_name, arm in run.arms.items():
            if not isinstance(arm, dict):
                continue
            value = get(arm)
            if value is not None:
                values.setdefault(run.group, {}).setdefault(arm_name, []).append(value)
    grid: Grid = {}
    for group, arms in values.items():
        grid[group] = {a: s for a, v in arms.items() if (s := summarise(v)) is not None}
    return dict(sorted(grid.items(), key=lambda kv: group_sort_key(kv[0])))


def ordered_arms(names: Any) -> list[str]:
    """Arm names in canonical order, unknown ones after, sorted."""
    names = set(names)
    known = [a for a in ARM_ORDER if a in names]
    return known + sorted(names - set(ARM_ORDER))


def arms_in(grid: Grid) -> list[str]:
    """Every arm that has a value somewhere in ``grid``, in canonical order."""
    return ordered_arms({arm for arms in grid.values() for arm in arms})


def group_sort_key(group: tuple[str, str]) -> tuple[Any, ...]:
    """NUMA before UMA before others; A1, A2, B1, B2 before others."""
    hw, task = group
    hw_rank = HARDWARE_ORDER.index(hw) if hw in HARDWARE_ORDER else len(HARDWARE_ORDER)
    task_rank = TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)
    return (hw_rank, hw, task_rank, task)


_BYTE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_budget(value: Any) -> tuple[int, float] | None:
    """Sort key of a device budget: (0, fraction) for ``"25%"``, (1, bytes) for sizes.

    Accepts numbers (bytes; a float ≤ 1 is a fraction), ``"25%"``, ``"8GB"``, ``"512 MiB"``.
    Returns None when the value cannot be read.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return (0, float(value)) if isinstance(value, float) and value <= 1 else (1, float(value))
    text = str(value).strip().lower().replace(" ", "")
    if text.endswith("%"):
        try:
            return (0, float(text[:-1]) / 100)
        except ValueError:
            return None
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits):] or "b"
    try:
        return (1, float(digits) * _BYTE_UNITS[unit])
    except (ValueError, KeyError):
        return None


BudgetSweep = dict[tuple[str, str], list[tuple[Any, dict[str, Stat]]]]


def budget_sweep(runs: list[RunRecord], metric: str) -> BudgetSweep:
    """(hardware, task) → [(device_budget, {arm: Stat})] sorted by budget; runs without a
    budget are left out."""
    get = METRICS[metric]
    values: dict[tuple[str, str], dict[Any, dict[str, list[float]]]] = {}
    for run in runs:
        if run.device_budget is None:
            continue
        budget_key = _hashable(run.device_budget)
        by_arm = values.setdefault(run.group, {}).setdefault(budget_key, {})
        for arm_name, arm in run.arms.items():
            value = get(arm) if isinstance(arm, dict) else None
            if value is not None:
                by_arm.setdefault(arm_name, []).append(value)
    sweep: BudgetSweep = {}
    for group in sorted(values, key=group_sort_key):
        points = [
            (budget, {a: s for a, v in arms.items() if (s := summarise(v)) is not None})
            for budget, arms in values[group].items()
        ]
        points.sort(key=lambda p: parse_budget(p[0]) or (2, 0.0, str(p[0])))
        sweep[group] = points
    return sweep


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) else str(value)
