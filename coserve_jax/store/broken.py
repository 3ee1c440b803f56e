"""Broken checkpoints are reported once per process (pure Python: the loop imports it, JAX-free).

A missing or corrupt checkpoint fails every load of its expert, in every run of a process (each
arm, each repeat, the profiler): the first failure with a given reason (which names the path) is
a warning; the caller logs the repeats at debug.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("coserve_jax.store")

_lock = threading.Lock()
_logged: set[str] = set()


def log_broken_once(expert_id: str, reason: str, consequence: str) -> bool:
    """Warn once per process that ``expert_id`` cannot be loaded, with ``consequence`` and
    ``reason``; True if this call logged it."""
    with _lock:
        if reason in _logged:
            return False
        _logged.add(reason)
    log.warning("expert %s cannot be loaded; %s: %s", expert_id, consequence, reason)
    return True
