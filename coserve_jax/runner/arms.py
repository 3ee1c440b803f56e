"""Arms run one after another on one model, cost model and trace: each gets a fresh engine (its
executors, pools and policy objects) over the configured backend."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from coserve_jax.config import ArmConfig, BudgetError, ConfigError, RunConfig
from coserve_jax.cost.model import CostModel
from coserve_jax.engine.build import build_engine, plan_executors
from coserve_jax.engine.loop import EngineLoop
from coserve_jax.engine.real import RealBackend
from coserve_jax.engine.sim import SimBackend
from coserve_jax.metrics.timeline import Timeline
from coserve_jax.runner.heap import frozen_heap
from coserve_jax.runner.model import Model, make_runtime
from coserve_jax.types import Request


def routing_for(cfg: RunConfig, model: Model) -> str:
    """How finished tasks pick the next expert: the experts' real outputs (``model``) or the
    trace's ground-truth route (``trace``); ``backend.routing=auto`` picks model for a real zoo
    of trained experts (a synthetic zoo's random outputs mean nothing: ``Zoo.routing``)."""
    routable = model.trained and model.zoo.routing == "model"
    if cfg.backend.routing != "auto":
        if cfg.backend.routing == "model" and (cfg.backend.name == "sim" or not routable):
            raise ConfigError("backend.routing: 'model' needs the real backend and a trained zoo")
        return cfg.backend.routing
    return "model" if cfg.backend.name == "real" and routable else "trace"


class ArmRunner:
    """Runs arms one after another on one model, cost model and trace (jobs/prepare.py builds
    one from a config: devices, model, runtime and the profile's cost model)."""

    def __init__(self, cfg: RunConfig, model: Model, cost: CostModel, runtime: Any = None):
        self.cfg, self.model, self.cost, self.runtime = cfg, model, cost, runtime
        self.routing = routing_for(cfg, model)
        if cfg.backend.name == "real":
            if not model.trained:
                raise ConfigError("backend: the real backend needs a zoo on disk (model.kind=demo or synth)")
            self.runtime = runtime or make_runtime(cfg, model)

    def new_engine(self, arm: ArmConfig, requests: Sequence[Request] | None = None,
                   fault_injector: Any = None) -> EngineLoop:
        if self.cfg.backend.name == "sim":
            backend = SimBackend.for_cost(self.cost, self.cfg.backend.load_threads,
                                          loop_shares_host=self.cfg.backend.loop_shares_host)
        else:
            backend = RealBackend(self.runtime, load_threads=self.cfg.backend.load_threads,
                                  drop_page_cache=self.cfg.hardware.drop_page_cache,
                                  stall_timeout_s=self.cfg.backend.stall_timeout_s,
                                  fault_injector=fault_injector, annotate=self.cfg.metrics.jax_annotations,
                                  host_tier=self.cfg.backend.host_tier)
        engine = build_engine(self.cfg, arm, self.model.graph, self.cost, backend, self.routing)
        if self.cfg.metrics.timeline:
            engine.attach_timeline(Timeline(self.cfg.metrics.timeline_max_events))
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
        if hasattr(engine.backend, "loop_busy"):  # real: the loop's own time per arrival and per completion it took in
            summary["loop_busy_s"] = engine.backend.loop_busy()
            # ... and each batch's hand-offs between the loop and its worker thread.
            summary["batch_handoff_s"] = engine.backend.handoffs.summary()
        summary["policy"] = arm_policy(arm)
        summary["executors"] = [{"id": ex.executor_id, "kind": ex.kind, "device": ex.device_index,
                                 "pool": ex.pool.pool_id, "max_batch": dict(ex.max_batches),
                                 "batch_memory": "dynamic" if ex.dynamic_batch_memory else "reserved",
                                 "time_s": dict(ex.seconds)}
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
