"""Batch working memory taken from a pool's free bytes when a batch starts (``batch_memory:
dynamic``, coserve_plus; engine/build.py): how large a batch fits and what it may evict for it,
which experts queued or running work still needs, and what a prefetch leaves free."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from coserve_jax.cost.model import CostModel
from coserve_jax.engine.state import ExecutorState
from coserve_jax.store.pool import Pool


def fit_batch(pool: Pool, expert_id: str, n: int, act: Callable[[int], int],
              rank: Callable[[Sequence[str]], list[str]], on_evict: Callable[[str], None],
              executors: Sequence[ExecutorState]) -> int:
    """The largest batch, up to n, whose working memory ``act(k)`` the pool's free bytes hold (the
    paper's split to "the largest batch free memory holds", at launch time). To fit all n it first
    evicts, by ``rank``, experts that no queued or running work of ``executors`` on the pool needs
    (as many as it takes, all of them if that is not enough); to fit even one image, any expert no
    running batch pins but ``expert_id``."""
    if act(n) > pool.free_bytes:
        pool.make_room(act(n), rank, needed_experts(executors, pool) | {expert_id}, on_evict, partial=True)
    if act(1) > pool.free_bytes:
        pool.make_room(act(1), rank, {expert_id}, on_evict, partial=True)
    while n > 0 and act(n) > pool.free_bytes:
        n -= 1
    return n


def needed_experts(executors: Sequence[ExecutorState], pool: Pool) -> set[str]:
    """Experts that running or queued work of any executor on this pool needs."""
    out: set[str] = set()
    for other in executors:
        if other.pool is pool:
            out.update(other.queued_experts)
            if other.running is not None:
                out.add(other.running_expert)
    return out


def full_batch_bytes(cost: CostModel, ex: ExecutorState) -> int:
    """Working memory of this executor's largest batch of any architecture."""
    return max(cost.activation_bytes(ex.kind, a, n) for a, n in ex.max_batches.items())
