"""Initial placement and prefetch: which experts to load before they are asked for.

- ``RoundRobinByUsage``: the paper's initialisation (§4.3): experts by descending offline usage
  probability, dealt round-robin over executors while they fit their pools.
- ``NextGroup`` (ours): while an executor works on its head group, load the expert of the next
  queued group it does not hold, so the switch overlaps compute.
"""

from __future__ import annotations

from coserve_jax.policies.base import EngineView


class RoundRobinByUsage:
    """``fill_bytes`` caps what each executor is dealt (default: its pool's free bytes); the
    unlimited-memory ceiling uses it to start from the same state as the budgeted arms."""

    def __init__(self, fill_bytes: dict[int, int] | None = None):
        self.fill_bytes = fill_bytes

    def initial_experts(self, view: EngineView) -> dict[int, list[str]]:
        usage = view.graph.usage_probs()
        order = sorted(usage, key=lambda e: (-usage[e], e))
        free = {ex.executor_id: (ex.pool.free_bytes if self.fill_bytes is None
                                 else min(ex.pool.free_bytes, self.fill_bytes.get(ex.executor_id, 0)))
                for ex in view.executors}
        plan: dict[int, list[str]] = {ex.executor_id: [] for ex in view.executors}
        ids = [ex.executor_id for ex in view.executors]
        smallest = min(x.param_bytes for x in view.graph.experts.values())
        turn = 0
        for e in order:
            size = view.graph.experts[e].param_bytes
            # Deal to the next executor in turn that still has room for it.
            for k in range(len(ids)):
                eid = ids[(turn + k) % len(ids)]
                if free[eid] >= size:
                    plan[eid].append(e)
                    free[eid] -= size
                    turn = (turn + k + 1) % len(ids)
                    break
            if all(f < smallest for f in free.values()):
                break
        return plan


class NextGroup:
    """Load the next queued groups' experts the pool lacks (head first), ``depth`` at a time,
    with at most ``max_inflight`` loads per pool in flight, for executors of ``kinds`` (None:
    all). coserve_plus prefetches into GPU pools only: a host->GPU copy runs beside GPU compute,
    while a load into a CPU pool is CPU work that competes with the batch it should hide behind.
    """

    def __init__(self, depth: int = 1, max_inflight: int = 1, kinds: list[str] | None = None):
        self.depth = depth
        self.max_inflight = max_inflight
        self.kinds = None if kinds is None else set(kinds)

    def prefetch(self, view: EngineView, executor_id: int) -> list[str]:
        ex = view.executors[executor_id]
        if self.kinds is not None and ex.kind not in self.kinds:
            return []
        out: list[str] = []
        for g in ex.groups:
            if len(out) >= self.depth:
                break
            if not ex.pool.holds(g.expert_id) and g.expert_id not in out:
                out.append(g.expert_id)
        return out
