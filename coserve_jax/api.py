"""Public Python API: build engines from a config, run traces, serve online requests.

    from coserve_jax.api import Engine, run_experiment
    results = run_experiment(["arms=[samba,coserve]", "workload.num_requests=300"], out_dir="runs/x")

    with Engine.from_config(["model=pcb_tiny", "hardware.device_budget=75%"], arm="coserve") as engine:
        fut = engine.submit(image, "type_003")      # concurrent.futures.Future
        print(fut.result(timeout=10))               # {"verdict": "ok", "experts": [...], ...}
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from coserve_jax.config import ConfigError, RunConfig, as_run_config
from coserve_jax.engine.events import Arrival, Preload
from coserve_jax.engine.loop import EngineLoop
from coserve_jax.jobs.prepare import prepare_runner
from coserve_jax.jobs.serve import median_run, run_experiment
from coserve_jax.profiler.cache import load_cost_model, profile_cache_path
from coserve_jax.runner.arms import ArmRunner, accuracy, arm_policy, routing_for
from coserve_jax.runner.devices import configure_jax_devices
from coserve_jax.runner.heap import frozen_heap
from coserve_jax.runner.model import Model, load_model, make_runtime, zoo_summary
from coserve_jax.types import Request
from coserve_jax.workload.trace import make_trace

# The public API, and the machinery it is built from (kept importable from here).
__all__ = [
    "Engine", "RequestFailed", "run_experiment",
    "ArmRunner", "Model", "accuracy", "arm_policy", "as_run_config", "configure_jax_devices", "frozen_heap",
    "load_cost_model", "load_model", "make_runtime", "make_trace", "median_run", "prepare_runner",
    "profile_cache_path", "routing_for", "zoo_summary",
]

log = logging.getLogger(__name__)


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
        self.runner = prepare_runner(cfg, progress)
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
        """An engine for ``arm`` (default: the config's last arm) of a RunConfig, a composed
        DictConfig or a list of Hydra overrides."""
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
        self._ensure_started()
        with self._lock:
            rid = next(self._ids)
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._futures[rid] = fut
        self._engine.backend.post(Arrival(Request(rid, component_type, 0.0), image))
        return fut

    def preload(self, experts: Sequence[str]) -> None:
        """Ask the serving loop to hold these experts (hottest first; ``EngineLoop.preload``):
        a serving replica's working set, sent when the router's partition gives it one."""
        self._ensure_started()
        self._engine.backend.post(Preload(tuple(experts)))

    def _ensure_started(self) -> None:
        if self._closing.is_set():
            raise RuntimeError("engine is closed")
        with self._lock:
            if self._engine is None:
                self._start()

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
