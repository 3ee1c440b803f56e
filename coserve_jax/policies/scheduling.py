"""Request scheduling: which executor queue a task joins (assign) and where (arrange).

- ``FCFS``: one global order; a task goes to the executor with the fewest queued tasks (with one
  executor: Samba-CoE's single FCFS queue) and is appended at the tail.
- ``RoundRobin``: tasks dealt to executors in turn (Samba-CoE Parallel; the ablation's "even
  distribution").
- ``LatencyAware``: the paper's request assigning (§4.2): predict each queue's added latency
  (K·n + B execution plus switch latency, 0 when the expert is pooled or already queued there)
  and choose the queue that minimises the longest queue's predicted total; ties go to the
  smallest added latency, then the lowest executor id.

``arrange=True`` is the paper's request arranging: a task joins the queued group of its expert
(so that expert is loaded at most once per group); otherwise order is FIFO.
"""

from __future__ import annotations

from coserve_jax.policies.base import EngineView, QueuedWhere, queue_predictions
from coserve_jax.types import Task


class _Ordering:
    """Where a task goes inside its queue: arranged behind its expert's group, or FIFO.

    ``work_conserving`` (ours, for coserve_plus): when the head group's expert is not in the
    pool, serve the first queued group whose expert is, while the head's expert loads (the
    prefetcher starts that load), instead of idling through the switch. The paper always
    serves the head group.
    """

    def __init__(self, arranging: bool = False, work_conserving: bool = False):
        self.arranging = arranging
        self.work_conserving = work_conserving
        # The loop asks after every event, mostly while no queued expert is resident, and a scan
        # walked the whole queue then.
        self._resident = QueuedWhere(lambda pool, e: e in pool.resident)

    def pick_group(self, view: EngineView, executor_id: int) -> int:
        """Index of the queued group the idle executor serves next."""
        ex = view.executors[executor_id]
        groups = ex.groups
        if not self.work_conserving or groups[0].expert_id in ex.pool.resident:
            return 0
        ready = self._resident.get(ex)
        if ready:
            for i, g in enumerate(groups):
                if g.expert_id in ready:
                    return i
        return 0

    def arrange(self, view: EngineView, executor_id: int, task: Task) -> bool:
        ex = view.executors[executor_id]
        if self.arranging:
            return task.expert_id in ex.queued_experts
        return bool(ex.groups) and ex.groups[-1].expert_id == task.expert_id


class FCFS(_Ordering):
    """Samba-CoE: first come, first served."""

    def assign(self, view: EngineView, task: Task) -> int:
        return min(view.executors, key=lambda ex: (ex.num_queued, ex.executor_id)).executor_id


class RoundRobin(_Ordering):
    """Deal tasks to executors in turn."""

    def __init__(self, arranging: bool = False, work_conserving: bool = False):
        super().__init__(arranging, work_conserving)
        self._next = 0

    def assign(self, view: EngineView, task: Task) -> int:
        ids = [ex.executor_id for ex in view.executors]
        eid = ids[self._next % len(ids)]
        self._next += 1
        return eid


class LatencyAware(_Ordering):
    """CoServe's request assigning: minimise the longest predicted queue (paper §4.2, Fig. 8)."""

    def __init__(self, arranging: bool = True, work_conserving: bool = False):
        super().__init__(arranging, work_conserving)

    def assign(self, view: EngineView, task: Task) -> int:
        executors = view.executors
        if len(executors) == 1:
            return executors[0].executor_id
        expert_id = task.expert_id
        predictions = [queue_predictions(view, ex, expert_id) for ex in executors]
        # The longest of the other queues: the longest queue, or for the executor that has it,
        # the second longest (the first of equals is the longest, as a stable sort puts it).
        top = 0
        for i in range(1, len(predictions)):
            if predictions[i][0] > predictions[top][0]:
                top = i
        first = predictions[top][0]
        second = max(p[0] for i, p in enumerate(predictions) if i != top)
        best: tuple[float, float, int] | None = None
        for i, ex in enumerate(executors):
            total, added = predictions[i]
            key = (max(second if i == top else first, total + added), added, ex.executor_id)
            if best is None or key < best:
                best = key
        assert best is not None
        return best[2]
