"""``parse_config``: a composed config tree -> the typed, checked RunConfig (errors name the field).

Hydra has already checked types and keys against the schema (``composition.py``); this checks
what a type cannot say: ranges and choices, budget syntax, each arm_catalog entry the run lists,
the rules across nodes, and a paper board's usage tail (whose mix must solve). Whether an arm's
budget holds its experts and batches is engine/build.py's to say (BudgetError).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from coserve_jax.coe.paper import BOARDS, build_paper_graph, check_tail_types
from coserve_jax.config.errors import ConfigError, build, check_choice, fraction, positive
from coserve_jax.config.schema import (
    ArmConfig,
    BackendConfig,
    HardwareConfig,
    MetricsConfig,
    ModelConfig,
    PlannerConfig,
    ProfilerConfig,
    RunConfig,
    SearchConfig,
    WorkloadConfig,
    ZooEvalConfig,
    ZooOverrides,
)
from coserve_jax.config.sizes import BUDGETS, budget_bytes


def _executors(value: Any, field: str) -> dict[str, int]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{field}: expected a mapping like {{cpu: 2}} or {{gpu: 3, cpu: 1}}")
    out = {}
    for kind, n in value.items():
        check_choice(kind, f"{field}.{kind}", ("cpu", "gpu"))
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"{field}.{kind}: must be a whole number >= 0, got {n!r}")
        if n:
            out[kind] = n
    if not out:
        raise ConfigError(f"{field}: needs at least one executor")
    return out


def _index(value: Any, field: str) -> int:
    """A device index: a whole number >= 0 (Hydra may hand a mapping key over as a string)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{field}: a device index must be a whole number >= 0, got {value!r}")
    return value


def _device_list(value: Any, field: str) -> tuple[int, ...] | None:
    """hardware.gpu_devices: None or a non-empty list of distinct device indices."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{field}: expected a list of device indices like [0, 1], or null (every device)")
    out = tuple(_index(v, f"{field}[{i}]") for i, v in enumerate(value))
    if len(set(out)) != len(out):
        raise ConfigError(f"{field}: a device is listed twice in {list(out)}")
    return out


def _device_budgets(value: Any, field: str) -> dict[int, Any] | None:
    """hardware.device_budgets: {device index: size} or a list (entry i: device i; null entries
    keep hardware.device_budget). Sizes are checked against the zoo's bytes (and the devices in
    use) when an arm is planned (engine/devices.py)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{field}: expected {{device index: size}} like {{0: 40%, 1: 60%}} or a list of sizes")
    out = {_index(k, f"{field}.{k}"): v for k, v in value.items() if v is not None}
    return out or None


def _target(node: Any, field: str, required: bool = True) -> Mapping[str, Any] | None:
    if node is None:
        if required:
            raise ConfigError(f"{field}: required (a mapping with _target_)")
        return None
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(f"{field}: must be a mapping with a _target_ class path, got {node!r}")
    return dict(node)


def parse_config(cfg: DictConfig | Mapping[str, Any]) -> RunConfig:
    """Validate a composed config tree and return the typed RunConfig."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        raw = OmegaConf.to_container(cfg, resolve=True)
    else:
        raw = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    for key in ("arms", "arm_catalog", "model", "workload", "hardware", "backend"):
        if key not in raw:
            raise ConfigError(f"config: missing top-level key {key!r}")

    model = build(ModelConfig, raw["model"], "model")
    model = dataclasses.replace(model, zoo=build(ZooOverrides, model.zoo, "model.zoo"))
    check_choice(model.kind, "model.kind", ("demo", "synth", "paper"))
    if model.kind == "paper":
        check_choice(model.board, "model.board", BOARDS)
    if not isinstance(model.seed, int) or isinstance(model.seed, bool):
        raise ConfigError(f"model.seed: must be an integer, got {model.seed!r}")
    if model.tail_types is not None:
        if model.kind != "paper":
            raise ConfigError(f"model.tail_types: only paper models (model.kind=paper) have it; "
                              f"set it to null for {model.name!r}")
        try:
            check_tail_types(model.board, model.tail_types, "model.tail_types")
            build_paper_graph(model.board, model.seed, model.tail_types)  # ms: solves the mix
        except ValueError as e:
            raise ConfigError(str(e)) from None

    wl = build(WorkloadConfig, raw["workload"], "workload")
    if wl.trace_path is None and (not isinstance(wl.num_requests, int) or wl.num_requests < 1):
        raise ConfigError(
            f"workload.num_requests: must be a whole number >= 1, got {wl.num_requests!r}"
        )
    positive(wl.interval_ms, "workload.interval_ms", allow_zero=True)
    check_choice(wl.arrival, "workload.arrival", ("fixed", "poisson", "bursty"))
    positive(wl.burst_size, "workload.burst_size")

    hw_node = dict(raw["hardware"])
    hw = build(HardwareConfig, hw_node, "hardware")
    hw = dataclasses.replace(
        hw,
        executors=_executors(hw.executors, "hardware.executors"),
        expert_fraction=fraction(hw.expert_fraction, "hardware.expert_fraction"),
        max_batch_memory_fraction=fraction(hw.max_batch_memory_fraction, "hardware.max_batch_memory_fraction"),
    )
    positive(hw.cpu_devices, "hardware.cpu_devices")
    hw = dataclasses.replace(hw, gpu_devices=_device_list(hw.gpu_devices, "hardware.gpu_devices"),
                             device_budgets=_device_budgets(hw.device_budgets, "hardware.device_budgets"))
    # Sizes are parsed later against the zoo's total; check their syntax now.
    for name in BUDGETS:
        if getattr(hw, name) is not None:
            budget_bytes(hw, name, total_bytes=1)
    for device in hw.device_budgets or {}:
        budget_bytes(hw, "device_budget", total_bytes=1, device=device)

    be = build(BackendConfig, raw["backend"], "backend")
    check_choice(be.name, "backend.name", ("real", "sim"))
    check_choice(be.routing, "backend.routing", ("auto", "model", "trace"))
    check_choice(be.host_tier, "backend.host_tier", ("auto", "pinned_host", "numpy"))
    positive(be.load_threads, "backend.load_threads")
    positive(be.load_processes, "backend.load_processes", allow_zero=True)
    positive(be.load_retries, "backend.load_retries", allow_zero=True)
    positive(be.stall_timeout_s, "backend.stall_timeout_s")

    names = raw["arms"]
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError("arms: list at least one arm, e.g. arms=[samba,coserve]")
    catalog = raw["arm_catalog"] or {}
    arms = []
    for name in names:
        if name not in catalog:
            raise ConfigError(f"arms: unknown arm {name!r}; the arm_catalog has {sorted(catalog)}")
        node = dict(catalog[name])
        f = f"arm_catalog.{name}"
        arm = build(ArmConfig, node, f, name=name)
        arm = dataclasses.replace(
            arm,
            scheduler=_target(arm.scheduler, f"{f}.scheduler"),
            eviction=_target(arm.eviction, f"{f}.eviction"),
            initialiser=_target(arm.initialiser, f"{f}.initialiser", required=False),
            prefetcher=_target(arm.prefetcher, f"{f}.prefetcher", required=False),
            host_eviction=_target(arm.host_eviction, f"{f}.host_eviction", required=False),
            executors=None if arm.executors is None else _executors(arm.executors, f"{f}.executors"),
            expert_fraction=fraction(arm.expert_fraction, f"{f}.expert_fraction"),
        )
        check_choice(arm.batch_memory, f"{f}.batch_memory", ("reserved", "dynamic"))
        check_choice(arm.batch_reserve, f"{f}.batch_reserve", ("split", "max_batch"))
        arms.append(arm)
    if len(set(names)) != len(names):
        raise ConfigError(f"arms: listed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")

    repeats = raw.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"repeats: must be a whole number >= 1, got {repeats!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"seed: must be an integer, got {seed!r}")
    search = build(SearchConfig, raw.get("search"), "search")
    if search.objective_arm is not None and search.objective_arm not in names:
        raise ConfigError(f"search.objective_arm: {search.objective_arm!r} is not one of arms={list(names)}")
    return RunConfig(
        experiment=str(raw.get("experiment", "default")),
        seed=seed,
        arms=tuple(arms),
        model=model,
        workload=wl,
        hardware=hw,
        backend=be,
        profiler=ProfilerConfig.from_mapping(raw.get("profiler")),
        planner=PlannerConfig.from_mapping(raw.get("planner")),
        zoo_eval=ZooEvalConfig.from_mapping(raw.get("zoo_eval")),
        metrics=MetricsConfig.from_mapping(raw.get("metrics")),
        search=search,
        job=str(raw.get("job", "serve")),
        output_dir=raw.get("output_dir"),
        repeats=repeats,
        repeat_until_s=float(positive(raw.get("repeat_until_s", float("inf")), "repeat_until_s")),
    )
