"""Byte-budget invariants of pools and of whole engine runs under random workloads (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coserve_jax.coe.synthetic import synthetic_cost, synthetic_graph
from coserve_jax.config import ConfigError, compose, parse_config
from coserve_jax.engine.build import build_engine
from coserve_jax.engine.sim import SimBackend
from coserve_jax.store.pool import BudgetError, Pool
from coserve_jax.workload.trace import generate_trace


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["load", "finish", "evict", "pin", "unpin", "room", "partial",
                                           "hold", "release"]),
                          st.integers(0, 7), st.integers(1, 40)), max_size=60),
       st.integers(40, 120), st.integers(0, 30))
def test_pool_never_exceeds_budget(ops, budget, reserved):
    pool = Pool("p", "cpu", budget, min(reserved, budget))
    sizes: dict[str, int] = {}
    held: list[int] = []
    for op, k, size in ops:
        e = f"e{k}"
        try:
            if op == "load":
                pool.begin_load(e, sizes.setdefault(e, size))
            elif op == "finish" and e in pool.loading:
                pool.finish_load(e)
            elif op == "evict" and e in pool.resident:
                pool.evict(e)
            elif op == "pin" and e in pool.resident:
                pool.pin(e)
            elif op == "unpin" and pool.pinned.get(e, 0) > 0:
                pool.unpin(e)
            elif op == "room":
                before = dict(pool.resident)
                ok = pool.make_room(size, sorted)
                if not ok:
                    assert pool.resident == before  # all or nothing
                else:
                    assert pool.free_bytes >= size
            elif op == "partial":
                ok = pool.make_room(size, sorted, partial=True)
                assert ok == (pool.free_bytes >= size)
                if not ok:
                    assert not pool.evictable()  # it evicted every candidate
            elif op == "hold":
                pool.hold(size)
                held.append(size)
            elif op == "release" and held:
                pool.release(held.pop())
        except BudgetError:
            pass  # refused admissions are fine; overruns are not
        pool.check()
        assert pool.held_bytes == sum(held)
        assert pool.used_bytes <= budget
        assert pool.peak_bytes <= budget
        assert all(e in pool.resident for e in pool.pinned)


ARMS = ["samba", "samba_fifo", "samba_parallel", "none", "em", "em_ra", "coserve", "coserve_casual",
        "coserve_plus", "oracle", "all_resident"]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ARMS), st.integers(0, 10_000), st.sampled_from(["15%", "25%", "40%", "60%"]),
       st.sampled_from(["fixed", "poisson", "bursty"]), st.integers(1, 3), st.booleans())
def test_engine_runs_keep_budgets_and_lose_nothing(arm, seed, budget, arrival, n_exec, host_cache):
    overrides = [f"arms=[{arm}]", "backend=sim", f"hardware.device_budget={budget}",
                 f"workload.arrival={arrival}", "workload.num_requests=150", f"workload.seed={seed}",
                 f"hardware.executors.cpu={n_exec}"]
    if host_cache:
        overrides.append("hardware.host_budget=30%")
    cfg = parse_config(compose(overrides))
    graph = synthetic_graph(num_types=16, num_detectors=3, seed=seed)
    try:
        engine = build_engine(cfg, cfg.arms[0], graph, synthetic_cost(), SimBackend(2), "trace")
    except ConfigError:
        return  # a budget too small for this many executors is refused at start-up
    reqs = generate_trace(graph, cfg.workload)
    if cfg.arms[0].sees_future:
        engine.enable_future(reqs)
    engine.check_invariants = True
    s = engine.run(reqs)
    assert s["requests"]["completed"] == s["requests"]["submitted"] == 150
    for pool_id, peak in s["peak_bytes"].items():
        assert peak <= s["budgets_bytes"][pool_id]


def test_budget_too_small_is_a_startup_error_naming_the_setting():
    cfg = parse_config(compose(["backend=sim", "arms=[coserve]", "hardware.device_budget=1MiB"]))
    with pytest.raises(ConfigError, match="hardware.device_budget"):
        build_engine(cfg, cfg.arms[0], synthetic_graph(), synthetic_cost(), SimBackend(), "trace")
