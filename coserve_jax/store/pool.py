"""Byte-budgeted model pools: the store's accounting, shared by both backends.

A pool holds expert weights within ``budget_bytes``. Resident experts, in-flight loads and the
reserved batch working memory together never exceed the budget: every admission is checked
here, and a violation is a bug (``BudgetError``), not a silent overrun. An expert in a running
batch is pinned and cannot be evicted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence


class BudgetError(RuntimeError):
    """An admission would exceed a pool's byte budget (a bug or an impossible config)."""


class ChangeLog:
    """A ``version`` bumped on every change, and what each change did, for policies that update
    a memo instead of rescanning: ``changes`` holds (version, *entry) per entry of a change,
    every change after version ``changes_since`` (older entries are dropped past ``MAX``)."""

    MAX = 256

    def __init__(self) -> None:
        self.version = 0
        self.changes: list[tuple] = []
        self.changes_since = 0

    def _record(self, entries: Iterable[tuple]) -> None:
        self.version += 1
        if len(self.changes) > self.MAX:
            self.changes.clear()
            self.changes_since = self.version - 1
        v = self.version
        self.changes.extend([(v, *entry) for entry in entries])


class Pool(ChangeLog):
    """One byte-budgeted pool (an executor's model pool or the host cache)."""

    def __init__(self, pool_id: str, kind: str, budget_bytes: int, reserved_bytes: int = 0,
                 device_index: int | None = None):
        if budget_bytes < 0 or reserved_bytes < 0:
            raise ValueError(f"pool {pool_id}: budgets must be >= 0")
        if reserved_bytes > budget_bytes:
            raise BudgetError(
                f"pool {pool_id}: reserved batch memory {reserved_bytes} B exceeds its budget "
                f"{budget_bytes} B"
            )
        self.pool_id = pool_id
        self.kind = kind
        self.device_index = device_index  # the device its weights live on (None: the host cache)
        self.budget_bytes = int(budget_bytes)
        self.reserved_bytes = int(reserved_bytes)
        self._resident: dict[str, int] = {}
        self._loading: dict[str, int] = {}
        self._pinned: Counter[str] = Counter()
        self._last_use: dict[str, int] = {}
        self._admit: dict[str, int] = {}
        self._seq = 0
        self._held = 0  # working memory of running batches taken from free bytes (dynamic batch memory)
        ChangeLog.__init__(self)  # (version, expert) per change of what the pool holds
        self._used = self.reserved_bytes
        self.peak_bytes = self._used

    # ---- read-only view ----------------------------------------------------------------------
    @property
    def resident(self):
        return self._resident

    @property
    def loading(self):
        return self._loading

    @property
    def pinned(self):
        return self._pinned

    @property
    def last_use_seq(self):
        return self._last_use

    @property
    def admit_seq(self):
        return self._admit

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self._used

    @property
    def held_bytes(self) -> int:
        return self._held

    def holds(self, expert_id: str) -> bool:
        return expert_id in self._resident or expert_id in self._loading

    # ---- mutations (engine only) -------------------------------------------------------------
    def _changed(self, expert_id: str) -> None:
        self._record(((expert_id,),))

    def _tick(self) -> int:
        self._seq += 1
        return self._seq

    def begin_load(self, expert_id: str, size_bytes: int) -> None:
        self._changed(expert_id)
        if self.holds(expert_id):
            raise BudgetError(f"pool {self.pool_id}: {expert_id} is already resident or loading")
        if size_bytes > self.free_bytes:
            raise BudgetError(
                f"pool {self.pool_id}: admitting {expert_id} ({size_bytes} B) needs more than the "
                f"{self.free_bytes} B free of {self.budget_bytes} B"
            )
        self._loading[expert_id] = size_bytes
        self._used += size_bytes
        self.peak_bytes = max(self.peak_bytes, self._used)

    def finish_load(self, expert_id: str) -> None:
        self._changed(expert_id)
        size = self._loading.pop(expert_id)
        self._resident[expert_id] = size
        self._admit[expert_id] = self._tick()
        self._last_use.setdefault(expert_id, self._admit[expert_id])

    def cancel_load(self, expert_id: str) -> None:
        self._changed(expert_id)
        self._used -= self._loading.pop(expert_id)

    def evict(self, expert_id: str) -> int:
        self._changed(expert_id)
        if self._pinned[expert_id] > 0:
            raise BudgetError(f"pool {self.pool_id}: {expert_id} is pinned by a running batch")
        size = self._resident.pop(expert_id)
        self._used -= size
        self._admit.pop(expert_id, None)
        self._last_use.pop(expert_id, None)
        return size

    def touch(self, expert_id: str) -> None:
        self._last_use[expert_id] = self._tick()

    def hold(self, size_bytes: int) -> None:
        """Take a batch's working memory from the free bytes (pools without a fixed batch reserve)."""
        if size_bytes < 0 or size_bytes > self.free_bytes:
            raise BudgetError(
                f"pool {self.pool_id}: holding {size_bytes} B of batch memory needs more than the "
                f"{self.free_bytes} B free of {self.budget_bytes} B"
            )
        self._held += size_bytes
        self._used += size_bytes
        self.peak_bytes = max(self.peak_bytes, self._used)

    def release(self, size_bytes: int) -> None:
        if not 0 <= size_bytes <= self._held:
            raise BudgetError(f"pool {self.pool_id}: releasing {size_bytes} B of batch memory, {self._held} B held")
        self._held -= size_bytes
        self._used -= size_bytes

    def pin(self, expert_id: str) -> None:
        if expert_id not in self._resident:
            raise BudgetError(f"pool {self.pool_id}: cannot pin {expert_id}, it is not resident")
        self._pinned[expert_id] += 1
        self.touch(expert_id)

    def unpin(self, expert_id: str) -> None:
        self._pinned[expert_id] -= 1
        if self._pinned[expert_id] <= 0:
            del self._pinned[expert_id]

    def evictable(self, protect: Iterable[str] = ()) -> list[str]:
        protected = set(protect)
        pinned = self._pinned  # holds only counts >= 1 (unpin deletes at 0)
        return [e for e in self._resident if e not in pinned and e not in protected]

    def make_room(
        self,
        size_bytes: int,
        rank: Callable[[Sequence[str]], list[str]],
        protect: Iterable[str] = (),
        on_evict: Callable[[str], None] | None = None,
        partial: bool = False,
    ) -> bool:
        """Evict by ``rank`` until size_bytes fit; True if they do. All or nothing: if even
        evicting every candidate would not make room, nothing is evicted — unless ``partial``,
        which evicts every candidate then (room for as much as it can)."""
        if size_bytes <= self.free_bytes:
            return True
        candidates = self.evictable(protect)
        if self.free_bytes + sum(self._resident[e] for e in candidates) < size_bytes and not partial:
            return False
        order = rank(candidates)
        if len(order) != len(candidates) or set(order) != set(candidates):  # candidates are distinct
            raise ValueError(f"pool {self.pool_id}: eviction policy must rank exactly its candidates")
        for e in order:
            if size_bytes <= self.free_bytes:
                break
            self.evict(e)
            if on_evict is not None:
                on_evict(e)
        return size_bytes <= self.free_bytes

    def check(self) -> None:
        """Assert the byte invariant (used by tests and after every engine step in debug)."""
        total = (self.reserved_bytes + self._held + sum(self._resident.values())
                 + sum(self._loading.values()))
        if total != self._used or total > self.budget_bytes:
            raise BudgetError(
                f"pool {self.pool_id}: accounting broken (used {self._used}, recomputed {total}, "
                f"budget {self.budget_bytes})"
            )
