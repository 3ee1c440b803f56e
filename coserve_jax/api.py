"""Public Python API: build engines from a config, run traces, serve online requests.

    from coserve_jax.api import Engine, run_experiment
    results = run_experiment(["arms=[samba,coserve]", "workload.num_requests=300"], out_dir="runs/x")

    with Engine.from_config(["model=pcb_tiny", "hardware.device_budget=75%"], arm="coserve") as engine:
        fut = engine.submit(image, "type_003")      # concurrent.futures.Future
        print(fut.result(timeout=10))               # {"verdict": "ok", "experts": [...], ...}
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import hashlib
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from coserve_jax.coe.graph import CoEGraph
from coserve_jax.config import (
    ArmConfig,
    BudgetError,
    ConfigError,
    NoFeasibleArmError,
    RunConfig,
    compose,
    parse_bytes,
    parse_config,
)
from coserve_jax.engine.build import build_engine, plan_executors
from coserve_jax.engine.events import Arrival
from coserve_jax.engine.loop import EngineLoop
from coserve_jax.metrics.results import git_sha, write_json_atomic
from coserve_jax.cost.model import CostModel
from coserve_jax.types import Request
from coserve_jax.workload.trace import generate_trace, load_trace, save_trace

log = logging.getLogger(__name__)


# ---- configuration --------------------------------------------------------------------------
def as_run_config(cfg: RunConfig | DictConfig | Sequence[str] | None) -> tuple[RunConfig, dict]:
    """Accept a RunConfig, a composed DictConfig or a list of Hydra overrides."""
    if isinstance(cfg, RunConfig):
        return cfg, {}
    if cfg is None or (isinstance(cfg, Sequence) and not isinstance(cfg, str)):
        cfg = compose(list(cfg or []))
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    return parse_config(cfg), resolved


def configure_jax_devices(cpu_devices: int) -> None:
    """Ask XLA for ``cpu_devices`` host devices; only possible before JAX initialises."""
    flag = f"--xla_force_host_platform_device_count={cpu_devices}"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    if "jax" in sys.modules:
        import jax

        # Asking for jax.devices() here would start the backends with one CPU device; set the
        # count first, which JAX accepts until its backends start.
        try:
            if jax.config.jax_num_cpu_devices < cpu_devices:
                jax.config.update("jax_num_cpu_devices", cpu_devices)
            return
        except Exception:  # noqa: BLE001 - JAX already initialised its backends
            if len(jax.devices("cpu")) < cpu_devices:
                log.warning("JAX is already initialised with %d CPU devices; wanted %d",
                            len(jax.devices("cpu")), cpu_devices)
            return
    os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()


# ---- the model: a trained zoo or a paper-scale graph ---------------------------------------
@dataclasses.dataclass
class Model:
    graph: CoEGraph
    zoo: Any = None  # coserve_jax.coe.zoo.Zoo for trained demo CoEs

    @property
    def trained(self) -> bool:
        return self.zoo is not None


def load_model(cfg: RunConfig, progress: bool = True) -> Model:
    if cfg.model.kind == "paper":
        from coserve_jax.coe.paper import build_paper_graph

        return Model(build_paper_graph(cfg.model.board, seed=cfg.model.seed,
                                       tail_types=cfg.model.tail_types))
    if cfg.model.kind == "synth":  # untrained paper-size experts (coe/synth.py)
        from coserve_jax.coe.synth import build_or_load_synth_zoo, synth_config

        zoo = build_or_load_synth_zoo(synth_config(dict(cfg.model.zoo), seed=cfg.model.seed), progress=progress)
        return Model(zoo.graph, zoo)
    from coserve_jax.coe.zoo import build_or_load_zoo, zoo_config

    zoo = build_or_load_zoo(zoo_config(dict(cfg.model.zoo), seed=cfg.model.seed), progress=progress)
    return Model(zoo.graph, zoo)


# ---- the cost model ---------------------------------------------------------------------------
def load_cost_model(cfg: RunConfig, model: Model, runtime: Any = None, progress: bool = True) -> CostModel:
    """hardware.profile if given; else the paper's constants; else measured here (cached).

    A cached measured profile is checked against live timings before a real-backend run reuses
    it, and measured again (and cached again) when it drifted more than ``profiler.max_drift``
    (``profiler/trust.py``; null: no check). What was found is the returned cost model's
    ``trust`` dict, results.json's ``profile_check``: ``source`` (cached, measured, file, paper),
    ``age_s`` and ``age_from`` (the loaded profile's ``measured_at``, else its file's mtime),
    ``checked``, ``measurements`` (each with its ``drift``), ``max_drift``, ``passes``,
    ``check_s``, ``refreshed`` and, when refreshed, ``after_refresh`` (the new profile's check).
    A ``hardware.profile`` file is never checked: it is pinned on purpose (a fixed profile for
    the simulator, maybe of other hardware), and re-measuring would overwrite the user's file or
    silently ignore it."""
    from coserve_jax.profiler.trust import DEFAULT_MAX_DRIFT, check_profile, profile_age

    hw = cfg.hardware
    if hw.profile:
        cost = CostModel.load(hw.profile)
        age, age_from = profile_age(cost.profile, hw.profile)
        cost.trust = {"source": "file", "path": str(hw.profile), "age_s": age, "age_from": age_from,
                      "checked": False, "refreshed": False}
        return cost
    if hw.paper_profile:
        from coserve_jax.cost.paper_profiles import paper_profile

        archs = {}
        for e in model.graph.experts.values():
            archs.setdefault(e.arch, {"param_bytes": e.param_bytes, "input_shape": list(e.input_shape)})
        cost = CostModel(paper_profile(dict(hw.paper_profile), archs))
        cost.trust = {"source": "paper", "checked": False, "refreshed": False}
        return cost
    if not model.trained:
        raise ConfigError("hardware.profile: a paper-scale model needs hardware.profile or hardware.paper_profile")
    from coserve_jax.profiler.microbench import measure_profile

    kinds = sorted(hw.executors)
    settings = {k: cfg.profiler.get(k) for k in ("batch_sizes", "repeats", "load_samples")}
    path = profile_cache_path(cfg, model)
    max_drift = cfg.profiler.get("max_drift", DEFAULT_MAX_DRIFT)
    rt = runtime

    def measure() -> CostModel:
        prof = measure_profile(rt, kinds, batch_sizes=tuple(settings["batch_sizes"] or (1, 2, 4, 8, 16, 32)),
                               repeats=int(settings["repeats"] or 3), load_samples=int(settings["load_samples"] or 3),
                               drop_cache=hw.drop_page_cache, seed=cfg.seed, progress=progress,
                               executors=dict(hw.executors), loop_requests=int(cfg.profiler.get("loop_requests") or 1500),
                               cpu_devices=hw.cpu_devices)
        write_json_atomic(path, prof)
        return CostModel(prof)

    def check(c: CostModel) -> dict[str, Any]:
        return check_profile(rt, c, kinds, drop_cache=hw.drop_page_cache, seed=cfg.seed, max_drift=max_drift)

    trust: dict[str, Any] = {"source": "cached", "path": str(path), "max_drift_allowed": max_drift,
                             "checked": False, "refreshed": False}
    try:
        if path.exists() and not cfg.profiler.get("refresh", False):
            cost = CostModel.load(path)
            trust["age_s"], trust["age_from"] = profile_age(cost.profile, path)
            if cfg.backend.name != "real" or max_drift is None:
                cost.trust = trust  # the simulator runs no JAX here; null max_drift: no check
                return cost
            rt = rt or make_runtime(cfg, model)
            trust.update(check(cost), checked=True)
            if trust["max_drift"] <= max_drift:
                log.info("profile %s (%.0f s old): max drift %.2f <= profiler.max_drift=%g (checked in %.1f s)",
                         path.name, trust["age_s"] or 0.0, trust["max_drift"], max_drift, trust["check_s"])
                cost.trust = trust
                return cost
            log.warning("profile %s (%.0f s old) drifted: max drift %.2f > profiler.max_drift=%g; "
                        "measuring this machine's profile again", path.name, trust["age_s"] or 0.0,
                        trust["max_drift"], max_drift)
            cost = measure()
            after = check(cost)
            trust.update(refreshed=True, after_refresh=after)
            (log.info if after["max_drift"] <= max_drift else log.warning)(
                "re-measured profile %s: max drift %.2f (profiler.max_drift=%g)", path.name, after["max_drift"],
                max_drift)
        else:
            rt = rt or make_runtime(cfg, model)
            cost = measure()
            trust.update(source="measured", age_s=0.0, age_from="measured_at")
    finally:
        if runtime is None and rt is not None:
            rt.close()
    cost.trust = trust
    return cost


def profile_cache_path(cfg: RunConfig, model: Model) -> Path:
    """Where this machine's measured profile of a trained zoo is cached (keyed by what it measured)."""
    import jax

    from coserve_jax.profiler.microbench import PATHS_VERSION

    hw = cfg.hardware
    kinds = sorted(hw.executors)
    settings = {k: cfg.profiler.get(k) for k in ("batch_sizes", "repeats", "load_samples")}
    key = json.dumps({"devices": [str(d) for d in jax.devices()], "kinds": kinds, "settings": settings,
                      "drop": hw.drop_page_cache, "jax": jax.__version__,
                      "reader_processes": cfg.backend.load_processes > 0, "paths": PATHS_VERSION,
                      "executors": dict(hw.executors)}, sort_keys=True)
    return Path(model.zoo.root) / f"profile-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def make_runtime(cfg: RunConfig, model: Model):
    from coserve_jax.engine.real import Runtime

    return Runtime(model.zoo, cfg.backend.compilation_cache_dir, load_processes=cfg.backend.load_processes)


# ---- arms -----------------------------------------------------------------------------------
def routing_for(cfg: RunConfig, model: Model) -> str:
    routable = model.trained and model.zoo.routing == "model"  # a synthetic zoo's outputs mean nothing
    if cfg.backend.routing != "auto":
        if cfg.backend.routing == "model" and (cfg.backend.name == "sim" or not routable):
            raise ConfigError("backend.routing: 'model' needs the real backend and a trained zoo")
        return cfg.backend.routing
    return "model" if cfg.backend.name == "real" and routable else "trace"


def make_trace(cfg: RunConfig, graph: CoEGraph) -> list[Request]:
    if cfg.workload.trace_path:
        return load_trace(cfg.workload.trace_path, graph)
    return generate_trace(graph, cfg.workload)


class _FrozenHeap:
    """``gc.freeze()`` while anything serves, counted across nested and concurrent users.

    Python's full (generation-2) collections scan every long-lived object: on the demo, the
    ~330,000 of JAX, Flax and the zoo. One such pass took 166 ms and landed inside one demo run
    in nine (~20% of a 0.8 s run, by ``gc.callbacks``). Frozen, those objects are skipped: the
    same pass took 3.4 ms. Objects that exist when the first user enters stay alive until the
    last one leaves (``gc.unfreeze``); reference counting still frees everything else.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                gc.freeze()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                gc.unfreeze()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


frozen_heap = _FrozenHeap()


class ArmRunner:
    """Runs arms one after another on one model, cost model and trace."""

    def __init__(self, cfg: RunConfig, model: Model, cost: CostModel, runtime: Any = None):
        self.cfg, self.model, self.cost, self.runtime = cfg, model, cost, runtime
        self.routing = routing_for(cfg, model)
        if cfg.backend.name == "real":
            if not model.trained:
                raise ConfigError("backend: the real backend needs a trained zoo (model.kind=demo)")
            self.runtime = runtime or make_runtime(cfg, model)

    @classmethod
    def prepare(cls, cfg: RunConfig, progress: bool = True) -> ArmRunner:
        """Everything a run needs once: JAX devices, the model, the JAX runtime, the cost model."""
        real = cfg.backend.name == "real"
        if real:
            configure_jax_devices(cfg.hardware.cpu_devices)
        model = load_model(cfg, progress)
        runtime = make_runtime(cfg, model) if real else None
        return cls(cfg, model, load_cost_model(cfg, model, runtime, progress), runtime)

    def new_engine(self, arm: ArmConfig, requests: Sequence[Request] | None = None,
                   fault_injector: Any = None) -> EngineLoop:
        if self.cfg.backend.name == "sim":
            from coserve_jax.engine.sim import SimBackend

            backend = SimBackend(self.cfg.backend.load_threads, loop_s_per_event=self.cost.loop_s_per_event,
                                 host_cores=self.cost.host_cores, loop_s_per_arrival=self.cost.loop_s_per_arrival,
                                 loop_shares_host=self.cfg.backend.loop_shares_host,
                                 load_slowdown=self.cost.load_slowdown)
        else:
            from coserve_jax.engine.real import RealBackend

            backend = RealBackend(self.runtime, load_threads=self.cfg.backend.load_threads,
                                  drop_page_cache=self.cfg.hardware.drop_page_cache,
                                  stall_timeout_s=self.cfg.backend.stall_timeout_s,
                                  fault_injector=fault_injector, host_tier=self.cfg.backend.host_tier)
        engine = build_engine(self.cfg, arm, self.model.graph, self.cost, backend, self.routing)
        if self.cfg.backend.name == "real":
            for ex in engine.executors:
                backend.bind_pool(ex.pool.pool_id, self.runtime.device(ex.kind, ex.device_index))
            if engine.host_cache is not None:
                backend.bind_pool(engine.host_cache.pool_id, None)
        if arm.sees_future:
            if requests is None:
                raise ConfigError(f"arm {arm.name}: the oracle needs the whole trace (not for online use)")
            engine.enable_future(requests)
        return engine

    @property
    def profile_check(self) -> dict[str, Any] | None:
        """The cost model's profile: source, age, drift check, refreshed (``load_cost_model``)."""
        return self.cost.trust

    def close(self) -> None:
        """Stop the runtime's reader processes (real backend)."""
        if self.runtime is not None:
            self.runtime.close()

    def infeasible(self, arm: ArmConfig) -> str | None:
        """Why the arm cannot fit its memory budget (a BudgetError's message), or None if it fits.

        Other config errors of the arm (a missing plan, a kind the profile lacks) propagate."""
        try:
            plan_executors(self.cfg, arm, self.model.graph, self.cost)
        except BudgetError as e:
            return str(e)
        return None

    def warm_up(self, arms: Sequence[ArmConfig]) -> float:
        """Compile every forward the arms can call (real backend), before any timing."""
        if self.cfg.backend.name != "real":
            return 0.0
        max_batch: dict[str, int] = {}
        devices = {}
        for arm in arms:
            for p in plan_executors(self.cfg, arm, self.model.graph, self.cost):
                devices[(p.kind, p.device_index)] = self.runtime.device(p.kind, p.device_index)
                for a, n in p.max_batch.items():
                    max_batch[a] = max(max_batch.get(a, 1), n)
        return self.runtime.warm_up(list(devices.values()), max_batch)

    def images(self, requests: Sequence[Request]) -> list[Any] | None:
        if self.cfg.backend.name != "real":
            return None
        return [self.model.zoo.render(r) for r in requests]

    def run_arm(self, arm: ArmConfig, requests: Sequence[Request], images: Sequence[Any] | None,
                progress: bool = True) -> tuple[dict[str, Any], EngineLoop]:
        engine = self.new_engine(arm, requests)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc=f"{arm.name:>15}", unit="img", leave=False, disable=None)
        t0 = time.perf_counter()
        try:
            with frozen_heap:
                summary = engine.run(requests, images, progress=bar)
        finally:
            if bar is not None:
                bar.close()
            engine.backend.close()
        summary["engine_s"] = time.perf_counter() - t0  # wall-clock seconds this arm took to run
        if hasattr(engine.backend, "events_handled"):
            summary["sim_events"] = engine.backend.events_handled
            summary["sim_events_per_s"] = engine.backend.events_handled / max(summary["engine_s"], 1e-9)
        summary["policy"] = arm_policy(arm)
        summary["executors"] = [{"id": ex.executor_id, "kind": ex.kind, "device": ex.device_index,
                                 "pool": ex.pool.pool_id, "max_batch": dict(ex.max_batches),
                                 "batch_memory": "dynamic" if ex.dynamic_batch_memory else "reserved"}
                                for ex in engine.executors]
        summary["host_tier"] = getattr(engine.backend, "host_tier", None)  # real: pinned_host | numpy | none
        if self.model.trained and self.routing == "model":
            summary["accuracy"] = accuracy(engine)
        return summary, engine


def arm_policy(arm: ArmConfig) -> dict[str, Any]:
    """The arm's settings for results.json (``policy``): the fields it sets."""
    return {k: v for k, v in dataclasses.asdict(arm).items() if v not in (None, False, "")}


def accuracy(engine: EngineLoop) -> dict[str, Any]:
    """End-to-end verdicts of completed requests against ground truth."""
    done = [rs for rs in engine.request_states().values() if rs.failed is None and rs.done]
    if not done:
        return {"end_to_end": None, "n": 0}
    right = sum(rs.verdict == rs.request.truth for rs in done)
    return {"end_to_end": right / len(done), "n": len(done)}


# ---- experiments ------------------------------------------------------------------------------
def run_experiment(cfg: RunConfig | DictConfig | Sequence[str] | None = None,
                   out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every arm of the config on one workload; write results.json in out_dir.

    An arm whose memory budget cannot hold the largest expert plus its batches (a BudgetError)
    is decided infeasible at start-up, before any arm runs: results.json reports it as
    ``arms[name] = {"infeasible": reason, "policy": {...}}`` and the other arms run. When no arm
    fits, results.json records every arm's reason and a NoFeasibleArmError lists them. Other
    config errors stop the run.
    """
    run_cfg, resolved = as_run_config(cfg)
    out = Path(out_dir or run_cfg.output_dir or "outputs/latest")
    out.mkdir(parents=True, exist_ok=True)
    runner = ArmRunner.prepare(run_cfg, progress)
    model, cost = runner.model, runner.cost
    try:
        infeasible = {arm.name: reason for arm in run_cfg.arms if (reason := runner.infeasible(arm))}
        for name, reason in infeasible.items():
            log.warning("arm %s is infeasible, not run: %s", name, reason)
        feasible = [arm for arm in run_cfg.arms if arm.name not in infeasible]
        requests = make_trace(run_cfg, model.graph)
        save_trace(out / "trace.json", requests, {"workload": dataclasses.asdict(run_cfg.workload)})
        compile_s = runner.warm_up(feasible) if feasible else 0.0
        images = runner.images(requests)
        runs: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in feasible}
        for r in range(run_cfg.repeats):
            # Interleaved (A B C A B C ...) so that drift on a shared machine hits every arm alike.
            # An arm whose runs already add up to repeat_until_s is measured well enough.
            for arm in feasible:
                if r and sum(s["engine_s"] for s in runs[arm.name]) >= run_cfg.repeat_until_s:
                    continue
                summary, _ = runner.run_arm(arm, requests, images, progress)
                runs[arm.name].append(summary)
                log.info("%s (run %d/%d): %.1f img/s, %d switches", arm.name, r + 1, run_cfg.repeats,
                         summary["throughput_rps"], summary["switches"]["count"])
    finally:
        runner.close()
    arms = {arm.name: ({"infeasible": infeasible[arm.name], "policy": arm_policy(arm)}
                       if arm.name in infeasible else median_run(runs[arm.name]))
            for arm in run_cfg.arms}
    hw = run_cfg.hardware
    total = model.graph.total_bytes
    results = {
        "experiment": run_cfg.experiment,
        "config": {
            "model": run_cfg.model.name, "workload": run_cfg.workload.name, "hardware": hw.name,
            "backend": run_cfg.backend.name, "seed": run_cfg.seed, "git_sha": git_sha(),
            "profile_sha": cost.sha, "task": run_cfg.workload.task,
            "num_requests": len(requests), "interval_ms": run_cfg.workload.interval_ms,
            "arrival": run_cfg.workload.arrival,
            "device_budget": hw.device_budget,
            "device_budget_bytes": parse_bytes(hw.device_budget, "hardware.device_budget", total),
            "host_budget": hw.host_budget, "drop_page_cache": hw.drop_page_cache,
            "routing": runner.routing, "executors": dict(hw.executors), "repeats": run_cfg.repeats,
            **device_config(run_cfg),
        },
        "zoo": zoo_summary(model),
        "compile_s": compile_s,
        "profile_check": runner.profile_check,
        "arms": arms,
    }
    write_json_atomic(out / "results.json", results)
    write_json_atomic(out / "profile.json", cost.profile)
    (out / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)) if resolved else "")
    if not feasible:
        raise NoFeasibleArmError("no arm fits its memory budget, none ran:\n"
                                 + "\n".join(f"  {name}: {reason}" for name, reason in infeasible.items()),
                                 results)
    return results


def device_config(cfg: RunConfig) -> dict[str, Any]:
    """results.json config: the device settings (engine/devices.py), as given."""
    hw = cfg.hardware
    return {"cpu_devices": hw.cpu_devices, "gpu_devices": None if hw.gpu_devices is None else list(hw.gpu_devices),
            "device_budgets": hw.device_budgets, "host_tier": cfg.backend.host_tier}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every repeat's throughput and switches beside."""
    ordered = sorted(runs, key=lambda s: s["throughput_rps"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        out["repeats"] = {"throughput_rps": [s["throughput_rps"] for s in runs],
                          "switches": [s["switches"]["count"] for s in runs]}
    return out


def zoo_summary(model: Model) -> dict[str, Any]:
    g = model.graph
    out: dict[str, Any] = {"num_experts": len(g.experts), "total_bytes": g.total_bytes,
                           "num_component_types": len(g.components)}
    if model.trained:
        out["accuracy"] = model.zoo.manifest.get("accuracy")
        out["root"] = str(model.zoo.root)
    return out


# ---- online engine ------------------------------------------------------------------------------
class Engine:
    """One arm of the real engine, serving requests as they come (or whole traces).

    ``submit`` returns a Future resolved with the request's verdict when it finishes, or with
    an exception naming the reason when it fails. Use as a context manager, or call ``close``.
    """

    def __init__(self, cfg: RunConfig, arm: str | None = None, progress: bool = False):
        self.cfg = cfg
        names = [a.name for a in cfg.arms]
        name = arm or names[-1]
        if name not in names:
            raise ConfigError(f"arm: {name!r} is not in arms={names}")
        self.arm = next(a for a in cfg.arms if a.name == name)
        self.runner = ArmRunner.prepare(cfg, progress)
        self.model, self.cost = self.runner.model, self.runner.cost
        self._ids = itertools.count()
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._engine: EngineLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._frozen = False

    @classmethod
    def from_config(cls, cfg: RunConfig | DictConfig | Sequence[str] | None = None,
                    arm: str | None = None, progress: bool = False) -> Engine:
        return cls(as_run_config(cfg)[0], arm, progress)

    def run(self, requests: Sequence[Request] | None = None, progress: bool = False) -> dict[str, Any]:
        """Serve a whole trace (default: the config's workload) with this arm; return its summary."""
        requests = list(requests) if requests is not None else make_trace(self.cfg, self.model.graph)
        self.runner.warm_up([self.arm])
        summary, _ = self.runner.run_arm(self.arm, requests, self.runner.images(requests), progress)
        return summary

    def _start(self) -> None:
        if self.cfg.backend.name != "real":
            raise ConfigError("backend.name: online submit needs the real backend")
        self.runner.warm_up([self.arm])
        self._engine = self.runner.new_engine(self.arm)
        self._engine.on_request_done = self._resolve
        self._engine.initialise()
        frozen_heap.acquire()  # released in close()
        self._frozen = True
        self._thread = threading.Thread(target=self._serve, name="coserve-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        eng = self._engine
        try:
            while not (self._closing.is_set() and not eng.busy and not eng.backend.has_events()):
                eng.step(eng.backend.now() + 0.05)
        except Exception as e:  # noqa: BLE001 - fail every open future rather than hang them
            log.exception("engine loop crashed")
            with self._lock:
                for f in self._futures.values():
                    if not f.done():
                        f.set_exception(RuntimeError(f"engine loop crashed: {e}"))

    def _resolve(self, rs: Any) -> None:
        with self._lock:
            fut = self._futures.pop(rs.request.request_id, None)
        if fut is None:
            return
        if rs.failed is not None:
            fut.set_exception(RequestFailed(rs.failed))
        else:
            fut.set_result({"request_id": rs.request.request_id, "verdict": rs.verdict,
                            "experts": list(rs.experts), "latency_s": rs.done_s - rs.arrived_s})

    def submit(self, image: Any, component_type: str) -> concurrent.futures.Future:
        """Queue one component image; the Future resolves to {"verdict", "experts", "latency_s"}."""
        if self._closing.is_set():
            raise RuntimeError("engine is closed")
        with self._lock:
            if self._engine is None:
                self._start()
            rid = next(self._ids)
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._futures[rid] = fut
        self._engine.backend.post(Arrival(Request(rid, component_type, 0.0), image))
        return fut

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish in-flight requests, then stop the threads."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._engine.backend.close()
        if self._frozen:
            self._frozen = False
            frozen_heap.release()
        self.runner.close()
        with self._lock:
            for f in self._futures.values():
                if not f.done():
                    f.set_exception(RequestFailed("engine closed before the request finished"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RequestFailed(RuntimeError):
    """A submitted request ended failed; the message is the reason."""
