"""The run configuration's typed nodes: frozen dataclasses, one per node of ``conf/``.

They are also the schema Hydra composes onto (``composition.py`` registers a mutable copy), so
their field names, types and defaults are the only place those live: a YAML file selects and
sets values, and may repeat none of the defaults of ``profiler``, ``planner`` or ``zoo_eval``.
The ``from_mapping`` of those three checks its node's ranges; ``parse.py`` checks the others and
the rules across nodes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from coserve_jax.config.errors import ConfigError, build, positive, whole
from coserve_jax.config.executors import format_executors, parse_executors


@dataclasses.dataclass(frozen=True)
class ZooOverrides:
    """``model.zoo``: fields of the zoo's config to set (the demo zoo's
    ``coserve_jax.coe.zoo.ZooConfig``, the synthetic zoo's ``coserve_jax.coe.synth.SynthConfig``;
    each documented there); null keeps the preset's value. ``preset: tiny`` starts from its
    ``tiny()``. A field the model's zoo does not have is an error naming it."""

    preset: str | None = None
    num_types: int | None = None
    num_detectors: int | None = None
    detect_share: float | None = None
    image_size: int | None = None
    # demo: an ArchSpec as a mapping; synth: also an architecture name (resnet101, yolov5m, ...)
    classifier_arch: Any = None
    detector_arch: dict[str, Any] | None = None  # demo only
    p_damaged: float | None = None
    p_misaligned: float | None = None
    p_reversed: float | None = None
    classifier_steps: int | None = None
    detector_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    classifier_train_images: int | None = None
    detector_train_images: int | None = None
    heldout_images: int | None = None
    board_mean_count: float | None = None
    seed: int | None = None  # null: model.seed
    cache_dir: str | None = None  # null: $COSERVE_JAX_CACHE, else ~/.cache/coserve_jax/zoo
    # synth only: detectors of each kind, their architectures, build threads
    num_yolov5m: int | None = None
    num_yolov5l: int | None = None
    yolov5m_arch: Any = None
    yolov5l_arch: Any = None
    workers: int | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields set (not null), as ``coe.zoo.zoo_config`` takes them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which CoE to serve."""

    name: str = "pcb_demo"
    # "demo": a trained zoo (Orbax); "synth": a paper-size zoo of untrained experts (Orbax,
    # coe/synth.py); "paper": paper-scale graph (simulator)
    kind: str = "demo"
    board: str | None = None  # paper boards: "a" or "b"
    seed: int = 0
    zoo: ZooOverrides = dataclasses.field(default_factory=ZooOverrides)  # demo and synth zoos
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
    executors: dict[str, int] = dataclasses.field(default_factory=lambda: {"cpu": 2})
    device_budget: Any = "25%"  # per device: bytes, '512MiB' or share of the zoo's bytes, split among its executors
    host_budget: Any = None  # host RAM expert cache in front of disk; None: no cache
    cpu_pool_budget: Any = None  # CPU executors' pools when a GPU is present (host RAM)
    expert_fraction: float | None = None  # share of an executor's memory for experts (rest: batches)
    max_batch_memory_fraction: float = 0.5  # no split given: batches use at most this share
    profile: str | None = None  # profile.json path; None: measured (real) or paper_profile (sim)
    paper_profile: dict[str, Any] | None = None
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
    """One named combination of policies, executors and memory split (an ``arm_catalog`` entry:
    free-form in the schema, so a new arm is a few lines of YAML; ``parse.py`` checks it)."""

    name: str
    scheduler: Mapping[str, Any]
    eviction: Mapping[str, Any]
    initialiser: Mapping[str, Any] | None = None
    prefetcher: Mapping[str, Any] | None = None
    host_eviction: Mapping[str, Any] | None = None  # None: LRU (Samba-CoE's cache)
    executors: Mapping[str, int] | None = None  # None: the hardware's
    single_executor: bool = False  # Samba-CoE: one executor of the hardware's first kind
    # Only the hardware's executors of its fastest kind (GPU where it has one; else all of them):
    # no slow CPU executor for round-robin to feed (samba_parallel_gpu, the *_gpu ablation rungs)
    fastest_kind_only: bool = False
    share_pool: bool = False  # executors on one device share one model pool (ours)
    # reserved: each executor's batch working memory is set aside (the paper's split);
    # dynamic: a batch takes it from the pool's free bytes when it starts (ours; engine/memory.py)
    batch_memory: str = "reserved"
    expert_fraction: float | None = None  # None: the hardware's (None there: reserve max batch)
    expert_fraction_by_kind: Mapping[str, float] | None = None  # per executor kind (from a plan)
    # split: the batch reserve follows expert_fraction (the arm's, else the hardware's: CoServe
    # Casual's 25%); max_batch: the arm reserves what its own largest batch needs, whatever the
    # hardware's split (Samba-CoE has no split of its own; engine/build.py)
    batch_reserve: str = "split"
    # With no CPU executor, the host RAM the hardware sets aside for CPU executors' pools
    # (hardware.cpu_pool_budget) joins the host cache (where the hardware has one): the arm may
    # use all the host memory the machine offers (engine/build.py host_cache_pool)
    host_cache_includes_cpu_pool: bool = False
    unlimited_memory: bool = False  # all_resident: pools as large as the zoo
    sees_future: bool = False  # oracle: eviction may read the whole trace
    plan: str | None = None  # path to a planner output (coserve_best)
    description: str = ""


@dataclasses.dataclass(frozen=True)
class ProfilerConfig:
    """``profiler``: how this machine's profile is measured (``+experiment=profile``, and by a real
    run that finds none cached for its zoo and hardware) and when a cached one is trusted."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # the K·n+B fit uses these
    heldout_batch_sizes: tuple[int, ...] = (3, 6, 12, 24)  # left out of the fit; its error on them is reported
    # timed rounds; each runs every batch shape once, shuffled (median per shape), then times one load
    repeats: int = 60
    warmup: int = 2  # untimed runs per shape after its compile
    # experts per architecture timed for the load fits (median of their reads between rounds, at least 3 each)
    load_samples: int = 6
    # requests served (4 runs) to time the engine loop's cost per event for the simulator
    loop_requests: int = 1500
    router_sample: int = 200  # requests routed by the real experts for usage (0: off)
    refresh: bool = False  # true: measure again even when this machine's profile is cached
    # a cached profile is re-measured when a live check (largest batch, one load per
    # architecture) is off by more (max/min - 1); null: no check; .inf: check and record only
    max_drift: float | None = 0.25

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> ProfilerConfig:
        """``profiler`` checked: errors name the field."""
        s = build(cls, raw, "profiler")
        for name in ("batch_sizes", "heldout_batch_sizes"):
            sizes = getattr(s, name)
            if not isinstance(sizes, (list, tuple)) or not sizes:
                raise ConfigError(f"profiler.{name}: list at least one batch size, got {sizes!r}")
            for n in sizes:
                whole(n, f"profiler.{name}", 1)
        overlap = sorted(set(s.batch_sizes) & set(s.heldout_batch_sizes))
        if overlap:
            raise ConfigError(f"profiler.heldout_batch_sizes: {overlap} are also in profiler.batch_sizes; "
                              "held-out sizes must be left out of the fit")
        for name, minimum in (("repeats", 1), ("warmup", 0), ("load_samples", 1), ("loop_requests", 1),
                              ("router_sample", 0)):
            whole(getattr(s, name), f"profiler.{name}", minimum)
        if s.max_drift is not None:
            positive(s.max_drift, "profiler.max_drift")
            if math.isnan(s.max_drift):
                raise ConfigError(f"profiler.max_drift: must be a positive number (e.g. 0.25), got {s.max_drift!r}")
        return dataclasses.replace(s, batch_sizes=tuple(s.batch_sizes),
                                   heldout_batch_sizes=tuple(s.heldout_batch_sizes))


# Where +experiment=plan copies its plan, and coserve_best reads it: one file per model, hardware
# and backend under $COSERVE_JAX_CACHE (~/.cache/coserve_jax); resolved when Hydra composes.
DEFAULT_PLAN_OUTPUT = ("${oc.env:COSERVE_JAX_CACHE,${oc.env:HOME}/.cache/coserve_jax}/plans/"
                       "${model.name}-${hardware.name}-${backend.name}.yaml")


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """``planner``: the allocation search (the paper's §4.4; ``+experiment=plan``, jobs/plan.py).

    It sweeps executor counts (Fig. 17), then runs the decay-window search over the usage CDF
    for how many experts the fast processors' pools hold (Fig. 18), and writes the winner to
    ``output``, which the arm coserve_best reads (so +experiment=plan runs before coserve_best).
    Decay window: windows over N experts start at [0, w0]; each slide multiplies the size by
    decay = 1 - w0/100; it stops when (f(N) - actual) / f(N) > error_margin for the line f
    fitted to the points so far (paper: w0 = 15, margin 5%).
    """

    arm: str = "coserve"  # the arm measured on the sample (its policies; executors/split are searched)
    # requests in the sample trace each candidate is measured on (null: workload.num_requests)
    sample_requests: int | None = 1000
    sample_seed: int | None = None  # null: workload.seed + 1000 (a different trace from the evaluation run)
    repeats: int = 3  # runs of the sample per configuration; img/s is their median (noise on shared CPUs)
    w0: float = 15.0
    error_margin: float = 0.05
    refine_points: int = 3  # interior points of the final window measured; pick the best (0: midpoint)
    max_experts: int | None = None  # cap on N (null: as many as memory holds with a batch of one left)
    keep_best_measured: bool = True  # if any measured config beats the window's pick by > error_margin, keep it
    # executor-count sweep; null: the paper's Fig. 17 candidates on GPU hardware (1G+1C ... 5G+1C,
    # 3G+2C, 4G+2C), 1C ... 4C on CPU-only hardware
    candidates: tuple[str, ...] | None = None
    sweep_expert_fraction: float | None = None  # split used while sweeping counts (null: the arm's / hardware's)
    # where the plan is copied (the run dir always gets plan.yaml too); null: no copy; `~` is expanded
    output: str | None = DEFAULT_PLAN_OUTPUT

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> PlannerConfig:
        """``planner`` checked: errors name the field."""
        s = build(cls, raw, "planner")
        if s.sample_requests is not None and (not isinstance(s.sample_requests, int) or s.sample_requests < 1):
            raise ConfigError(f"planner.sample_requests: must be a whole number >= 1, got {s.sample_requests!r}")
        if not isinstance(s.repeats, int) or s.repeats < 1:
            raise ConfigError(f"planner.repeats: must be a whole number >= 1, got {s.repeats!r}")
        if not isinstance(s.w0, (int, float)) or not 0 < s.w0 < 100:
            raise ConfigError(f"planner.w0: must be in (0, 100) experts, got {s.w0!r}")
        if not isinstance(s.error_margin, (int, float)) or not 0 < s.error_margin < 1:
            raise ConfigError(f"planner.error_margin: must be in (0, 1), got {s.error_margin!r}")
        if not isinstance(s.refine_points, int) or s.refine_points < 0:
            raise ConfigError(f"planner.refine_points: must be a whole number >= 0, got {s.refine_points!r}")
        if s.max_experts is not None and (not isinstance(s.max_experts, int) or s.max_experts < 1):
            raise ConfigError(f"planner.max_experts: must be null or a whole number >= 1, got {s.max_experts!r}")
        f = s.sweep_expert_fraction
        if f is not None and (not isinstance(f, (int, float)) or not 0 < f < 1):
            raise ConfigError(f"planner.sweep_expert_fraction: must be null or in (0, 1), got {f!r}")
        cands = s.candidates
        if cands is not None:
            if isinstance(cands, str):
                cands = [cands]
            try:
                cands = tuple(format_executors(parse_executors(c)) for c in cands)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if not cands:
                raise ConfigError("planner.candidates: list at least one candidate, or null for the defaults")
        return dataclasses.replace(s, w0=float(s.w0), error_margin=float(s.error_margin), candidates=cands)


@dataclasses.dataclass(frozen=True)
class ZooEvalConfig:
    """``zoo_eval``: the held-out boards ``+experiment=zoo`` scores the zoo on."""

    num_boards: int = 10  # held-out boards, generated fresh (image seeds disjoint from every training image)
    seed: int = 1234  # which boards; the training sets do not depend on it

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> ZooEvalConfig:
        """``zoo_eval`` checked: errors name the field."""
        s = build(cls, raw, "zoo_eval")
        whole(s.num_boards, "zoo_eval.num_boards", 1)
        whole(s.seed, "zoo_eval.seed", 0)
        return s


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """What a run records beside results.json (``metrics/timeline.py``, ``metrics/records.py``)."""

    timeline: bool = False  # a Chrome/Perfetto trace per arm: timeline-<arm>.json in the run dir
    timeline_max_events: int = 500_000  # an arm's timeline with more events is not written (a warning says so)
    jax_annotations: bool = False  # real backend: name batches and loads in a JAX profiler trace
    requests: bool = True  # per-request records of every arm: requests.csv in the run dir
    requests_gzip_over_bytes: int = 1_000_000  # records larger than this are written as requests.csv.gz

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> MetricsConfig:
        """``metrics`` checked: errors name the field."""
        m = build(cls, raw, "metrics")
        for f in ("timeline", "jax_annotations", "requests"):
            if not isinstance(getattr(m, f), bool):
                raise ConfigError(f"metrics.{f}: must be true or false, got {getattr(m, f)!r}")
        for f in ("timeline_max_events", "requests_gzip_over_bytes"):
            whole(getattr(m, f), f"metrics.{f}", 1)
        return m


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Black-box search over runs (a Hydra sweeper such as Optuna, ``+experiment=search_sim``)."""

    objective_arm: str | None = None  # the run returns this arm's throughput_rps (None: returns nothing)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run, typed and checked (``parse.py``)."""

    experiment: str
    seed: int
    arms: tuple[ArmConfig, ...]
    model: ModelConfig
    workload: WorkloadConfig
    hardware: HardwareConfig
    backend: BackendConfig
    profiler: ProfilerConfig = dataclasses.field(default_factory=ProfilerConfig)
    planner: PlannerConfig = dataclasses.field(default_factory=PlannerConfig)
    zoo_eval: ZooEvalConfig = dataclasses.field(default_factory=ZooEvalConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    job: str = "serve"  # serve | zoo | profile | plan (coserve_jax.jobs)
    output_dir: str | None = None
    repeats: int = 1  # runs of each arm (interleaved); results keep the median-throughput run
    repeat_until_s: float = float("inf")  # stop repeating an arm once its runs add up to this
