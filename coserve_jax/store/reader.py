"""Checkpoint reads in separate processes, so a busy Python thread cannot stall them.

An Orbax restore hands work between Python threads (asyncio, tensorstore callbacks) many times,
and each hand-off needs the GIL. Beside a thread that keeps the GIL busy — the engine's loop
taking in a burst of arrivals — every hand-off waits up to a switch interval (5 ms): in a real
coserve run (demo, 2,000 requests every 0.1 ms) a 9 ms restore in a loader thread took 100-220 ms
while the loop took in the burst. In a reader process only the last steps (receive the vectors,
copy them to the device, unpack) run under this process's GIL. Measured on this 2-core machine,
``python scripts/bench_reader.py`` (0.42 MB expert onto a CPU device):

| read path | alone | beside a thread that never yields | serving coserve: s per load, img/s |
| --- | --- | --- | --- |
| Orbax restore in a loader thread | 8.4 ms | 124 ms (max 186) | 11.8 ms, 2,086 img/s |
| reader process, vectors sent back over a pipe | 5.6 ms | 65 ms (max 91) | 10.0 ms, 2,186 img/s |

(Measured 2026-11-29 with the flat-leaves engine and checkpoint format 2: 10 reads per cell;
serving figures are medians of 3 interleaved runs. The never-yielding thread is a worst case:
the device copy and unpack still wait for it.) With format 3 (``store.orbax_read`` blocks on
TensorStore instead of handing work between asyncio and TensorStore threads) two runs of the
same script on this machine, busier now (load average 3-5), gave: loader thread 7.1 / 20.1 ms
alone, 35 / 39 ms beside the busy thread; reader process 10.5 / 9.2 ms and 37 / 24 ms; serving
12.2 / 8.3 ms per load and 1,042 / 1,174 img/s with loader threads, 10.1 / 12.3 ms and
1,034 / 910 img/s with reader processes: no longer a clear difference.

So the real backend reads through a ``ProcessReader`` by default: ``processes`` spawned workers, each
running ``read_packed`` (Orbax read + layout and checksum checks, host memory only) into a
staging buffer it shares with this process (a memfd, grown when an expert needs more, its
descriptor passed once; it stays as large as the largest expert that worker has read, outside
the host budget). A load into a device pool leases the buffer (``lease``): the loader thread
copies the vectors from it onto the device and unpacks them there, waits, and only then frees
the buffer for the worker's next read (``store.checkpoint.unpack_onto``). A load into the host
cache copies them out of it instead (``__call__``): the cache keeps them, and a ``device_put``
of the read-only buffer into ``pinned_host`` memory aliases it on JAX's CPU devices even with
``may_alias=False`` (measured, jax 0.10.2). Pickling the vectors back through the pipe instead
took 904 ms for a 170 MB ResNet-101 and 102 ms for a 20 MB YOLO; the shared buffer, 102 and
15 ms (the same read in this process: 59-93 and 11 ms; ``scripts/bench_load.py``, 5
interleaved rounds each, ``experiments/load_path``). Copying out, then onto the CPU device, then
unpacking took 329 ms for the 170 MB expert where the lease takes 86 ms (three copies, each into
freshly faulted pages, against one).
A worker that dies is replaced, and its read fails with a ``CheckpointError``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Connection, Pipe
from multiprocessing.reduction import recv_handle, send_handle

import jax
import numpy as np

from coserve_jax.store.checkpoint import HEADER, CheckpointError, packed_vectors, read_packed

_ALIGN = 4096  # each vector starts on a page of the staging buffer
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault every page in at once (Linux)


def _places(specs: list) -> tuple[list[tuple[str, np.dtype, int, int]], int]:
    """(key, dtype, length, offset) of each packed vector in a staging buffer, and its bytes."""
    places, end = [], 0
    for key, dtype, n in packed_vectors(specs):
        places.append((key, dtype, n, end))
        end += -(-n * dtype.itemsize // _ALIGN) * _ALIGN
    return places, end


def _serve(conn: Connection) -> None:
    """Worker process: read requests until None (or the pipe closes). Vectors go into a shared
    staging buffer, grown (and its descriptor sent to the caller) when an expert needs more."""
    jax.config.update("jax_platforms", "cpu")  # a reader never needs (or grabs) an accelerator
    staging: mmap.mmap | None = None
    layouts: dict[int, tuple[tuple, list, int]] = {}  # layout id -> (specs, places, bytes)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        path, layout, specs, expert_id = msg
        try:
            if specs is not None:  # a layout's first read here: its specs come with it
                layouts[layout] = (specs, *_places(specs))
            specs, places, size = layouts[layout]
            if staging is None or len(staging) < size:
                size = -(-size // (1 << 20)) << 20  # whole MiB
                fd = os.memfd_create("coserve-reader-staging", os.MFD_CLOEXEC)
                try:
                    os.ftruncate(fd, size)
                    # Not closed: the old map goes when its last view does (a failed read's
                    # traceback may hold one until the next garbage collection).
                    staging = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
                    conn.send(("staging", size))
                    send_handle(conn, fd, os.getppid())
                finally:
                    os.close(fd)
            out = {key: np.frombuffer(staging, dtype, n, off) for key, dtype, n, off in places}
            conn.send(("ok", read_packed(path, specs, expert_id, out=out)[HEADER]))
        except CheckpointError as e:
            conn.send(("error", str(e)))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
            conn.send(("error", f"expert {expert_id}: reading {path} failed: {type(e).__name__}: {e}"))


class _Worker:
    """One reader: ``python -m coserve_jax.store.reader FD``, talking over one end of a socket pair.

    Started as a plain subprocess rather than through ``multiprocessing``: its spawn and
    forkserver start methods re-import the parent's main module in the child, so a user's script
    without an ``if __name__ == "__main__":`` guard would die with multiprocessing's
    ``freeze_support()`` error (and fork is unsafe beside JAX's threads). Nothing of the
    parent's ``__main__`` is needed here.
    """

    def __init__(self) -> None:
        self.conn, child = Pipe()
        self.staging: mmap.mmap | None = None  # this side's map of the worker's staging buffer
        self.layouts: set[int] = set()  # layout ids whose specs this worker has been sent
        fd = child.fileno()
        self.proc = subprocess.Popen([sys.executable, "-m", "coserve_jax.store.reader", str(fd)],
                                     pass_fds=(fd,), stdin=subprocess.DEVNULL)
        child.close()

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def stop(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(OSError, ValueError):  # already closed or dead
            self.conn.send(None)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.conn.close()
        self.staging = None

    def receive(self) -> tuple[str, object]:
        """The worker's reply to a read, mapping its staging buffer anew when it grew."""
        msg = self.conn.recv()
        if msg[0] == "staging":
            fd = recv_handle(self.conn)
            try:
                self.staging = mmap.mmap(fd, msg[1], flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            msg = self.conn.recv()
        return msg

    def views(self, header: np.ndarray, places: list) -> dict[str, np.ndarray]:
        """The vectors the worker left in the staging buffer, as read-only views of it (valid
        until the worker's next read)."""
        packed = {key: np.frombuffer(self.staging, dtype, n, off) for key, dtype, n, off in places}
        packed[HEADER] = header
        return packed


class ProcessReader:
    """``read_packed`` in ``processes`` worker processes; call it from any number of threads
    (each call takes a free worker, waiting for one if all are busy)."""

    def __init__(self, processes: int):
        if processes < 1:
            raise ValueError(f"backend.load_processes: need >= 1 reader process, got {processes}")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._layouts: dict[tuple, tuple[int, tuple, list]] = {}  # specs -> (id, specs, places)
        for _ in range(processes):
            self._spawn()
        # Stopped on close(), or when the reader is collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _stop_all, self._all)

    def _spawn(self) -> None:
        w = _Worker()
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def __call__(self, path: str | os.PathLike, specs: list, expert_id: str | None = None) -> dict[str, np.ndarray]:
        """``read_packed``'s vectors, copied into this process's memory (the caller keeps them)."""
        with self.lease(path, specs, expert_id) as packed:
            return {key: v if key == HEADER else v.copy() for key, v in packed.items()}

    @contextlib.contextmanager
    def lease(self, path: str | os.PathLike, specs: list, expert_id: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        """``read_packed``'s vectors as read-only views of a worker's staging buffer, valid inside
        the ``with`` block: the worker is held until the block ends, so a copy the block makes and
        waits for (a ``device_put`` and unpack) reads the buffer directly, without the copy out of
        it that ``__call__`` makes (a 170 MB expert: 80 ms, more than its read). Nothing may keep
        the views, or arrays aliasing them, past the block: JAX's CPU ``device_put`` of a
        read-only buffer aliases it (``store.checkpoint.unpack_onto``)."""
        if self._closed:
            raise RuntimeError("ProcessReader is closed")
        layout, specs, places = self._layout(specs)
        w = self._idle.get()
        try:
            w.conn.send((str(path), layout, None if layout in w.layouts else specs, expert_id))
            status, payload = w.receive()
            if status == "ok":
                w.layouts.add(layout)
        except (EOFError, OSError) as e:
            code = w.exitcode
            with self._lock:
                self._all.remove(w)
            w.stop(timeout_s=1.0)
            if not self._closed:
                self._spawn()
            raise CheckpointError(f"expert {expert_id}: the reader process died while reading {path} "
                                  f"(exit code {code}): {type(e).__name__}") from e
        try:
            if status != "ok":
                raise CheckpointError(payload)
            yield w.views(payload, places)
        finally:
            self._idle.put(w)

    def _layout(self, specs: list | tuple) -> tuple[int, tuple, list]:
        """(id, specs, places) of a leaf layout: a worker is sent a layout's specs (hundreds of
        leaves, ~0.1 ms to pickle) once, then only its id, and the places are computed once
        (looking the layout up costs ~12 µs for 291 leaves)."""
        key = tuple(specs)
        with self._lock:
            entry = self._layouts.get(key)
            if entry is None:
                entry = self._layouts[key] = (len(self._layouts), key, _places(key)[0])
            return entry

    def pids(self) -> list[int]:
        """Process ids of the live reader processes (e.g. to account their CPU time)."""
        with self._lock:
            return [w.proc.pid for w in self._all]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._finalizer()


def _stop_all(workers: list[_Worker]) -> None:
    stopping = list(workers)
    workers.clear()
    for w in stopping:
        w.stop()



if __name__ == "__main__":  # a worker: python -m coserve_jax.store.reader FD
    _serve(Connection(int(sys.argv[1])))
