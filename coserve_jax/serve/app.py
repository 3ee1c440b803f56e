"""The Ray Serve application: engine replicas behind a CoE-aware router and an HTTP ingress.

- ``Replica`` (deployment, ``serve.replicas`` replicas): one online ``coserve_jax.api.Engine``
  (one arm, its own budget and devices). ``infer(component_type, image)`` serves one image;
  ``preload(experts)`` loads its working set; ``record_routing_stats`` reports what the router
  and /metrics read.
- ``Ingress`` (deployment, one replica, FastAPI): ``POST /v1/infer?component_type=...`` with the
  image as ``.npy`` bytes or a PNG -> ``{verdict, experts, latency_s, replica}``; ``GET /healthz``;
  ``GET /metrics`` (Prometheus text from prometheus-client); ``GET /v1/types``. It calls the
  replicas through a deployment handle whose router is ``serve/router.py``'s
  ``CoERequestRouter``. A request whose replica died is sent again (``serve.http.retries``);
  every request ends with a response: 200, 4xx with the reason (bad request), 503 (no replica
  could serve it, with the reason) or 504 (unanswered within ``serve.http.request_timeout_s``).
  With ``serve.replica.preload`` and a partitioning router (affinity) a background task sends
  each replica the working set the partition gives it, at the start and after every
  re-partition (a replica died, the mix drifted), so its first requests find their experts.
"""


import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.config import RequestRouterConfig

from coserve_jax.api import RequestFailed
from coserve_jax.coe.graph import UnknownComponentError
from coserve_jax.serve import board
from coserve_jax.serve.decode import BadRequest, check_image, decode_image
from coserve_jax.serve.replica_engine import LOAD_BUCKETS_S, ReplicaEngine
from coserve_jax.serve.router import CoERequestRouter, graph_to_dict

log = logging.getLogger("coserve_jax.serve")

REPLICA_DIED = (ActorDiedError, ActorUnavailableError, RayActorError)


class Replica:
    """One engine replica (deployment body; ``build_app`` wraps it with ``serve.deployment``)."""

    def __init__(self, cfg: Mapping[str, Any], arm: str, request_timeout_s: float = 60.0):
        from omegaconf import OmegaConf

        self.engine = ReplicaEngine.from_config(OmegaConf.create(dict(cfg)), arm=arm)
        self.graph = self.engine.model.graph
        self.timeout_s = request_timeout_s
        self.pending = 0
        self.completed = 0
        self.failed = 0
        self.engine.warm_up()

    async def infer(self, component_type: str, image: np.ndarray) -> dict[str, Any]:
        """One image; a dict with the verdict, or ``{"error", "status"}`` (never raises for a
        request's own failure, so the ingress tells a bad request from a dead replica)."""
        try:
            expert = self.graph.preliminary(component_type)
            image = check_image(image, tuple(self.graph.experts[expert].input_shape))
        except UnknownComponentError as e:
            return {"error": str(e), "status": 404}
        except BadRequest as e:
            return {"error": e.reason, "status": e.status}
        self.pending += 1
        try:
            fut = self.engine.submit(image, component_type)
            out = await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout_s)
            self.completed += 1
            return {**out, "replica": serve.get_replica_context().replica_id.unique_id}
        except RequestFailed as e:
            self.failed += 1
            bad = str(e).startswith("bad input")
            return {"error": str(e), "status": 422 if bad else 500}
        except TimeoutError:
            self.failed += 1
            return {"error": f"not served within {self.timeout_s} s", "status": 504}
        finally:
            self.pending -= 1

    async def preload(self, experts: list[str], target_replica: str | None = None) -> int:
        """Load these experts (its working set in the router's partition; ``target_replica``
        is for the router): the engine starts what fits without evicting them."""
        unknown = [e for e in experts if e not in self.graph.experts]
        if unknown:
            raise ValueError(f"preload: unknown experts {unknown[:5]}")
        self.engine.preload(experts)
        return len(experts)

    def record_routing_stats(self) -> dict[str, Any]:
        return {**self.engine.stats(), "pending": self.pending, "completed": self.completed,
                "failed": self.failed, "pid": os.getpid()}

    def check_health(self) -> None:
        if not self.engine.healthy():
            raise RuntimeError("engine loop stopped")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # shutting down
            self.engine.close(timeout_s=5.0)


class _ReplicaCollector:
    """Per-replica gauges and counters from the replicas' last routing stats."""

    def collect(self):
        stats = board.replica_stats()
        q = GaugeMetricFamily("coserve_replica_queue_depth", "Requests pending on the replica", labels=["replica"])
        pool = GaugeMetricFamily("coserve_replica_pool_bytes", "Bytes used in the replica's pools",
                                 labels=["replica", "pool"])
        budget = GaugeMetricFamily("coserve_replica_pool_budget_bytes", "Budget of the replica's pools",
                                   labels=["replica", "pool"])
        experts = GaugeMetricFamily("coserve_replica_experts", "Experts resident or loading", labels=["replica"])
        sw = CounterMetricFamily("coserve_replica_switches", "Expert loads into the replica's pools",
                                 labels=["replica"])
        done = CounterMetricFamily("coserve_replica_requests", "Requests the replica finished",
                                   labels=["replica", "outcome"])
        hist = HistogramMetricFamily("coserve_replica_load_seconds", "Seconds per expert load", labels=["replica"])
        for rid, s in sorted(stats.items()):
            q.add_metric([rid], s.get("pending", 0))
            experts.add_metric([rid], len(s.get("held", ())))
            for p, b in s.get("pool_bytes", {}).items():
                pool.add_metric([rid, p], b)
            for p, b in s.get("pool_budget_bytes", {}).items():
                budget.add_metric([rid, p], b)
            sw.add_metric([rid], s.get("switches", 0))
            done.add_metric([rid, "completed"], s.get("completed", 0))
            done.add_metric([rid, "failed"], s.get("failed", 0))
            lb = s.get("load_buckets")
            if lb:
                buckets = [(str(le), n) for le, n in zip(LOAD_BUCKETS_S, lb["counts"])] + [("+Inf", lb["count"])]
                hist.add_metric([rid], buckets, lb["sum"])
        yield from (q, pool, budget, experts, sw, done, hist)


app = FastAPI(title="coserve_jax")


@serve.ingress(app)
class Ingress:
    """HTTP front door (deployment body; ``build_app`` wraps it)."""

    def __init__(self, replicas: Any, settings: Mapping[str, Any]):
        self.replicas = replicas
        self.max_body = int(settings["max_body_bytes"])
        self.timeout_s = float(settings["request_timeout_s"])
        self.retries = int(settings["retries"])
        self.types = dict(settings["types"])  # component type -> input shape
        self.registry = CollectorRegistry()
        self.requests = Counter("coserve_requests", "HTTP inference requests by status", ["status"],
                                registry=self.registry)
        self.failures = Counter("coserve_failures", "Requests that did not get a verdict, by reason", ["reason"],
                                registry=self.registry)
        self.retried = Counter("coserve_retries", "Requests sent again after their replica died",
                               registry=self.registry)
        self.latency = Histogram("coserve_request_latency_seconds", "End-to-end latency of answered requests",
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.registry.register(_ReplicaCollector())
        self.preload = bool(settings.get("preload", True))
        self.preload_period_s = float(settings.get("preload_period_s", 1.0))
        self._sent: dict[str, tuple[str, ...]] = {}  # working set last sent to each replica
        self._preloader: asyncio.Task | None = None
        with contextlib.suppress(RuntimeError):  # no running loop here: the first request starts it
            self._start_preloader()

    def _start_preloader(self) -> None:
        if self.preload and self._preloader is None:
            self._preloader = asyncio.get_running_loop().create_task(self._preload_loop())

    async def _preload_loop(self) -> None:
        """Send each replica its working set whenever the router's partition gives it a new one
        (at the start, after a replica died or the mix drifted). Ray creates the handle's router
        on first use, so until one has seen the replicas an empty preload goes to any replica."""
        while True:
            try:
                if not board.router_started():
                    await asyncio.wait_for(self.replicas.preload.remote(experts=[], target_replica=None), 30.0)
                for rid, experts in board.plans().items():
                    if self._sent.get(rid) != experts:
                        await asyncio.wait_for(self.replicas.preload.remote(experts=list(experts), target_replica=rid),
                                               30.0)
                        self._sent[rid] = experts
                        log.info("replica %s: preloading its working set of %d experts", rid, len(experts))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a dead or busy replica: try again next period
                log.warning("preload: %s: %s", type(e).__name__, e)
            await asyncio.sleep(self.preload_period_s)

    def _reply(self, status: int, body: dict[str, Any], reason: str | None = None) -> JSONResponse:
        self.requests.labels(str(status)).inc()
        if status != 200:
            self.failures.labels(reason or str(status)).inc()
        return JSONResponse(body, status_code=status)

    @app.post("/v1/infer")
    async def infer(self, request: Request, component_type: str | None = None) -> JSONResponse:
        t0 = time.perf_counter()
        self._start_preloader()
        try:
            if not component_type:
                raise BadRequest(400, "missing query parameter component_type")
            if component_type not in self.types:
                raise BadRequest(404, f"unknown component type {component_type!r}; GET /v1/types lists "
                                      f"the {len(self.types)} known types")
            body = bytearray()
            size = 0
            async for chunk in request.stream():
                # Past the limit the rest is read and dropped (up to 8x the limit), so the client,
                # still sending, gets the 413 rather than a reset connection.
                size += len(chunk)
                if size <= self.max_body:
                    body += chunk
                elif size > 8 * self.max_body:
                    break
            if size > self.max_body:
                raise BadRequest(413, f"body of {size}+ bytes exceeds the limit of {self.max_body} bytes")
            image = check_image(decode_image(bytes(body), request.headers.get("content-type")),
                                tuple(self.types[component_type]))
        except BadRequest as e:
            return self._reply(e.status, {"error": e.reason}, reason="bad_request")
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried.inc()
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))  # let Ray drop the dead replica
            try:
                left = self.timeout_s - (time.perf_counter() - t0)
                if left <= 0:
                    break
                out = await asyncio.wait_for(self.replicas.infer.remote(component_type=component_type,
                                                                         image=image), left)
            except REPLICA_DIED as e:
                last = f"replica died: {type(e).__name__}"
                log.warning("request for %s: %s (attempt %d)", component_type, last, attempt + 1)
                continue
            except TimeoutError:
                return self._reply(504, {"error": f"not answered within {self.timeout_s} s"}, reason="timeout")
            if "error" in out:
                status = int(out.get("status", 500))
                return self._reply(status, {"error": out["error"]},
                                   reason="bad_request" if status < 500 else "engine")
            self.latency.observe(time.perf_counter() - t0)
            return self._reply(200, {"verdict": out["verdict"], "experts": out["experts"],
                                     "latency_s": out["latency_s"], "replica": out.get("replica")})
        return self._reply(503, {"error": f"no replica could serve it after {self.retries + 1} attempts ({last})"},
                           reason="replica_died")

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """The running replicas; for each: requests pending, experts held, the bytes its pools
        use and hold for experts, and with a partitioning router its working set (hottest
        first) and the part of it the replica holds."""
        stats, plans = board.replica_stats(), board.plans()
        detail = {}
        for rid, s in sorted(stats.items()):
            held = set(s.get("held", ()))
            detail[rid] = {"pending": s.get("pending", 0), "experts": len(held),
                           "expert_bytes_used": sum(s.get("pool_bytes", {}).values()),
                           "expert_bytes": s.get("expert_bytes", 0)}
            if rid in plans:
                detail[rid].update(working_set=list(plans[rid]), working_set_held=sorted(held.intersection(plans[rid])))
        return JSONResponse({"status": "ok", "replicas": len(stats), "detail": detail})

    @app.get("/v1/types")
    async def types(self) -> JSONResponse:
        return JSONResponse({"types": {t: list(s) for t, s in self.types.items()}})

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")


def build_app(cfg: Mapping[str, Any], serve_cfg: Any, graph: Any) -> Any:
    """The bound application: ``serve_cfg.replicas`` replicas of ``serve_cfg.arm`` on ``cfg``
    (a resolved run config dict) behind ``serve_cfg.router`` and the HTTP ingress."""
    router = RequestRouterConfig(
        request_router_class=CoERequestRouter,
        request_router_kwargs={"policy": dict(serve_cfg.router.policy), "graph": graph_to_dict(graph)},
        request_routing_stats_period_s=serve_cfg.routing_stats_period_s,
        request_routing_stats_timeout_s=max(1.0, 4 * serve_cfg.routing_stats_period_s),
    )
    replica = serve.deployment(
        Replica, name="Replica", num_replicas=serve_cfg.replicas, max_ongoing_requests=256,
        ray_actor_options={"num_cpus": serve_cfg.replica_num_cpus},
        request_router_config=router, health_check_period_s=2.0, health_check_timeout_s=30.0,
    ).bind(dict(cfg), serve_cfg.arm, serve_cfg.request_timeout_s)
    types = {t: list(graph.experts[c.classifier].input_shape) for t, c in graph.components.items()}
    settings = {"max_body_bytes": serve_cfg.max_body_bytes, "request_timeout_s": serve_cfg.request_timeout_s,
                "retries": serve_cfg.retries, "types": types, "preload": serve_cfg.preload,
                "preload_period_s": max(0.5, 2 * serve_cfg.routing_stats_period_s)}
    ingress = serve.deployment(Ingress, name="Ingress", num_replicas=1, max_ongoing_requests=1024,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(replica, settings)
