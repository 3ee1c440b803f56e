"""What the router tells the rest of its process (the HTTP ingress): the replicas' last stats
(for /metrics and /healthz) and the working set the partition gives each replica (for the
ingress to preload it there).

A module of its own, and ``serve/router.py`` reaches it through the module object: Ray ships
the router class to the ingress pickled by value (cloudpickle), its module globals with it, so a
dict global of ``router.py`` would be a copy that the ingress's code never sees (measured: the
router wrote one dict, /metrics read another, empty). A module is pickled by reference: this
one is the process's own.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any

_lock = threading.Lock()
_stats: dict[str, dict[str, Any]] = {}
_plans: dict[str, tuple[str, ...]] = {}
_router_started = False


def publish_stats(stats: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace every replica's last stats (by replica id): the running set and what each reported."""
    global _router_started
    with _lock:
        _stats.clear()
        _stats.update({k: dict(v) for k, v in stats.items()})
        _router_started = True


def replica_stats() -> dict[str, dict[str, Any]]:
    """The last routing stats each running replica reported, by replica id."""
    with _lock:
        return {k: dict(v) for k, v in _stats.items()}


def publish_plans(working_sets: Mapping[Hashable, tuple[str, ...]]) -> None:
    """The experts each replica should hold (its working set in the partition, hottest first)."""
    with _lock:
        _plans.clear()
        _plans.update({str(k): tuple(v) for k, v in working_sets.items()})


def plans() -> dict[str, tuple[str, ...]]:
    with _lock:
        return dict(_plans)


def router_started() -> bool:
    """Whether a router in this process has seen the replicas (Ray creates it on first use)."""
    with _lock:
        return _router_started
