"""Routers: which replica of a cluster serves a component image (DESIGN §12).

Pure Python like every policy: a router reads a read-only ``ClusterView`` and returns a replica
id. No JAX, no I/O, no clock, so the same objects route in the cluster simulator
(``engine/cluster.py``) and in the Ray Serve app (``serve/router.py``). A request is served
whole on the replica it is routed to: its classifier and, when the classifier finds no damage,
the detector the rules lead to.

- ``Affinity`` (ours, CoE-aware): partitions component types over replicas so that each
  replica's working set (its types' classifiers and the detectors they lead to) fits its pool
  and expected work (usage x profiled compute) is balanced; a type's classifier and detector
  stay on one replica; a type hotter than one replica's share is split over several, and a
  shared detector is replicated on every replica its types landed on; a request spills to the
  least-loaded replica when its home's queue exceeds a bound; the partition is rebuilt when
  the replica set changes or the observed mix drifts from the one it was built for.
- ``Mux``: Ray Serve model multiplexing as it behaves (ray/serve/_private/request_router:
  ``MultiplexMixin`` + ``PowerOfTwoChoicesRequestRouter``): the model id is the component
  type's classifier; replicas that hold it and have room are candidates, else the replicas
  holding the fewest models; of the candidates, two drawn at random, the shorter queue wins.
  The replica keeps an LRU of experts up to what its budget holds (its arm: ``mux_replica``).
- ``RoundRobin``: replicas in turn, blind to the request.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from coserve_jax.coe.graph import CoEGraph


class NoReplicaError(RuntimeError):
    """No replica is alive to take the request."""


class CostView(Protocol):
    """The cost-model lookups a router reads (``CostModel`` satisfies it)."""

    def batch_latency_s(self, kind: str, arch: str, n: int) -> float: ...
    def max_batch(self, kind: str, arch: str) -> int: ...


class ReplicaView(Protocol):
    """One replica as the router sees it."""

    replica_id: Hashable
    alive: bool
    kind: str  # executor kind whose profile prices its compute ("gpu", "cpu")
    cost: CostView  # this replica's hardware profile
    expert_bytes: int  # bytes its pools hold for experts (budget minus batch memory)
    lanes: int  # executors: batches it runs at once

    @property
    def pending(self) -> int: ...  # requests routed to it and not finished

    @property
    def num_experts(self) -> int: ...  # experts resident or loading

    def holds(self, expert_id: str) -> bool: ...  # resident or loading in one of its pools


class ClusterView(Protocol):
    graph: CoEGraph

    @property
    def replicas(self) -> Sequence[ReplicaView]: ...


@runtime_checkable
class Router(Protocol):
    def route(self, view: ClusterView, component_type: str) -> Hashable:
        """The id of the (alive) replica that serves this request."""
        ...


def _alive(view: ClusterView) -> list[ReplicaView]:
    alive = [r for r in view.replicas if r.alive]
    if not alive:
        raise NoReplicaError("no replica is alive")
    return alive


# ---- the partition (pure function of graph, profiles, replicas and mix) ------------------------
def per_image_s(cost: CostView, kind: str, arch: str) -> float:
    """Profiled compute seconds per image at the architecture's best batch."""
    n = max(1, cost.max_batch(kind, arch))
    return cost.batch_latency_s(kind, arch, n) / n


def type_work_s(graph: CoEGraph, ctype: str, cost: CostView, kind: str, mix: float) -> float:
    """Expected compute seconds one request stream of this type's share costs per request."""
    c = graph.components[ctype]
    s = per_image_s(cost, kind, graph.experts[c.classifier].arch)
    if c.detector is not None:
        s += (1.0 - c.p_damaged) * per_image_s(cost, kind, graph.experts[c.detector].arch)
    return mix * s


@dataclasses.dataclass(frozen=True)
class Partition:
    """Where each component type lives: ``homes[t]`` its replicas (several for a hot type) and
    each replica's working set, hottest first. ``load_s`` is each replica's expected compute
    seconds per request of the cluster's traffic (divided by its lanes); ``replicas`` the alive
    set it was built for; ``mix`` the mix it was built from."""

    homes: Mapping[str, tuple[Hashable, ...]]
    working_set: Mapping[Hashable, tuple[str, ...]]
    load_s: Mapping[Hashable, float]
    bytes_used: Mapping[Hashable, int]
    replicas: tuple[Hashable, ...]
    mix: Mapping[str, float]
    cost_s: Mapping[str, float]  # expected compute seconds of one request of each type (reference replica)

    def share(self, ctype: str) -> int:
        return len(self.homes.get(ctype, ()))


def build_partition(graph: CoEGraph, replicas: Sequence[ReplicaView], mix: Mapping[str, float],
                    previous: Partition | None = None, split_above: float = 1.0,
                    stickiness: float = 0.1, detector_affinity: float = 0.25) -> Partition:
    """Partition component types over replicas (longest-processing-time first, memory-aware).

    Units, hottest (most expected work) first: a detector's family (the types whose requests
    may continue to it) is one unit while its work is at most ``split_above`` x one replica's
    fair share, so the detector is loaded once; a hotter family breaks into its types, and a
    type hotter than that is split into as many equal shares, each on a different replica (the
    detector is then replicated where its types landed). Types with no detector are units of
    their own. A unit goes to the replica with the least load after adding it, among those
    whose working set still fits its ``expert_bytes``; a family that fits nowhere breaks into
    its types; a type that fits nowhere goes to the least-loaded replica (the cluster holds less
    than the hot working set: it loads on demand there). A type-unit gets ``detector_affinity``
    x its work off its score on a replica already holding its detector, and ``stickiness`` x a
    fair share on its previous home (a re-partition moves few types). Types with no expected
    traffic are dealt round-robin, so every type has a home."""
    ids = [r.replica_id for r in replicas]
    if not ids:
        raise NoReplicaError("no replica is alive")
    by_id = {r.replica_id: r for r in replicas}
    rank = {i: n for n, i in enumerate(ids)}
    work: dict[Hashable, dict[str, float]] = {}
    hot = [t for t in graph.components if mix.get(t, 0.0) > 0.0]
    priced: dict[tuple, dict[str, float]] = {}  # replicas of one profile, kind and lanes price alike
    for r in replicas:
        key = (id(r.cost), r.kind, r.lanes)
        if key not in priced:
            priced[key] = {t: type_work_s(graph, t, r.cost, r.kind, mix[t]) / max(1, r.lanes) for t in hot}
        work[r.replica_id] = priced[key]
    ref = ids[0]
    total = sum(work[ref].values())
    cap = split_above * (total / len(ids)) if total > 0 else math.inf  # most work one unit may carry
    fair = total / len(ids)

    # A unit: (types, shares); its work on replica i is sum(work[i][t]) / shares.
    heap: list[tuple[float, int, tuple[str, ...], int]] = []
    seq = 0

    def push(types: tuple[str, ...], shares: int) -> None:
        nonlocal seq
        for _ in range(shares):
            heapq.heappush(heap, (-sum(work[ref][t] for t in types) / shares, seq, types, shares))
            seq += 1

    def push_type(t: str) -> None:
        w = work[ref][t]
        push((t,), min(len(ids), max(1, math.ceil(w / cap - 1e-9))) if w > cap else 1)

    families: dict[str, list[str]] = {}
    for t in hot:
        d = graph.components[t].detector
        if d is None:
            push_type(t)
        else:
            families.setdefault(d, []).append(t)
    for members in families.values():
        if len(members) > 1 and sum(work[ref][t] for t in members) <= cap * (1 + 1e-9):
            push(tuple(sorted(members)), 1)
        else:
            for t in members:
                push_type(t)

    homes: dict[str, list[Hashable]] = {t: [] for t in graph.components}
    held: dict[Hashable, set[str]] = {i: set() for i in ids}
    used = dict.fromkeys(ids, 0)
    load = dict.fromkeys(ids, 0.0)
    order: dict[Hashable, list[str]] = {i: [] for i in ids}
    prev = previous.homes if previous is not None else {}

    def new_experts(i: Hashable, types: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for t in types:
            c = graph.components[t]
            out += [e for e in (c.classifier, c.detector) if e is not None and e not in held[i] and e not in out]
        return out

    while heap:
        _, _, types, k = heapq.heappop(heap)
        best: tuple | None = None
        for i in ids:
            if len(types) == 1 and i in homes[types[0]]:
                continue  # each share of a split type on a different replica
            w = sum(work[i][t] for t in types) / k
            fits = used[i] + sum(graph.experts[e].param_bytes for e in new_experts(i, types)) <= by_id[i].expert_bytes
            score = load[i] + w
            if len(types) == 1:
                det = graph.components[types[0]].detector
                if det is not None and det in held[i]:
                    score -= detector_affinity * w
            if any(i in prev.get(t, ()) for t in types):
                score -= stickiness * fair
            key = (not fits, score, rank[i])
            if best is None or key < best[0]:
                best = (key, i, w)
        assert best is not None
        (unfit, _, _), i, w = best
        if unfit and len(types) > 1:
            for t in types:  # a family that fits nowhere whole: place its types one by one
                push_type(t)
            continue
        new = new_experts(i, types)
        for t in types:
            homes[t].append(i)
        held[i].update(new)
        order[i].extend(new)
        used[i] += sum(graph.experts[e].param_bytes for e in new)
        load[i] += w
    cost_s = {t: (work[ref][t] / mix[t] if t in work[ref] else
                  type_work_s(graph, t, by_id[ref].cost, by_id[ref].kind, 1.0) / max(1, by_id[ref].lanes))
              for t in graph.components}
    cold = sorted(t for t in graph.components if not homes[t])
    for n, t in enumerate(cold):
        homes[t].append(ids[n % len(ids)])
    return Partition(homes={t: tuple(h) for t, h in homes.items()},
                     working_set={i: tuple(order[i]) for i in ids}, load_s=load, bytes_used=used,
                     replicas=tuple(ids), mix=dict(mix), cost_s=cost_s)


# ---- routers ------------------------------------------------------------------------------------
class Affinity:
    """CoE-aware routing over a dependency- and memory-aware partition (module docstring).

    ``spill_pending``: a request spills when its home has at least this many requests pending
    and more than ``spill_ratio`` x (the least-loaded replica's + 1). Drift: the last
    ``drift_window`` routed types are kept; every ``drift_window // 4`` routes (once the window
    is full and at least a window after the last re-partition) the window's mix is pushed
    through the partition; if it would load some replica more than ``drift_threshold`` above
    (or below) what the partition planned, or put more than ``drift_threshold`` of requests on
    types it planned no traffic for, the partition is rebuilt from the observed mix."""

    def __init__(self, spill_pending: int = 8, spill_ratio: float = 1.25, drift_window: int = 2000,
                 drift_threshold: float = 0.25, split_above: float = 1.0):
        if spill_pending < 1 or spill_ratio < 1.0:
            raise ValueError("Affinity: spill_pending must be >= 1 and spill_ratio >= 1")
        if drift_window < 8 or not drift_threshold > 0:
            raise ValueError("Affinity: drift_window must be >= 8 and drift_threshold > 0")
        self.spill_pending, self.spill_ratio = spill_pending, spill_ratio
        self.drift_window, self.drift_threshold = drift_window, drift_threshold
        self.split_above = split_above
        self.partition: Partition | None = None
        self._window: deque[str] = deque(maxlen=drift_window)
        self._since_check = 0
        self._since_build = 0
        self._next_share: Counter[str] = Counter()
        self.rebuilds: Counter[str] = Counter()  # why the partition was (re)built
        self.spills = 0

    # -- placement ----------------------------------------------------------------------------
    def plan(self, view: ClusterView, reason: str = "start") -> Partition:
        alive = _alive(view)
        mix = self._observed_mix(view.graph) if reason == "drift" else (
            dict(self.partition.mix) if self.partition is not None else
            {t: c.mix for t, c in view.graph.components.items()})
        self.partition = build_partition(view.graph, alive, mix, previous=self.partition,
                                         split_above=self.split_above)
        self.rebuilds[reason] += 1
        self._since_build = 0
        return self.partition

    def ensure_plan(self, view: ClusterView, alive: Sequence[ReplicaView] | None = None) -> Partition:
        """The partition for the alive replicas (``alive``: the view's, when the caller has them):
        built at the start, rebuilt when the set changed."""
        alive_ids = {r.replica_id for r in (alive if alive is not None else _alive(view))}
        if self.partition is None:
            return self.plan(view, "start")
        if set(self.partition.replicas) != alive_ids:
            return self.plan(view, "replicas")
        return self.partition

    def initial_experts(self, view: ClusterView, replica_id: Hashable) -> list[str]:
        """The experts this replica should load before serving: its working set, hottest first."""
        return list(self.ensure_plan(view).working_set.get(replica_id, ()))

    def _observed_mix(self, graph: CoEGraph) -> dict[str, float]:
        counts = Counter(self._window)
        n = sum(counts.values()) or 1
        old = self.partition.mix if self.partition is not None else {}
        # Mostly what was seen, a little of the old mix so a rare type keeps some weight.
        return {t: 0.9 * counts.get(t, 0) / n + 0.1 * old.get(t, 0.0) for t in graph.components}

    def _drifted(self, view: ClusterView) -> bool:
        p = self.partition
        if p is None or len(self._window) < self.drift_window or self._since_build < self.drift_window:
            return False
        counts = Counter(self._window)
        n = len(self._window)
        unplanned = sum(c for t, c in counts.items() if p.mix.get(t, 0.0) <= 0.0) / n
        if unplanned > self.drift_threshold:
            return True
        # Each replica's work per request if the window's mix ran through the current partition,
        # against what the partition planned; a drift counts only beyond the window's sampling
        # noise (4 standard deviations of a multinomial sample of n requests).
        total = sum(p.mix.values()) or 1.0
        planned: Counter[Hashable] = Counter()
        second: Counter[Hashable] = Counter()
        observed: Counter[Hashable] = Counter()
        for t, homes in p.homes.items():
            a = p.cost_s[t] / len(homes)
            q, c = p.mix.get(t, 0.0) / total, counts.get(t, 0) / n
            for i in homes:
                planned[i] += q * a
                second[i] += q * a * a
                observed[i] += c * a
        for i in p.replicas:
            noise = 4.0 * math.sqrt(max(0.0, second[i] - planned[i] ** 2) / n)
            if abs(observed[i] - planned[i]) > max(self.drift_threshold * planned[i], noise):
                return True
        return False

    # -- routing ------------------------------------------------------------------------------
    def route(self, view: ClusterView, component_type: str) -> Hashable:
        alive = _alive(view)
        self._window.append(component_type)
        self._since_build += 1
        self._since_check += 1
        previous = self.partition
        if self.ensure_plan(view, alive) is previous and self._since_check >= max(1, self.drift_window // 4):
            self._since_check = 0
            if self._drifted(view):
                self.plan(view, "drift")
        p = self.partition
        by_id = {r.replica_id: r for r in alive}
        homes = [by_id[i] for i in p.homes.get(component_type, ()) if i in by_id]

        def backlog(r: ReplicaView) -> float:
            return r.pending / max(1, r.lanes)

        def least_loaded() -> ReplicaView:  # looks at every replica: only when a decision needs it
            return min(alive, key=lambda r: (backlog(r), str(r.replica_id)))

        if not homes:
            return least_loaded().replica_id  # an unknown type: the replica fails it with a clear error
        home = min(homes, key=lambda r: (backlog(r), str(r.replica_id)))
        if backlog(home) < self.spill_pending:
            return home.replica_id
        least = least_loaded()
        if backlog(home) > self.spill_ratio * (backlog(least) + 1):
            # Spill: to a replica that already has the type's classifier if one is light enough
            # (no switch), else to the least-loaded one.
            cls = view.graph.components[component_type].classifier
            holders = [r for r in alive if r.holds(cls) and backlog(home) > self.spill_ratio * (backlog(r) + 1)]
            self.spills += 1
            return min(holders or [least], key=lambda r: (backlog(r), str(r.replica_id))).replica_id
        return home.replica_id


class Mux:
    """Ray Serve model multiplexing (module docstring): model id = the type's classifier.

    A replica is full with ``max_ongoing`` requests pending (Ray's ``max_ongoing_requests``).
    Holders of the model that are not full are the candidates; when every holder is full, Ray
    waits up to its matching timeout and then tries the replicas with the fewest models, then
    any: here the non-full replicas with the fewest models, and when every replica is full the
    holders (in Ray the request waits in the router's queue, and the first holder to free a
    slot takes it: its FIFO fills a free slot with a request for a model the replica holds).
    Of the candidates, two drawn at random (``seed``), the one with fewer pending wins."""

    def __init__(self, max_ongoing: int = 32, seed: int = 0):
        if max_ongoing < 1:
            raise ValueError(f"Mux.max_ongoing: must be >= 1, got {max_ongoing}")
        self.max_ongoing = max_ongoing
        self._rng = random.Random(seed)

    def route(self, view: ClusterView, component_type: str) -> Hashable:
        alive = _alive(view)
        comp = view.graph.components.get(component_type)
        holders = [r for r in alive if comp is not None and r.holds(comp.classifier)]
        cands = [r for r in holders if r.pending < self.max_ongoing]
        if not cands:
            room = [r for r in alive if r.pending < self.max_ongoing]
            pool = room or holders or alive
            fewest = min(r.num_experts for r in pool)
            cands = [r for r in pool if r.num_experts == fewest] if pool is not holders else pool
        if len(cands) > 2:
            cands = self._rng.sample(cands, 2)
        return min(cands, key=lambda r: (r.pending, str(r.replica_id))).replica_id


class RoundRobin:
    """Alive replicas in turn."""

    def __init__(self) -> None:
        self._next = 0

    def route(self, view: ClusterView, component_type: str) -> Hashable:
        alive = _alive(view)
        r = alive[self._next % len(alive)]
        self._next += 1
        return r.replica_id
