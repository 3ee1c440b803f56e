"""Start the Ray Serve application from a composed config (the CLI and the tests).

    server = start(["model=pcb_tiny", "hardware.device_budget=75%", "serve.replicas=2"])
    ... POST f"{server.url}/v1/infer?component_type=..." ...
    server.shutdown()
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
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
        ray.init(**kw)
        started = True
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    t0 = time.time()
    serve.run(build_app(raw, serve_cfg, graph), name="coserve", route_prefix="/", blocking=False)
    url = f"http://{serve_cfg.host}:{serve_cfg.port}"
    log.info("coserve_jax serving on %s (%d replicas of %s, router %s) after %.1f s", url, serve_cfg.replicas,
             serve_cfg.arm, serve_cfg.router.name, time.time() - t0)
    return Server(url, serve_cfg, graph, started)
