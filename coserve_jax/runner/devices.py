"""JAX's CPU device count, set from ``hardware.cpu_devices`` before JAX starts its backends."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def configure_jax_devices(cpu_devices: int) -> None:
    """Ask XLA for ``cpu_devices`` host devices (the CPU executors' devices).

    Importing JAX does not start its backends; its first operation does. Until then JAX takes
    ``jax_num_cpu_devices`` (asking ``jax.devices()`` first would start the backends with one
    CPU device). A count already in ``XLA_FLAGS`` (a user's shell, the test session) wins.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        if jax.config.jax_num_cpu_devices < cpu_devices:
            jax.config.update("jax_num_cpu_devices", cpu_devices)
    except RuntimeError:  # JAX already started its backends: the count stays as it is
        if len(jax.devices("cpu")) < cpu_devices:
            log.warning("JAX is already initialised with %d CPU devices; wanted %d",
                        len(jax.devices("cpu")), cpu_devices)
