"""The simulator backend: virtual time, an event heap ordered by (time, kind, sequence).

Loads and batches take what the cost model predicted when the engine started them. Loads share
``load_channels`` I/O lanes like the real backend's loader threads: a load waits for a free lane
(FIFO), so parallel loads do not get free bandwidth. Identical inputs give identical schedules.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from coserve_jax.engine.loop import BATCH_DONE, LOAD_DONE, BatchDone, Event, LoadDone
from coserve_jax.types import Batch, LoadJob, Request


class SimBackend:
    """Virtual-time backend for the shared engine loop."""

    routing_default = "trace"

    def __init__(self, load_channels: int = 1):
        if load_channels < 1:
            raise ValueError("load_channels must be >= 1")
        self._now = 0.0
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = itertools.count()
        self._channels = [0.0] * load_channels
        self.events_handled = 0

    def now(self) -> float:
        return self._now

    def _push(self, t: float, kind: int, ev: Event) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), ev))

    def start_load(self, job: LoadJob) -> None:
        i = min(range(len(self._channels)), key=lambda k: (self._channels[k], k))
        start = max(self._now, self._channels[i])
        end = start + job.predicted_s
        self._channels[i] = end
        self._push(end, LOAD_DONE, LoadDone(job, seconds=end - start))

    def start_batch(self, batch: Batch, executor: Any, inputs: list[Any]) -> None:
        self._push(self._now + batch.predicted_s, BATCH_DONE, BatchDone(batch, seconds=batch.predicted_s))

    def next_event(self, until_s: float | None) -> Event | None:
        if self._heap and (until_s is None or self._heap[0][0] <= until_s):
            t, _, _, ev = heapq.heappop(self._heap)
            self._now = max(self._now, t)
            self.events_handled += 1
            return ev
        if until_s is not None:
            self._now = max(self._now, until_s)
        return None

    def drop(self, pool_id: str, expert_id: str) -> None:
        pass

    def validate_input(self, request: Request, image: Any) -> str | None:
        return None

    def close(self) -> None:
        pass
