"""The views policies read and the small protocols they implement.

The engine owns all mutable state and hands policies read-only views of it (by contract: a
policy never mutates what it is given). Decisions are returned as plain values.

Queues are lists of *groups*: a group is a run of tasks of one expert that will be served
back to back. FCFS order keeps groups in arrival order and only merges a task into the tail
group when it is of the same expert; the paper's request *arranging* joins a task to the queued
group of its expert wherever that group is.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.cost.model import CostModel
from coserve_jax.types import Task, Tier


class GroupView(Protocol):
    expert_id: str

    @property
    def tasks(self) -> Sequence[Task]: ...


class PoolView(Protocol):
    """One byte-budgeted pool of expert weights (an executor's model pool or the host cache)."""

    pool_id: str
    version: int  # changes whenever what the pool holds changes
    # (version, expert) per change of what it holds; every change after changes_since is listed
    changes: Sequence[tuple[int, str]]
    changes_since: int
    kind: str  # executor kind ("cpu", "gpu") or "host"
    device_index: int | None  # the device of its kind its weights live on (None: the host cache)
    budget_bytes: int
    reserved_bytes: int

    @property
    def resident(self) -> Mapping[str, int]: ...  # expert -> bytes, loaded
    @property
    def loading(self) -> Mapping[str, int]: ...  # expert -> bytes, in flight
    @property
    def pinned(self) -> Mapping[str, int]: ...  # expert -> pin count (in a running batch)
    @property
    def last_use_seq(self) -> Mapping[str, int]: ...  # for LRU
    @property
    def admit_seq(self) -> Mapping[str, int]: ...  # for FIFO
    @property
    def used_bytes(self) -> int: ...
    @property
    def free_bytes(self) -> int: ...

    def holds(self, expert_id: str) -> bool: ...  # resident or loading


class ExecutorView(Protocol):
    executor_id: int
    version: int  # changes whenever the queue changes
    # (version, expert, its group's tasks before, after, its queued tasks before, after) per
    # group a change touched; every change after version changes_since is listed
    changes: Sequence[tuple[int, str, int, int, int, int]]
    changes_since: int
    kind: str
    device_index: int  # the device of its kind it runs on; executors on one device may share a pool
    pool: PoolView  # its model pool: its own, or its device's shared pool

    @property
    def groups(self) -> Sequence[GroupView]: ...  # the queue, head first
    @property
    def queued_experts(self) -> Mapping[str, int]: ...  # expert -> queued task count
    @property
    def num_queued(self) -> int: ...
    @property
    def running_expert(self) -> str | None: ...
    @property
    def running_remaining_s(self) -> float: ...  # predicted, computed by the engine

    def max_batch(self, arch: str) -> int: ...


class FutureView(Protocol):
    """What only an oracle may read: the trace's future expert uses."""

    def next_use(self, expert_id: str) -> float: ...  # arrival index of next use, inf if never


class EngineView(Protocol):
    graph: CoEGraph
    cost: CostModel

    @property
    def executors(self) -> Sequence[ExecutorView]: ...
    @property
    def host_cache(self) -> PoolView | None: ...
    @property
    def future(self) -> FutureView | None: ...


# ---- protocols ------------------------------------------------------------------------------
@runtime_checkable
class Scheduler(Protocol):
    """Where a task goes (assign) and where in that queue (arrange)."""

    def assign(self, view: EngineView, task: Task) -> int:
        """Return the executor id the task is queued on."""
        ...

    def arrange(self, view: EngineView, executor_id: int, task: Task) -> bool:
        """True: join the queued group of the task's expert; False: a new group at the tail."""
        ...

    def pick_group(self, view: EngineView, executor_id: int) -> int:
        """Index of the queued group an idle executor serves next (the paper: 0, the head)."""
        ...


@runtime_checkable
class Eviction(Protocol):
    def rank(self, view: EngineView, pool: PoolView, candidates: Sequence[str]) -> list[str]:
        """Order candidates (resident, unpinned) from first to evict to last."""
        ...


@runtime_checkable
class Initialiser(Protocol):
    def initial_experts(self, view: EngineView) -> dict[int, list[str]]:
        """Experts to load into each executor's pool before serving, in load order."""
        ...


@runtime_checkable
class Prefetcher(Protocol):
    def prefetch(self, view: EngineView, executor_id: int) -> list[str]:
        """Experts worth loading into this executor's pool now, most urgent first."""
        ...

    def inflight_limit(self, kind: str) -> int:
        """At most this many loads in flight per pool of this executor kind before prefetching."""
        ...


# ---- shared cost helpers (pure) -------------------------------------------------------------
def source_tier(view: EngineView, expert_id: str, pool_kind: str) -> Tier:
    """Where a load into a pool of pool_kind reads from: the host cache if it holds the expert
    (and the profile knows that path), else disk."""
    cache = view.host_cache
    if cache is not None and expert_id in cache.resident and view.cost.has_load(pool_kind, Tier.HOST):
        return Tier.HOST
    return Tier.DISK


def load_hops(view: EngineView, pool_kind: str, src: Tier) -> tuple[tuple[str, Tier], ...]:
    """The (pool kind, source tier) hops of a load into a pool of pool_kind from src: disk ->
    host cache -> pool in two hops where the profile has no direct disk load of that kind."""
    if src == Tier.DISK and view.host_cache is not None and not view.cost.has_load(pool_kind, Tier.DISK):
        return (("host", Tier.DISK), (pool_kind, Tier.HOST))
    return ((pool_kind, src),)


def load_latency_s(view: EngineView, pool_kind: str, expert_id: str) -> float:
    """Predicted seconds to load expert_id into a pool of pool_kind from where it is now."""
    size = view.graph.experts[expert_id].param_bytes
    return sum(view.cost.load_latency_s(kind, tier, size)
               for kind, tier in load_hops(view, pool_kind, source_tier(view, expert_id, pool_kind)))


def load_parts(view: EngineView, pool_kind: str, src: Tier, size: int) -> tuple[tuple[str, float], ...]:
    """The load's parts where the profile splits loads (disk read, deserialise, copy), hop by hop
    as ``load_latency_s`` prices it; () when a hop is not split."""
    parts: list[tuple[str, float]] = []
    for kind, tier in load_hops(view, pool_kind, src):
        hop = view.cost.load_parts_s(kind, tier, size)
        if not hop:
            return ()
        parts.extend(hop)
    return tuple(parts)


def group_exec_s(view: EngineView, ex: ExecutorView, expert_id: str, n: int) -> float:
    """Predicted execution seconds of n queued tasks of one expert, split into max batches."""
    if n <= 0:
        return 0.0
    arch = view.graph.experts[expert_id].arch
    mb = max(1, ex.max_batch(arch))
    full, rest = divmod(n, mb)
    t = full * view.cost.batch_latency_s(ex.kind, arch, mb)
    if rest:
        t += view.cost.batch_latency_s(ex.kind, arch, rest)
    return t


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def changes_after(log: ExecutorView | PoolView, version: int) -> Sequence[tuple] | None:
    """The entries of a change log (``ExecutorView.changes``, ``PoolView.changes``) after
    version, or None when the log no longer reaches back that far."""
    if version < log.changes_since:
        return None
    changes = log.changes
    i = len(changes)
    while i and changes[i - 1][0] > version:
        i -= 1
    return changes[i:]


class QueuedWhere:
    """The experts queued on an executor of which ``test(pool, expert)`` is true, where the test
    reads only what the executor's pool holds: kept per executor and followed through the
    queue's and the pool's change logs (only the experts they name may have changed), so a
    policy that looks for the first such group in a long queue learns in O(1) that there is
    none. Every queued group's expert is queued, so the first group of ``get(ex)`` is the first
    group passing the test."""

    def __init__(self, test: Callable[[PoolView, str], bool]):
        self.test = test
        # executor -> (queue version, pool version, the experts)
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, ex: ExecutorView) -> set[str]:
        pool, test = ex.pool, self.test
        memo = self._memo.get(ex)
        queue = held = None
        if memo is not None:
            version, pool_version, out = memo
            if version == ex.version and pool_version == pool.version:
                return out
            queue, held = changes_after(ex, version), changes_after(pool, pool_version)
        queued = ex.queued_experts
        if queue is None or held is None:
            out = {e for e in queued if test(pool, e)}
        else:
            for e in {c[1] for c in queue} | {c[1] for c in held}:
                if e in queued and test(pool, e):
                    out.add(e)
                else:
                    out.discard(e)
        self._memo[ex] = (ex.version, pool.version, out)
        return out


class _QueueMemo:
    """Per-executor memo for the queue predictions: the queue's total in integer nanoseconds (so
    updating it change by change gives exactly what a rescan gives), the queued experts the pool
    does not hold (whose loads the total counts), each (architecture, group size)'s execution,
    each (expert, queued tasks)'s added execution and each expert's load nanoseconds. Valid for
    one host cache version; the total follows the executor's queue changes and the pool's
    (``ExecutorView.changes``, ``PoolView.changes``)."""

    __slots__ = ("version", "pool_version", "cache_version", "total_ns", "unheld", "exec_ns", "added_ns",
                 "load_ns")

    def __init__(self) -> None:
        self.version = self.pool_version = -1
        self.cache_version: int | None = -1
        self.total_ns = 0
        self.unheld: set[str] = set()
        self.exec_ns: dict[tuple[str, int], int] = {}  # (architecture, tasks) -> ns
        self.added_ns: dict[tuple[str, int], int] = {}  # (expert, tasks queued) -> ns one more adds
        self.load_ns: dict[str, int] = {}


_MEMOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _current(view: EngineView, ex: ExecutorView) -> _QueueMemo:
    """ex's memo, brought up to date with the host cache, ex's queue and its pool."""
    memo = _MEMOS.get(ex)
    if memo is None:
        memo = _MEMOS[ex] = _QueueMemo()
    cache = view.host_cache
    cache_version = None if cache is None else cache.version
    if memo.cache_version != cache_version:  # where a load reads from may have changed
        memo.load_ns.clear()
        memo.cache_version, memo.version = cache_version, -1
    if memo.version != ex.version or memo.pool_version != ex.pool.version:
        _follow(memo, view, ex)
    return memo


def _exec_ns(memo: _QueueMemo, view: EngineView, ex: ExecutorView, expert_id: str, n: int) -> int:
    key = (view.graph.experts[expert_id].arch, n)  # experts of one architecture share their times
    ns = memo.exec_ns.get(key)
    if ns is None:
        ns = memo.exec_ns[key] = _ns(group_exec_s(view, ex, expert_id, n))
    return ns


def _load_ns(memo: _QueueMemo, view: EngineView, ex: ExecutorView, expert_id: str) -> int:
    ns = memo.load_ns.get(expert_id)
    if ns is None:
        ns = memo.load_ns[expert_id] = _ns(load_latency_s(view, ex.pool.kind, expert_id))
    return ns


def _follow(memo: _QueueMemo, view: EngineView, ex: ExecutorView) -> None:
    # The loop asks for every executor on every arrival. The total changes only with the queue,
    # the pool or the host cache. It follows the queue's changes one by one (an arrival adds one
    # task: one group's term) and, for each expert the queue or the pool changed, whether its
    # load counts (queued here, not held by the pool); it rescans only when the cache changed or
    # a change list no longer reaches back.
    pool = ex.pool
    queue = changes_after(ex, memo.version)
    held = changes_after(pool, memo.pool_version)
    queued = ex.queued_experts
    if queue is None or held is None:
        total = 0
        for g in ex.groups:
            total += _exec_ns(memo, view, ex, g.expert_id, len(g.tasks))
        memo.unheld = {e for e in queued if not pool.holds(e)}
        for e in memo.unheld:
            total += _load_ns(memo, view, ex, e)
    else:
        total = memo.total_ns
        touched = [c[1] for c in held]
        for _, e, g0, g1, _, _ in queue:
            total += _exec_ns(memo, view, ex, e, g1) - _exec_ns(memo, view, ex, e, g0)
            touched.append(e)
        unheld = memo.unheld
        for e in touched:
            counts = e in queued and not pool.holds(e)
            if counts != (e in unheld):
                if counts:
                    unheld.add(e)
                    total += _load_ns(memo, view, ex, e)
                else:
                    unheld.discard(e)
                    total -= _load_ns(memo, view, ex, e)
    memo.total_ns, memo.version, memo.pool_version = total, ex.version, pool.version


def _added_ns(memo: _QueueMemo, view: EngineView, ex: ExecutorView, expert_id: str) -> int:
    n_before = ex.queued_experts.get(expert_id, 0)
    ns = memo.added_ns.get((expert_id, n_before))
    if ns is None:
        ns = memo.added_ns[expert_id, n_before] = (
            _exec_ns(memo, view, ex, expert_id, n_before + 1) - _exec_ns(memo, view, ex, expert_id, n_before))
    if not n_before and not ex.pool.holds(expert_id):
        ns += _load_ns(memo, view, ex, expert_id)  # a switch: not pooled, loading or queued here
    return ns


def queue_total_s(view: EngineView, ex: ExecutorView) -> float:
    """Predicted seconds until ex drains its queue: running batch + groups + switches (one load
    per queued expert the pool does not hold)."""
    return ex.running_remaining_s + _current(view, ex).total_ns / 1e9


def added_latency_s(view: EngineView, ex: ExecutorView, task: Task) -> float:
    """Predicted seconds one more task of its expert adds to ex's queue (paper §4.2)."""
    return _added_ns(_current(view, ex), view, ex, task.expert_id) / 1e9


def queue_predictions(view: EngineView, ex: ExecutorView, expert_id: str) -> tuple[float, float]:
    """(``queue_total_s``, ``added_latency_s``) of a task of expert_id on ex, in one call."""
    memo = _current(view, ex)
    return ex.running_remaining_s + memo.total_ns / 1e9, _added_ns(memo, view, ex, expert_id) / 1e9
