"""Sizes in a config: a budget becomes bytes here, and only here."""

from __future__ import annotations

import re
from typing import Any

from coserve_jax.config.errors import ConfigError
from coserve_jax.config.schema import HardwareConfig

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}

# The hardware's byte budgets (HardwareConfig documents each).
BUDGETS = ("device_budget", "host_budget", "cpu_pool_budget")


def parse_bytes(value: Any, field: str, total_bytes: int | None = None) -> int:
    """Parse ``512MiB``, ``1.5GB``, ``123`` (bytes) or ``25%`` (of total_bytes) into bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a size like '512MiB', '25%' or bytes, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{field}: must be >= 0, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected a size like '512MiB', '25%' or bytes, got {value!r}")
    s = value.strip()
    if s.endswith("%"):
        if total_bytes is None:
            raise ConfigError(f"{field}: a percentage needs a known total (the zoo's bytes)")
        try:
            pct = float(s[:-1])
        except ValueError:
            raise ConfigError(f"{field}: bad percentage {value!r}") from None
        if not 0 < pct <= 10000:
            raise ConfigError(f"{field}: percentage must be in (0, 10000], got {value!r}")
        return int(total_bytes * pct / 100)
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)", s)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(
            f"{field}: cannot parse {value!r}; use bytes, '512MiB', '2GB', '1.5GiB' or '25%'"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def budget_bytes(hw: HardwareConfig, name: str, total_bytes: int | None, device: int | None = None) -> int:
    """``hardware.<name>`` (one of ``BUDGETS``) in bytes; a percentage is of ``total_bytes``, the
    zoo's. ``device``: that device's own budget where ``hardware.device_budgets`` gives one
    (``device_budget`` only). Errors name the setting (``budget_field``)."""
    field = budget_field(hw, name, device)
    value = hw.device_budgets[device] if field != f"hardware.{name}" else getattr(hw, name)
    return parse_bytes(value, field, total_bytes)


def budget_field(hw: HardwareConfig, name: str, device: int | None = None) -> str:
    """The setting ``budget_bytes(hw, name, ..., device)`` reads: ``hardware.device_budgets.<device>``
    where that device has its own budget, else ``hardware.<name>``."""
    if name not in BUDGETS:
        raise ValueError(f"not a hardware budget: {name!r}; one of {BUDGETS}")
    if name == "device_budget" and device is not None and device in (hw.device_budgets or {}):
        return f"hardware.device_budgets.{device}"
    return f"hardware.{name}"
