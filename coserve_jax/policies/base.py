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
from collections.abc import Mapping, Sequence
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


def switch_latency_s(view: EngineView, ex: ExecutorView, expert_id: str) -> float:
    """Predicted seconds to make expert_id usable on ex: 0 if pooled, loading or queued there."""
    if ex.pool.holds(expert_id) or expert_id in ex.queued_experts:
        return 0.0
    return load_latency_s(view, ex.pool.kind, expert_id)


def load_latency_s(view: EngineView, pool_kind: str, expert_id: str) -> float:
    """Predicted seconds to load expert_id into a pool of pool_kind from where it is now."""
    size = view.graph.experts[expert_id].param_bytes
    src = source_tier(view, expert_id, pool_kind)
    if src == Tier.DISK and view.host_cache is not None and not view.cost.has_load(pool_kind, Tier.DISK):
        # Disk -> host cache -> pool, in two hops.
        return view.cost.load_latency_s("host", Tier.DISK, size) + view.cost.load_latency_s(
            pool_kind, Tier.HOST, size
        )
    return view.cost.load_latency_s(pool_kind, src, size)


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


class _QueueMemo:
    """Per-executor memo for queue_total_s: the last total and its key, each group size's
    execution seconds (an executor's max batch never changes) and each expert's load seconds
    (valid while the host cache, which decides where a load reads from, is unchanged)."""

    __slots__ = ("key", "total", "exec_s", "load_s", "cache_version")

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.total = 0.0
        self.exec_s: dict[tuple[str, int], float] = {}
        self.load_s: dict[str, float] = {}
        self.cache_version: int | None = None


_QUEUED_S: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def queue_total_s(view: EngineView, ex: ExecutorView) -> float:
    """Predicted seconds until ex drains its queue: running batch + groups + switches."""
    # Memoised on (queue, pool, host cache) versions: the sum only changes when they do; and
    # when it does, each group's terms come from the memo (the loop calls this per arrival).
    cache = view.host_cache
    cache_version = None if cache is None else cache.version
    key = (ex.version, ex.pool.version, cache_version)
    memo = _QUEUED_S.get(ex)
    if memo is None:
        memo = _QUEUED_S[ex] = _QueueMemo()
    elif memo.key == key:
        return ex.running_remaining_s + memo.total
    if memo.cache_version != cache_version:
        memo.load_s.clear()
        memo.cache_version = cache_version
    exec_memo, load_memo = memo.exec_s, memo.load_s
    total = 0.0
    seen: set[str] = set()
    for g in ex.groups:
        e = g.expert_id
        k = (e, len(g.tasks))
        s = exec_memo.get(k)
        if s is None:
            s = exec_memo[k] = group_exec_s(view, ex, e, k[1])
        total += s
        if e not in seen:
            seen.add(e)
            if not ex.pool.holds(e):
                s = load_memo.get(e)
                if s is None:
                    s = load_memo[e] = load_latency_s(view, ex.pool.kind, e)
                total += s
    memo.key, memo.total = key, total
    return ex.running_remaining_s + total


def added_latency_s(view: EngineView, ex: ExecutorView, task: Task) -> float:
    """Predicted seconds one more task of its expert adds to ex's queue (paper §4.2)."""
    n_before = ex.queued_experts.get(task.expert_id, 0)
    exec_s = group_exec_s(view, ex, task.expert_id, n_before + 1) - group_exec_s(
        view, ex, task.expert_id, n_before
    )
    return exec_s + switch_latency_s(view, ex, task.expert_id)
