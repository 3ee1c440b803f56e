"""Eviction: which resident experts leave a pool first when room is needed.

Each policy ranks the evictable candidates (resident, unpinned, not protected by the engine);
the store evicts from the front of the ranking until the new expert fits.

- ``LRU``/``FIFO``: Samba-CoE's baselines (least recently used / first admitted first).
- ``TwoStage``: the paper's expert management (§4.3, Fig. 10). Stage 1: subsequent experts
  none of whose preliminary experts is in the pool, largest memory score first. Stage 2: the
  rest by ascending offline usage probability (largest first on ties, then id, so runs repeat).
- ``QueueAware`` (ours, for ``coserve_plus``): experts the executor's own arranged queue will
  use are kept in the order of that exact next use (Belady on the known future), and go last;
  everything else goes first, ordered by the expected cost of getting it back —
  usage probability × reload seconds, per byte freed (so cheap-to-reload, rarely-used, large
  experts leave first).
- ``Belady``: the ``oracle`` arm's eviction, a Belady-on-trace reference: queued uses first
  (as above), then the trace's next arrival that needs the expert; the farthest next use leaves
  first. Not a bound: with experts of varying sizes, several pools and scheduling feedback,
  farthest-next-use is not optimal, and coserve_plus beats it in some cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from coserve_jax.policies.base import EngineView, PoolView, load_latency_s


class LRU:
    def rank(self, view: EngineView, pool: PoolView, candidates: Sequence[str]) -> list[str]:
        return sorted(candidates, key=lambda e: (pool.last_use_seq.get(e, -1), e))


class FIFO:
    def rank(self, view: EngineView, pool: PoolView, candidates: Sequence[str]) -> list[str]:
        return sorted(candidates, key=lambda e: (pool.admit_seq.get(e, -1), e))


class TwoStage:
    """CoServe's dependency-aware two-stage eviction."""

    def rank(self, view: EngineView, pool: PoolView, candidates: Sequence[str]) -> list[str]:
        graph, usage = view.graph, view.graph.usage_probs()
        largest = max((graph.experts[e].param_bytes for e in candidates), default=1) or 1

        def orphan(e: str) -> bool:
            if not graph.is_subsequent(e):
                return False
            return not any(pool.holds(p) for p in graph.preliminaries_of(e))

        stage1 = [e for e in candidates if orphan(e)]
        stage1.sort(key=lambda e: (-graph.experts[e].param_bytes / largest, e))
        rest = [e for e in candidates if not orphan(e)]
        rest.sort(key=lambda e: (usage[e], -graph.experts[e].param_bytes, e))
        return stage1 + rest


def _queue_positions(view: EngineView, pool: PoolView) -> dict[str, int]:
    """Task index at which each expert is next used by the queues drawing on this pool."""
    pos: dict[str, int] = {}
    for ex in view.executors:
        if ex.pool.pool_id != pool.pool_id:
            continue
        i = 0
        for g in ex.groups:
            if i < pos.get(g.expert_id, i + 1):
                pos[g.expert_id] = i
            i += len(g.tasks)
    return pos


class QueueAware:
    """Ours: exact next use from the arranged queue, then expected reload cost per byte."""

    def __init__(self, cost_aware: bool = True):
        self.cost_aware = cost_aware
        self._fallback = TwoStage()
        # Each expert's expected reload cost per byte depends only on the pool kind and on
        # whether the host cache holds it (where a reload reads from), for one (graph, cost
        # model). An eviction ranks every resident expert (~780 per pool in the 3,000-type
        # cluster cell), so the figures are computed once per expert, not once per eviction;
        # without a host cache they fix one order of all experts per pool kind.
        self._for: tuple[object, object] | None = None
        self._costs: dict[tuple[str, str, bool | None], float] = {}  # (kind, expert, in cache)
        self._orders: dict[str, dict[str, int]] = {}  # kind -> expert -> place in that order

    def _cost_per_byte(self, view: EngineView, kind: str, e: str, in_cache: bool | None) -> float:
        key = (kind, e, in_cache)
        c = self._costs.get(key)
        if c is None:
            size = view.graph.experts[e].param_bytes
            c = self._costs[key] = view.graph.usage_probs()[e] * load_latency_s(view, kind, e) / max(size, 1)
        return c

    def _unqueued_key(self, view: EngineView, pool: PoolView) -> Callable[[str], Any]:
        """Sort key of experts no queue uses: (expected reload cost per byte, id), or (no host
        cache) the expert's place in the order of every expert by that key: the same order."""
        if self._for is None or self._for[0] is not view.graph or self._for[1] is not view.cost:
            self._costs.clear()
            self._orders.clear()
            self._for = (view.graph, view.cost)
        kind, cache = pool.kind, view.host_cache
        if cache is None:
            order = self._orders.get(kind)
            if order is None:
                ids = sorted(view.graph.experts, key=lambda e: (self._cost_per_byte(view, kind, e, None), e))
                order = self._orders[kind] = {e: i for i, e in enumerate(ids)}
            return order.__getitem__
        return lambda e: (self._cost_per_byte(view, kind, e, e in cache.resident), e)

    def rank(self, view: EngineView, pool: PoolView, candidates: Sequence[str]) -> list[str]:
        pos = _queue_positions(view, pool)
        unqueued = [e for e in candidates if e not in pos]
        if self.cost_aware:
            unqueued.sort(key=self._unqueued_key(view, pool))
        else:
            unqueued = self._fallback.rank(view, pool, unqueued)
        queued = sorted((e for e in candidates if e in pos), key=lambda e: (-pos[e], e))
        return unqueued + queued


class Belady:
    """Belady-on-trace reference (not a bound): evict the expert whose next use (queue, then
    trace) is farthest."""

    def rank(self, view: EngineView, pool: PoolView, candidates: Sequence[str]) -> list[str]:
        if view.future is None:
            raise RuntimeError("Belady eviction needs the trace's future (oracle arm only)")
        pos = _queue_positions(view, pool)

        def next_use(e: str) -> tuple[int, float]:
            if e in pos:
                return (0, pos[e])
            t = view.future.next_use(e)
            return (1, t) if math.isfinite(t) else (2, 0.0)

        return sorted(candidates, key=lambda e: (tuple(-x for x in next_use(e)), e))
