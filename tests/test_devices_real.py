"""The real engine over several devices (four XLA host devices, conftest), with the transfer guard on:
executors and pools per device, per-device budgets, the host cache in JAX pinned_host memory.

The same checks on a real GPU: tests/test_gpu.py (``-m gpu``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from coserve_jax.api import make_trace
from tests.test_engine_real import assert_accounted, reference_logits

pytestmark = pytest.mark.usefixtures("transfer_guard")

FOUR = ("hardware.cpu_devices=4", "hardware.executors={cpu:4}")


def serve(real, arm: str, *extra: str, n: int = 60):
    """Run one arm; return its summary, engine and, per pool, the devices and memory kinds its
    weights and host copies were on (read before the backend drops them)."""
    runner = real.runner(f"arms=[{arm}]", f"workload.num_requests={n}", *extra)
    runner.warm_up(runner.cfg.arms)
    requests = make_trace(runner.cfg, runner.model.graph)
    engine = runner.new_engine(runner.cfg.arms[0], requests)
    engine.keep_outputs = engine.record_decisions = True
    backend = engine.backend
    try:
        summary = engine.run(requests, runner.images(requests))
        summary["host_tier"] = backend.host_tier
        placed = {pool: {(str(d), a.sharding.memory_kind) for leaves in experts.values() for a in leaves
                         for d in a.devices()}
                  for pool, experts in backend._weights.items() if pool != "host"}
        host = {e: {(type(v).__name__, getattr(getattr(v, "sharding", None), "memory_kind", None))
                    for v in c.flats.values()} for e, c in backend._host.items()}
    finally:
        backend.close()
    assert_accounted(summary, engine, n)
    return summary, engine, placed, host


def check_outputs(real, engine, limit: int = 12) -> None:
    """The logits each request got equal its experts' run alone (a sample of requests)."""
    cache: dict = {}
    done = [rs for rs in engine.request_states().values() if rs.failed is None][:limit]
    assert done
    for rs in done:
        for expert_id, out in zip(rs.experts, rs.outputs):
            np.testing.assert_allclose(out, reference_logits(real.model.zoo, expert_id, rs.image, cache), atol=1e-5)


def test_four_devices_each_with_its_own_pool(real):
    """coserve_plus over 4 host devices: one pool per device, weights only on that device."""
    assert len(jax.devices("cpu")) >= 4
    summary, engine, placed, _ = serve(real, "coserve_plus", *FOUR, "hardware.device_budget=60%")
    assert summary["requests"]["completed"] == 60
    assert [ex.device_index for ex in engine.executors] == [0, 1, 2, 3]
    assert sorted(p["device"] for p in summary["pools"]) == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    for p in summary["pools"]:
        i = int(p["device"].split(":")[1])
        assert p["executors"] == [i] and p["peak_bytes"] <= p["budget_bytes"]
        assert placed[p["id"]] <= {(str(jax.devices("cpu")[i]), "device")}, placed[p["id"]]
    assert {d[1] for d in engine.decisions if d[0] == "batch"} == {0, 1, 2, 3}, "every device should serve"
    check_outputs(real, engine)


def test_per_device_budgets_in_the_real_engine(real):
    summary, engine, placed, _ = serve(real, "coserve", "hardware.cpu_devices=2", "hardware.executors={cpu:2}",
                                       "hardware.device_budget=40%", "hardware.device_budgets={1:90%}")
    total = real.model.graph.total_bytes
    budgets = {p["device"]: p["budget_bytes"] for p in summary["pools"]}
    assert budgets == {"cpu:0": int(0.4 * total), "cpu:1": int(0.9 * total)}
    assert all(p["peak_bytes"] <= p["budget_bytes"] for p in summary["pools"])
    check_outputs(real, engine)


@pytest.mark.parametrize("tier", ["pinned_host", "numpy"])
def test_the_host_cache_tier(real, tier):
    """With a host cache, switches from it come from pinned_host jax.Arrays (or numpy when asked),
    and every output is still right."""
    summary, engine, placed, host = serve(real, "coserve", *FOUR, "hardware.device_budget=35%",
                                          "hardware.host_budget=100%", f"backend.host_tier={'auto' if tier == 'pinned_host' else tier}",
                                          n=120)
    assert summary["host_tier"] == tier
    assert summary["switches"]["from_host"] > 0, summary["switches"]
    want = {("ArrayImpl", "pinned_host")} if tier == "pinned_host" else {("ndarray", None)}
    assert host and all(kinds == want for kinds in host.values()), host
    for p in summary["pools"]:
        if p["device"] != "host":
            assert placed[p["id"]] <= {(str(jax.devices("cpu")[int(p["device"][4:])]), "device")}
    check_outputs(real, engine)


def test_no_host_cache_reports_none(real):
    summary, *_ = serve(real, "samba", "hardware.device_budget=60%", n=20)
    assert summary["host_tier"] == "none"
