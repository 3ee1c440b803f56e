"""``python -m coserve_jax.serve [overrides]``: serve the CoE over HTTP on Ray Serve.

Settings: the ``serve`` config group (replicas, router, arm, Ray address, HTTP host and port)
and the usual groups for each replica's model, hardware and budget. Stops on Ctrl-C.
"""

from __future__ import annotations

import logging
import sys
import time

import hydra
from omegaconf import DictConfig

from coserve_jax.config import ConfigError, register_schema
from coserve_jax.serve.launch import start

log = logging.getLogger("coserve_jax.serve")
register_schema()  # conf/config.yaml composes onto the typed schema (see run.py)


@hydra.main(config_path="../../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        server = start(cfg)
    except ConfigError as e:
        log.error("config error: %s", e)
        sys.exit(2)
    print(f"coserve_jax: serving on {server.url} (POST /v1/infer?component_type=..., GET /healthz, "
          f"GET /metrics); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
