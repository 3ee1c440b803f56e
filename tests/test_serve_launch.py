"""Starting Ray Serve on a busy machine (``serve/launch.py``), without starting Ray: the proxy's
check timeouts for a local Ray, and ``serve.start`` tried again while its first proxy was replaced."""

from __future__ import annotations

import os

import pytest

from coserve_jax.config import ConfigError, compose
from coserve_jax.config.serve import parse_serve

pytest.importorskip("ray.serve")

from omegaconf import OmegaConf  # noqa: E402
from ray.exceptions import ActorDiedError  # noqa: E402

from coserve_jax.serve import launch  # noqa: E402


def _serve_cfg(*overrides: str):
    return parse_serve(OmegaConf.to_container(compose(list(overrides)).serve, resolve=True))


def test_startup_timeout_is_validated_by_name():
    assert _serve_cfg().ray_startup_timeout_s == 30.0
    assert _serve_cfg("serve.ray.startup_timeout_s=90").ray_startup_timeout_s == 90.0
    with pytest.raises(ConfigError, match="serve.ray.startup_timeout_s"):
        _serve_cfg("serve.ray.startup_timeout_s=0")


def test_proxy_timeouts_apply_while_a_local_ray_starts_and_leave_the_users_own(monkeypatch):
    ready, health = launch.PROXY_TIMEOUT_ENV
    monkeypatch.delenv(ready, raising=False)
    monkeypatch.setenv(health, "7")
    with launch._proxy_timeouts(45.0, local=True):
        assert os.environ[ready] == "45.0"
        assert os.environ[health] == "7"  # set by the user: kept
    assert ready not in os.environ and os.environ[health] == "7"
    with launch._proxy_timeouts(45.0, local=False):  # joining a cluster: its own environment
        assert ready not in os.environ


def test_serve_start_is_tried_again_while_its_proxy_is_replaced(monkeypatch):
    from ray import serve

    calls = []

    def flaky_start(**kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise ActorDiedError()

    monkeypatch.setattr(serve, "start", flaky_start)
    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    cfg = _serve_cfg("serve.http.port=8123")
    launch._start_serve(cfg, deadline_s=launch.time.time() + 60)
    assert len(calls) == 3 and calls[-1]["http_options"]["port"] == 8123

    calls.clear()
    with pytest.raises(ActorDiedError):  # past the deadline the error stands
        launch._start_serve(cfg, deadline_s=launch.time.time() - 1)
    assert len(calls) == 1
