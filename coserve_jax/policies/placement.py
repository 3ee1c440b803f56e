"""Initial placement and prefetch: which experts to load before they are asked for.

- ``RoundRobinByUsage``: the paper's initialisation (§4.3): experts by descending offline usage
  probability, dealt round-robin over executors while they fit their pools.
- ``NextGroup`` (ours): while an executor works on its head group, load the expert of the next
  queued group it does not hold, so the switch overlaps compute.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Mapping

from coserve_jax.policies.base import EngineView, QueuedWhere, changes_after


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
    with at most ``max_inflight`` loads per pool in flight. Each may be one number for every
    executor kind or a mapping per kind (a kind it omits gets no prefetch). With
    ``fastest_kind_only``, only executors of the fastest kind present prefetch (GPU if there is
    one): every pool loads from the same disk, so a CPU helper's prefetch delays the GPUs'
    demand loads. coserve_plus: GPU 1 deep / 1 in flight, CPU 2 / 2, fastest kind only
    (figures in ``policies/__init__.py``).
    """

    def __init__(self, depth: int | Mapping[str, int] = 1, max_inflight: int | Mapping[str, int] = 1,
                 fastest_kind_only: bool = False):
        self.depth = _per_kind(depth, "depth")
        self.max_inflight = _per_kind(max_inflight, "max_inflight")
        self.fastest_kind_only = fastest_kind_only
        # executor -> ((queue version, pool version), answer, depth): the loop asks after every event,
        # mostly with nothing changed, and a scan walked the whole queue when the pool held it all
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._missing = QueuedWhere(lambda pool, e: not pool.holds(e))

    def inflight_limit(self, kind: str) -> int:
        return self.max_inflight(kind)

    def prefetch(self, view: EngineView, executor_id: int) -> list[str]:
        ex = view.executors[executor_id]
        groups, pool = ex.groups, ex.pool
        key = (ex.version, pool.version)
        memo = self._memo.get(ex)
        if memo is not None and memo[0][1] == key[1]:
            (version, _), answer, depth = memo
            if version == key[0]:
                return list(answer)
            # Tasks only queued since (an arrival, the common case): the groups before keep
            # their order and new groups join the tail, so the answer only grows at its end (a
            # task joining a group of an expert the pool lacks finds it answered already, or
            # the answer full).
            queued = changes_after(ex, version)
            if queued is not None and all(c[3] == c[2] + 1 for c in queued):
                out = list(answer)
                for _, e, _, _, _, _ in queued:
                    if len(out) < depth and e not in out and not pool.holds(e):
                        out.append(e)
                self._memo[ex] = (key, tuple(out), depth)
                return out
        if self.fastest_kind_only and ex.kind != "gpu" and any(o.kind == "gpu" for o in view.executors):
            self._memo[ex] = (key, (), 0)
            return []
        depth = self.depth(ex.kind)
        out: list[str] = []
        # The first groups directly (a short queue, or a missing expert near its head: the
        # common case), then the rest through the index of queued experts the pool does not
        # hold (a long queue with everything held answers at once). The same answer either way.
        for g in itertools.islice(groups, _DIRECT_GROUPS):
            if len(out) >= depth:
                break
            if g.expert_id not in out and not pool.holds(g.expert_id):
                out.append(g.expert_id)
        missing = self._missing.get(ex) if len(out) < depth and len(groups) > _DIRECT_GROUPS else ()
        if missing and missing.difference(out):
            for g in itertools.islice(groups, _DIRECT_GROUPS, None):
                if len(out) >= depth:
                    break
                if g.expert_id in missing and g.expert_id not in out:
                    out.append(g.expert_id)
        self._memo[ex] = (key, tuple(out), depth)
        return out


_DIRECT_GROUPS = 8  # NextGroup.prefetch looks at this many groups before its index


def _per_kind(value: int | Mapping[str, int], name: str) -> Callable[[str], int]:
    """A setting given once or per executor kind, as kind -> value (0 for an omitted kind)."""
    if isinstance(value, Mapping):
        table = {str(k): int(v) for k, v in value.items()}
        bad = {k: v for k, v in table.items() if v < 0}
        if bad:
            raise ValueError(f"NextGroup.{name}: must be >= 0 per kind, got {bad}")
        return lambda kind: table.get(kind, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"NextGroup.{name}: must be a whole number >= 0 or a mapping per kind, got {value!r}")
    return lambda kind: value
