"""The online engine as a serving replica: ``coserve_jax.api.Engine`` plus start-up warm-up,
health and the stats a router and /metrics read."""

from __future__ import annotations

from typing import Any

from coserve_jax.api import Engine
from coserve_jax.engine.cluster import expert_bytes, held_experts
from coserve_jax.policies.router import per_image_s
from coserve_jax.types import Request

LOAD_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReplicaEngine(Engine):
    """``Engine`` with ``warm_up`` (serve one image of the commonest type before taking
    traffic: compiles the forwards and preloads the pools), ``healthy`` and ``stats``."""

    def warm_up(self, timeout_s: float = 300.0) -> dict[str, Any]:
        graph = self.model.graph
        ctype = max(graph.components.values(), key=lambda c: (c.mix, c.name)).name
        image = self.model.zoo.render(Request(-1, ctype, 0.0, truth="ok", image_seed=0))
        return self.submit(image, ctype).result(timeout=timeout_s)

    def healthy(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """Held experts, pool bytes, lanes, per-image seconds and load counts of the running
        engine (read from the serving thread's state; lists are copied, not locked)."""
        eng = self._engine
        if eng is None:
            return {}
        kind = eng.executors[0].kind
        archs = {e.arch for e in eng.graph.experts.values()}
        pools = {id(ex.pool): ex.pool for ex in eng.executors}.values()
        loads = [s.seconds for s in list(eng.metrics.switches)]
        return {
            "kind": kind, "lanes": len(eng.executors), "expert_bytes": expert_bytes(eng),
            "held": sorted(held_experts(eng)),
            "per_image_s": {a: per_image_s(eng.cost, kind, a) for a in archs},
            "pool_bytes": {p.pool_id: p.used_bytes for p in pools},
            "pool_budget_bytes": {p.pool_id: p.budget_bytes for p in pools},
            "switches": len(loads),
            "load_buckets": {"counts": [sum(s <= le for s in loads) for le in LOAD_BUCKETS_S],
                             "count": len(loads), "sum": float(sum(loads))},
        }
