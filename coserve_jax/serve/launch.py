"""Start the Ray Serve application from a composed config (the CLI and the tests).

    server = start(["model=pcb_tiny", "hardware.device_budget=75%", "serve.replicas=2"])
    ... POST f"{server.url}/v1/infer?component_type=..." ...
    server.shutdown()
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from coserve_jax.api import Engine
from coserve_jax.config import ConfigError, compose
from coserve_jax.config.serve import ServeConfig, parse_serve
from coserve_jax.serve.app import build_app

log = logging.getLogger("coserve_jax.serve")


@dataclasses.dataclass
class Server:
    url: str
    serve_cfg: ServeConfig
    graph: Any
    started_ray: bool

    def shutdown(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        if self.started_ray:
            ray.shutdown()


def replica_config(cfg: DictConfig, serve_cfg: ServeConfig) -> dict[str, Any]:
    """The resolved run config every replica builds its engine from: the real backend, only
    the replicas' arm, ``serve.replica.overrides`` applied, and no profile drift check (the
    driver checked the profile once; replicas checking it at once on shared cores would see
    each other as drift)."""
    node = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.set_struct(node, False)
    extra = [*serve_cfg.replica_overrides, "profiler.max_drift=null"]
    node = OmegaConf.merge(node, OmegaConf.from_dotlist(extra))
    node.arms = [serve_cfg.arm]
    raw = OmegaConf.to_container(node, resolve=True)
    if raw["backend"]["name"] != "real":
        raise ConfigError("backend.name: python -m coserve_jax.serve serves the real engine (backend=real)")
    return raw


def prepare(raw: dict[str, Any], arm: str) -> Any:
    """Build or load the zoo and this machine's profile once, before replicas start (each
    replica would otherwise race to build and measure them); returns the CoE graph."""
    check = dict(raw, profiler=dict(raw["profiler"], max_drift=0.25))
    with Engine.from_config(OmegaConf.create(check), arm=arm) as engine:
        return engine.model.graph


# Ray Serve's HTTP proxy must answer its first ready check within 5 s and each health check
# within 10 s (its defaults), or its controller kills it. On a busy 2-core machine (two busy
# processes beside the tests) the proxy took longer to start, the controller killed it, and
# ``serve.start``, waiting on that first proxy, failed with ActorDiedError. Ray reads these
# from the environment of the processes a local Ray starts.
PROXY_TIMEOUT_ENV = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S")


@contextlib.contextmanager
def _proxy_timeouts(seconds: float, local: bool) -> Iterator[None]:
    """While a local Ray starts: its Serve proxy's ready and health checks get ``seconds``
    (where the environment does not set them already). Joining a cluster changes nothing: its
    processes run with their own environment."""
    if not local:
        yield
        return
    saved = {k: os.environ.get(k) for k in PROXY_TIMEOUT_ENV}
    for k, v in saved.items():
        if v is None:
            os.environ[k] = str(float(seconds))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _start_serve(serve_cfg: ServeConfig, deadline_s: float) -> None:
    """``serve.start``, again while its first HTTP proxy was replaced before it was ready (its
    controller restarts a proxy that failed its checks; ``serve.start`` only waits on the first)."""
    from ray import serve
    from ray.exceptions import ActorDiedError, GetTimeoutError

    while True:
        try:
            serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
            return
        except (ActorDiedError, GetTimeoutError, TimeoutError) as e:
            if time.time() >= deadline_s:
                raise
            log.warning("Ray Serve's HTTP proxy did not start (%s); waiting for its replacement",
                        type(e).__name__)
            time.sleep(1.0)


def _wait_for_http(url: str, deadline_s: float) -> None:
    """Until ``url`` answers 200 (the app is deployed, but a replaced proxy may still be starting)."""
    last = "no answer"
    while time.time() < deadline_s:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except OSError as e:  # urllib's URLError and HTTPError are OSErrors
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.5)
    raise TimeoutError(f"serve: {url} did not answer within the start-up wait ({last})")


def start(cfg: DictConfig | Sequence[str], wait_s: float = 300.0) -> Server:
    """Start Ray (or join ``serve.ray.address``), deploy the app and wait until it serves."""
    import ray
    from ray import serve

    cfg = cfg if isinstance(cfg, DictConfig) else compose(list(cfg))
    serve_cfg = parse_serve(OmegaConf.to_container(cfg.serve, resolve=True))
    raw = replica_config(cfg, serve_cfg)
    graph = prepare(raw, serve_cfg.arm)
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if serve_cfg.ray_address:
            kw["address"] = serve_cfg.ray_address
        elif serve_cfg.ray_num_cpus is not None:
            kw["num_cpus"] = serve_cfg.ray_num_cpus
        with _proxy_timeouts(serve_cfg.ray_startup_timeout_s, local=not serve_cfg.ray_address):
            ray.init(**kw)
        started = True
    t0 = time.time()
    _start_serve(serve_cfg, deadline_s=t0 + wait_s)
    serve.run(build_app(raw, serve_cfg, graph), name="coserve", route_prefix="/", blocking=False)
    url = f"http://{serve_cfg.host}:{serve_cfg.port}"
    local = "127.0.0.1" if serve_cfg.host in ("0.0.0.0", "::", "") else serve_cfg.host  # all interfaces: ask loopback
    _wait_for_http(f"http://{local}:{serve_cfg.port}/healthz", deadline_s=t0 + wait_s)
    log.info("coserve_jax serving on %s (%d replicas of %s, router %s) after %.1f s", url, serve_cfg.replicas,
             serve_cfg.arm, serve_cfg.router.name, time.time() - t0)
    return Server(url, serve_cfg, graph, started)
