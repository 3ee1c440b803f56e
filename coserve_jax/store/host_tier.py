"""The host tier: how the host cache keeps an expert between disk and a device (DESIGN §12).

An expert's checkpoint holds its leaves packed into one flat vector per dtype
(``store/checkpoint.py``). The host cache keeps those vectors, in one of two ways:

- ``pinned_host``: ``jax.Array``s in the ``pinned_host`` memory of the device the expert was
  first loaded for (page-locked host RAM a GPU copies from by DMA). A switch from the cache is
  one explicit ``jax.device_put`` per vector into the target device's default (``device``)
  memory, then the unpack into leaves runs on the device (``unpack_to_device``). The copy is
  asynchronous: the load thread only waits for it to finish, while the executors' threads keep
  running batches, so on a GPU the host->device DMA overlaps compute.
- ``numpy``: plain numpy vectors, for platforms without a host memory kind; a switch copies them
  the same way (``unpack_to_device``), from pageable memory.

``backend.host_tier``: ``auto`` (``pinned_host`` where the device has that memory kind, else
``numpy``), ``pinned_host`` (an error where it is missing) or ``numpy``. JAX's CPU devices have
``device``, ``pinned_host`` and ``unpinned_host`` memories, so tests cover both paths on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from coserve_jax.store.checkpoint import unpack_to_device

PINNED = "pinned_host"
NUMPY = "numpy"
MODES = ("auto", PINNED, NUMPY)


def memory_kinds(device: jax.Device) -> set[str]:
    """The memory kinds ``device`` can address (empty when the platform does not say)."""
    try:
        return {m.kind for m in device.addressable_memories()}
    except Exception:  # noqa: BLE001 - older or exotic platforms: no memories API
        return set()


def resolve_tier(mode: str, device: jax.Device) -> str:
    """The tier ``mode`` gives for experts loaded for ``device``."""
    if mode not in MODES:
        raise ValueError(f"backend.host_tier: must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == NUMPY:
        return NUMPY
    if PINNED in memory_kinds(device):
        return PINNED
    if mode == PINNED:
        raise RuntimeError(f"backend.host_tier: pinned_host was asked for, but device {device} has memory "
                           f"kinds {sorted(memory_kinds(device))}; use auto or numpy")
    return NUMPY


@dataclasses.dataclass(frozen=True)
class HostCopy:
    """One expert in the host cache: its packed vectors and where they are."""

    tier: str  # PINNED or NUMPY
    flats: Mapping[str, Any]  # flat_<dtype> -> np.ndarray (numpy) or jax.Array in pinned_host
    device: jax.Device | None  # whose pinned_host memory holds them (None: numpy)

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.flats.values()))


def to_host(packed: Mapping[str, np.ndarray], tier: str, device: jax.Device | None) -> HostCopy:
    """``read_packed``'s vectors -> a host-cache entry (an explicit copy into pinned memory)."""
    flats = {k: v for k, v in packed.items() if k.startswith("flat_")}
    if tier == NUMPY:
        return HostCopy(NUMPY, flats, None)
    sharding = jax.sharding.SingleDeviceSharding(device, memory_kind=PINNED)
    pinned = {k: jax.device_put(v, sharding) for k, v in flats.items()}
    return HostCopy(PINNED, jax.block_until_ready(pinned), device)


def to_device(copy: HostCopy, specs: Sequence[tuple], device: jax.Device) -> list[jax.Array]:
    """A host-cache entry -> the expert's leaves on ``device``: one device_put per vector into
    the device's memory (dispatched asynchronously), unpacked there; the caller waits."""
    return unpack_to_device(copy.flats, specs, device)
