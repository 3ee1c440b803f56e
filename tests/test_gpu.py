"""The engine on a real GPU (``python -m pytest -m gpu``; scripts/device_check.sh runs these).

The CPU tests check the same code over XLA host devices (tests/test_devices_real.py,
tests/test_synth.py); here it runs on every local GPU: executors spread over the GPUs, one pool
per GPU, the host cache in the GPUs' pinned_host memory, nothing crossing devices implicitly
(transfer guard on), outputs equal to each expert run alone on the same GPU. Skipped, with the
reason in the summary, where JAX sees no GPU.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.test_engine_real import reference_logits
from tests.test_synth import serve_synth


def gpus() -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


# A string condition: evaluated when a test runs, so collecting this file starts no JAX backend.
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif("not gpus()", reason="needs a GPU: jax.devices('gpu') finds none on this machine"),
              pytest.mark.usefixtures("transfer_guard")]


def gpu_overrides(per_gpu: int = 2) -> list[str]:
    n = len(gpus())
    return ["hardware=gpu", f"hardware.executors.gpu={per_gpu * n}", "hardware.executors.cpu=0"]


def test_pinned_host_memory_is_there():
    for d in gpus():
        kinds = {m.kind for m in d.addressable_memories()}
        assert {"device", "pinned_host"} <= kinds, (d, kinds)


def test_executors_spread_over_every_gpu_with_a_pool_each(tiny_zoo, synth_cache):
    summary, engine, placed = serve_synth(tiny_zoo, synth_cache, "arms=[coserve_plus]", *gpu_overrides(),
                                          "hardware.device_budget=40%", "hardware.host_budget=100%", kind="gpu", n=120)
    n = len(gpus())
    assert summary["requests"]["completed"] == 120
    assert sorted({ex.device_index for ex in engine.executors}) == list(range(n))
    assert sorted(p["device"] for p in summary["pools"] if p["device"] != "host") == [f"gpu:{i}" for i in range(n)]
    for p in summary["pools"]:
        if p["device"] != "host":
            i = int(p["device"].split(":")[1])
            assert placed[p["id"]] <= {("gpu", gpus()[i].id, "device")}, placed[p["id"]]
            assert p["peak_bytes"] <= p["budget_bytes"]
    assert summary["host_tier"] == "pinned_host"


def test_outputs_on_the_gpu_equal_each_expert_alone(tiny_zoo, synth_cache):
    summary, engine, _ = serve_synth(tiny_zoo, synth_cache, "arms=[coserve]", *gpu_overrides(1),
                                     "hardware.device_budget=60%", "hardware.host_budget=100%", kind="gpu", n=60)
    cache: dict = {}
    for rs in list(engine.request_states().values())[:10]:
        for expert_id, out in zip(rs.experts, rs.outputs):
            # The reference runs unbatched through its own jit on the default (first) GPU.
            want = reference_logits(tiny_zoo, expert_id, rs.image, cache)
            np.testing.assert_allclose(out, want, rtol=2e-2, atol=2e-3)


def test_per_gpu_budgets(tiny_zoo, synth_cache):
    n = len(gpus())
    total = tiny_zoo.graph.total_bytes
    budgets = ",".join(f"{i}:{40 + 10 * (i % 2)}%" for i in range(n))
    summary, *_ = serve_synth(tiny_zoo, synth_cache, "arms=[coserve]", *gpu_overrides(1),
                              f"hardware.device_budgets={{{budgets}}}", kind="gpu", n=40)
    got = {p["device"]: p["budget_bytes"] for p in summary["pools"]}
    assert got == {f"gpu:{i}": int((40 + 10 * (i % 2)) / 100 * total) for i in range(n)}
