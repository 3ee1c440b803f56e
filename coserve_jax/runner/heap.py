"""Python's collector kept off the long-lived heap while anything serves."""

from __future__ import annotations

import gc
import threading


class _FrozenHeap:
    """``gc.freeze()`` while anything serves, counted across nested and concurrent users.

    Python's full (generation-2) collections scan every long-lived object: on the demo, the
    ~330,000 of JAX, Flax and the zoo. One such pass took 166 ms and landed inside one demo run
    in nine (~20% of a 0.8 s run, by ``gc.callbacks``). Frozen, those objects are skipped: the
    same pass took 3.4 ms. Objects that exist when the first user enters are left out of every
    collection until the last one leaves (``gc.unfreeze``); reference counting still frees any of
    them whose count drops to zero, so ``gc.get_freeze_count()`` may fall while frozen.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                gc.freeze()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                gc.unfreeze()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


frozen_heap = _FrozenHeap()
