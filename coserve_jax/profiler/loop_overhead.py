"""The engine loop's own cost per event, for the simulator's clock.

The real engine's loop is one Python thread: every arrival and completion it handles (policy
decisions, queue and pool bookkeeping, dispatch) takes wall time during which later arrivals
wait. When arrivals come faster than that (the default workload: one every 0.1 ms), the loop
lags and sees requests in bursts, which changes grouping and switches. The simulator charges
``overheads.loop_s_per_arrival`` of virtual time per arrival, and ``loop_s_per_event`` plus
``loop_s_per_task`` per task per completion; this module measures them on the profile being
built, in one of two ways:

- ``measure_serving_loop_s`` (a real engine's profile): the real backend serves a
  trace with the coserve arm and the hardware's executors, and the loop's busy time (its run's
  wall time less the time it sat blocked waiting for an event) is divided by the arrivals it
  took in, and fitted as a line over the tasks each completion routed (``RealBackend.loop_busy``).
  This counts what serving adds to the policies' own cost: input checks, hand-offs to executor
  and I/O threads, and the GIL and cores the loop shares with them. The same runs give
  ``batch_handoff_s``: the median time a batch spends passing between the loop and its worker
  thread beyond its forward (``engine/real.py: BatchHandoffs``), which the simulator adds to
  every batch. On this 2-core machine (demo CoE, 2 CPU executors) the loop's completions cost
  206–296 µs for samba (one task a batch) and 543–870 µs for the arms that batch ~20
  (experiments/sim_validation/README.md), so a flat cost per completion over-charged samba and
  under-charged the others.
- ``measure_loop_s_per_event``: the same loop and policies over the simulator backend (whose
  own cost is negligible beside them); the policies' cost alone, for profiles without a real
  engine to serve with.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.config import ConfigError, compose, parse_config
from coserve_jax.cost.model import CostModel
from coserve_jax.engine.build import build_engine
from coserve_jax.engine.sim import SimBackend
from coserve_jax.runner.arms import ArmRunner
from coserve_jax.runner.heap import frozen_heap
from coserve_jax.runner.model import Model
from coserve_jax.workload.trace import generate_trace, make_trace

log = logging.getLogger(__name__)


def measure_loop_s_per_event(graph: CoEGraph, profile: dict[str, Any], num_requests: int = 1500,
                             seed: int = 0) -> float:
    """Median wall seconds per handled event of the coserve arm's loop over three runs."""
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
        with frozen_heap:
            engine.run(trace)
        per_event.append((time.perf_counter() - t0) / max(1, backend.events_handled + len(trace)))
    return sorted(per_event)[1]


def measure_serving_loop_s(runtime: Any, profile: dict[str, Any], executors: dict[str, int],
                           num_requests: int = 1500, seed: int = 0, cpu_devices: int = 1) -> dict[str, float]:
    """The real engine's loop while it serves ``num_requests`` with the coserve arm on
    ``executors`` (kinds without devices here left out; CPU ones spread over ``cpu_devices``
    host devices and GPU ones over the GPUs, sharing them as the hardware serving them does):
    median busy seconds per arrival taken in (``loop_s_per_arrival``), per completion handled
    (``loop_s_per_event``, the base) and per task it completed (``loop_s_per_task``: a line
    through each completion's busy seconds over its tasks), and a batch's hand-offs
    (``batch_handoff_s``), over three runs after one untimed run (which compiles every batch
    bucket)."""
    counts = {}
    for kind, n in executors.items():
        try:
            jax.devices(kind)
        except RuntimeError:
            continue  # no such devices here: the profile has no such kind either
        # As many executors as the hardware serves with: executors share devices
        # (``plan_executors``), and the default CPU hardware runs two on one host device. (Capping
        # them at the device count timed a one-executor loop, whose assignments cost nothing:
        # 48-67 µs an arrival against 73-118 µs for the two-executor loop that serves.)
        counts[kind] = max(1, int(n))
    # Each kind set on its own (a whole-mapping override would merge into the default {cpu: 2});
    # CPU helpers beside GPUs get hardware=gpu's host-RAM pool share.
    overrides = ["backend=real", "arms=[coserve]", f"workload.num_requests={num_requests}",
                 f"workload.seed={seed}", *(f"++hardware.executors.{k}={counts.get(k, 0)}" for k in ("cpu", "gpu"))]
    if len(counts) > 1:
        overrides.append("hardware.cpu_pool_budget=10%")
    overrides.append(f"hardware.cpu_devices={max(1, min(int(cpu_devices), len(jax.devices('cpu'))))}")
    zoo = runtime.zoo
    # The loop is timed at the default device budget, where it evicts and reloads as in serving;
    # a zoo too small to split at that budget (pcb_tiny: its largest expert and one batch exceed
    # an executor's share) is timed with every expert fitting instead.
    for budget in (None, "100%"):
        cfg = parse_config(compose(overrides + ([f"hardware.device_budget={budget}"] if budget else [])))
        runner = ArmRunner(cfg, Model(zoo.graph, zoo), CostModel(profile), runtime)
        try:
            runner.warm_up(cfg.arms)
            break
        except ConfigError as e:
            if budget is not None:
                raise
            log.info("loop overhead: %s; timing it at a device budget of 100%% instead", e)
    trace = make_trace(cfg, zoo.graph)
    images = runner.images(trace)
    runs: dict[str, list[float]] = {"arrival": [], "event": [], "task": [], "handoff": []}
    for i in range(4):
        summary, _ = runner.run_arm(cfg.arms[0], trace, images, progress=False)
        if i:
            busy = summary["loop_busy_s"]
            runs["arrival"].append(busy.get("arrival", {}).get("per_handled_s", 0.0))
            runs["event"].append(busy.get("event", {}).get("base_s", 0.0))
            runs["task"].append(busy.get("event", {}).get("per_task_s", 0.0))
            runs["handoff"].append(summary["batch_handoff_s"]["total_s"])
    med = {k: sorted(v)[1] for k, v in runs.items()}
    return {"loop_s_per_arrival": med["arrival"], "loop_s_per_event": med["event"], "loop_s_per_task": med["task"],
            "batch_handoff_s": med["handoff"]}
