"""Errors of a bad configuration, and the checks that raise them; each message names the field."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending field."""


class BudgetError(ConfigError):
    """An arm's memory budget cannot hold the largest expert plus its batches.

    A run reports such an arm as infeasible and runs the others (jobs/serve.py run_experiment);
    every other ConfigError stops the run at start-up.
    """


class NoFeasibleArmError(BudgetError):
    """No arm of a run fits its memory budget, so none ran; the message lists each arm's reason
    (``results``, also written to results.json, records them)."""

    def __init__(self, message: str, results: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.results = results


# ---- checks shared by the config's nodes ---------------------------------------------------------
def build(cls: type, node: Mapping[str, Any] | None, field: str, **extra: Any) -> Any:
    """``cls(**node, **extra)``; an unknown key or a missing field is a ConfigError naming ``field``."""
    node = dict(node or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(node) - names)
    if unknown:
        raise ConfigError(f"{field}: unknown key(s) {unknown}; known: {sorted(names)}")
    node.update(extra)
    try:
        return cls(**node)
    except TypeError as e:
        raise ConfigError(f"{field}: {e}") from None


def check_choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{field}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def positive(value: Any, field: str, allow_zero: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field}: must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return value


def whole(value: Any, field: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{field}: must be a whole number >= {minimum}, got {value!r}")
    return value


def fraction(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"{field}: must be in (0, 1), got {value!r}")
    return float(value)
