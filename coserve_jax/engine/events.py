"""What passes between the loop and its backend: completions and submissions (events), and the
protocols a backend implements (engine/real.py: wall clock and JAX; engine/sim.py: virtual time).

Pure Python: the loop and the simulator import this without JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from coserve_jax.engine.state import ExecutorState
from coserve_jax.types import Batch, LoadJob, Request

# Event kinds, in the order ties at equal times are handled (DESIGN §4: (time, kind, sequence)).
LOAD_DONE, BATCH_DONE, ARRIVAL = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class LoadDone:
    job: LoadJob
    seconds: float
    error: str | None = None
    at_s: float | None = None  # backend clock when it finished (None: when the loop takes it)


@dataclasses.dataclass(frozen=True)
class BatchDone:
    batch: Batch
    seconds: float
    outputs: Sequence[Any] | None = None  # per task; None: route by trace
    labels: Sequence[int] | None = None  # per task, its output's argmax when the backend took it
    error: str | None = None
    at_s: float | None = None  # backend clock when it finished (None: when the loop takes it)
    started_s: float | None = None  # real: backend clock when its worker thread began it


@dataclasses.dataclass(frozen=True)
class Arrival:
    """An online submission (the API's submit); trace arrivals are timed by the loop."""

    request: Request
    image: Any = None


@dataclasses.dataclass(frozen=True)
class Preload:
    """An online request to hold these experts (a router's working set, hottest first)."""

    experts: tuple[str, ...]


Event = LoadDone | BatchDone | Arrival | Preload


def tasks_done(ev: Event) -> int:
    """The tasks an event completes (a batch's; 0 for any other): the loop routes each of them,
    so its work on the event grows with them (``Backend.charge``)."""
    return len(ev.batch.tasks) if isinstance(ev, BatchDone) else 0


class Backend(Protocol):
    """What the loop needs: a clock, loads and batches started and handed back as events."""

    def now(self) -> float: ...
    def start_load(self, job: LoadJob) -> None: ...
    def start_batch(self, batch: Batch, executor: ExecutorState, inputs: list[Any]) -> None: ...
    def next_event(self, until_s: float | None) -> Event | None: ...
    def ready_at(self) -> float | None: ...  # when the oldest waiting event happened; None: none waits
    def drop(self, pool_id: str, expert_id: str) -> None: ...
    # The loop handled an "arrival" or an "event" that completed ``tasks`` tasks (sim: its time passes).
    def charge(self, kind: str = "event", tasks: int = 0) -> None: ...
    def validate_input(self, request: Request, image: Any) -> str | None: ...
    def close(self) -> None: ...  # after a run: stop threads, free what the backend holds


class OnlineBackend(Backend, Protocol):
    """A backend that serves while requests come (the real one): submissions enter as events,
    and each pool's weights live on a device the runner binds."""

    def post(self, event: Arrival | Preload) -> None: ...
    def has_events(self) -> bool: ...  # completions or submissions wait for the loop
    def bind_pool(self, pool_id: str, device: Any) -> None: ...  # a jax.Device; None: the host cache
