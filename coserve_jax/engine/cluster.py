"""The cluster simulator: N replicas, one router, virtual time (DESIGN §12).

Each replica is one arm's engine loop over its own simulator backend (``engine/sim.py``), with
its own hardware profile and budget, exactly as one machine is simulated; the router is the
same object the Ray Serve app runs (``policies/router.py``). The driver advances the replicas
in virtual time: before an arrival at time T every replica with an event due by T handles it
(so the router sees their queues as of T), then the router picks a replica and the request
arrives there. A request is served whole on its replica (classifier, then the detector its
rules lead to). A replica can be killed at a virtual time (``kill_at_s``): its unfinished
requests are routed again, keeping their arrival time (latency counts the lost work), and the
router sees it dead from then on.

The replicas share nothing: each is a machine of its own (separate cores, memory and disk).
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.engine.events import tasks_done
from coserve_jax.engine.loop import EngineLoop as LoopEngine
from coserve_jax.engine.state import RequestState
from coserve_jax.policies.base import changes_after
from coserve_jax.policies.router import NoReplicaError, Router
from coserve_jax.types import Request

log = logging.getLogger(__name__)


class WorkingSetPlacement:
    """Initialiser: load a given list of experts (a router's working set for this replica),
    dealt round-robin over the replica's executors while they fit their pools."""

    def __init__(self, experts: Sequence[str]):
        self.experts = list(experts)

    def initial_experts(self, view: Any) -> dict[int, list[str]]:
        free = {ex.executor_id: ex.pool.free_bytes for ex in view.executors}
        pools = {ex.executor_id: id(ex.pool) for ex in view.executors}
        plan: dict[int, list[str]] = {eid: [] for eid in free}
        ids = list(free)
        taken: set[tuple[int, str]] = set()
        turn = 0
        for e in self.experts:
            size = view.graph.experts[e].param_bytes
            for k in range(len(ids)):
                eid = ids[(turn + k) % len(ids)]
                if (pools[eid], e) in taken:
                    break  # a shared pool already gets it
                if free[eid] >= size:
                    plan[eid].append(e)
                    for other, p in pools.items():  # executors sharing this pool see its bytes go
                        if p == pools[eid]:
                            free[other] -= size
                    taken.add((pools[eid], e))
                    turn = (turn + k + 1) % len(ids)
                    break
        return plan


def expert_bytes(engine: LoopEngine) -> int:
    """Bytes an engine's pools hold for experts: their budgets less batch memory (the fixed
    reserve, or for dynamic batch memory the reserve kept while the pool is first filled)."""
    total = 0
    for pool in {id(ex.pool): ex.pool for ex in engine.executors}.values():
        batch = sum(ex.initial_reserve_bytes for ex in engine.executors if ex.pool is pool)
        total += pool.budget_bytes - max(pool.reserved_bytes, batch)
    return total


def held_experts(engine: LoopEngine) -> set[str]:
    """Experts an engine holds or has committed to load: resident, loading or queued."""
    out: set[str] = set()
    for pool in {id(ex.pool): ex.pool for ex in engine.executors}.values():
        out.update(list(pool.resident), list(pool.loading))
    for ex in engine.executors:
        out.update(list(ex.queued_experts))
    return out


class SimReplica:
    """A replica as routers see it (``policies.router.ReplicaView``), over one engine loop."""

    def __init__(self, replica_id: int, engine: LoopEngine):
        self.replica_id = replica_id
        self.engine = engine
        self.alive = True
        self.pending = 0
        self.kind = engine.executors[0].kind
        self.cost = engine.cost
        self.lanes = len(engine.executors)
        self.expert_bytes = expert_bytes(engine)
        self._pools = list({id(ex.pool): ex.pool for ex in engine.executors}.values())
        # What holds() answers from, kept as the engine changes (the Mux router asks every
        # replica on every request, and between two requests the cluster acts on few of them):
        # the experts held, followed through the pools' and executors' change logs up to the
        # versions in _seen, brought up to date when the cluster said it acted (``changed``).
        self._logs = [*self._pools, *engine.executors]
        self._seen = [-1] * len(self._logs)
        self._held: set[str] = set()
        self._num_experts = 0
        self._stale = True

    def changed(self) -> None:
        """The cluster acted on this replica's engine (events, an arrival): what it holds may
        have changed."""
        self._stale = True

    @property
    def num_experts(self) -> int:
        if self._stale:
            self._sync()
        return self._num_experts

    def holds(self, expert_id: str) -> bool:
        """Resident, loading or queued here: in Ray Serve a multiplexed replica starts loading a
        model as soon as a request for it starts, so a queued request stands for a load."""
        if self._stale:
            self._sync()
        return expert_id in self._held

    def _holds_now(self, expert_id: str) -> bool:
        return (any(p.holds(expert_id) for p in self._pools)
                or any(expert_id in ex.queued_experts for ex in self.engine.executors))

    def _sync(self) -> None:
        touched: set[str] | None = set()
        for k, log in enumerate(self._logs):
            if log.version != self._seen[k]:
                changes = changes_after(log, self._seen[k])
                if changes is None or touched is None:
                    touched = None  # a log no longer reaches back: look at everything
                else:
                    touched.update(c[1] for c in changes)
                self._seen[k] = log.version
        if touched is None:
            touched = {e for p in self._pools for e in (*p.resident, *p.loading)}
            touched.update(e for ex in self.engine.executors for e in ex.queued_experts)
            self._held = set()
        for e in touched:
            if self._holds_now(e):
                self._held.add(e)
            else:
                self._held.discard(e)
        self._num_experts = sum(len(p.resident) + len(p.loading) for p in self._pools)
        self._stale = False


@dataclasses.dataclass
class _Req:
    request: Request
    arrival_s: float  # cluster virtual time
    replica: int = -1
    attempts: int = 0
    done_s: float | None = None
    failed: str | None = None


class ServingStage:
    """The serving layer in front of the router (the HTTP proxy, the ingress, the actor calls
    there and back) as one first-come-first-served server whose seconds per request depend on
    how many requests are in it: ``points`` are (requests in the stage, seconds per request) as
    measured, interpolated linearly between them and held beyond the first and last. A server
    like Ray's proxy and ingress takes several requests per wake-up of its event loops, so its
    cost per request falls as they pile up; one point (or a number) is a constant cost."""

    def __init__(self, points: float | Sequence[tuple[float, float]]):
        pts = [(1.0, float(points))] if isinstance(points, (int, float)) else [(float(n), float(s)) for n, s in points]
        if not pts:
            raise ValueError("ServingStage.points: at least one (requests in the stage, seconds) point")
        for i, (n, sec) in enumerate(pts):
            if not n >= 1.0 or not sec >= 0.0 or (i and not n > pts[i - 1][0]):
                raise ValueError(f"ServingStage.points[{i}]: ({n}, {sec}) must have requests >= 1, rising, "
                                 f"and seconds >= 0; got {pts}")
        self.points = pts
        self._n = np.array([n for n, _ in pts])
        self._s = np.array([s for _, s in pts])

    def __bool__(self) -> bool:
        return bool(self._s.any())

    def seconds(self, in_stage: int) -> float:
        """Seconds the stage spends on its next request with ``in_stage`` requests in it."""
        return float(np.interp(in_stage, self._n, self._s))


class ClusterSim:
    """N simulated replicas behind one router. ``make_engine(i)`` builds replica i's engine
    loop (over its own ``SimBackend``); ``placement(i)``, when given, lists the experts replica
    i loads before serving (else its arm's initialiser runs).

    ``serving_s``: the serving layer in front of the router as one first-come-first-served
    stage (``ServingStage``: seconds per request, or (requests in the stage, seconds) points); a
    request reaches the router when it leaves the stage, and its latency counts from its
    arrival. 0 (the default): requests reach the router as they arrive."""

    def __init__(self, graph: CoEGraph, router: Router, engines: Sequence[LoopEngine],
                 placement: Callable[[Any, int], Sequence[str]] | None = None, max_attempts: int = 3,
                 serving_s: float | Sequence[tuple[float, float]] = 0.0):
        try:
            self.serving = ServingStage(serving_s)
        except ValueError as e:
            raise ValueError(f"ClusterSim.serving_s: {e}") from None
        self.graph = graph
        self.router = router
        self._replicas = [SimReplica(i, e) for i, e in enumerate(engines)]
        self.placement = placement
        self.max_attempts = max_attempts
        self._reqs: dict[int, _Req] = {}
        self._by_local: dict[tuple[int, int], int] = {}  # (replica, local id) -> request id
        self._local_ids = [0] * len(engines)
        # The replicas' next event times (``_note``): (time, replica) entries, and per replica
        # the time its latest entry stands for (None: no entry)
        self._due: list[tuple[float, int]] = []
        self._heads: list[float | None] = [None] * len(engines)
        self.reroutes = 0
        for rep in self._replicas:
            rep.engine.on_request_done = self._done_callback(rep)

    # ---- ClusterView -----------------------------------------------------------------------
    @property
    def replicas(self) -> Sequence[SimReplica]:
        return self._replicas

    # ---- driving -------------------------------------------------------------------------------
    def _done_callback(self, rep: SimReplica) -> Callable[[RequestState], None]:
        def done(rs: RequestState) -> None:
            rid = self._by_local.pop((rep.replica_id, rs.request.request_id), None)
            if rid is None:
                return
            rep.pending -= 1
            r = self._reqs[rid]
            if rs.failed is not None:
                r.failed = rs.failed
            r.done_s = rs.done_s
        return done

    def _advance(self, rep: SimReplica, t: float) -> None:
        """Handle every event of this replica due by t (then its clock reads >= t and nothing
        due by t is left on its heap), as the engine's own run loop does between two arrivals."""
        eng, be = rep.engine, rep.engine.backend
        while True:
            now = be.now()
            if now >= t:
                happened = be.ready_at()
                if happened is None or happened > t:
                    break
                ev = be.next_event(now)
            else:
                ev = be.next_event(t)
            if ev is None:
                continue
            # The loop's own steps (engine/loop.py Engine.run); the cluster feeds its arrivals.
            eng._handle(ev)
            eng._dispatch_all()
            be.charge("event", tasks_done(ev))
        self._note(rep)

    def _note(self, rep: SimReplica) -> None:
        """After the cluster acted on this replica (only that changes its engine): tell it, and
        record the time at the head of its event heap (a superseded entry counts, as it does
        for ``_advance``)."""
        rep.changed()
        heap = rep.engine.backend._heap
        head = heap[0][0] if heap else None
        if head != self._heads[rep.replica_id]:
            self._heads[rep.replica_id] = head
            if head is not None:
                heapq.heappush(self._due, (head, rep.replica_id))

    def _submit(self, r: _Req, t: float) -> None:
        try:
            i = self.router.route(self, r.request.component_type)
        except NoReplicaError as e:
            r.failed, r.done_s = f"no replica: {e}", t
            return
        rep = self._replicas[i]
        if not rep.alive:
            raise RuntimeError(f"router sent a request to dead replica {i}")
        self._advance(rep, t)
        local = self._local_ids[i]
        self._local_ids[i] += 1
        self._by_local[(i, local)] = r.request.request_id
        r.replica, r.attempts = i, r.attempts + 1
        rep.pending += 1
        req = dataclasses.replace(r.request, request_id=local)
        rep.engine._arrive(req, None, rep.engine.backend.now())
        rep.engine._dispatch_all()
        rep.engine.backend.charge("arrival")
        self._note(rep)

    def _kill(self, i: int, t: float) -> None:
        rep = self._replicas[i]
        rep.alive = False
        lost = [rid for (ri, _), rid in self._by_local.items() if ri == i]
        for key in [k for k in self._by_local if k[0] == i]:
            del self._by_local[key]
        rep.pending = 0
        log.info("replica %d killed at %.3f s: %d requests in flight routed again", i, t, len(lost))
        for rid in sorted(lost):
            r = self._reqs[rid]
            if r.attempts >= self.max_attempts:
                r.failed, r.done_s = f"replica {i} died; {r.attempts} attempts", t
                continue
            self.reroutes += 1
            self._submit(r, t)

    def run(self, requests: Sequence[Request], kill_at_s: Mapping[int, float] | None = None) -> dict[str, Any]:
        """Serve a trace (arrival_s relative to the start) and return the cluster summary."""
        wall0 = time.perf_counter()
        init_s = []
        for rep in self._replicas:
            if self.placement is not None:
                rep.engine.initialiser = WorkingSetPlacement(self.placement(self, rep.replica_id))
            init_s.append(rep.engine.initialise())
        t0 = max(rep.engine.backend.now() for rep in self._replicas)
        for rep in self._replicas:
            self._advance(rep, t0)
            for ex in rep.engine.executors:
                ex.set_state("idle", t0)
                ex.seconds.clear()
        kills = sorted((t0 + t, i) for i, t in (kill_at_s or {}).items())
        order = sorted(requests, key=lambda r: (r.arrival_s, r.request_id))
        arrivals = [t0 + r.arrival_s for r in order]
        served_until = t0  # when the serving stage is next free
        for k, req in enumerate(order):
            arrived = t = arrivals[k]
            if self.serving:  # through the serving stage, first come first served
                start = max(arrived, served_until)
                in_stage = bisect.bisect_right(arrivals, start) - k  # this one and those behind it
                t = served_until = start + self.serving.seconds(in_stage)
            while kills and kills[0][0] <= t:
                kt, ki = kills.pop(0)
                self._advance_all(kt)
                self._kill(ki, kt)
            r = self._reqs[req.request_id] = _Req(req, arrived)
            self._advance_all(t)
            self._submit(r, t)
        for kt, ki in kills:
            self._advance_all(kt)
            self._kill(ki, kt)
        self._drain()
        return self.summary(t0, time.perf_counter() - wall0, init_s)

    def _advance_all(self, t: float) -> None:
        """Advance to t every live replica with an event due by t. The replicas share nothing,
        so the order they advance in does not matter; a heap of their heads' times finds them
        without looking at the others (32,000 arrivals x 32 replicas in the largest cell)."""
        due, heads = self._due, self._heads
        while due and due[0][0] <= t:
            head, i = heapq.heappop(due)
            if heads[i] != head:
                continue  # its heap changed since: a later entry stands for it
            heads[i] = None
            if self._replicas[i].alive:
                self._advance(self._replicas[i], t)

    def _drain(self) -> None:
        for rep in self._replicas:
            if not rep.alive:
                continue
            eng, be = rep.engine, rep.engine.backend
            while eng.busy:
                ev = be.next_event(None)
                if ev is None:
                    eng._fail_all_pending("engine stalled: no event while work was pending")
                    break
                eng._handle(ev)
                eng._dispatch_all()
                be.charge("event", tasks_done(ev))
            for ex in eng.executors:
                ex.set_state("idle", be.now())  # close the time accounting, as Engine.run does
            rep.changed()

    # ---- results ---------------------------------------------------------------------------------
    def summary(self, t0: float, engine_s: float, init_s: Sequence[float]) -> dict[str, Any]:
        reqs = list(self._reqs.values())
        done = [r for r in reqs if r.failed is None and r.done_s is not None]
        first = min((r.arrival_s for r in reqs), default=t0)
        last = max((r.done_s for r in done), default=first)
        wall = max(last - first, 1e-9)
        lat = np.array([r.done_s - r.arrival_s for r in done]) * 1e3
        pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: None)
        per = []
        switches = during = 0
        for rep in self._replicas:
            s = rep.engine.summary(wall_s=wall, init_s=init_s[rep.replica_id])
            served = sum(1 for r in done if r.replica == rep.replica_id)
            switches += s["switches"]["count"]
            during += s["switches"]["during_run"]
            per.append({"replica": rep.replica_id, "alive": rep.alive, "completed": served,
                        "throughput_rps": served / wall, "switches": s["switches"]["count"],
                        "switches_during_run": s["switches"]["during_run"],
                        "distinct_experts": s["switches"]["distinct_experts"],
                        "batches_mean_size": s["batches"]["mean_size"],
                        "time_s": s["time_s"]})
        failures: dict[str, int] = {}
        for r in reqs:
            if r.failed is not None:
                key = r.failed.split(":")[0]
                failures[key] = failures.get(key, 0) + 1
        out = {
            "replicas": len(self._replicas),
            "requests": {"submitted": len(reqs), "completed": len(done), "failed": len(reqs) - len(done),
                         "failure_reasons": failures, "rerouted": self.reroutes},
            "wall_s": wall,
            "throughput_rps": len(done) / wall,
            "throughput_per_replica_rps": len(done) / wall / max(1, len(self._replicas)),
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                           "mean": float(lat.mean()) if lat.size else None},
            "switches": {"count": switches, "during_run": during},
            "per_replica": per,
            "engine_s": engine_s,
        }
        router_stats = {k: getattr(self.router, k) for k in ("spills", "rebuilds") if hasattr(self.router, k)}
        if router_stats:
            out["router"] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in router_stats.items()}
        return out
