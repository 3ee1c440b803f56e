"""Straight-line fits of measured figures (the profiler's latency and load lines, the real
loop's busy time per event over the tasks it routes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_linear(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept (slope 0 when x has one distinct value)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(np.unique(x)) < 2:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def fit_linear_nonneg(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least squares with slope and intercept >= 0: a negative slope becomes a flat line at the
    mean, a negative intercept a line through the origin (clamping one without refitting the
    other would leave a line far from the points)."""
    k, b = fit_linear(x, y)
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if k < 0:
        return 0.0, max(float(np.mean(ya)), 0.0)
    if b < 0:
        return max(float(xa @ ya / (xa @ xa)), 0.0) if xa @ xa > 0 else 0.0, 0.0
    return k, b
