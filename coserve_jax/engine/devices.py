"""Which devices an arm's executors use, and each device's budget (DESIGN §5, §12).

Executors of a kind are dealt round-robin over that kind's devices: GPU executors over
``hardware.gpu_devices`` (None: every local GPU under the real backend, one in the simulator),
CPU executors over the ``hardware.cpu_devices`` XLA host devices. Each device has a budget,
``hardware.device_budgets[index]`` where given, else ``hardware.device_budget``, split evenly
among the executors on it (or held by its one shared pool). CPU executors beside GPU ones are
the host's helpers: ``hardware.cpu_pool_budget`` (host RAM) is split among all of them.

JAX is imported only to count the local GPUs for the real backend; the simulator never needs it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from coserve_jax.config import ConfigError, RunConfig, budget_bytes, budget_field


def local_gpu_count() -> int:
    """GPUs JAX sees on this machine (0 when it has none)."""
    import jax

    try:
        return len(jax.devices("gpu"))
    except RuntimeError:
        return 0


def device_indices(cfg: RunConfig, kind: str) -> list[int]:
    """JAX device indices of ``kind`` that executors of that kind spread over."""
    hw = cfg.hardware
    if kind == "cpu":
        return list(range(hw.cpu_devices))
    if hw.gpu_devices is not None:
        devices = list(hw.gpu_devices)
        if cfg.backend.name == "real":
            n = local_gpu_count()
            missing = [d for d in devices if d >= n]
            if missing:
                raise ConfigError(f"hardware.gpu_devices: {missing} not on this machine, which has {n} GPU(s)")
        return devices
    if cfg.backend.name != "real":
        return [0]
    n = local_gpu_count()
    if n == 0:
        import jax

        raise ConfigError(f"hardware.executors.gpu: this machine has no GPU devices (JAX sees "
                          f"{sorted({d.platform for d in jax.devices()})}); use hardware=cpu")
    return list(range(n))


def spread(n: int, devices: Sequence[int]) -> list[int]:
    """The device of each of ``n`` executors, dealt round-robin over ``devices``."""
    return [devices[i % len(devices)] for i in range(n)]


def check_device_budgets(cfg: RunConfig, kind: str, devices: Sequence[int]) -> None:
    """``hardware.device_budgets`` may only name devices the executors of ``kind`` spread over."""
    extra = sorted(set(cfg.hardware.device_budgets or {}) - set(devices))
    if extra:
        raise ConfigError(f"hardware.device_budgets.{extra[0]}: the {kind} executors spread over devices "
                          f"{sorted(set(devices))}, not {extra[0]}")


def executor_shares(cfg: RunConfig, counts: Mapping[str, int], kind: str, total_bytes: int,
                    ) -> list[tuple[int, int, str]]:
    """(device, bytes, the setting they come from) of each executor of ``kind`` in ``counts``: its
    device and its share of that device's budget. The one split of a budget among executors
    (``plan_executors``; the planner's ``profiler/layout.py`` too)."""
    hw = cfg.hardware
    devices = device_indices(cfg, kind)
    placed = spread(counts[kind], devices)
    if kind == "cpu" and "gpu" in counts:
        if hw.cpu_pool_budget is None:
            raise ConfigError("hardware.cpu_pool_budget: required when CPU executors run beside GPU ones")
        each = budget_bytes(hw, "cpu_pool_budget", total_bytes) // counts[kind]
        return [(d, each, "hardware.cpu_pool_budget") for d in placed]
    check_device_budgets(cfg, kind, devices)
    on = Counter(placed)
    return [(d, budget_bytes(hw, "device_budget", total_bytes, d) // on[d], budget_field(hw, "device_budget", d))
            for d in placed]
