"""Mutable engine state: executors with their queues and pools, and requests in flight.

These classes also satisfy the read-only view protocols of ``policies/base.py``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Callable, Mapping

from coserve_jax.store.pool import ChangeLog, Pool
from coserve_jax.types import Batch, Request, Task


class Group:
    """A run of queued tasks of one expert, served back to back."""

    __slots__ = ("expert_id", "tasks")

    def __init__(self, expert_id: str):
        self.expert_id = expert_id
        self.tasks: deque[Task] = deque()


class ExecutorState(ChangeLog):
    """One compute lane: a queue of groups and a byte-budgeted model pool on one device."""

    def __init__(
        self,
        executor_id: int,
        kind: str,
        device_index: int,
        pool: Pool,
        max_batch: Mapping[str, int],
        clock: Callable[[], float],
        *,
        dynamic_batch_memory: bool = False,
        initial_reserve_bytes: int = 0,
    ):
        self.executor_id = executor_id
        self.kind = kind
        self.device_index = device_index
        self.pool = pool
        self._max_batch = dict(max_batch)
        # Dynamic: a batch takes its working memory from the pool's free bytes when it starts
        # (no fixed reserve); initial_reserve_bytes is kept free while the pool is first filled.
        self.dynamic_batch_memory = dynamic_batch_memory
        self.initial_reserve_bytes = initial_reserve_bytes
        self._clock = clock
        self._groups: deque[Group] = deque()
        self._tail_group: dict[str, Group] = {}  # expert -> last queued group of it
        self._queued: Counter[str] = Counter()
        self._num_queued = 0
        # Per queue change: (version, expert, its group's tasks before, after, its queued tasks
        # before, after)
        ChangeLog.__init__(self)
        self.dequeued = 0  # tasks taken off the queue or dropped so far
        self.running: Batch | None = None
        self.running_end_s = 0.0
        # Time accounting: the state since when, and seconds per state.
        self.state = "idle"
        self.state_since_s = 0.0
        self.seconds: Counter[str] = Counter()
        # Told (executor id, state left, its start, now) on each change: the timeline, when on.
        self.on_state: Callable[[int, str, float, float], None] | None = None

    # ---- view --------------------------------------------------------------------------------
    @property
    def groups(self):
        return self._groups

    @property
    def queued_experts(self):
        return self._queued

    @property
    def num_queued(self) -> int:
        return self._num_queued

    @property
    def running_expert(self) -> str | None:
        return None if self.running is None else self.running.expert_id

    @property
    def running_remaining_s(self) -> float:
        return max(0.0, self.running_end_s - self._clock()) if self.running is not None else 0.0

    def max_batch(self, arch: str) -> int:
        return self._max_batch[arch]

    @property
    def max_batches(self) -> Mapping[str, int]:
        return self._max_batch

    # ---- queue mutations ---------------------------------------------------------------------
    def enqueue(self, task: Task, join: bool) -> None:
        e = task.expert_id
        g = self._tail_group.get(e) if join else None
        if g is None:
            g = Group(e)
            self._groups.append(g)
            self._tail_group[e] = g
        n, c = len(g.tasks), self._queued[e]
        self._record(((e, n, n + 1, c, c + 1),))
        g.tasks.append(task)
        self._queued[e] = c + 1
        self._num_queued += 1

    def take(self, index: int, n: int) -> tuple[Task, ...]:
        """Pop up to n tasks of the group at index (the paper's split; index 0: the head)."""
        g = self._groups[index]
        out = tuple(g.tasks.popleft() for _ in range(min(n, len(g.tasks))))
        self._record((self._dequeued(g, len(out)),))
        return out

    def drop_expert(self, expert_id: str) -> list[Task]:
        """Remove every queued task of expert_id (a load that failed for good)."""
        out: list[Task] = []
        changes = []
        for g in [g for g in self._groups if g.expert_id == expert_id]:
            out.extend(g.tasks)
            n = len(g.tasks)
            g.tasks.clear()
            changes.append(self._dequeued(g, n))
        self._record(changes)
        return out

    def _dequeued(self, g: Group, n: int) -> tuple[str, int, int, int, int]:
        """Account for n tasks taken off group g (already popped); returns the change."""
        e = g.expert_id
        c = self._queued[e]
        self._queued[e] -= n
        self._num_queued -= n
        self.dequeued += n
        if self._queued[e] <= 0:
            del self._queued[e]
        change = (e, len(g.tasks) + n, len(g.tasks), c, c - n)
        if not g.tasks:
            self._groups.remove(g)  # by identity: Group defines no __eq__
            if self._tail_group.get(g.expert_id) is g:
                del self._tail_group[g.expert_id]
        return change

    # ---- time accounting ---------------------------------------------------------------------
    def set_state(self, state: str, now_s: float) -> None:
        if state != self.state:
            self.seconds[self.state] += max(0.0, now_s - self.state_since_s)
            if self.on_state is not None:
                self.on_state(self.executor_id, self.state, self.state_since_s, now_s)
            self.state, self.state_since_s = state, now_s


@dataclasses.dataclass
class RequestState:
    request: Request
    image: object = None  # np.ndarray for the real backend
    arrived_s: float = 0.0  # backend clock
    started_s: float | None = None  # backend clock: when its first batch launched
    stage: int = 0
    done: bool = False
    failed: str | None = None  # reason
    verdict: str | None = None
    done_s: float | None = None
    experts: list[str] = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)  # per task, when the engine keeps them
