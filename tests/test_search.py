"""Allocation search (coserve_jax.profiler.search): pure logic on synthetic throughput curves."""

from __future__ import annotations

import pytest

from coserve_jax.profiler import search


def knee(peak_n: int = 35, slope_after: float = 0.8):
    """Throughput rising linearly up to peak_n experts, then falling (batches lose memory)."""
    return lambda n: float(n) if n <= peak_n else peak_n - slope_after * (n - peak_n)


def test_windows_start_at_w0_and_decay_by_the_factor():
    w = search.decay_windows(15, 200)
    assert w[:4] == [(0, 15), (15, 28), (28, 39), (39, 48)]  # the paper's task-A final window is 28-39
    sizes = [15.0 * 0.85**i for i in range(8)]
    for (lo, hi), size in zip(w, sizes):
        assert abs((hi - lo) - size) <= 1.0  # whole experts: within rounding of size x decay^i
    assert w[-1][1] <= 100  # the sizes sum to w0 / (w0/100) = 100


def test_windows_are_clipped_to_the_feasible_range():
    assert search.decay_windows(15, 30, 3) == [(3, 15), (15, 28), (28, 30)]
    assert search.decay_windows(15, 10, 1) == [(1, 10)]
    with pytest.raises(ValueError, match="planner.w0"):
        search.decay_windows(0, 10)


def test_rising_then_falling_curve_window_brackets_the_knee():
    calls = []

    def measure(n):
        calls.append(n)
        return knee()(n)

    r = search.decay_window_search(measure, 80, w0=15, error_margin=0.05, n_min_experts=1)
    lo, hi = r.final_window
    assert (lo, hi) == (28, 39) and lo <= 35 <= hi
    assert r.stopped_by == "error_margin"
    assert abs(r.chosen - 35) <= 2 and r.chosen_rps == max(knee()(n) for n in calls)
    assert len(calls) == len(set(calls))  # every N measured once
    last = [p for p in r.trace if not p.refine][-1]
    assert last.n_experts == 39 and last.error > 0.05 and last.fit_rps == pytest.approx(39.0)


def test_stop_rule_uses_the_margin():
    # a linear curve never falls short of its line: the search runs to n_max
    r = search.decay_window_search(lambda n: 2.0 * n + 5, 60, w0=15, error_margin=0.05)
    assert r.stopped_by == "n_max" and r.final_window[1] == 60
    # 4% short at the third bound: under the margin, no stop; 6% short: stop there
    for short, stops in ((0.04, False), (0.06, True)):
        curve = lambda n, s=short: (2.0 * n + 5) * (1 - s) if n == 28 else 2.0 * n + 5  # noqa: E731
        r = search.decay_window_search(curve, 60, w0=15, error_margin=0.05, refine_points=0)
        assert (r.stopped_by == "error_margin") is stops
        if stops:
            assert r.final_window == (15, 28)
            assert r.chosen == 21  # midpoint rule when refine_points=0
    # shortfall is relative to the prediction
    assert search.shortfall(100.0, 93.0) == pytest.approx(0.07)


def test_refine_points_are_inside_the_window():
    assert search.refine_ns((28, 39), 3) == [31, 34, 36]
    assert search.refine_ns((5, 7), 3) == [6]
    assert search.refine_ns((5, 6), 3) == []


def test_no_feasible_n_is_an_error():
    with pytest.raises(ValueError, match="no feasible N"):
        search.decay_window_search(lambda n: 1.0, 2, n_min_experts=3)


def test_executor_names_round_trip_and_bad_names_name_the_field():
    assert search.parse_executors("3G+1C") == {"gpu": 3, "cpu": 1}
    assert search.format_executors({"cpu": 2, "gpu": 4}) == "4G+2C"
    assert search.format_executors(search.parse_executors("2c")) == "2C"
    for bad in ("3X", "0G+1C", "1G+2G", ""):
        with pytest.raises(ValueError, match="planner.candidates"):
            search.parse_executors(bad)
    assert search.default_candidates(True)[:5] == ("1G+1C", "2G+1C", "3G+1C", "4G+1C", "5G+1C")
    assert search.default_candidates(False) == ("1C", "2C", "3C", "4C")


def test_executor_sweep_picks_the_best_and_breaks_ties_to_fewer():
    table = {"1G+1C": 10.0, "2G+1C": 14.0, "3G+1C": 15.0, "4G+1C": 15.0, "3G+2C": 12.0}
    r = search.executor_sweep(list(table), lambda ex: table[search.format_executors(ex)])
    assert r.chosen == "3G+1C" and r.best_rps == 15.0
    assert r.as_dict()["candidates"][0] == {"name": "1G+1C", "throughput_rps": 10.0}
    with pytest.raises(ValueError, match="planner.candidates"):
        search.executor_sweep([], lambda ex: 0.0)


def test_n_experts_to_expert_fraction():
    sizes = [100, 100, 100, 100, 200, 100]
    # two executors share 1000 B; top 4 dealt round-robin: 200 B each -> 0.4 of a 500 B share
    assert search.dealt_pool_bytes(sizes, 4, 2) == 200
    assert search.fraction_for_experts(sizes, 4, 1000, 2) == pytest.approx(0.4)
    # the fifth expert (200 B) lands on executor 0: 400 B of 500
    assert search.fraction_for_experts(sizes, 5, 1000, 2) == pytest.approx(0.8)
    # every pool holds the largest expert even for N=1
    assert search.fraction_for_experts(sizes, 1, 1000, 2) == pytest.approx(200 / 500)
    # with 150 B of batch memory reserved per executor, 350 B of pool: N=4 fits, N=5 does not
    assert search.max_experts(sizes, 1000, 2, min_reserve_bytes=150) == 4
    assert search.max_experts(sizes, 1000, 2, max_fraction=0.9) == 6
    assert search.min_experts(sizes, 3) == 3


def test_slow_processors_reserve_the_maximum_batch():
    assert search.reserve_max_batch_fraction(4_000, 1_000) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="does not fit"):
        search.reserve_max_batch_fraction(1_000, 1_000)
