"""The load side of the engine loop (DESIGN §4): loads into pools and the host cache.

``LoadSide`` holds the methods of ``EngineLoop`` (``loop.py``) that move experts: start a load
into an executor's pool, evicting by policy until it fits (through the host cache when the
profile loads disk -> host -> pool in two hops), take its completion or failure (bounded retries
of demand loads, then fail only the requests that need the expert there), and prefetch. They
read and write the loop's state (``_loads``, pools, metrics, the backend); the request side —
arrivals, routing, batches — stays in ``loop.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from coserve_jax.engine.events import LoadDone
from coserve_jax.engine.memory import needed_experts
from coserve_jax.engine.state import ExecutorState
from coserve_jax.policies.base import Eviction, load_latency_s, load_parts, source_tier
from coserve_jax.store.broken import log_broken_once
from coserve_jax.store.pool import Pool
from coserve_jax.types import LoadJob, Tier

# The engine loop's logger: its load messages read as the loop's, as before the split.
log = logging.getLogger("coserve_jax.engine.loop")

# A missing or corrupt checkpoint fails every load of that expert, in every run of the process:
# it is logged once (expert, path, reason); its attempts and the requests it fails go to debug.
BROKEN = "CheckpointError"


class LoadSide:
    """Loads, evictions and prefetch of ``EngineLoop`` (a base class of it, not used alone)."""

    def _on_load_done(self, ev: LoadDone) -> None:
        job = self._loads.pop(ev.job.load_id)
        self._tl.load_done(job, ev, self.backend.now())
        pool = self._pool(job.pool_id)
        cache = self._host_cache
        if job.src == Tier.HOST and cache is not None and job.expert_id in cache.resident:
            cache.unpin(job.expert_id)
        if ev.error is None:
            pool.finish_load(job.expert_id)
            if job.via_host_cache and cache is not None:
                cache.finish_load(job.expert_id)
            self.metrics.record_load(job, ev.seconds, initial=job.initial)
            self._load_attempts.pop((job.pool_id, job.expert_id), None)
            return
        # A failed load: release its bytes, retry a bounded number of times, then fail only
        # the requests that need this expert on this executor.
        pool.cancel_load(job.expert_id)
        if job.via_host_cache and cache is not None:
            cache.cancel_load(job.expert_id)
        self.metrics.failed_loads[job.expert_id] += 1
        broken = ev.error.startswith(BROKEN)
        if broken:
            log_broken_once(job.expert_id, ev.error, "requests that need it fail")
        log.log(logging.DEBUG if broken else logging.WARNING, "load of %s into %s failed%s: %s", job.expert_id,
                job.pool_id, " (prefetch)" if job.prefetch else " (initial)" if job.initial else "", ev.error)
        if job.prefetch or job.initial or job.executor_id is None:
            return  # only demand loads count toward the retry limit
        key = (job.pool_id, job.expert_id)
        self._load_attempts[key] += 1
        ex = self._executors[job.executor_id]
        if self._load_attempts[key] <= self.load_retries:
            return  # _dispatch starts it again: the head group still needs it
        del self._load_attempts[key]
        for t in ex.drop_expert(job.expert_id):
            self._fail(self._requests[t.request_id],
                       f"load failed: expert {job.expert_id} after {self.load_retries + 1} attempts: {ev.error}")

    def _rank(self, policy: Eviction, pool: Pool) -> Callable[[Sequence[str]], list[str]]:
        def rank(candidates: Sequence[str]) -> list[str]:
            t = time.perf_counter()
            out = policy.rank(self, pool, candidates)
            self.metrics.scheduling_s += time.perf_counter() - t
            return out
        return rank

    def _evicted(self, pool: Pool, expert_id: str) -> None:
        self.metrics.evictions += 1
        self._tl.evicted(pool.pool_id, expert_id, self.backend.now())
        if self.record_decisions:
            self.decisions.append(("evict", pool.pool_id, expert_id))
        self.backend.drop(pool.pool_id, expert_id)

    def _begin_load(self, ex: ExecutorState, expert_id: str, *, prefetch: bool,
                    initial: bool = False, protect: Iterable[str] = (), leave_free: int = 0) -> bool:
        """Start loading expert_id into ex's pool, evicting by policy (never ``protect``) until
        it fits with ``leave_free`` bytes to spare; False if it cannot."""
        pool = ex.pool
        size = self.graph.experts[expert_id].param_bytes
        keep = {expert_id, *protect}
        if not pool.make_room(size + leave_free, self._rank(self.eviction, pool), keep,
                              on_evict=lambda e: self._evicted(pool, e)):
            return False
        src = source_tier(self, expert_id, pool.kind)
        predicted = load_latency_s(self, pool.kind, expert_id)
        cache = self._host_cache
        via_cache = False
        if cache is not None and src == Tier.DISK and not cache.holds(expert_id):
            busy = [j.expert_id for j in self._loads.values() if j.src == Tier.HOST]
            if cache.make_room(size, self._rank(self.host_eviction, cache), busy,
                               on_evict=lambda e: self._evicted(cache, e)):
                cache.begin_load(expert_id, size)
                via_cache = True
        if src == Tier.HOST and cache is not None:
            cache.pin(expert_id)  # the copy reads it: keep it in the cache meanwhile
        pool.begin_load(expert_id, size)
        self._ids["load"] += 1
        job = LoadJob(self._ids["load"], pool.pool_id, expert_id, size, src, ex.executor_id,
                      prefetch=prefetch, initial=initial, via_host_cache=via_cache,
                      predicted_s=predicted, parts=load_parts(self, pool.kind, src, size))
        self._loads[job.load_id] = job
        self._tl.load_started(job, self.backend.now())
        if self.record_decisions:
            self.decisions.append(("load", pool.pool_id, expert_id, src.name, prefetch))
        self.backend.start_load(job)
        return True

    def preload(self, experts: Sequence[str]) -> int:
        """Hold these experts (a router's working set for this replica, hottest first): each
        one no pool holds is loaded into the next executor's pool in turn that can make room,
        evicting by policy only experts outside the set that no queued or running work needs.
        An expert no pool can fit is skipped. Returns the number of loads started."""
        keep = set(experts)
        started = turn = 0
        n = len(self._executors)
        for e in experts:
            if e not in self.graph.experts or any(ex.pool.holds(e) for ex in self._executors):
                continue
            for k in range(n):
                ex = self._executors[(turn + k) % n]
                if self._begin_load(ex, e, prefetch=True, protect=keep | needed_experts(self._executors, ex.pool)):
                    started += 1
                    turn = (turn + k + 1) % n
                    break
        return started

    def _prefetch(self, ex: ExecutorState) -> None:
        if not ex.groups or len(ex.pool.loading) >= self.prefetcher.inflight_limit(ex.kind):
            return  # bounded loads per pool: a prefetch must not crowd out a demand load
        t = time.perf_counter()
        targets = self.prefetcher.prefetch(self, ex.executor_id)
        self.metrics.scheduling_s += time.perf_counter() - t
        pool = ex.pool
        for e in targets:
            if pool.holds(e):
                continue
            # A prefetch never evicts an expert that running or queued work on this pool needs
            # (any executor sharing it): that would only move a load, or add a reload. With
            # dynamic batch memory it also leaves one full batch's working memory free.
            # Whether it finds room depends only on the pool's contents and bytes and on what
            # the queues and running batches of the executors sharing it protect; a task queued
            # only adds to that. So a prefetch that found no room is not tried again until the
            # pool changed, or a task left a queue on it, or a batch on it ended (the loop asks
            # after every event, and an attempt cost several times the policy's answer).
            tried = (e, pool.version, pool.used_bytes,
                     tuple((o.dequeued, 0 if o.running is None else o.running.batch_id)
                           for o in self._sharing[pool.pool_id]))
            if self._no_room.get(ex.executor_id) == tried:
                return
            if not self._begin_load(ex, e, prefetch=True, protect=needed_experts(self._executors, pool),
                                    leave_free=self._prefetch_leaves[ex.executor_id]):
                self._no_room[ex.executor_id] = tried
            return
