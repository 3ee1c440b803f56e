"""The simulator backend: virtual time, an event heap ordered by (time, kind, sequence).

Loads and batches take what the cost model predicted when the engine started them, with two
shared resources modelled as on real machines:
- I/O: loads share ``load_channels`` lanes like the real backend's loader threads; a load waits
  for a free lane (FIFO), so parallel loads get no free bandwidth.
- Compute: executors on one device share it (all CPU executors share the host's cores; GPU
  executors on one GPU share it) by processor sharing: with n batches running on a device each
  progresses at 1/n speed, and completion times are recomputed whenever one starts or ends.
  The profile's K·n + B is the latency of one executor alone on its device.
Identical inputs give identical schedules.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from coserve_jax.engine.loop import BATCH_DONE, LOAD_DONE, BatchDone, Event, LoadDone
from coserve_jax.types import Batch, LoadJob, Request


def device_key(kind: str, device_index: int) -> tuple:
    """Executors that share compute: all CPU executors (one host), GPU executors per GPU."""
    return ("cpu",) if kind == "cpu" else (kind, device_index)


class _Running:
    __slots__ = ("batch", "start_s", "work_s", "token")

    def __init__(self, batch: Batch, start_s: float, work_s: float):
        self.batch, self.start_s, self.work_s, self.token = batch, start_s, work_s, 0


class SimBackend:
    """Virtual-time backend for the shared engine loop."""

    routing_default = "trace"

    def __init__(self, load_channels: int = 1, share_devices: bool = True):
        if load_channels < 1:
            raise ValueError("load_channels must be >= 1")
        self._now = 0.0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._channels = [0.0] * load_channels
        self.share_devices = share_devices
        self._running: dict[tuple, dict[int, _Running]] = {}
        self._updated_s: dict[tuple, float] = {}
        self.events_handled = 0

    def now(self) -> float:
        return self._now

    def _push(self, t: float, kind: int, item: Any) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), item))

    # ---- loads --------------------------------------------------------------------------------
    def start_load(self, job: LoadJob) -> None:
        i = min(range(len(self._channels)), key=lambda k: (self._channels[k], k))
        start = max(self._now, self._channels[i])
        end = start + job.predicted_s
        self._channels[i] = end
        self._push(end, LOAD_DONE, LoadDone(job, seconds=end - start))

    # ---- batches under processor sharing ------------------------------------------------------
    def start_batch(self, batch: Batch, executor: Any, inputs: list[Any]) -> None:
        key = device_key(executor.kind, executor.device_index) if self.share_devices else ("ex", executor.executor_id)
        self._advance(key)
        self._running.setdefault(key, {})[batch.batch_id] = _Running(batch, self._now, batch.predicted_s)
        self._reschedule(key)

    def _advance(self, key: tuple) -> None:
        running = self._running.get(key)
        last = self._updated_s.get(key, self._now)
        if running:
            done = (self._now - last) / len(running)
            for r in running.values():
                r.work_s = max(0.0, r.work_s - done)
        self._updated_s[key] = self._now

    def _reschedule(self, key: tuple) -> None:
        running = self._running.get(key, {})
        n = len(running)
        for r in running.values():
            r.token += 1
            self._push(self._now + r.work_s * n, BATCH_DONE, (key, r.batch.batch_id, r.token))

    # ---- events --------------------------------------------------------------------------------
    def next_event(self, until_s: float | None) -> Event | None:
        while self._heap and (until_s is None or self._heap[0][0] <= until_s):
            t, kind, _, item = heapq.heappop(self._heap)
            if kind == BATCH_DONE:
                key, batch_id, token = item
                r = self._running.get(key, {}).get(batch_id)
                if r is None or r.token != token:
                    continue  # superseded by a reschedule
                self._now = max(self._now, t)
                self._advance(key)
                del self._running[key][batch_id]
                self._reschedule(key)
                self.events_handled += 1
                return BatchDone(r.batch, seconds=self._now - r.start_s)
            self._now = max(self._now, t)
            self.events_handled += 1
            return item
        if until_s is not None:
            self._now = max(self._now, until_s)
        return None

    def drop(self, pool_id: str, expert_id: str) -> None:
        pass

    def validate_input(self, request: Request, image: Any) -> str | None:
        return None

    def close(self) -> None:
        pass
