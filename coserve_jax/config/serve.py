"""The typed ``serve`` config group: replicas, router, Ray and HTTP settings (no Ray import).

Validated at start-up like ``coserve_jax.config``: errors name the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from coserve_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class RouterEntry:
    name: str
    arm: str  # the arm_catalog entry every replica runs
    policy: Mapping[str, Any]  # _target_ + kwargs of a policies.router class


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    replicas: int
    router: RouterEntry
    arm: str  # what each replica runs (serve.arm, else the router's arm)
    routers: Mapping[str, RouterEntry]
    ray_address: str | None = None
    ray_num_cpus: float | None = None
    ray_startup_timeout_s: float = 30.0  # a local Ray's Serve proxy: ready and health checks
    replica_num_cpus: float = 0.5
    replica_overrides: tuple[str, ...] = ()
    routing_stats_period_s: float = 0.5
    preload: bool = True  # the ingress sends each replica its working set (partitioning routers)
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 8 << 20
    request_timeout_s: float = 60.0
    retries: int = 2

    def with_router(self, name: str) -> ServeConfig:
        if name not in self.routers:
            raise ConfigError(f"serve.router: unknown router {name!r}; one of {sorted(self.routers)}")
        r = self.routers[name]
        return dataclasses.replace(self, router=r, arm=r.arm)


def _num(node: Mapping[str, Any], key: str, field: str, kind: type = float, minimum: float = 0.0,
         allow_none: bool = False) -> Any:
    v = node.get(key)
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) \
            or v < minimum:
        raise ConfigError(f"{field}: must be a {'whole ' if kind is int else ''}number >= {minimum}, got {v!r}")
    return kind(v)


def parse_serve(raw: Mapping[str, Any] | None) -> ServeConfig:
    """The ``serve`` group of a composed config (a plain dict) as a ServeConfig."""
    if not raw:
        raise ConfigError("serve: missing config group (conf/serve/default.yaml)")
    routers: dict[str, RouterEntry] = {}
    for name, node in dict(raw.get("routers") or {}).items():
        f = f"serve.routers.{name}"
        if not isinstance(node, Mapping) or not isinstance(node.get("arm"), str):
            raise ConfigError(f"{f}: needs an arm (an arm_catalog entry) and a policy")
        pol = node.get("policy")
        if not isinstance(pol, Mapping) or "_target_" not in pol:
            raise ConfigError(f"{f}.policy: must be a mapping with a _target_ class path, got {pol!r}")
        routers[name] = RouterEntry(name, node["arm"], dict(pol))
    name = raw.get("router")
    if name not in routers:
        raise ConfigError(f"serve.router: unknown router {name!r}; one of {sorted(routers)}")
    ray = dict(raw.get("ray") or {})
    rep = dict(raw.get("replica") or {})
    http = dict(raw.get("http") or {})
    overrides = rep.get("overrides") or []
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"serve.replica.overrides: must be a list of Hydra overrides, got {overrides!r}")
    host = http.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"serve.http.host: must be a host name or address, got {host!r}")
    arm = raw.get("arm") or routers[name].arm
    preload = rep.get("preload", True)
    if not isinstance(preload, bool):
        raise ConfigError(f"serve.replica.preload: must be true or false, got {preload!r}")
    return ServeConfig(
        replicas=_num(raw, "replicas", "serve.replicas", int, 1),
        router=routers[name], arm=arm, routers=routers,
        ray_address=ray.get("address"),
        ray_num_cpus=_num(ray, "num_cpus", "serve.ray.num_cpus", float, 0.0, allow_none=True),
        ray_startup_timeout_s=_num(ray, "startup_timeout_s", "serve.ray.startup_timeout_s", float, 1.0),
        replica_num_cpus=_num(rep, "num_cpus", "serve.replica.num_cpus", float, 0.0),
        replica_overrides=tuple(overrides),
        routing_stats_period_s=_num(rep, "routing_stats_period_s", "serve.replica.routing_stats_period_s",
                                    float, 0.01),
        preload=preload,
        host=host,
        port=_num(http, "port", "serve.http.port", int, 0),
        max_body_bytes=_num(http, "max_body_bytes", "serve.http.max_body_bytes", int, 1),
        request_timeout_s=_num(http, "request_timeout_s", "serve.http.request_timeout_s", float, 0.001),
        retries=_num(http, "retries", "serve.http.retries", int, 0),
    )
