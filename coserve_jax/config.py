"""Typed run configuration, validated at start-up with errors that name the field.

Hydra composes YAML (``conf/``); ``parse_config`` turns the composed tree into these frozen
dataclasses. Nothing here has side effects: building objects happens in ``engine/build.py``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending field."""


class BudgetError(ConfigError):
    """An arm's memory budget cannot hold the largest expert plus its batches.

    A run reports such an arm as infeasible and runs the others (api.run_experiment); every other
    ConfigError stops the run at start-up.
    """


class NoFeasibleArmError(BudgetError):
    """No arm of a run fits its memory budget, so none ran; the message lists each arm's reason
    (``results``, also written to results.json, records them)."""

    def __init__(self, message: str, results: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.results = results


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


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


def _check_choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{field}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def _positive(value: Any, field: str, allow_zero: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field}: must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which CoE to serve."""

    name: str = "pcb_demo"
    kind: str = "demo"  # "demo": a trained zoo (Orbax); "paper": paper-scale graph (simulator)
    board: str | None = None  # paper boards: "a" or "b"
    seed: int = 0
    zoo: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # ZooConfig overrides
    # paper boards: the usage tail falls on the 35 most common types + this many (None: all
    # types); see coserve_jax.coe.paper
    tail_types: int | None = None


@dataclasses.dataclass(frozen=True)
class WorkloadConfig:
    """Requests: boards -> component images arriving over time."""

    name: str = "default"
    num_requests: int = 2000
    interval_ms: float = 0.5  # time between arrivals (fixed) or its mean (poisson, bursty)
    arrival: str = "fixed"  # fixed | poisson | bursty
    burst_size: int = 64  # bursty: requests per burst
    seed: int = 0
    trace_path: str | None = None  # replay this trace file instead of generating one
    task: str | None = None  # paper task label (A1, A2, B1, B2), for reports


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """Devices, executors and memory budgets."""

    name: str = "cpu"
    executors: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"cpu": 2})
    device_budget: Any = "25%"  # per device: bytes, '512MiB' or share of the zoo's bytes
    host_budget: Any = None  # host RAM expert cache in front of disk; None: no cache
    cpu_pool_budget: Any = None  # CPU executors' pools when a GPU is present (host RAM)
    expert_fraction: float | None = None  # share of an executor's memory for experts (rest: batches)
    max_batch_memory_fraction: float = 0.5  # no split given: batches use at most this share
    profile: str | None = None  # profile.json path; None: measured (real) or paper_profile (sim)
    paper_profile: Mapping[str, Any] | None = None
    drop_page_cache: bool = False  # posix_fadvise(DONTNEED) before each disk load
    # XLA host platform device count: CPU executors spread over that many host devices, each a
    # device with its own budget (one host device: the machine's memory, as the paper's UMA).
    cpu_devices: int = 1
    # GPU devices (JAX indices) the GPU executors spread over; None: every local GPU (real
    # backend) or one (simulator).
    gpu_devices: Any = None
    # Per-device budgets overriding device_budget: {index: size} or a list (entry i: device i).
    device_budgets: Any = None


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    name: str = "real"  # real | sim
    routing: str = "auto"  # model (real outputs) | trace (ground-truth route) | auto
    load_threads: int = 2
    load_processes: int = 2  # reader processes for checkpoint reads (0: read in the load threads)
    load_retries: int = 2
    stall_timeout_s: float = 120.0
    compilation_cache_dir: str | None = None  # None: ~/.cache/coserve_jax/jax_cache
    # Where the host cache keeps experts: auto (JAX pinned_host memory where the platform has
    # it, else numpy), pinned_host (required), numpy (store/host_tier.py).
    host_tier: str = "auto"
    check_invariants: bool = False  # re-verify byte accounting after every event
    loop_shares_host: bool = True  # sim: the loop's busy time takes a host core from CPU jobs


@dataclasses.dataclass(frozen=True)
class ArmConfig:
    """One named combination of policies, executors and memory split."""

    name: str
    scheduler: Mapping[str, Any]
    eviction: Mapping[str, Any]
    initialiser: Mapping[str, Any] | None = None
    prefetcher: Mapping[str, Any] | None = None
    host_eviction: Mapping[str, Any] | None = None  # None: LRU (Samba-CoE's cache)
    executors: Mapping[str, int] | None = None  # None: the hardware's
    single_executor: bool = False  # Samba-CoE: one executor of the hardware's first kind
    share_pool: bool = False  # executors on one device share one model pool (ours)
    # reserved: each executor's batch working memory is set aside (the paper's split);
    # dynamic: a batch takes it from the pool's free bytes when it starts (ours; engine/memory.py)
    batch_memory: str = "reserved"
    expert_fraction: float | None = None  # None: the hardware's (None there: reserve max batch)
    expert_fraction_by_kind: Mapping[str, float] | None = None  # per executor kind (from a plan)
    unlimited_memory: bool = False  # all_resident: pools as large as the zoo
    sees_future: bool = False  # oracle: eviction may read the whole trace
    plan: str | None = None  # path to a planner output (coserve_best)
    description: str = ""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    experiment: str
    seed: int
    arms: tuple[ArmConfig, ...]
    model: ModelConfig
    workload: WorkloadConfig
    hardware: HardwareConfig
    backend: BackendConfig
    profiler: Mapping[str, Any]
    planner: Mapping[str, Any]
    output_dir: str | None = None
    repeats: int = 1  # runs of each arm (interleaved); results keep the median-throughput run
    repeat_until_s: float = float("inf")  # stop repeating an arm once its runs add up to this


def _build(cls, node: Mapping[str, Any] | None, field: str, **extra):
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


def _executors(value: Any, field: str) -> dict[str, int]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{field}: expected a mapping like {{cpu: 2}} or {{gpu: 3, cpu: 1}}")
    out = {}
    for kind, n in value.items():
        _check_choice(kind, f"{field}.{kind}", ("cpu", "gpu"))
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
    """hardware.device_budgets: {device index: size} or a list (entry i: device i); sizes are
    checked for syntax here and against the zoo's bytes (and the devices in use) when an arm is
    planned (engine/build.py)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{field}: expected {{device index: size}} like {{0: 40%, 1: 60%}} or a list of sizes")
    out: dict[int, Any] = {}
    for k, v in value.items():
        d = _index(k, f"{field}.{k}")
        if v is None:
            continue  # a list entry left null: that device keeps hardware.device_budget
        parse_bytes(v, f"{field}.{d}", total_bytes=1)
        out[d] = v
    return out or None


def _fraction(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"{field}: must be in (0, 1), got {value!r}")
    return float(value)


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

    model = _build(ModelConfig, raw["model"], "model")
    _check_choice(model.kind, "model.kind", ("demo", "paper", "synth"))
    if model.kind == "paper":
        _check_choice(model.board, "model.board", ("a", "b"))
    if not isinstance(model.seed, int) or isinstance(model.seed, bool):
        raise ConfigError(f"model.seed: must be an integer, got {model.seed!r}")
    if model.tail_types is not None:
        if model.kind != "paper":
            raise ConfigError(f"model.tail_types: only paper models (model.kind=paper) have it; "
                              f"set it to null for {model.name!r}")
        from coserve_jax.coe.paper import build_paper_graph, check_tail_types

        try:
            check_tail_types(model.board, model.tail_types, "model.tail_types")
            build_paper_graph(model.board, model.seed, model.tail_types)  # ms: solves the mix
        except ValueError as e:
            raise ConfigError(str(e)) from None

    wl = _build(WorkloadConfig, raw["workload"], "workload")
    if wl.trace_path is None and (not isinstance(wl.num_requests, int) or wl.num_requests < 1):
        raise ConfigError(
            f"workload.num_requests: must be a whole number >= 1, got {wl.num_requests!r}"
        )
    _positive(wl.interval_ms, "workload.interval_ms", allow_zero=True)
    _check_choice(wl.arrival, "workload.arrival", ("fixed", "poisson", "bursty"))
    _positive(wl.burst_size, "workload.burst_size")

    hw_node = dict(raw["hardware"])
    hw = _build(HardwareConfig, hw_node, "hardware")
    hw = dataclasses.replace(
        hw,
        executors=_executors(hw.executors, "hardware.executors"),
        expert_fraction=_fraction(hw.expert_fraction, "hardware.expert_fraction"),
        max_batch_memory_fraction=_fraction(hw.max_batch_memory_fraction, "hardware.max_batch_memory_fraction"),
    )
    _positive(hw.cpu_devices, "hardware.cpu_devices")
    hw = dataclasses.replace(hw, gpu_devices=_device_list(hw.gpu_devices, "hardware.gpu_devices"),
                             device_budgets=_device_budgets(hw.device_budgets, "hardware.device_budgets"))
    # Sizes are parsed later against the zoo's total; check their syntax now.
    for f in ("device_budget", "host_budget", "cpu_pool_budget"):
        v = getattr(hw, f)
        if v is not None:
            parse_bytes(v, f"hardware.{f}", total_bytes=1)

    be = _build(BackendConfig, raw["backend"], "backend")
    _check_choice(be.name, "backend.name", ("real", "sim"))
    _check_choice(be.routing, "backend.routing", ("auto", "model", "trace"))
    _check_choice(be.host_tier, "backend.host_tier", ("auto", "pinned_host", "numpy"))
    _positive(be.load_threads, "backend.load_threads")
    _positive(be.load_processes, "backend.load_processes", allow_zero=True)
    _positive(be.load_retries, "backend.load_retries", allow_zero=True)
    _positive(be.stall_timeout_s, "backend.stall_timeout_s")

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
        arm = _build(ArmConfig, node, f, name=name)
        arm = dataclasses.replace(
            arm,
            scheduler=_target(arm.scheduler, f"{f}.scheduler"),
            eviction=_target(arm.eviction, f"{f}.eviction"),
            initialiser=_target(arm.initialiser, f"{f}.initialiser", required=False),
            prefetcher=_target(arm.prefetcher, f"{f}.prefetcher", required=False),
            host_eviction=_target(arm.host_eviction, f"{f}.host_eviction", required=False),
            executors=None if arm.executors is None else _executors(arm.executors, f"{f}.executors"),
            expert_fraction=_fraction(arm.expert_fraction, f"{f}.expert_fraction"),
        )
        _check_choice(arm.batch_memory, f"{f}.batch_memory", ("reserved", "dynamic"))
        arms.append(arm)
    if len(set(names)) != len(names):
        raise ConfigError(f"arms: listed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")

    repeats = raw.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"repeats: must be a whole number >= 1, got {repeats!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"seed: must be an integer, got {seed!r}")
    return RunConfig(
        experiment=str(raw.get("experiment", "default")),
        seed=seed,
        arms=tuple(arms),
        model=model,
        workload=wl,
        hardware=hw,
        backend=be,
        profiler=_profiler(raw.get("profiler")),
        planner=dict(raw.get("planner") or {}),
        output_dir=raw.get("output_dir"),
        repeats=repeats,
        repeat_until_s=float(_positive(raw.get("repeat_until_s", float("inf")), "repeat_until_s")),
    )


def _profiler(node: Mapping[str, Any] | None) -> dict[str, Any]:
    """profiler settings stay a plain dict; the keys a serving run reads are checked here."""
    prof = dict(node or {})
    # max_drift: null reuses a cached profile unchecked; .inf checks and records, never re-measures
    drift = prof.get("max_drift")
    if drift is not None:
        _positive(drift, "profiler.max_drift")
        if math.isnan(drift):
            raise ConfigError(f"profiler.max_drift: must be a positive number (e.g. 0.25), got {drift!r}")
    return prof


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """Compose the Hydra config outside a Hydra app (API, tests, scripts)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not CONF_DIR.is_dir():
        raise ConfigError(f"config directory not found: {CONF_DIR} (install the project with pip install -e .)")
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
