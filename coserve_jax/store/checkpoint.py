"""One expert = one Orbax checkpoint (no pickle): save, and restore to host or to a device.

Format 3: the expert's state leaves (in ``jax.tree.leaves`` order of its pure dict) are packed
into one flat vector per dtype (``flat_float32``), saved uncompressed by a synchronous
``Checkpointer(PyTreeCheckpointHandler(use_ocdbt=True, use_compression=False))`` (a save returns
when the bytes are on disk, so the zoo builder can rename its directory right after), plus one
small int64 ``header``: the format, each leaf's size (to check the layout) and each vector's
``checksum`` (so corrupted weights fail loudly). Orbax's restore cost is per leaf (~0.9 ms each
here) and a YOLO expert has ~290 leaves, so packing is what makes restores fast.

Reads go through ``store.orbax_read`` (Orbax's ``NumpyHandler``, files memory-mapped, vectors
written straight into numpy buffers, no ``PyTreeCheckpointHandler`` per read). Measured on this
machine (2 shared CPU cores, warm page cache, orbax 0.12.8; ``python scripts/bench_load.py``, 7
interleaved rounds, median; raw: every file of the checkpoint read into a new buffer):

| expert | leaves | raw read | format 2 (zstd, PyTree restore, CRC-32) | format 3 (this module) |
| --- | --- | --- | --- | --- |
| yolo_tiny, 1.8 MB | 291 | 1.2 ms | 14 ms (9% of raw) | 3.7-4.1 ms (32-36%) |
| YOLOv5 d0.33 w0.4, 19.4 MB | 291 | 4.5 ms | 69-73 ms (6%) | 9.0-9.6 ms (50-53%) |
| ResNet-101, 178.6 MB | 522 | 132 ms | 1,079-1,121 ms (13-15%) | 65-73 ms (181-205%) |

What each step bought (``scripts/ablate_load.py``, ``experiments/load_path``): no compression
(zstd decoded at ~0.25 GB/s), memory-mapped files written straight into a numpy buffer (one
copy, huge pages, where ``TensorStore.read()`` copies into a buffer faulted in 4 KiB pages), the
type handler driven directly (``PyTreeCheckpointHandler.restore`` costs ~9 ms per call whatever
the size), and the block-sum checksum (~9 GB/s; a CRC-32 ran at ~2.2 GB/s). Without any check
the 20 MB read would be 67-72% of raw: the checksum's one pass over the vector costs ~2 ms.
Restore to a device moves the packed vector with one explicit ``jax.device_put`` onto a
``SingleDeviceSharding`` and unpacks it there with one jitted call (cached per layout):
per-leaf ``ArrayRestoreArgs`` cost +35 to +140 ms.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from coserve_jax.store.orbax_read import read_arrays


FORMAT = 3  # 3: uncompressed vectors + an int64 header. 2: zstd, leaf_sizes + whole-vector crc32 arrays
HEADER = "header"  # int64: FORMAT, each leaf's size, each vector's checksum (in key order)
_BLOCK_BYTES = 4096  # checksum block


class CheckpointError(RuntimeError):
    """An expert's checkpoint is missing or unreadable; the message names expert, path and reason."""


def _checkpointer() -> ocp.Checkpointer:
    # No compression: weights barely compress (a ResNet-101 by 8% with zstd), and decompressing
    # ran at ~0.25 GB/s, the slowest step of a restore.
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_compression=False))


def _pure(state: Any) -> Any:
    """nnx.State -> nested dict of arrays; other pytrees pass through."""
    if isinstance(state, nnx.State):
        return nnx.to_pure_dict(state)
    return state


def _dtype_key(dtype: Any) -> str:
    return f"flat_{np.dtype(dtype).name}"


def save_expert(path: str | os.PathLike, state: Any) -> None:
    """Save one expert's state (an ``nnx.State`` or a pytree of arrays) to a new directory ``path``."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(_pure(state))]
    keys = sorted({_dtype_key(x.dtype) for x in leaves})
    flats = {key: np.concatenate([x.ravel() for x in leaves if _dtype_key(x.dtype) == key]) for key in keys}
    save_packed(path, flats, [x.size for x in leaves])


def save_packed(path: str | os.PathLike, flats: dict[str, np.ndarray], leaf_sizes: list[int]) -> None:
    """Save already packed vectors (``flat_<dtype>`` -> 1-D array, leaves in ``leaf_layout``
    order) with the header (format, leaf sizes, checksums): what ``save_expert`` writes, without
    packing a pytree first (the synthetic zoo draws its weights straight into the vectors)."""
    keys = sorted(flats)
    packed: dict[str, Any] = dict(flats)
    packed[HEADER] = np.array([FORMAT, *leaf_sizes, *(checksum(flats[k]) for k in keys)], np.int64)
    _checkpointer().save(Path(path).absolute(), args=ocp.args.PyTreeSave(packed))


def restore_expert(path: str | os.PathLike, abstract_state: Any, *, device: jax.Device | None = None,
                   expert_id: str | None = None, reader: Callable[..., dict] | None = None) -> Any:
    """Restore the checkpoint at ``path`` into the structure of ``abstract_state``.

    ``abstract_state``: an ``nnx.State`` (e.g. from ``models.abstract_state``) or a pytree of
    arrays / ``jax.ShapeDtypeStruct``. Returns the same kind of object holding numpy arrays
    (``device`` None: host memory) or ``jax.Array``s committed to ``device``.
    ``reader``: what reads and checks the packed vectors (``read_packed``'s signature), e.g. a
    ``store.reader.ProcessReader``; None reads in this thread.
    Raises ``CheckpointError`` when the checkpoint is missing, unreadable or of another layout.
    """
    specs = leaf_specs(abstract_state)
    if device is not None:
        return leaves_to_state(abstract_state, unpack_onto(device, path, specs, expert_id, reader))
    return leaves_to_state(abstract_state, _unpack_host((reader or read_packed)(path, specs, expert_id), specs))


def unpack_onto(device: jax.Device, path: str | os.PathLike, specs: list | tuple, expert_id: str | None = None,
                reader: Any = None, *, lease: bool = True) -> list[jax.Array]:
    """Read an expert's checkpoint (``read_packed``, or ``reader``) and unpack it onto ``device``
    (``unpack_to_device``), waited for. A reader with a ``lease`` (``store.reader.ProcessReader``)
    lends its staging buffer for the copy instead of copying the vectors out of it first: on
    JAX's CPU devices the ``device_put`` of those read-only views aliases them, and the unpack
    writes new arrays, so the leaves never point into the buffer once this returns.
    ``lease=False`` copies them out first (the path before the lease; benchmarks compare them)."""
    lend = getattr(reader, "lease", None) if lease else None
    if lend is None:
        return jax.block_until_ready(unpack_to_device((reader or read_packed)(path, specs, expert_id), specs, device))
    with lend(path, specs, expert_id) as packed:
        return jax.block_until_ready(unpack_to_device(packed, specs, device))


def unpack_to_device(packed: dict[str, Any], specs: list | tuple, device: jax.Device) -> list[jax.Array]:
    """``read_packed``'s vectors -> the expert's leaves on ``device``: one explicit
    ``device_put`` per vector into the device's default memory, unpacked there by one jitted call
    (cached per layout). The vectors may be numpy or ``jax.Array``s in another memory, e.g. the
    host cache's ``pinned_host`` (``store/host_tier.py``)."""
    sharding = jax.sharding.SingleDeviceSharding(device, memory_kind=device.default_memory().kind)
    flats = {k: jax.device_put(v, sharding) for k, v in packed.items() if k.startswith("flat_")}
    return _unpacker(tuple(specs))(flats)


def leaves_to_state(abstract_state: Any, leaves: list) -> Any:
    """Leaves in packing order -> the structure of ``abstract_state`` (an ``nnx.State`` or a
    pytree). Also works on tracers: the serving forward calls it inside ``jit``, so weights
    travel as a flat list and the per-leaf Python of building a State is paid once, at trace."""
    tree = jax.tree.unflatten(jax.tree.structure(_pure(abstract_state)), leaves)
    if isinstance(abstract_state, nnx.State):
        state = jax.tree.map(lambda x: x, abstract_state)  # a copy: keep the caller's template intact
        nnx.replace_by_pure_dict(state, tree)
        return state
    return tree


def leaf_specs(abstract_state: Any) -> list[tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each leaf, in the order the checkpoint packs them."""
    return [(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves(_pure(abstract_state))]


class _Layout:
    """Where each leaf sits in the packed vectors, computed once per architecture: per leaf
    (vector key, offset, size, shape), the vector keys and lengths, and the leaf sizes. (Per
    read this cost ~4 ms of Python for a 291-leaf YOLO expert, a third of its read.)"""

    def __init__(self, specs: tuple):
        self.leaves: list[tuple[str, int, int, tuple[int, ...]]] = []
        self.lengths: dict[str, int] = {}
        for shape, dtype in specs:
            key, n = _dtype_key(dtype), int(np.prod(shape))
            off = self.lengths.get(key, 0)
            self.leaves.append((key, off, n, shape))
            self.lengths[key] = off + n
        self.keys = sorted(self.lengths)
        self.sizes = [n for _, _, n, _ in self.leaves]


@functools.lru_cache(maxsize=64)
def _layout(specs: tuple) -> _Layout:
    return _Layout(specs)


def leaf_layout(specs: list | tuple) -> tuple[dict[str, int], list[tuple[str, int, int, tuple[int, ...]]]]:
    """Where each leaf sits in the packed vectors: (vector key -> length, per leaf (key, offset,
    size, shape)), leaves in packing order."""
    layout = _layout(tuple(specs))
    return dict(layout.lengths), list(layout.leaves)


def packed_vectors(specs: list | tuple) -> list[tuple[str, np.dtype, int]]:
    """(key, dtype, length) of each packed vector ``read_packed`` returns for leaf ``specs``."""
    layout = _layout(tuple(specs))
    return [(key, np.dtype(key.removeprefix("flat_")), layout.lengths[key]) for key in layout.keys]


def read_packed(path: str | os.PathLike, specs: list[tuple[tuple[int, ...], np.dtype]],
                expert_id: str | None = None, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Read an expert's packed vectors from disk into host memory and check them against the
    leaf ``specs`` (format, shapes, leaf layout, checksums). No device is touched: a reader
    process runs this. ``out``: buffers to read vectors into (by key, e.g. ``flat_float32``)."""
    path = Path(path).absolute()
    who = expert_id or "<unnamed expert>"
    if not path.is_dir():
        raise CheckpointError(f"expert {who}: checkpoint {path} is missing (no such directory)")
    layout = _layout(tuple(specs))
    shapes = {HEADER: (1 + len(specs) + len(layout.keys),)}
    shapes.update({key: (layout.lengths[key],) for key in layout.keys})
    try:
        sums = _Checksums()
        packed = read_arrays(path, list(shapes), out, on_piece=sums)  # checked piece by piece as they land
    except Exception as e:  # Orbax/tensorstore raise many types; all mean "unreadable".
        if _older_format(path):
            raise CheckpointError(f"expert {who}: checkpoint {path} is of an older format (no {HEADER!r}; "
                                  f"this version reads format {FORMAT}): rebuild it") from e
        raise CheckpointError(
            f"expert {who}: checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}"
        ) from e
    _check(packed, shapes, layout, who, path, sums)
    return packed


def _older_format(path: Path) -> bool:
    """Whether the checkpoint's Orbax tree is an earlier layout's (format 2: ``leaf_sizes``, ``crc32``)."""
    try:
        keys = json.loads((path / "_METADATA").read_text())["tree_metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return "('leaf_sizes',)" in keys and f"('{HEADER}',)" not in keys


def _check(packed: dict, shapes: dict, layout: _Layout, who: str, path: Path, sums: _Checksums) -> None:
    for key, want in shapes.items():
        got = packed.get(key)
        if got is None or tuple(got.shape) != want:
            raise CheckpointError(
                f"expert {who}: checkpoint {path} array {key!r} has shape "
                f"{None if got is None else tuple(got.shape)}, expected {want} (another architecture?)"
            )
    header, n = packed[HEADER].tolist(), len(layout.sizes)
    if header[0] != FORMAT:
        raise CheckpointError(f"expert {who}: checkpoint {path} is of format {header[0]}, this version reads {FORMAT}")
    if header[1: 1 + n] != layout.sizes:
        raise CheckpointError(f"expert {who}: checkpoint {path} leaf layout differs from the architecture's")
    if header[1 + n:] != [sums.value(k, packed[k]) for k in layout.keys]:
        raise CheckpointError(f"expert {who}: checkpoint {path} is corrupt: weight checksum mismatch")


def checksum(vector: np.ndarray) -> int:
    """A packed vector's check value: the CRC-32 of its 4 KiB blocks' sums (as uint64 words,
    wrapping), then of its trailing partial block. It reads the vector once, without a copy, at
    ~9 GB/s here, where ``zlib.crc32`` runs at ~2.2 GB/s: a CRC-32 of a 20 MB expert took
    longer than reading its files. It catches any change within one 8-byte word (every single
    bit flip), zeroed, truncated or garbage data, and moved blocks (unless their sums are equal),
    but not words swapped within a block, nor changes whose sums cancel within a block.
    """
    flat = np.ascontiguousarray(vector).reshape(-1).view(np.uint8)
    n = len(flat) // _BLOCK_BYTES * _BLOCK_BYTES
    return zlib.crc32(flat[n:], zlib.crc32(_block_sums(flat[:n])))


def _block_sums(u8: np.ndarray) -> np.ndarray:
    """The uint64 sums (wrapping) of the whole 4 KiB blocks of a byte vector whose length is a
    multiple of the block."""
    return u8.view("<u8").reshape(-1, _BLOCK_BYTES // 8).sum(axis=1, dtype="<u8")


class _Checksums:
    """``checksum`` of vectors read in pieces, built as the pieces land (``read_arrays``'
    ``on_piece``, called on TensorStore's threads right after each piece's copy): each piece's
    blocks are summed by the thread that just copied it, while it is still in cache, and ``value``
    runs the CRC-32 over the pieces' sums in order (a CRC-32 of a concatenation is the CRC-32 of
    its parts, chained). Each piece must start on a block boundary; a vector whose pieces did not,
    or did not cover it, is summed whole by ``value``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[str, dict[int, np.ndarray]] = {}  # per vector: block sums by first byte
        self._bytes: dict[str, int] = {}  # bytes covered; -1: a piece off the block boundaries

    def __call__(self, key: str, vector: np.ndarray, lo: int, hi: int) -> None:
        if key == HEADER:
            return
        u8 = vector.reshape(-1).view(np.uint8)
        b0, b1 = lo * vector.itemsize, hi * vector.itemsize
        full = len(u8) // _BLOCK_BYTES * _BLOCK_BYTES
        ok = b0 % _BLOCK_BYTES == 0 and (b1 % _BLOCK_BYTES == 0 or b1 == len(u8))
        sums = _block_sums(u8[b0: max(b0, min(b1, full))]) if ok else None
        with self._lock:
            if sums is None or self._bytes.get(key, 0) < 0:
                self._bytes[key] = -1
                return
            self._sums.setdefault(key, {})[b0] = sums
            self._bytes[key] = self._bytes.get(key, 0) + (b1 - b0)

    def value(self, key: str, vector: np.ndarray) -> int:
        """The checksum of ``vector`` (read as ``key``): from its pieces if they covered it,
        else summed whole now."""
        if self._bytes.get(key) != vector.nbytes:
            return checksum(vector)
        crc = 0
        for _, part in sorted(self._sums[key].items()):
            crc = zlib.crc32(part, crc)
        u8 = vector.reshape(-1).view(np.uint8)
        return zlib.crc32(u8[len(u8) // _BLOCK_BYTES * _BLOCK_BYTES:], crc)


def _unpack_host(packed: dict, specs: list) -> list[np.ndarray]:
    # A copy per leaf, so callers may mutate one without aliasing the others.
    return [packed[key][off: off + n].reshape(shape).copy()
            for key, off, n, shape in _layout(tuple(specs)).leaves]


@functools.lru_cache(maxsize=64)
def _unpacker(specs: tuple):
    """Jitted flat vectors -> leaves, on the device the vectors live on (one dispatch)."""
    leaves = _layout(specs).leaves

    def unpack(flats: dict) -> list[jax.Array]:
        return [jnp.reshape(flats[key][off: off + n], shape) for key, off, n, shape in leaves]

    return jax.jit(unpack)
