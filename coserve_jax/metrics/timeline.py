"""One arm's timeline: what the engine did and when, as a Chrome/Perfetto trace.

The engine loop (``engine/loop.py``) calls a ``Timeline`` when ``metrics.timeline`` is on, and
``NO_TIMELINE``'s empty hooks when it is off; policies never see it. Times are the
backend's clock (``backend.now()``): wall seconds on the real backend, virtual seconds in the
simulator. ``to_trace`` renders the Trace Event Format (``{"traceEvents": [...]}``, ``ts`` and
``dur`` in microseconds) that ui.perfetto.dev and chrome://tracing open:

- process "executors", one thread per executor: a complete event ("X") per batch, named by its
  expert, ``args`` {expert, size, seconds, run_s, predicted_s}; and "wait for load" spans while the executor
  waited for its next expert. A batch span runs from its launch until the loop moved its
  executor on (the next launch or another state): exactly what ``time_s.compute`` counts, so a
  track's batch seconds add up to the executor's compute seconds. ``run_s`` is the backend's own
  figure for the forward (real: the worker thread's time; sim: the same as the span);
  ``predicted_s`` the cost model's for the batch alone (``scripts/host_contention.py --runs``
  compares the two).
  Counter ("C") "queue exN": tasks queued at executor N.
- process "loads", one thread per load lane: an "X" per load from its actual start (its lane
  free, its I/O thread running) to its end, ``args`` {expert, bytes, src, kind, seconds,
  predicted_s (the cost model's for the load alone), waited_s, waited_by, queued_s}. kind
  "waited": an executor sat in wait_load for it; "hidden": none did
  (it overlapped compute or idle); "initial": before serving; "failed". Loads are packed onto
  the fewest lanes that hold them (at most the backend's load threads).
- process "memory", one thread per pool: counter "pool <id>" with bytes {resident, loading,
  batch} (batch: reserved plus held working memory; the three add up to what the pool's budget
  admits) and an instant event ("i") per eviction.
A global instant marks when serving starts (after the initial loads). Counters are sampled
after every event the loop handles and kept only when they change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from coserve_jax.metrics.results import write_json_atomic

log = logging.getLogger(__name__)

PID_EXECUTORS, PID_LOADS, PID_MEMORY = 1, 2, 3
_US = 1e6


class Timeline:
    """Collects one arm's batches, loads, waits, counters and evictions (backend clock, s)."""

    def __init__(self, max_events: int = 500_000):
        self.max_events = max_events
        self.events: list[tuple] = []  # (ph, pid, tid, name, ts_s, dur_s, args)
        self.loads: list[tuple[float, float, str, dict]] = []  # (start_s, dur_s, name, args); lanes at export
        self.dropped = 0  # events past max_events (the timeline is then not written)
        self.executor_names: dict[int, str] = {}
        self.pool_ids: list[str] = []
        self.budgets_bytes: dict[str, int] = {}
        self._open: dict[int, list] = {}  # executor -> [batch, start_s, run_s, error]
        self._inflight: dict[int, dict] = {}  # load id -> what is known while it runs
        self._by_key: dict[tuple[str, str], int] = {}  # (pool, expert) -> load id in flight
        self._waiting_for: dict[int, str] = {}  # executor -> expert it waits for
        self._last: dict[tuple, tuple] = {}  # counter key -> last values

    # ---- engine calls ---------------------------------------------------------------------
    def describe(self, engine: Any) -> None:
        """Name the tracks from the engine's executors and pools."""
        for ex in engine.executors:
            self.executor_names[ex.executor_id] = (
                f"executor {ex.executor_id} ({ex.kind}:{ex.device_index}, pool {ex.pool.pool_id})")
        for p in engine.pools():
            self.pool_ids.append(p.pool_id)
            self.budgets_bytes[p.pool_id] = p.budget_bytes

    @property
    def full(self) -> bool:
        return len(self.events) + len(self.loads) >= self.max_events

    def _add(self, ev: tuple) -> None:
        if self.full:
            self.dropped += 1
        else:
            self.events.append(ev)

    def mark(self, name: str, t: float) -> None:
        self._add(("i", PID_EXECUTORS, 0, name, t, None, {"scope": "g"}))

    def batch_started(self, batch: Any, now: float) -> None:
        self._close_batch(batch.executor_id, now)
        self._open[batch.executor_id] = [batch, now, None, None]

    def batch_done(self, batch: Any, ev: Any) -> None:
        rec = self._open.get(batch.executor_id)
        if rec is not None and rec[0].batch_id == batch.batch_id:
            rec[2], rec[3] = ev.seconds, ev.error

    def executor_state(self, executor_id: int, left: str, since_s: float, now: float) -> None:
        """The executor left state ``left`` (held since ``since_s``): close its batch or wait span."""
        if left == "compute":
            self._close_batch(executor_id, now)
        elif left == "wait_load" and now > since_s:
            expert = self._waiting_for.pop(executor_id, None)
            self._add(("X", PID_EXECUTORS, executor_id, "wait for load", since_s, now - since_s,
                       {"expert": expert}))

    def _close_batch(self, executor_id: int, now: float) -> None:
        rec = self._open.pop(executor_id, None)
        if rec is None:
            return
        batch, start, run_s, error = rec
        args = {"expert": batch.expert_id, "size": len(batch.tasks), "seconds": now - start,
                "run_s": run_s, "predicted_s": batch.predicted_s, "batch_id": batch.batch_id}
        if error is not None:
            args["error"] = error
        self._add(("X", PID_EXECUTORS, executor_id, batch.expert_id, start, now - start, args))

    def load_started(self, job: Any, now: float) -> None:
        self._inflight[job.load_id] = {"requested_s": now, "waited_since": None, "waited_by": set()}
        self._by_key[(job.pool_id, job.expert_id)] = job.load_id

    def load_waited(self, executor_id: int, pool_id: str, expert_id: str, now: float) -> None:
        self._waiting_for[executor_id] = expert_id
        rec = self._inflight.get(self._by_key.get((pool_id, expert_id), -1))
        if rec is not None:
            if rec["waited_since"] is None:
                rec["waited_since"] = now
            rec["waited_by"].add(executor_id)

    def load_done(self, job: Any, ev: Any, now: float) -> None:
        rec = self._inflight.pop(job.load_id, None) or {"requested_s": now, "waited_since": None, "waited_by": set()}
        if self._by_key.get((job.pool_id, job.expert_id)) == job.load_id:
            del self._by_key[(job.pool_id, job.expert_id)]
        end = now if ev.at_s is None else ev.at_s
        start = end - ev.seconds
        waited = rec["waited_since"] is not None
        kind = ("failed" if ev.error is not None else "initial" if job.initial
                else "waited" if waited else "hidden")
        args = {"expert": job.expert_id, "pool": job.pool_id, "bytes": job.size_bytes, "src": job.src.name.lower(),
                "kind": kind, "prefetch": job.prefetch, "seconds": ev.seconds,
                "predicted_s": job.predicted_s, "queued_s": max(0.0, start - rec["requested_s"]),
                "waited_s": max(0.0, now - rec["waited_since"]) if waited else 0.0,
                "waited_by": sorted(rec["waited_by"])}
        if ev.error is not None:
            args["error"] = ev.error
        if self.full:
            self.dropped += 1
        else:
            self.loads.append((start, ev.seconds, f"load {job.expert_id} ({kind})", args))

    def evicted(self, pool_id: str, expert_id: str, now: float) -> None:
        self._add(("i", PID_MEMORY, self._pool_tid(pool_id), f"evict {expert_id}", now, None,
                   {"scope": "t", "expert": expert_id, "pool": pool_id}))

    def sample(self, now: float, engine: Any) -> None:
        """Counters (queue depth per executor, bytes per pool), kept when they changed."""
        for ex in engine.executors:
            self._counter(PID_EXECUTORS, f"queue ex{ex.executor_id}", now, {"tasks": ex.num_queued})
        for p in engine.pools():
            loading = sum(p.loading.values())
            batch = p.reserved_bytes + p.held_bytes
            self._counter(PID_MEMORY, f"pool {p.pool_id}", now,
                          {"resident": p.used_bytes - loading - batch, "loading": loading, "batch": batch})

    def _counter(self, pid: int, name: str, now: float, values: dict[str, int]) -> None:
        key = (pid, name)
        vals = tuple(values.values())
        if self._last.get(key) != vals:
            self._last[key] = vals
            self._add(("C", pid, 0, name, now, None, values))

    def _pool_tid(self, pool_id: str) -> int:
        if pool_id not in self.pool_ids:
            self.pool_ids.append(pool_id)
        return self.pool_ids.index(pool_id)

    # ---- export -----------------------------------------------------------------------------
    def num_events(self) -> int:
        return len(self.events) + len(self.loads)

    def to_trace(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The Trace Event Format document (JSON object form)."""
        out: list[dict[str, Any]] = []
        for pid, name in ((PID_EXECUTORS, "executors"), (PID_LOADS, "loads"), (PID_MEMORY, "memory")):
            out.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_name", "args": {"name": name}})
            out.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index", "args": {"sort_index": pid}})
        for eid, name in sorted(self.executor_names.items()):
            out.append({"ph": "M", "pid": PID_EXECUTORS, "tid": eid, "name": "thread_name", "args": {"name": name}})
        for tid, pool in enumerate(self.pool_ids):
            out.append({"ph": "M", "pid": PID_MEMORY, "tid": tid, "name": "thread_name",
                        "args": {"name": f"pool {pool}"}})
        lanes: list[float] = []  # end time of each lane's last load
        body: list[dict[str, Any]] = []
        for start, dur, name, args in sorted(self.loads, key=lambda x: x[0]):
            lane = next((i for i, end in enumerate(lanes) if end <= start + 1e-9), len(lanes))
            if lane == len(lanes):
                lanes.append(0.0)
            lanes[lane] = start + dur
            body.append({"ph": "X", "pid": PID_LOADS, "tid": lane, "name": name, "cat": "load",
                         "ts": start * _US, "dur": dur * _US, "args": args})
        for lane in range(len(lanes)):
            out.append({"ph": "M", "pid": PID_LOADS, "tid": lane, "name": "thread_name",
                        "args": {"name": f"load lane {lane}"}})
        for ph, pid, tid, name, ts, dur, args in self.events:
            ev: dict[str, Any] = {"ph": ph, "pid": pid, "tid": tid, "name": name, "ts": ts * _US}
            if ph == "X":
                ev["dur"] = dur * _US
                ev["cat"] = "batch" if pid == PID_EXECUTORS and name != "wait for load" else "wait"
                ev["args"] = args
            elif ph == "i":
                ev["s"] = args["scope"]
                ev["cat"] = "evict" if pid == PID_MEMORY else "mark"
                ev["args"] = {k: v for k, v in args.items() if k != "scope"}
            else:
                ev["cat"] = "counter"
                ev["args"] = args
            body.append(ev)
        body.sort(key=lambda e: e["ts"])
        other = {"budgets_bytes": self.budgets_bytes, "events": len(body), **(meta or {})}
        return {"traceEvents": out + body, "displayTimeUnit": "ms", "otherData": other}


class _NoTimeline:
    """The engine's hooks when no timeline is recorded: each call does nothing."""

    def _nothing(self, *args: Any) -> None:
        return None

    mark = batch_started = batch_done = load_started = load_waited = load_done = evicted = sample = _nothing


NO_TIMELINE = _NoTimeline()


def timeline_file(arm: str) -> str:
    return f"timeline-{arm}.json"


def write_timeline(out_dir: str | Path, arm: str, timeline: Timeline, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``timeline-<arm>.json`` unless the arm's events exceeded the cap; returns what
    results.json records about it ({file, events} or {written: false, reason})."""
    if timeline.dropped:
        reason = (f"{timeline.num_events() + timeline.dropped} events > metrics.timeline_max_events="
                  f"{timeline.max_events}")
        log.warning("timeline of arm %s not written: %s (raise the cap to keep it)", arm, reason)
        return {"written": False, "reason": reason}
    trace = timeline.to_trace({"arm": arm, **meta})
    write_json_atomic(Path(out_dir) / timeline_file(arm), trace, indent=None)
    return {"file": timeline_file(arm), "events": trace["otherData"]["events"]}
