"""Allocation search (PAPER.md "The algorithms", §4.4 of the paper): pure logic, no JAX, no I/O.

Three pieces, each taking its measurements through an injected callable so the same code runs on
the simulator, on the real backend, or on a synthetic curve in a unit test:

- ``decay_window_search(measure, n_max_experts, ...)``: how many experts to hold in the fast
  processors' pools (the rest of their memory goes to batches). Windows over the number of
  experts N (sorted by usage probability, i.e. along the usage CDF) start at [0, w0]; each slide
  multiplies the window's size by ``decay = 1 - w0/100``. Throughput is measured at each window's
  upper bound; a line f(N) = kN + b is fitted (least squares) to the points measured so far and
  the search stops at the first upper bound whose throughput falls short of the line's
  prediction by more than ``error_margin``: ``(f(N) - actual) / f(N) > error_margin``. With the
  paper's w0 = 15 the upper bounds are 15, 28, 39, 48, ... (the paper's task-A final window is
  28-39). Our choices where the paper is silent:

  * a line needs two points, so the first window's lower bound is measured too (at
    ``n_min_experts``, the smallest N that is feasible), and the stop rule applies from the
    second window on;
  * the windows never reach past N = 100 (their sizes sum to w0 / (w0/100) = 100) and are
    clipped at ``n_max_experts`` (the most experts memory can hold with a batch of one left);
    reaching it ends the search with that last window as the final one;
  * "pick a value inside the final window": we measure ``refine_points`` evenly spaced interior
    points of the final window and pick the best measured N inside it (ties: fewer experts,
    which leaves more memory for batches). With ``refine_points=0`` the pick is the window's
    midpoint, unmeasured.

- ``reserve_max_batch_fraction``: the paper's rule for slow processors (CPU executors beside
  GPUs): reserve the memory of the maximum batch and give the rest to experts.

- ``executor_sweep(candidates, measure)``: measure each executor-count candidate ("3G+1C") on a
  sample and pick the best (Fig. 17); ties go to the earlier candidate (fewer executors).

``fraction_for_experts`` translates "N experts' worth of pool memory" into the ``expert_fraction``
an arm takes (``engine/build.py`` splits a device budget evenly among its executors and gives
each ``expert_fraction`` of its share for its pool).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

# Candidates are spelled "3G+1C" ({gpu: 3, cpu: 1}): the config's spelling, part of the search's vocabulary.
from coserve_jax.config import format_executors, parse_executors  # noqa: F401

# ---- executor counts ------------------------------------------------------------------------
GPU_CANDIDATES = ("1G+1C", "2G+1C", "3G+1C", "4G+1C", "5G+1C", "3G+2C", "4G+2C")
CPU_CANDIDATES = ("1C", "2C", "3C", "4C")
def default_candidates(has_gpu: bool) -> tuple[str, ...]:
    """The paper's Fig. 17 candidates on GPU machines; 1C..4C on CPU-only ones."""
    return GPU_CANDIDATES if has_gpu else CPU_CANDIDATES


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Executor-count sweep: every candidate's throughput and the chosen one."""

    candidates: tuple[tuple[str, float], ...]
    chosen: str

    @property
    def best_rps(self) -> float:
        return max(r for _, r in self.candidates)

    def as_dict(self) -> dict[str, Any]:
        """The shape ``report.plots.plot_executor_sweep`` takes (plus the best throughput)."""
        return {"candidates": [{"name": n, "throughput_rps": r} for n, r in self.candidates],
                "chosen": self.chosen, "best_rps": self.best_rps}


def executor_sweep(candidates: Sequence[str], measure: Callable[[dict[str, int]], float],
                   progress: Callable[[str], None] | None = None) -> SweepResult:
    """Measure every candidate (``measure({"gpu": 3, "cpu": 1}) -> img/s``); pick the best."""
    if not candidates:
        raise ValueError("planner.candidates: list at least one executor candidate")
    rows = []
    for name in candidates:
        rps = float(measure(parse_executors(name)))
        rows.append((name, rps))
        if progress is not None:
            progress(f"{name}: {rps:.2f} img/s")
    best = max(range(len(rows)), key=lambda i: (rows[i][1], -i))
    return SweepResult(tuple(rows), rows[best][0])


# ---- memory split: N experts <-> expert_fraction ----------------------------------------------
def dealt_pool_bytes(sizes_by_usage: Sequence[int], n_experts: int, n_executors: int) -> int:
    """Largest per-executor total when the top-N experts are dealt round-robin over executors
    (as ``RoundRobinByUsage`` initialises pools): the pool size that holds all N."""
    if n_executors < 1:
        raise ValueError("n_executors must be >= 1")
    per = [0] * n_executors
    for i, size in enumerate(sizes_by_usage[:n_experts]):
        per[i % n_executors] += int(size)
    return max(per)


def fraction_for_experts(sizes_by_usage: Sequence[int], n_experts: int, budget_bytes: int,
                         n_executors: int) -> float:
    """``expert_fraction`` whose pools hold the top-N experts by usage over ``n_executors``
    executors sharing ``budget_bytes`` evenly (every pool also holds the largest expert)."""
    share = budget_bytes // n_executors
    if share <= 0:
        raise ValueError("budget_bytes must be positive")
    largest = max(sizes_by_usage)
    need = max(dealt_pool_bytes(sizes_by_usage, n_experts, n_executors), largest)
    # build.py reserves int((1 - f) * share); a hair above need/share keeps the pool >= need.
    return min(need / share + 1e-9, 1.0)


def max_experts(sizes_by_usage: Sequence[int], budget_bytes: int, n_executors: int,
                min_reserve_bytes: int = 0, max_fraction: float = 1.0) -> int:
    """Largest N whose pools still leave every executor ``min_reserve_bytes`` for batches and
    need at most ``max_fraction`` of its share (0 when not even one expert fits)."""
    share = budget_bytes // n_executors
    limit = min(share - min_reserve_bytes, int(max_fraction * share))
    n = 0
    while n < len(sizes_by_usage) and dealt_pool_bytes(sizes_by_usage, n + 1, n_executors) <= limit:
        n += 1
    return n


def min_experts(sizes_by_usage: Sequence[int], n_executors: int) -> int:
    """Smallest N worth measuring: one expert per executor (every pool holds the largest anyway)."""
    return max(1, min(n_executors, len(sizes_by_usage)))


def reserve_max_batch_fraction(budget_bytes: int, max_batch_activation_bytes: int) -> float:
    """Slow processors (the paper's CPU executors): reserve the maximum batch, experts get the rest."""
    if budget_bytes <= 0:
        raise ValueError("budget_bytes must be positive")
    f = 1.0 - max_batch_activation_bytes / budget_bytes
    if f <= 0:
        raise ValueError(f"the maximum batch ({max_batch_activation_bytes} B) does not fit the "
                         f"budget ({budget_bytes} B)")
    return f


# ---- the decay window ----------------------------------------------------------------------
def decay_windows(w0: float, n_max_experts: int, n_min_experts: int = 0) -> list[tuple[int, int]]:
    """The windows [lo, hi] in experts: [0, w0], then each slide's size x (1 - w0/100),
    rounded to whole experts, clipped to [n_min_experts, n_max_experts]; stops once a window
    reaches n_max_experts or the size falls below one expert."""
    if not 0 < w0 < 100:
        raise ValueError(f"planner.w0: must be in (0, 100), got {w0!r}")
    decay = 1.0 - w0 / 100.0
    out: list[tuple[int, int]] = []
    lo_f, size = 0.0, float(w0)
    while size >= 0.5:
        lo, hi = max(int(round(lo_f)), n_min_experts), min(int(round(lo_f + size)), n_max_experts)
        if hi > lo:
            out.append((lo, hi))
        if hi >= n_max_experts:
            break
        lo_f += size
        size *= decay
    return out


@dataclasses.dataclass(frozen=True)
class WindowPoint:
    """One measurement: N experts, img/s, the line's prediction (before this point), the window
    whose upper bound N is, and the relative shortfall (f(N) - actual) / f(N)."""

    n_experts: int
    throughput_rps: float
    fit_rps: float | None
    window: tuple[int, int]
    error: float | None
    refine: bool = False


@dataclasses.dataclass(frozen=True)
class DecayWindowResult:
    trace: tuple[WindowPoint, ...]
    windows: tuple[tuple[int, int], ...]
    final_window: tuple[int, int]
    chosen: int
    chosen_rps: float | None
    stopped_by: str  # "error_margin" | "n_max"
    w0: float
    error_margin: float

    @property
    def decay(self) -> float:
        return 1.0 - self.w0 / 100.0

    @property
    def best_rps(self) -> float:
        return max(p.throughput_rps for p in self.trace)

    def as_dict(self) -> dict[str, Any]:
        """The shape ``report.plots.plot_decay_window`` takes, plus the search's settings."""
        return {
            "trace": [{"n_experts": p.n_experts, "throughput_rps": p.throughput_rps, "fit_rps": p.fit_rps,
                       "window": list(p.window), "error": p.error, "refine": p.refine} for p in self.trace],
            "chosen": self.chosen, "chosen_rps": self.chosen_rps, "best_rps": self.best_rps,
            "final_window": list(self.final_window), "windows": [list(w) for w in self.windows],
            "stopped_by": self.stopped_by, "w0": self.w0, "decay": self.decay,
            "error_margin": self.error_margin,
        }


def fit_line(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares k, b of f(N) = kN + b (k = 0 with a single distinct N)."""
    pts = list(points)
    x = np.array([p[0] for p in pts], np.float64)
    y = np.array([p[1] for p in pts], np.float64)
    if len(np.unique(x)) < 2:
        return 0.0, float(np.mean(y))
    k, b = np.polyfit(x, y, 1)
    return float(k), float(b)


def shortfall(predicted: float, actual: float) -> float:
    """(f(N) - actual) / f(N): positive when the measurement falls below the line."""
    if predicted <= 0:
        return math.inf if actual < predicted else 0.0
    return (predicted - actual) / predicted


def refine_ns(window: tuple[int, int], points: int) -> list[int]:
    """``points`` evenly spaced whole N strictly inside the window."""
    lo, hi = window
    inner = range(lo + 1, hi)
    if points <= 0 or not inner:
        return []
    if len(inner) <= points:
        return list(inner)
    return sorted({int(round(lo + (hi - lo) * (i + 1) / (points + 1))) for i in range(points)})


def decay_window_search(measure: Callable[[int], float], n_max_experts: int, *, w0: float = 15,
                        error_margin: float = 0.05, n_min_experts: int = 1, refine_points: int = 3,
                        progress: Callable[[WindowPoint], None] | None = None) -> DecayWindowResult:
    """The paper's decay-window search; ``measure(n_experts) -> img/s`` on a small sample."""
    if n_max_experts < n_min_experts:
        raise ValueError(f"decay window: no feasible N (n_max_experts={n_max_experts} < "
                         f"n_min_experts={n_min_experts}); memory cannot hold experts plus a batch")
    if error_margin <= 0:
        raise ValueError(f"planner.error_margin: must be > 0, got {error_margin!r}")
    windows = decay_windows(w0, n_max_experts, n_min_experts)
    if not windows:  # n_min == n_max: a single feasible N
        windows = [(n_min_experts, n_max_experts)]
    cache: dict[int, float] = {}
    trace: list[WindowPoint] = []

    def take(n: int, window: tuple[int, int], fit: float | None, refine: bool = False) -> WindowPoint:
        if n not in cache:
            cache[n] = float(measure(n))
        err = None if fit is None else shortfall(fit, cache[n])
        p = WindowPoint(n, cache[n], fit, window, err, refine)
        trace.append(p)
        if progress is not None:
            progress(p)
        return p

    take(windows[0][0], windows[0], None)
    final, stopped = windows[-1], "n_max"
    used: list[tuple[int, int]] = []
    for w in windows:
        used.append(w)
        fit = None
        if len(cache) >= 2:
            k, b = fit_line((p.n_experts, p.throughput_rps) for p in trace if not p.refine)
            fit = k * w[1] + b
        p = take(w[1], w, fit)
        if p.error is not None and p.error > error_margin:
            final, stopped = w, "error_margin"
            break
    for n in refine_ns(final, refine_points):
        take(n, final, None, refine=True)
    inside = sorted((n, r) for n, r in cache.items() if final[0] <= n <= final[1])
    if refine_points > 0 and inside:
        chosen, chosen_rps = max(inside, key=lambda nr: (nr[1], -nr[0]))
    else:
        chosen = (final[0] + final[1]) // 2
        chosen_rps = cache.get(chosen)
    return DecayWindowResult(tuple(trace), tuple(used), final, chosen, chosen_rps, stopped,
                             float(w0), float(error_margin))
