"""Plain, frozen value types shared by every layer. Units are in the names."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

# A request's ground truth and the PCB CoE's verdicts. Classification logits index
# CLASSIFY_VERDICTS, detection logits DETECT_VERDICTS.
VERDICTS = ("ok", "damaged", "misaligned", "reversed")
CLASSIFY_VERDICTS = ("ok", "damaged")
DETECT_VERDICTS = ("ok", "misaligned", "reversed")


class Tier(enum.IntEnum):
    """Where an expert's weights live, slowest first."""

    DISK = 0
    HOST = 1
    DEVICE = 2


class Role(enum.StrEnum):
    PRELIMINARY = "preliminary"
    SUBSEQUENT = "subsequent"


@dataclasses.dataclass(frozen=True)
class ExpertInfo:
    """Metadata of one expert (one row of the zoo manifest)."""

    expert_id: str
    role: Role
    arch: str
    param_bytes: int
    input_shape: tuple[int, ...]
    usage_prob: float = 0.0
    checkpoint_path: str | None = None
    accuracy: float | None = None


@dataclasses.dataclass(frozen=True)
class Request:
    """One component image to inspect (the paper's unit of throughput).

    ``route`` is the ground-truth expert path, used by trace-driven routing (simulator,
    untrained paper-scale zoos) and to score accuracy; ``truth`` is the ground-truth verdict.
    """

    request_id: int
    component_type: str
    arrival_s: float
    route: tuple[str, ...] = ()
    truth: str | None = None
    image_seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """One expert invocation on one request."""

    request_id: int
    expert_id: str
    stage: int
    ready_s: float


@dataclasses.dataclass(frozen=True)
class Batch:
    """Tasks of one expert run by one executor in one jit-compiled call."""

    batch_id: int
    executor_id: int
    expert_id: str
    tasks: tuple[Task, ...]
    predicted_s: float = 0.0
    held_bytes: int = 0  # working memory taken from the pool's free bytes (dynamic batch memory)


@dataclasses.dataclass(frozen=True)
class LoadJob:
    """Moving one expert into a pool from a source tier."""

    load_id: int
    pool_id: str
    expert_id: str
    size_bytes: int
    src: Tier
    executor_id: int | None
    prefetch: bool = False
    initial: bool = False
    via_host_cache: bool = False  # a disk load that also fills the host cache
    predicted_s: float = 0.0  # what the cost model predicts (the simulator's duration)
    # The load's parts in order, (resource, seconds) summing to predicted_s, where the profile
    # splits loads: "disk" (read; shares the disk), "cpu" (deserialise; one host core), "link"
    # (host -> device copy; shares the device's link). Empty: one undivided job (engine/sim.py).
    parts: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the routing rules concluded for a request after one task.

    ``next_expert`` None means the request is finished with ``verdict``.
    """

    next_expert: str | None
    verdict: str | None = None
    extra: dict[str, Any] | None = None
