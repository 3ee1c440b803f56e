"""The engine loop (DESIGN §4), written once for both backends.

Take events in time order (arrival, load done, batch done). An arrival goes through the
scheduler's assign + arrange into an executor queue; a finished batch runs the routing rules and
enqueues subsequent tasks; an idle executor takes its head group, split to its maximum batch;
the store makes that expert resident in the executor's pool (evicting by policy, never a pinned
expert) and the batch launches when resident; a prefetcher may start loads early.

Only the backend differs between the real engine and the simulator: it says what time it is,
runs loads and batches, and hands back their completions (``events.py``). The oracle's view of
the trace is ``oracle.py``; batch memory taken from a pool's free bytes, ``memory.py``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from coserve_jax.coe.graph import CoEGraph, UnknownComponentError
from coserve_jax.cost.model import CostModel
from coserve_jax.engine.events import Arrival, Backend, BatchDone, Event, LoadDone, Preload, tasks_done
from coserve_jax.engine.loads import BROKEN, LoadSide
from coserve_jax.engine.memory import fit_batch, full_batch_bytes
from coserve_jax.engine.oracle import TraceFuture
from coserve_jax.engine.state import ExecutorState, RequestState
from coserve_jax.metrics.collector import ArmMetrics
from coserve_jax.metrics.timeline import NO_TIMELINE
from coserve_jax.policies.base import Eviction, Initialiser, Prefetcher, Scheduler
from coserve_jax.store.pool import Pool
from coserve_jax.types import Batch, LoadJob, Request, Task

log = logging.getLogger(__name__)

class EngineLoop(LoadSide):
    """One arm's serving loop over a backend. Implements the policies' EngineView."""

    def __init__(
        self,
        *,
        graph: CoEGraph,
        cost: CostModel,
        executors: Sequence[ExecutorState],
        host_cache: Pool | None,
        scheduler: Scheduler,
        eviction: Eviction,
        host_eviction: Eviction,
        initialiser: Initialiser | None,
        prefetcher: Prefetcher | None,
        backend: Backend,
        routing: str,
        load_retries: int = 2,
        check_invariants: bool = False,
    ):
        self.graph, self.cost = graph, cost
        self._executors = list(executors)
        self._host_cache = host_cache
        self.scheduler, self.eviction, self.host_eviction = scheduler, eviction, host_eviction
        self.initialiser, self.prefetcher = initialiser, prefetcher
        self.backend = backend
        if routing not in ("model", "trace"):
            raise ValueError(f"routing must be 'model' or 'trace', got {routing!r}")
        self.routing = routing
        self.load_retries = load_retries
        self.check_invariants = check_invariants
        self.metrics = ArmMetrics()
        self._future: TraceFuture | None = None
        self._requests: dict[int, RequestState] = {}
        self._loads: dict[int, LoadJob] = {}
        self._load_attempts: Counter[tuple[str, str]] = Counter()
        self._no_room: dict[int, tuple] = {}  # executor -> the prefetch it last found no room for
        self._ids = {"load": 0, "batch": 0}
        self._pending = 0
        self._tasks_completed = 0
        self._failures: Counter[str] = Counter()
        self.on_request_done: Callable[[RequestState], None] | None = None
        self._ingested_s = 0.0
        self.decisions: list[tuple] = []  # (kind, ...) policy decisions, in order, for tests
        self.record_decisions = False
        self.keep_outputs = False  # keep every task's logits on its RequestState (tests, API)
        self.timeline: Any = None  # metrics.timeline.Timeline when metrics.timeline is on
        self._tl: Any = NO_TIMELINE  # what the loop calls: the timeline, or hooks that do nothing
        self._pools_by_id = {p.pool_id: p for p in self.pools()}
        self._sharing = {pid: [ex for ex in self._executors if ex.pool is p] for pid, p in self._pools_by_id.items()}
        # What a prefetch leaves free in each executor's pool: with dynamic batch memory, one
        # full batch's working memory.
        self._prefetch_leaves = {ex.executor_id: full_batch_bytes(cost, ex) if ex.dynamic_batch_memory else 0
                                 for ex in self._executors}

    def attach_timeline(self, timeline: Any) -> None:
        """Record what this engine does (``metrics/timeline.py``); call before ``run``."""
        self.timeline = self._tl = timeline
        timeline.describe(self)
        for ex in self._executors:
            ex.on_state = timeline.executor_state

    # ---- EngineView ---------------------------------------------------------------------------
    @property
    def executors(self):
        return self._executors

    @property
    def host_cache(self):
        return self._host_cache

    @property
    def future(self):
        return self._future

    def enable_future(self, requests: Sequence[Request]) -> None:
        """Give eviction the whole trace (the oracle arm: the Belady-on-trace reference)."""
        self._future = TraceFuture(requests, self.graph)

    # ---- public ---------------------------------------------------------------------------------
    def initialise(self) -> float:
        """Load the initialiser's experts before serving; returns the seconds it took."""
        if self.initialiser is None:
            return 0.0
        t0 = self.backend.now()
        # Pools with dynamic batch memory fill as if their batch reserve were set aside, so the
        # first batches need not evict what was just preloaded.
        held = [(ex.pool, min(ex.initial_reserve_bytes, ex.pool.free_bytes)) for ex in self._executors]
        for pool, b in held:
            pool.hold(b)
        plan = self.initialiser.initial_experts(self)
        for ex in self._executors:
            for e in plan.get(ex.executor_id, []):
                size = self.graph.experts[e].param_bytes
                if ex.pool.holds(e) or size > ex.pool.free_bytes:
                    continue
                self._begin_load(ex, e, prefetch=False, initial=True)
        while self._loads:
            ev = self.backend.next_event(None)
            if ev is None:
                raise RuntimeError("engine: initial loads did not finish (backend stalled)")
            self._handle(ev)
            self._tl.sample(self.backend.now(), self)
        for pool, b in held:
            pool.release(b)
        return self.backend.now() - t0

    def run(self, requests: Sequence[Request], images: Sequence[Any] | None = None,
            progress: Any = None) -> dict[str, Any]:
        """Serve a whole trace (arrival_s relative to the start) and return the arm summary."""
        init_s = self.initialise()
        t0 = self.backend.now()
        order = sorted(range(len(requests)), key=lambda i: (requests[i].arrival_s, i))
        first_arrival = t0 + (requests[order[0]].arrival_s if order else 0.0)
        last_done = first_arrival
        k = 0
        for ex in self._executors:
            ex.set_state("idle", t0)
            ex.seconds.clear()
            ex.state_since_s = t0  # idle counts from here, not from before the initial loads
        self._tl.mark("serving starts", t0)
        while k < len(order) or self._pending or self._loads:
            next_t = t0 + requests[order[k]].arrival_s if k < len(order) else None
            now = self.backend.now()
            if next_t is not None and now >= next_t:
                # Behind schedule: take arrivals and completions in the order they happened, so
                # a burst of arrivals cannot starve completions (an executor idling on a batch
                # it finished) for longer than the loop lags.
                happened = self.backend.ready_at()
                if happened is None or happened > next_t:
                    i = order[k]
                    k += 1
                    self._arrive(requests[i], None if images is None else images[i], next_t)
                    self._dispatch_all()
                    self.backend.charge("arrival")
                    if k == len(order):
                        self._ingested_s = self.backend.now() - first_arrival
                    continue
                ev = self.backend.next_event(now)
            else:
                ev = self.backend.next_event(next_t)
            if ev is None:
                if next_t is None:
                    self._fail_all_pending("engine stalled: no event while work was pending")
                    break
                continue
            before = self._pending
            self._handle(ev)
            if self._pending < before:
                last_done = self.backend.now()
                if progress is not None:
                    progress.update(before - self._pending)
            self._dispatch_all()
            self.backend.charge("event", tasks_done(ev))
        end = self.backend.now()
        for ex in self._executors:
            ex.set_state("idle", end)
        out = self.summary(wall_s=max(last_done - first_arrival, 1e-9), init_s=init_s)
        # When the loop had taken in the last arrival (vs the trace's last arrival time): shows
        # whether the loop kept up with arrivals or lagged behind them.
        out["time_s"]["arrivals_ingested"] = self._ingested_s
        out["time_s"]["arrivals_span"] = requests[order[-1]].arrival_s - requests[order[0]].arrival_s if order else 0.0
        return out

    def step(self, until_s: float | None) -> bool:
        """Online use: handle at most one backend event or submission (waiting until until_s).
        False if none came."""
        ev = self.backend.next_event(until_s)
        if ev is None:
            return False
        self._handle(ev)
        self._dispatch_all()
        return True

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._loads)

    def request_states(self) -> dict[int, RequestState]:
        return self._requests

    # ---- arrivals and routing -------------------------------------------------------------
    def _arrive(self, request: Request, image: Any, arrived_s: float | None = None) -> None:
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id} submitted twice")
        now = self.backend.now()
        rs = RequestState(request=request, image=image, arrived_s=now if arrived_s is None else arrived_s)
        self._requests[request.request_id] = rs
        self._pending += 1
        try:
            expert = self.graph.preliminary(request.component_type)
        except UnknownComponentError as e:
            self._fail(rs, str(e))
            return
        problem = self.backend.validate_input(request, image)
        if problem is not None:
            self._fail(rs, problem)
            return
        self._enqueue(Task(request.request_id, expert, 0, now))

    def _enqueue(self, task: Task) -> None:
        t = time.perf_counter()
        eid = self.scheduler.assign(self, task)
        if not 0 <= eid < len(self._executors):
            raise RuntimeError(f"scheduler returned executor {eid!r}; there are {len(self._executors)}")
        join = self.scheduler.arrange(self, eid, task)
        self.metrics.scheduling_s += time.perf_counter() - t
        if self.record_decisions:
            self.decisions.append(("assign", task.request_id, task.expert_id, eid, bool(join)))
        self._executors[eid].enqueue(task, join)
        if self._future is not None:
            self._future.consume(task.request_id, task.expert_id)

    def _finish_task(self, task: Task, output: Any, label: int | None = None) -> None:
        rs = self._requests[task.request_id]
        rs.experts.append(task.expert_id)
        if output is not None and self.keep_outputs:
            rs.outputs.append(output)
        self._tasks_completed += 1
        if self.routing == "model":
            # The backend takes each output's argmax with the batch (BatchDone.labels).
            if label is None:
                raise ValueError(f"backend gave no label for expert {task.expert_id}'s output")
            outcome = self.graph.route_from_label(rs.request, task.expert_id, label)
        else:
            outcome = self.graph.route_from_trace(rs.request, task.expert_id)
        if outcome.next_expert is None:
            rs.verdict, rs.done, rs.done_s = outcome.verdict, True, self.backend.now()
            self._pending -= 1
            if self.on_request_done is not None:
                self.on_request_done(rs)
        else:
            rs.stage += 1
            self._enqueue(Task(task.request_id, outcome.next_expert, rs.stage, self.backend.now()))

    def _fail(self, rs: RequestState, reason: str) -> None:
        if rs.done:
            return
        log.log(logging.DEBUG if BROKEN in reason else logging.WARNING,
                "request %d failed: %s", rs.request.request_id, reason)
        rs.failed, rs.done, rs.done_s = reason, True, self.backend.now()
        self._failures[reason.split(":")[0]] += 1
        self._pending -= 1
        if self.on_request_done is not None:
            self.on_request_done(rs)

    def _fail_all_pending(self, reason: str) -> None:
        log.error(reason)
        for ex in self._executors:
            for g in list(ex.groups):
                for t in ex.drop_expert(g.expert_id):
                    self._fail(self._requests[t.request_id], reason)
        for rs in self._requests.values():
            if not rs.done:
                self._fail(rs, reason)

    # ---- events ---------------------------------------------------------------------------
    def _handle(self, ev: Event) -> None:
        if isinstance(ev, LoadDone):
            self._on_load_done(ev)
        elif isinstance(ev, BatchDone):
            self._on_batch_done(ev)
        elif isinstance(ev, Arrival):
            self._arrive(ev.request, ev.image)
        elif isinstance(ev, Preload):
            self.preload(ev.experts)
        if self.check_invariants:
            self.check()

    def _on_batch_done(self, ev: BatchDone) -> None:
        b = ev.batch
        ex = self._executors[b.executor_id]
        ex.pool.unpin(b.expert_id)
        if b.held_bytes:
            ex.pool.release(b.held_bytes)
        ex.running = None
        self.metrics.record_batch(len(b.tasks), ev.seconds)
        self._tl.batch_done(b, ev)
        for i, task in enumerate(b.tasks):
            rs = self._requests[task.request_id]
            if ev.error is not None:
                self._fail(rs, f"batch failed: expert {b.expert_id}: {ev.error}")
                continue
            try:
                self._finish_task(task, None if ev.outputs is None else ev.outputs[i],
                                  None if ev.labels is None else ev.labels[i])
            except (ValueError, KeyError) as e:
                self._fail(rs, f"routing failed: {e}")

    # ---- dispatch: batches, loads, prefetch -------------------------------------------------
    def _dispatch_all(self) -> None:
        now = self.backend.now()
        for ex in self._executors:
            self._dispatch(ex, now)
        if self.prefetcher is not None:
            for ex in self._executors:
                self._prefetch(ex)
        self._tl.sample(now, self)

    def _dispatch(self, ex: ExecutorState, now: float) -> None:
        if ex.running is not None:
            return
        if not ex.groups:
            ex.set_state("idle", now)
            return
        idx = self.scheduler.pick_group(self, ex.executor_id)
        e = ex.groups[idx].expert_id
        if e in ex.pool.resident:
            self._launch(ex, idx, now)
        elif e in ex.pool.loading or self._begin_load(ex, e, prefetch=False):
            ex.set_state("wait_load", now)
            self._tl.load_waited(ex.executor_id, ex.pool.pool_id, e, now)
        else:
            ex.set_state("idle", now)  # no room yet: in-flight loads hold the bytes

    def _launch(self, ex: ExecutorState, index: int, now: float) -> None:
        expert_id = ex.groups[index].expert_id
        arch = self.graph.experts[expert_id].arch
        n = min(len(ex.groups[index].tasks), ex.max_batch(arch))
        held = 0
        if ex.dynamic_batch_memory:
            n = fit_batch(ex.pool, expert_id, n, lambda k: self.cost.activation_bytes(ex.kind, arch, k),
                          self._rank(self.eviction, ex.pool), lambda e: self._evicted(ex.pool, e), self._executors)
            if n == 0:
                ex.set_state("idle", now)  # running batches and loads hold the bytes; their end frees them
                return
            held = self.cost.activation_bytes(ex.kind, arch, n)
            ex.pool.hold(held)
        tasks = ex.take(index, n)
        ex.pool.pin(expert_id)
        predicted = self.cost.batch_latency_s(ex.kind, arch, len(tasks)) + self.cost.dispatch_s
        self._ids["batch"] += 1
        batch = Batch(self._ids["batch"], ex.executor_id, expert_id, tasks, predicted_s=predicted,
                      held_bytes=held)
        ex.running, ex.running_end_s = batch, now + predicted
        ex.set_state("compute", now)
        if self.record_decisions:
            self.decisions.append(("batch", ex.executor_id, expert_id, tuple(t.request_id for t in tasks)))
        self._tl.batch_started(batch, now)
        states = [self._requests[t.request_id] for t in tasks]
        for rs in states:
            if rs.started_s is None:
                rs.started_s = now
        self.backend.start_batch(batch, ex, [rs.image for rs in states])

    def _pool(self, pool_id: str) -> Pool:
        return self._pools_by_id[pool_id]

    # ---- invariants and results --------------------------------------------------------------
    def pools(self) -> list[Pool]:
        """Every distinct pool (executors may share one), then the host cache."""
        out = list({id(ex.pool): ex.pool for ex in self._executors}.values())
        if self._host_cache is not None:
            out.append(self._host_cache)
        return out

    def check(self) -> None:
        for p in self.pools():
            p.check()

    def summary(self, wall_s: float, init_s: float) -> dict[str, Any]:
        done = [rs for rs in self._requests.values() if rs.done and rs.failed is None]
        if self._failures:
            log.warning("%d of %d requests failed (%s)", len(self._requests) - len(done), len(self._requests),
                        ", ".join(f"{k}: {n}" for k, n in self._failures.most_common()))
        secs: Counter[str] = Counter()
        for ex in self._executors:
            secs.update(ex.seconds)
        out = self.metrics.summary(
            latencies_s=[rs.done_s - rs.arrived_s for rs in done],
            submitted=len(self._requests),
            completed=len(done),
            failures=self._failures,
            tasks_completed=self._tasks_completed,
            wall_s=wall_s,
            peak_bytes={p.pool_id: p.peak_bytes for p in self.pools()},
            budgets_bytes={p.pool_id: p.budget_bytes for p in self.pools()},
            executor_seconds=secs,
            init_s=init_s,
        )
        out["pools"] = self.pool_layout()
        return out

    def pool_layout(self) -> list[dict[str, Any]]:
        """Each pool: its device (``<kind>:<JAX device index>``, or ``host``), bytes and executors."""
        users: dict[int, list[int]] = {}
        for ex in self._executors:
            users.setdefault(id(ex.pool), []).append(ex.executor_id)
        return [{"id": p.pool_id, "kind": p.kind,
                 "device": "host" if p.device_index is None else f"{p.kind}:{p.device_index}",
                 "budget_bytes": p.budget_bytes, "peak_bytes": p.peak_bytes,
                 "executors": users.get(id(p), [])} for p in self.pools()]
