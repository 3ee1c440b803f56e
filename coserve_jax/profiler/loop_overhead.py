"""The engine loop's own cost per event, for the simulator's clock.

The real engine's loop is one Python thread: every arrival and completion it handles (policy
decisions, queue and pool bookkeeping, dispatch) takes wall time during which later arrivals
wait. When arrivals come faster than that (the default workload: one every 0.1 ms), the loop
lags and sees requests in bursts, which changes grouping and switches. The simulator charges
``overheads.loop_s_per_event`` of virtual time per handled arrival or completion; this module
measures it by timing the same loop and policies over the simulator backend (whose own cost is
negligible beside them) on the profile being built.
"""

from __future__ import annotations

import time
from typing import Any

from coserve_jax.coe.graph import CoEGraph


def measure_loop_s_per_event(graph: CoEGraph, profile: dict[str, Any], num_requests: int = 1500,
                             seed: int = 0) -> float:
    """Median wall seconds per handled event of the coserve arm's loop over three runs."""
    from coserve_jax.config import compose, parse_config
    from coserve_jax.engine.build import build_engine
    from coserve_jax.engine.sim import SimBackend
    from coserve_jax.profiler.cost_model import CostModel
    from coserve_jax.workload.trace import generate_trace

    # Memory does not matter for the loop's cost; a budget that holds the zoo always builds.
    cfg = parse_config(compose(["backend=sim", "arms=[coserve]", f"workload.num_requests={num_requests}",
                                f"workload.seed={seed}", "hardware.device_budget=200%"]))
    cost = CostModel(profile)
    trace = generate_trace(graph, cfg.workload)
    per_event = []
    for _ in range(3):
        backend = SimBackend(cfg.backend.load_threads)
        engine = build_engine(cfg, cfg.arms[0], graph, cost, backend, "trace")
        t0 = time.perf_counter()
        engine.run(trace)
        per_event.append((time.perf_counter() - t0) / max(1, backend.events_handled + len(trace)))
    return sorted(per_event)[1]
