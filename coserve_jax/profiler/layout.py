"""Memory arithmetic of the allocation planner (jobs/plan.py) for one executor layout: what N
experts in the fast processors' pools mean as each kind's ``expert_fraction``, and which N a
layout can hold at all (the pools must keep the largest expert, the batch reserves a batch of one).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from coserve_jax.config import ConfigError, RunConfig, format_executors
from coserve_jax.cost.model import CostModel
from coserve_jax.engine.devices import executor_shares
from coserve_jax.profiler import search


@dataclasses.dataclass(frozen=True)
class Layout:
    """What N experts mean for one set of executor counts (the fast kind's pools).

    The engine gives every executor kind the same ``expert_fraction`` of its share, so the
    fraction must also leave the other kinds' pools room for the largest expert (``min_fraction``)
    and their batch reserve room for a batch of one (``max_fraction``).
    """

    executors: dict[str, int]
    fast_kind: str
    budget_bytes: int          # the fast kind's budget, shared evenly by its executors
    sizes_by_usage: tuple[int, ...]
    min_fraction: float
    max_fraction: float
    n_min: int
    n_max: int
    slow_fraction: float | None  # CPU beside GPU: reserve-the-maximum-batch fraction

    def fraction(self, n_experts: int) -> float:
        """``expert_fraction`` for N experts, rounded up to 6 decimals (what the plan stores)."""
        f = search.fraction_for_experts(self.sizes_by_usage, n_experts, self.budget_bytes,
                                        self.executors[self.fast_kind])
        return min(math.ceil(max(f, self.min_fraction) * 1e6) / 1e6, 0.999999)


def kind_shares(cfg: RunConfig, total_bytes: int, executors: dict[str, int]) -> dict[str, int]:
    """Bytes per executor of each kind, as ``engine.build.plan_executors`` splits budgets, on one
    device: the planner searches one device's split (several devices are not planned yet)."""
    hw = cfg.hardware
    if hw.cpu_devices > 1 or hw.device_budgets or (hw.gpu_devices is not None and len(hw.gpu_devices) > 1):
        raise ConfigError("hardware.cpu_devices: the planner searches the split of one device; plan with "
                          "hardware.cpu_devices=1, one GPU and no hardware.device_budgets")
    out = {}
    for kind in executors:
        shares = executor_shares(cfg, executors, kind, total_bytes)
        devices = sorted({d for d, _, _ in shares})
        if len(devices) > 1:  # hardware.gpu_devices null on a machine with several GPUs
            raise ConfigError(f"hardware.gpu_devices: the planner searches the split of one device; the {kind} "
                              f"executors spread over devices {devices}; list one, e.g. hardware.gpu_devices=[0]")
        out[kind] = shares[0][1]
    return out


def layout_for(cfg: RunConfig, graph: Any, cost: CostModel, executors: dict[str, int],
               max_experts_cap: int | None = None) -> Layout:
    """Budgets, the feasible range of N, and the slow processors' split for these counts."""
    total = graph.total_bytes
    fast = "gpu" if "gpu" in executors else "cpu"
    shares = kind_shares(cfg, total, executors)
    usage = graph.usage_probs()
    order = sorted(usage, key=lambda e: (-usage[e], e))  # as RoundRobinByUsage deals them
    sizes = tuple(int(graph.experts[e].param_bytes) for e in order)
    archs = sorted({e.arch for e in graph.experts.values()})
    largest = max(sizes)
    f_lo = max(largest / share for share in shares.values())
    f_hi = min(1 - max(cost.activation_bytes(k, a, 1) for a in archs) / share for k, share in shares.items())
    if f_lo > f_hi:
        raise ConfigError(f"hardware.device_budget: with executors {format_executors(executors)} no "
                          f"expert_fraction leaves every pool the largest expert plus a batch of one "
                          f"(shares {shares} B); raise the budgets or use fewer executors")
    budget = shares[fast] * executors[fast]
    n_max = search.max_experts(sizes, budget, executors[fast], max_fraction=f_hi)
    if max_experts_cap is not None:
        n_max = min(n_max, max_experts_cap)
    slow = None
    if fast == "gpu" and executors.get("cpu"):
        act = max(cost.activation_bytes("cpu", a, cost.max_batch("cpu", a)) for a in archs)
        try:
            slow = search.reserve_max_batch_fraction(shares["cpu"], act)
        except ValueError as e:
            raise ConfigError(f"hardware.cpu_pool_budget: {e}") from None
    return Layout(dict(executors), fast, budget, sizes, f_lo, f_hi,
                  search.min_experts(sizes, executors[fast]), n_max, slow)
