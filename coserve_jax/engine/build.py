"""Build an arm's engine from the typed config: executors, pools, budgets, policies.

Devices (DESIGN §12; ``engine/devices.py``): executors of a kind are dealt round-robin over that
kind's devices (every local GPU, or ``hardware.gpu_devices``; ``hardware.cpu_devices`` host
devices); each device has its own budget (``hardware.device_budgets``, else
``hardware.device_budget``) and its own pools, and ``ExecutorPlan.device_index`` and
``Pool.device_index`` say which.

Memory (DESIGN §5): a device budget per device is split evenly among the executors on it; each
executor's share holds its model pool and its reserved batch working memory. With an
``expert_fraction`` f (the paper's Casual split: 0.75) the batch reserve is (1 − f) of the share
and the maximum batch is the largest that fits it (capped at the profiled best batch); without
one, the maximum batch is the largest (up to the profiled best) whose working memory fits in
``hardware.max_batch_memory_fraction`` of the share, and the reserve is exactly what it needs:
"min(profiled best batch, what free memory holds)" (DESIGN §5). An arm with
``batch_reserve: max_batch`` (Samba-CoE, which has no split of its own) always takes this second
way, whatever ``expert_fraction`` the hardware sets for CoServe Casual: on NUMA its batch of 6
ResNet101 images needs ~1.6 GB, where Casual's 25% would hold 3 GiB back. A share that cannot hold the
largest expert plus one batch is a start-up error naming the setting (``BudgetError``: a run
reports that arm as infeasible and runs the others). A pool shared by a device's executors
(``share_pool``) is checked as one pool: its bytes must hold the largest expert plus every one of
its executors' batch reserves.

With ``batch_memory: dynamic`` (coserve_plus) the pool keeps no fixed reserve: a batch takes its
working memory from the pool's free bytes when it starts (engine/memory.py), up to the profiled
maximum batch; the reserve computed above only keeps room for batches while the pool is first
filled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.config import ArmConfig, BudgetError, ConfigError, RunConfig, budget_bytes
from coserve_jax.cost.model import CostModel
from coserve_jax.engine.devices import executor_shares
from coserve_jax.engine.events import Backend
from coserve_jax.engine.loop import EngineLoop
from coserve_jax.engine.state import ExecutorState
from coserve_jax.policies.eviction import LRU
from coserve_jax.store.pool import Pool
from coserve_jax.types import Tier


@dataclasses.dataclass(frozen=True)
class ExecutorPlan:
    executor_id: int
    kind: str
    device_index: int
    budget_bytes: int
    reserved_bytes: int
    max_batch: dict[str, int]
    dynamic: bool = False  # batch memory from the pool's free bytes; reserved_bytes only guides the initial fill
    budget_field: str = "hardware.device_budget"  # the setting budget_bytes comes from (errors name it)


def _max_batch_within(cost: CostModel, kind: str, arch: str, reserve: int) -> int:
    n = cost.max_batch(kind, arch)
    while n > 1 and cost.activation_bytes(kind, arch, n) > reserve:
        n -= 1
    return n


def load_plan(path: str) -> dict[str, Any]:
    """A planner output (``+experiment=plan``): executors and the expert/batch memory split."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"plan: no plan file at {p}; run python -m coserve_jax.run +experiment=plan first")
    plan = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    if not isinstance(plan, dict) or "executors" not in plan:
        raise ConfigError(f"plan: {p} must hold at least 'executors' (and optionally 'expert_fraction')")
    return plan


def apply_plan(arm: ArmConfig) -> ArmConfig:
    """An arm with its plan's executors and memory split filled in (coserve_best)."""
    if not arm.plan:
        return arm
    plan = load_plan(arm.plan)
    return dataclasses.replace(arm, executors=dict(plan["executors"]),
                               expert_fraction=plan.get("expert_fraction", arm.expert_fraction),
                               expert_fraction_by_kind=plan.get("expert_fraction_by_kind"))


def plan_executors(cfg: RunConfig, arm: ArmConfig, graph: CoEGraph, cost: CostModel) -> list[ExecutorPlan]:
    """Executors of an arm with their budgets, batch reserves and maximum batch sizes."""
    hw = cfg.hardware
    arm = apply_plan(arm)
    counts = dict(arm.executors or hw.executors)
    if arm.single_executor or arm.fastest_kind_only:
        first = "gpu" if "gpu" in counts else "cpu"
        counts = {first: 1 if arm.single_executor else counts[first]}
    total = graph.total_bytes
    archs = sorted({e.arch for e in graph.experts.values()})
    largest = max(e.param_bytes for e in graph.experts.values())
    for kind in counts:
        if kind not in cost.kinds:
            raise ConfigError(f"hardware.executors.{kind}: the profile has no figures for {kind!r} executors "
                              f"(it has {list(cost.kinds)})")

    plans: list[ExecutorPlan] = []
    by_kind = dict(arm.expert_fraction_by_kind or {})
    for kind in sorted(counts, key=lambda k: (k != "gpu", k)):
        # A plan may split memory per kind (the paper: slow processors reserve the max batch).
        fraction = by_kind.get(kind, arm.expert_fraction if arm.expert_fraction is not None else hw.expert_fraction)
        if arm.batch_reserve == "max_batch":
            fraction = None  # the arm's own largest batch, not another system's split
        # Each executor's device and share of that device's budget (engine/devices.py).
        for device, budget, field in executor_shares(cfg, counts, kind, total):
            if arm.unlimited_memory:
                mb = {a: cost.max_batch(kind, a) for a in archs}
            else:
                # Batch memory: the split's share, or (no split given) at most
                # hardware.max_batch_memory_fraction of the executor's memory.
                cap = (1 - fraction) if fraction is not None else hw.max_batch_memory_fraction
                mb = {a: _max_batch_within(cost, kind, a, int(cap * budget)) for a in archs}
            reserve = max(cost.activation_bytes(kind, a, mb[a]) for a in archs)
            if fraction is not None and not arm.unlimited_memory:
                reserve = max(reserve, int((1 - fraction) * budget))
            if arm.unlimited_memory:
                budget = total + reserve
            if not arm.share_pool and budget - reserve < largest:
                where = f" on device {device}" if field.startswith("hardware.device_budgets") else ""
                raise BudgetError(
                    f"{field}: each {kind} executor{where} gets {budget} B, which cannot hold the largest "
                    f"expert ({largest} B) plus one batch ({reserve} B); raise {field} or use fewer executors"
                )
            dynamic = arm.batch_memory == "dynamic" and not arm.unlimited_memory
            if dynamic:
                # Memory, not a fixed split, caps each batch (engine/memory.py): up to the profiled maximum.
                mb = {a: cost.max_batch(kind, a) for a in archs}
            # A shared pool is one per device: its executors sit on that device, with its weights.
            plans.append(ExecutorPlan(len(plans), kind, device, budget, reserve, mb, dynamic, field))
        if arm.share_pool:
            _check_shared_pools([p for p in plans if p.kind == kind], largest)
    return plans


def _check_shared_pools(plans: list[ExecutorPlan], largest: int) -> None:
    """One pool per device shared by its executors (make_pools): its bytes, the sum of their
    shares, must hold the largest expert plus every executor's batch reserve at once."""
    groups: dict[int, list[ExecutorPlan]] = {}
    for p in plans:
        groups.setdefault(p.device_index, []).append(p)
    for device, ps in groups.items():
        size, batches = sum(p.budget_bytes for p in ps), sum(p.reserved_bytes for p in ps)
        if size - batches < largest:
            kind, field = ps[0].kind, ps[0].budget_field
            raise BudgetError(
                f"{field}: the {kind} pool shared by {len(ps)} executor(s) on device {device} gets {size} B, "
                f"which cannot hold the largest expert ({largest} B) plus their batches ({batches} B); "
                f"raise {field} or use fewer executors"
            )


def _fixed_reserve(p: ExecutorPlan) -> int:
    return 0 if p.dynamic else p.reserved_bytes


def make_pools(plans: list[ExecutorPlan], share: bool) -> list[Pool]:
    """One pool per executor, or (share) one per device holding all its executors' bytes."""
    if not share:
        return [Pool(f"ex{p.executor_id}:{p.kind}", p.kind, p.budget_bytes, _fixed_reserve(p), device_index=p.device_index)
                for p in plans]
    groups: dict[tuple[str, int], list[ExecutorPlan]] = {}
    for p in plans:
        groups.setdefault((p.kind, p.device_index), []).append(p)
    pools = {key: Pool(f"dev{key[1]}:{key[0]}", key[0], sum(p.budget_bytes for p in ps),
                       sum(_fixed_reserve(p) for p in ps), device_index=key[1])
             for key, ps in groups.items()}
    return [pools[(p.kind, p.device_index)] for p in plans]


def host_cache_pool(cfg: RunConfig, graph: CoEGraph, arm: ArmConfig | None = None,
                    plans: list[ExecutorPlan] | None = None) -> Pool | None:
    """The host RAM cache in front of disk (``hardware.host_budget``; None: no cache). An arm
    with ``host_cache_includes_cpu_pool`` that runs no CPU executor also gets the bytes the
    hardware sets aside for CPU executors' pools (``hardware.cpu_pool_budget``): on NUMA 8 + 4
    GiB, all the host RAM the machine offers, instead of 4 GiB left idle."""
    hw = cfg.hardware
    if hw.host_budget is None:
        return None
    size = budget_bytes(hw, "host_budget", graph.total_bytes)
    if (arm is not None and arm.host_cache_includes_cpu_pool and hw.cpu_pool_budget is not None
            and plans is not None and not any(p.kind == "cpu" for p in plans)):
        size += budget_bytes(hw, "cpu_pool_budget", graph.total_bytes)
    return Pool("host", "host", size)


def check_profile_covers(cost: CostModel, plans: list[ExecutorPlan], graph: CoEGraph, cache: Pool | None) -> None:
    for p in plans:
        for arch in {e.arch for e in graph.experts.values()}:
            cost.arch(p.kind, arch)
        if not cost.has_load(p.kind, Tier.DISK) and not (cache is not None and cost.has_load(p.kind, Tier.HOST)):
            raise ConfigError(f"profile: no load figures into {p.kind} pools (from disk, or from the host cache)")
    if cache is not None and not cost.has_load("host", Tier.DISK):
        raise ConfigError("profile: hardware.host_budget is set but the profile has no host_cache_loads.disk")


def build_engine(cfg: RunConfig, arm: ArmConfig, graph: CoEGraph, cost: CostModel,
                 backend: Backend, routing: str, clock: Callable[[], float] | None = None,
                 policy_kwargs: dict[str, Any] | None = None) -> EngineLoop:
    """One arm's EngineLoop over a backend (fresh pools and fresh policy objects)."""
    plans = plan_executors(cfg, arm, graph, cost)
    cache = host_cache_pool(cfg, graph, arm, plans)
    check_profile_covers(cost, plans, graph, cache)
    clock = clock or backend.now
    executors = [ExecutorState(p.executor_id, p.kind, p.device_index, pool, p.max_batch, clock,
                               dynamic_batch_memory=p.dynamic,
                               initial_reserve_bytes=p.reserved_bytes if p.dynamic else 0)
                 for p, pool in zip(plans, make_pools(plans, arm.share_pool))]
    kw = dict(policy_kwargs or {})
    if arm.unlimited_memory and arm.initialiser is not None:
        # The ceiling starts from what the budgeted arms can preload, then never evicts.
        try:
            capped = plan_executors(cfg, dataclasses.replace(arm, unlimited_memory=False), graph, cost)
            caps = {p.executor_id: p.budget_bytes - p.reserved_bytes for p in capped}
        except ConfigError:
            caps = {}
        kw[arm.initialiser["_target_"]] = {"fill_bytes": caps, **kw.get(arm.initialiser["_target_"], {})}

    def make(node):
        return None if node is None else instantiate(node, **kw.get(node["_target_"], {}))

    engine = EngineLoop(
        graph=graph, cost=cost, executors=executors, host_cache=cache,
        scheduler=make(arm.scheduler), eviction=make(arm.eviction),
        host_eviction=make(arm.host_eviction) or LRU(),
        initialiser=make(arm.initialiser), prefetcher=make(arm.prefetcher),
        backend=backend, routing=routing, load_retries=cfg.backend.load_retries,
        check_invariants=cfg.backend.check_invariants,
    )
    return engine
