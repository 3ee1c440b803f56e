"""The simulator backend: virtual time, an event heap ordered by (time, kind, sequence).

Loads and batches take what the cost model predicted when the engine started them, slowed by
the resources they share, as on the real machines:
- I/O lanes: loads share ``load_channels`` lanes like the real backend's loader threads; a load
  waits for a free lane (FIFO).
- Compute, by processor sharing, recomputed whenever a job starts or ends. GPU executors on one
  GPU share it equally (n jobs: each at 1/n speed). All CPU executors share the host, and with
  ``loads_share_host`` (the default) so do loads into host-memory pools (CPU executors, the host
  cache): reading and unpacking a checkpoint is CPU work. The host has ``host_cores`` cores
  (the profile's: the measuring machine's CPU count) and shares them max-min fairly: a batch
  may use every core (its profiled time was measured alone on the whole host), a load one core
  (one reader process). Each job runs at (cores it gets) / (cores it may use): on 2 cores, two
  batches and a load get 2/3 core each, so the batches run at 1/3 speed and the load at 2/3.
  With ``host_cores`` 1 this is plain processor sharing (each of n jobs at 1/n).
  A measured profile also says how much slower a load runs beside n batches on the host
  (``load_slowdown``: ``[1.0, r1, r2, ...]``, the profiler's ``measure_load_contention``): a host
  load's speed is capped at 1/r_n while n CPU batches run. Core sharing alone gives a load beside
  one batch its whole core, while on this 2-core machine it ran ×1.4-1.6 slower (GIL hand-offs
  of the load's last steps, caches), and the simulator then predicted coserve_plus's demand
  loads ~30% faster and its throughput up to 23% higher than the real engine's. Likewise beside
  other host loads (``load_slowdown_loads``: ``[1.0, r1, ...]`` beside 1, ... loads, the
  profiler's ``measure_load_beside_loads``): on the demo two loads at once each
  ran ×1.3-1.4 slower than one alone, where two cores' sharing gives each its own core (×1.0).
  A load beside n batches and m other loads is capped at 1/(r_n × r_m).
Shared hardware for loads the profile splits (``LoadJob.parts``; the paper's machines,
``cost/paper_profiles.py``): a load runs its parts in order on one lane, each on what the
machine shares. "disk": the read; concurrent reads share the one disk's bandwidth (n reads: each
at 1/n speed), as an SSD does. "cpu": deserialising; a one-core job on the host in the max-min
sharing above, so two lanes deserialise side by side on free cores. "link": the host -> device
copy; copies to one device share its link (1/n each; ``plan_executors`` puts every GPU executor
on device 0, so one link per pool kind). A load the profile does not split is one job as before:
into host memory it shares the host, into a GPU pool it shares nothing but the lanes.
The loop itself is one thread: every arrival it takes in costs ``loop_s_per_arrival`` and every
completion ``loop_s_per_event`` plus ``loop_s_per_task`` per task it completes (the loop routes
each) of virtual time (the profile's ``overheads``, measured while serving; on the demo
0.29-0.38 ms plus 15-18 µs a task, where the real loop spends 0.2-0.3 ms on a samba completion
of one task and 0.5-0.9 ms on one of twenty), so the simulated loop lags behind fast arrivals as the real one does. The loads and
batches it dispatches while handling an arrival or event start when that charge ends, as a
real hand-off does (the loop's work before its dispatch, then the load or executor thread's
wake-up): on the demo the real loop took ~0.3 ms from a load's end to its batch's start and
~0.6-0.9 ms from a batch's end to the next load's, and a simulator starting them at once made
samba 8-16% optimistic (`experiments/sim_validation`). With
``loop_shares_host`` (``backend.loop_shares_host``, on by default) that work also runs on the
host: while the loop is busy it takes one core in the max-min sharing above, so CPU batches and
host loads slow down meanwhile, as they do beside the real loop's thread. Against saved real
runs (demo CoE, 3 seeds) this cut coserve's simulated switch error from +28..+44% to
+15..+25% and every arm's throughput error by 3-9 points.
A batch's completion reaches the loop ``batch_handoff_s`` after its compute ends (the profile's
``overheads``, measured while serving: the real worker thread's start after the loop's dispatch,
its work after the forward, the loop's wake-up for the event; ``engine/real.py:
BatchHandoffs``), a fixed delay that shares nothing; its executor stays busy meanwhile, as the
real one does until the loop has taken the completion. On the demo the profiler measures
0.24-0.28 ms a batch (``experiments/sim_validation``).
The profile's figures are each job alone on its device. Identical inputs give identical
schedules.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from coserve_jax.engine.events import BATCH_DONE, LOAD_DONE, BatchDone, Event, LoadDone
from coserve_jax.types import Batch, LoadJob, Request

if TYPE_CHECKING:
    from coserve_jax.cost.model import CostModel

HOST = ("cpu",)
DISK = ("disk",)


def part_key(resource: str, job: LoadJob) -> tuple:
    """The shared resource a part of a split load runs on (module docstring)."""
    if resource == "cpu":
        return HOST
    if resource == "disk":
        return DISK
    kind = "host" if job.pool_id == "host" else job.pool_id.rsplit(":", 1)[-1]
    return (resource, kind)


def device_key(kind: str, device_index: int) -> tuple:
    """Executors that share compute: all CPU executors (one host), GPU executors per GPU."""
    return HOST if kind == "cpu" else (kind, device_index)


def slowdown_beside(ratios: Sequence[float], n: int) -> float:
    """A profile's slowdown beside n others (``[1.0, r1, r2, ...]``; the last stands for more)."""
    return ratios[min(n, len(ratios) - 1)] if n and ratios else 1.0


class _Job:
    __slots__ = ("item", "start_s", "work_s", "token", "rest")

    def __init__(self, item: Batch | LoadJob, start_s: float, work_s: float,
                 rest: tuple[tuple[str, float], ...] = ()):
        self.item, self.start_s, self.work_s, self.token = item, start_s, work_s, 0
        self.rest = rest  # a split load's parts still to run after this one


class SimBackend:
    """Virtual-time backend for the shared engine loop."""

    routing_default = "trace"

    def __init__(self, load_channels: int = 1, share_devices: bool = True, loads_share_host: bool = True,
                 loop_s_per_event: float = 0.0, host_cores: int = 1,
                 loop_s_per_arrival: float | None = None, loop_shares_host: bool = False,
                 load_slowdown: Sequence[float] = (), batch_handoff_s: float = 0.0, loop_s_per_task: float = 0.0,
                 load_slowdown_loads: Sequence[float] = ()):
        if load_channels < 1:
            raise ValueError("load_channels must be >= 1")
        if host_cores < 1:
            raise ValueError("host_cores must be >= 1")
        for name, ratios in (("load_slowdown", load_slowdown), ("load_slowdown_loads", load_slowdown_loads)):
            if any(not r >= 1.0 for r in ratios):
                raise ValueError(f"{name}: every ratio must be >= 1, got {list(ratios)}")
        self.load_slowdown = tuple(float(r) for r in load_slowdown)
        self.load_slowdown_loads = tuple(float(r) for r in load_slowdown_loads)
        if not batch_handoff_s >= 0.0:
            raise ValueError(f"batch_handoff_s must be >= 0, got {batch_handoff_s}")
        self.batch_handoff_s = float(batch_handoff_s)
        if not loop_s_per_task >= 0.0:
            raise ValueError(f"loop_s_per_task must be >= 0, got {loop_s_per_task}")
        self.loop_s_per_task = float(loop_s_per_task)
        self.host_cores = host_cores
        self._now = 0.0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self._lanes_free = load_channels
        self._waiting_loads: collections.deque[LoadJob] = collections.deque()
        self.share_devices = share_devices
        self.loads_share_host = loads_share_host
        self.loop_s_per_event = loop_s_per_event
        self.loop_s_per_arrival = loop_s_per_event if loop_s_per_arrival is None else loop_s_per_arrival
        self._running: dict[tuple, dict[int, _Job]] = {}
        self._updated_s: dict[tuple, float] = {}
        self.events_handled = 0
        self.loop_shares_host = loop_shares_host
        self._loop_busy = False  # inside charge(): the loop's thread holds one host core
        # Jobs the loop started while handling its current arrival or event: they start when its
        # charge for that work ends (``charge``), or at the next look at the clock's events.
        self._starting: list[tuple[Any, tuple]] = []

    @classmethod
    def for_cost(cls, cost: CostModel, load_channels: int = 1, *, loop_shares_host: bool = False) -> SimBackend:
        """A simulator backend with everything a profile says about the host and the loop."""
        return cls(load_channels, loop_s_per_event=cost.loop_s_per_event, host_cores=cost.host_cores,
                   loop_s_per_arrival=cost.loop_s_per_arrival, loop_shares_host=loop_shares_host,
                   load_slowdown=cost.load_slowdown, batch_handoff_s=cost.batch_handoff_s,
                   loop_s_per_task=cost.loop_s_per_task, load_slowdown_loads=cost.load_slowdown_loads)

    def now(self) -> float:
        return self._now

    def _push(self, t: float, kind: int, item: Any) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), item))

    # ---- loads --------------------------------------------------------------------------------
    def start_load(self, job: LoadJob) -> None:
        self._starting.append((self._start_load, (job,)))

    def _start_load(self, job: LoadJob) -> None:
        self._waiting_loads.append(job)
        self._admit_loads()

    def _start_held(self) -> None:
        """Start the jobs the loop dispatched (``start_load``, ``start_batch``), now."""
        starting, self._starting = self._starting, []
        for start, args in starting:
            start(*args)

    def _admit_loads(self) -> None:
        while self._lanes_free and self._waiting_loads:
            job = self._waiting_loads.popleft()
            self._lanes_free -= 1
            host_pool = job.pool_id == "host" or job.pool_id.endswith(":cpu")
            if job.parts:
                self._next_part(job, self._now, job.parts)
            elif self.loads_share_host and host_pool:
                self._join(HOST, job)
            else:
                self._push(self._now + job.predicted_s, LOAD_DONE, (None, job, self._now))

    # ---- processor sharing ------------------------------------------------------------------
    def start_batch(self, batch: Batch, executor: Any, inputs: list[Any]) -> None:
        key = device_key(executor.kind, executor.device_index) if self.share_devices else ("ex", executor.executor_id)
        self._starting.append((self._join, (key, batch)))

    def _join(self, key: tuple, item: Batch | LoadJob, work_s: float | None = None, start_s: float | None = None,
              rest: tuple[tuple[str, float], ...] = ()) -> None:
        self._advance(key)
        job = _Job(item, self._now if start_s is None else start_s,
                   item.predicted_s if work_s is None else work_s, rest)
        self._running.setdefault(key, {})[next(self._ids)] = job
        self._reschedule(key)

    def _next_part(self, job: LoadJob, start_s: float, parts: tuple[tuple[str, float], ...]) -> None:
        """Run a split load's next part on its shared resource (the load started at start_s)."""
        (resource, seconds), rest = parts[0], parts[1:]
        self._join(part_key(resource, job), job, seconds, start_s, rest)

    def _rates(self, key: tuple, running: dict[int, _Job]) -> dict[int, float]:
        """Each running job's speed (1: as fast as alone); see the module docstring."""
        rates = self._shares(key, running)
        if key == HOST and (self.load_slowdown or self.load_slowdown_loads):
            loads = [jid for jid, r in running.items() if isinstance(r.item, LoadJob)]
            if loads:
                slowdown = slowdown_beside(self.load_slowdown, len(running) - len(loads)) * slowdown_beside(
                    self.load_slowdown_loads, len(loads) - 1)
                for jid in loads:
                    rates[jid] = min(rates[jid], 1.0 / slowdown)
        return rates

    def _shares(self, key: tuple, running: dict[int, _Job]) -> dict[int, float]:
        """Speeds from sharing the device's compute alone (max-min over the host's cores)."""
        if key != HOST or (self.host_cores == 1 and not self._loop_busy):
            return {jid: 1.0 / len(running) for jid in running}
        cores = self.host_cores
        want: dict[Any, int] = {jid: 1 if isinstance(r.item, LoadJob) else cores for jid, r in running.items()}
        if self._loop_busy:
            want[-1] = 1  # the loop's thread (-1: never a job id)
        rates: dict[int, float] = {}
        left, free = sorted(want, key=lambda j: (want[j], j)), float(cores)
        while left:  # max-min fair (water-filling): the smallest demands are met first
            share = free / len(left)
            jid = left[0]
            if want[jid] > share:
                for j in left:
                    rates[j] = share / want[j]
                break
            rates[jid] = 1.0
            free -= want[jid]
            left.pop(0)
        return rates

    def _advance(self, key: tuple) -> None:
        running = self._running.get(key)
        last = self._updated_s.get(key, self._now)
        if running and self._now > last:
            rates = self._rates(key, running)
            for jid, r in running.items():
                r.work_s = max(0.0, r.work_s - (self._now - last) * rates[jid])
        self._updated_s[key] = self._now

    def _reschedule(self, key: tuple) -> None:
        running = self._running.get(key, {})
        rates = self._rates(key, running) if running else {}
        for jid, r in running.items():
            r.token += 1
            kind = LOAD_DONE if isinstance(r.item, LoadJob) else BATCH_DONE
            self._push(self._now + r.work_s / rates[jid], kind, (key, jid, r.token))

    # ---- events --------------------------------------------------------------------------------
    def next_event(self, until_s: float | None) -> Event | None:
        self._start_held()
        while self._heap and (until_s is None or self._heap[0][0] <= until_s):
            t, kind, _, item = heapq.heappop(self._heap)
            key = item[0]
            if key is None:  # a load outside any shared resource, or a batch's hand-off ending
                _, job, start = item
                self._now = max(self._now, t)
                ev: Event = (LoadDone(job, seconds=self._now - start) if isinstance(job, LoadJob)
                             else BatchDone(job, seconds=self._now - start))
            else:
                r = self._live(item)
                if r is None:
                    continue  # superseded by a reschedule
                jid = item[1]
                self._now = max(self._now, t)
                self._advance(key)
                del self._running[key][jid]
                self._reschedule(key)
                if r.rest:  # a split load moves on to its next part: no event yet
                    self._next_part(r.item, r.start_s, r.rest)
                    continue
                if self.batch_handoff_s and not isinstance(r.item, LoadJob):
                    # Its compute is done; its completion reaches the loop after the threads'
                    # hand-offs, a fixed delay that shares nothing.
                    self._push(self._now + self.batch_handoff_s, BATCH_DONE, (None, r.item, r.start_s))
                    continue
                ev = (LoadDone(r.item, seconds=self._now - r.start_s) if isinstance(r.item, LoadJob)
                      else BatchDone(r.item, seconds=self._now - r.start_s))
            if isinstance(ev, LoadDone):
                self._lanes_free += 1
                self._admit_loads()
            self.events_handled += 1
            return ev
        if until_s is not None:
            self._now = max(self._now, until_s)
        return None

    def ready_at(self) -> float | None:
        """Virtual time of the earliest event already due (at or before now), else None."""
        self._start_held()
        while self._heap:
            t, _, _, item = self._heap[0]
            if t > self._now:
                return None
            if item[0] is not None and self._live(item) is None:
                heapq.heappop(self._heap)  # superseded by a reschedule
                continue
            return t
        return None

    def _live(self, item: tuple) -> _Job | None:
        """The running job a shared-resource heap entry (key, job id, token) still stands for."""
        key, jid, token = item
        r = self._running.get(key, {}).get(jid)
        return r if r is not None and r.token == token else None

    def charge(self, kind: str = "event", tasks: int = 0) -> None:
        """The loop handled one arrival or event (completing ``tasks`` tasks, each of which it
        routes): its own time passes (one Python thread)."""
        self._charge(self.loop_s_per_arrival if kind == "arrival"
                     else self.loop_s_per_event + tasks * self.loop_s_per_task)
        self._start_held()  # what the loop dispatched starts once its work is done

    def _charge(self, d: float) -> None:
        if not (self.loop_shares_host and d > 0 and self._running.get(HOST)):
            self._now += d
            return
        # The loop's thread runs on the host beside CPU executors and host loads: over its busy
        # interval it takes one core's share (a job that would finish inside the interval
        # finishes at its end: an error of at most d).
        self._advance(HOST)
        self._loop_busy = True
        self._now += d
        self._advance(HOST)
        self._loop_busy = False
        self._reschedule(HOST)

    def drop(self, pool_id: str, expert_id: str) -> None:
        pass

    def validate_input(self, request: Request, image: Any) -> str | None:
        return None

    def close(self) -> None:
        pass
