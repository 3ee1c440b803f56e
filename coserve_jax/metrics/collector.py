"""Per-arm counters: switches, batches, request latencies and failures -> results.json arm entry."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from coserve_jax.types import LoadJob, Tier


@dataclasses.dataclass(frozen=True)
class SwitchRecord:
    expert_id: str
    pool_id: str
    size_bytes: int
    src: Tier
    seconds: float
    prefetch: bool
    initial: bool


class ArmMetrics:
    """Collects what one arm did; ``summary`` renders the DESIGN §10 arm entry."""

    def __init__(self) -> None:
        self.switches: list[SwitchRecord] = []
        self.failed_loads: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self.batch_seconds: list[float] = []
        self.scheduling_s = 0.0
        self.evictions = 0
        self._loaded: set[tuple[str, str]] = set()
        self.reloads = 0  # loads of an expert its pool had held before (avoidable switches)

    def record_load(self, job: LoadJob, seconds: float, initial: bool) -> None:
        key = (job.pool_id, job.expert_id)
        self.reloads += key in self._loaded
        self._loaded.add(key)
        self.switches.append(
            SwitchRecord(job.expert_id, job.pool_id, job.size_bytes, job.src, seconds, job.prefetch, initial)
        )

    def record_batch(self, n: int, seconds: float) -> None:
        self.batch_sizes.append(n)
        self.batch_seconds.append(seconds)

    def summary(
        self,
        *,
        latencies_s: Iterable[float],
        submitted: int,
        completed: int,
        failures: Mapping[str, int],
        tasks_completed: int,
        wall_s: float,
        peak_bytes: Mapping[str, int],
        budgets_bytes: Mapping[str, int],
        executor_seconds: Mapping[str, float],
        init_s: float,
    ) -> dict[str, Any]:
        lat = np.asarray(list(latencies_s), dtype=np.float64) * 1e3
        pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: None)
        serving = [s for s in self.switches if not s.initial]
        load_s = sum(s.seconds for s in self.switches if not s.initial)
        wait_s = executor_seconds.get("wait_load", 0.0)
        return {
            "requests": {"submitted": submitted, "completed": completed, "failed": submitted - completed,
                         "failure_reasons": dict(failures)},
            "tasks_completed": tasks_completed,
            "wall_s": wall_s,
            "throughput_rps": completed / wall_s if wall_s > 0 else 0.0,
            # Counted from the start of initialisation (the initial preloads, time_s.init) instead
            # of the first arrival: what a usage-ordered preload costs before serving starts.
            "throughput_rps_incl_init": completed / (wall_s + init_s) if wall_s + init_s > 0 else 0.0,
            "init_s": init_s,
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                           "mean": float(lat.mean()) if lat.size else None},
            "switches": {
                "count": len(self.switches),
                "bytes": sum(s.size_bytes for s in self.switches),
                "from_disk": sum(s.src == Tier.DISK for s in self.switches),
                "from_host": sum(s.src == Tier.HOST for s in self.switches),
                "initial": sum(s.initial for s in self.switches),
                "during_run": len(serving),
                "prefetched": sum(s.prefetch for s in self.switches),
                "failed_attempts": sum(self.failed_loads.values()),
                "evictions": self.evictions,
                "reloads": self.reloads,
                "distinct_experts": len({e for _, e in self._loaded}),
            },
            "peak_bytes": dict(peak_bytes),
            "budgets_bytes": dict(budgets_bytes),
            "batches": {
                "count": len(self.batch_sizes),
                "mean_size": float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0,
            },
            "time_s": {
                "compute": executor_seconds.get("compute", 0.0),
                "load": load_s,
                "load_hidden": max(0.0, load_s - wait_s),
                "load_wait": wait_s,
                "idle": executor_seconds.get("idle", 0.0),
                "scheduling": self.scheduling_s,
                "init": init_s,
            },
        }
