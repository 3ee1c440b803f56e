"""The oracle's view of the future (the ``oracle`` bound: Belady eviction on the whole trace)."""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Sequence

from coserve_jax.coe.graph import CoEGraph, UnknownComponentError
from coserve_jax.types import Request


class TraceFuture:
    """For each expert, the earliest (in arrival order) request that will still need it —
    arrivals to come, and subsequent tasks of requests already here."""

    def __init__(self, requests: Sequence[Request], graph: CoEGraph):
        order = sorted(range(len(requests)), key=lambda i: (requests[i].arrival_s, i))
        self._rank = {requests[i].request_id: k for k, i in enumerate(order)}
        pending: dict[str, list[int]] = defaultdict(list)
        for k, i in enumerate(order):
            r = requests[i]
            try:
                route = r.route or graph.truth_route(r.component_type, r.truth or "ok")
            except UnknownComponentError:
                continue  # it fails on arrival like in every other arm
            for e in route:
                pending[e].append(k)  # appended in rank order: already a heap
        self._pending = dict(pending)
        self._done: set[tuple[str, int]] = set()

    def consume(self, request_id: int, expert_id: str) -> None:
        """A task of this request for this expert is now queued: no longer a future use."""
        k = self._rank.get(request_id)
        if k is not None:
            self._done.add((expert_id, k))

    def next_use(self, expert_id: str) -> float:
        heap = self._pending.get(expert_id)
        while heap and (expert_id, heap[0]) in self._done:
            heapq.heappop(heap)
        return float(heap[0]) if heap else math.inf
