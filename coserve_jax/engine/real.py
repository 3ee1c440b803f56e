"""The real backend: wall clock, Orbax reads in reader processes driven by I/O threads, jit-compiled batches on executor threads.

``Runtime`` is shared by every arm of a run: the zoo, the JAX devices, one jit-compiled forward
per architecture (XLA compiles it once per (device, batch bucket); inputs are padded to
power-of-two buckets, and JAX's persistent compilation cache is on) and the checkpoint reader
processes (``store.reader``: a read in a thread would stall behind the loop's GIL).

Served weights are an expert's leaves as a flat list of device arrays, in checkpoint packing
order; the forward rebuilds the ``nnx.State`` inside ``jit``. Building it per load, and passing
a State to every call, was Python per leaf under the GIL: per load 2.5 ms (ResNet) and 9.7 ms
(YOLO, 291 leaves) on the loop's process, and per batch call 0.38 -> 0.28 ms (ResNet) and
1.18 -> 0.63 ms (YOLO) of dispatch (this machine, batch 1, 50 calls). Keeping the packed
vectors and slicing inside the forward is faster still, but XLA copies the slices: +0.4 / +0.9
MB of temporaries per batch, which a byte budget would have to pay.
``RealBackend`` is one arm's: its weights per pool, its threads and its completion queue.

The host cache (``hardware.host_budget``) keeps experts in JAX ``pinned_host`` memory where the
platform has it (``store/host_tier.py``; ``backend.host_tier``): a switch from it is one
asynchronous ``device_put`` into device memory plus the on-device unpack, in a load thread
while the executors' threads run batches. Each pool's weights live on its own device
(``bind_pool``); executors on several devices each use their own pool's.

Host<->device movement happens here and in ``store/`` only, explicitly: ``jax.device_put`` for
weights and inputs, ``jax.device_get`` for outputs (tests run with the transfer guard on).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import queue
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from coserve_jax.cost.fit import fit_linear_nonneg
from coserve_jax.engine.events import Arrival, BatchDone, Event, LoadDone, Preload
from coserve_jax.store.checkpoint import (CheckpointError, leaf_specs, leaves_to_state, read_packed, unpack_onto,
                                         unpack_to_device)
from coserve_jax.store.disk import drop_page_cache
from coserve_jax.store.host_tier import NUMPY, HostCopy, resolve_tier, to_host
from coserve_jax.store.reader import ProcessReader
from coserve_jax.types import Batch, LoadJob, Request, Tier

log = logging.getLogger(__name__)


def bucket_size(n: int) -> int:
    """Smallest power of two >= n (inputs are padded to it so each bucket compiles once)."""
    return 1 << max(0, (n - 1).bit_length())


def run_padded(fwd: Any, state: Any, images: Sequence[np.ndarray] | np.ndarray, device: jax.Device,
               pad: bool = True) -> np.ndarray:
    """One batch the way the engine serves it: stack, zero-pad to the power-of-two bucket (so
    each bucket compiles once), copy to the device, run, copy the logits back; returns n rows."""
    n = len(images)
    x = np.zeros((bucket_size(n) if pad else n, *np.shape(images[0])), np.float32)
    x[:n] = np.stack(images) if not isinstance(images, np.ndarray) else images
    return np.asarray(jax.device_get(fwd(state, jax.device_put(x, device))))[:n]


def enable_compilation_cache(cache_dir: str | None) -> str:
    path = cache_dir or os.path.join(
        os.environ.get("COSERVE_JAX_CACHE", os.path.expanduser("~/.cache/coserve_jax")), "jax_cache"
    )
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


class Runtime:
    """What every arm of a real run shares: zoo, devices, jitted forwards, compile counters."""

    def __init__(self, zoo: Any, compilation_cache_dir: str | None = None, load_processes: int = 0):
        self.zoo = zoo
        self.cache_dir = enable_compilation_cache(compilation_cache_dir)
        # Checkpoint reads: in reader processes (load_processes > 0), else in the calling thread.
        self.reader = ProcessReader(load_processes) if load_processes > 0 else None
        self.traces: dict[str, int] = {}  # arch -> times its forward was traced
        self._fwd: dict[str, Any] = {}
        self._specs: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self.compile_s = 0.0

    def device(self, kind: str, index: int) -> jax.Device:
        try:
            devs = jax.devices(kind)
        except RuntimeError:
            raise RuntimeError(f"hardware.executors.{kind}: this machine has no {kind} devices "
                               f"(it has {sorted({d.platform for d in jax.devices()})})") from None
        if index >= len(devs):
            raise RuntimeError(f"executor wants {kind} device {index}, but only {len(devs)} exist; "
                               f"set hardware.cpu_devices or XLA_FLAGS before JAX starts")
        return devs[index]

    def specs(self, arch: str) -> tuple:
        """(shape, dtype) per leaf of ``arch``, in checkpoint packing order (cached)."""
        with self._lock:
            if arch not in self._specs:
                self._specs[arch] = tuple(leaf_specs(self.zoo.abstract_state(arch)))
            return self._specs[arch]

    def restore(self, expert_id: str, device: jax.Device | None) -> Any:
        """Read expert_id's checkpoint (through the reader processes): its served weights on
        ``device`` (a list of leaves, see the module docstring), or with ``device`` None its
        packed host copy (what the host cache holds; ``put`` moves it to a device)."""
        info = self.zoo.graph.experts[expert_id]
        specs = self.specs(info.arch)
        if device is not None:
            return unpack_onto(device, info.checkpoint_path, specs, expert_id, self.reader)
        return (self.reader or read_packed)(info.checkpoint_path, specs, expert_id)

    def put(self, expert_id: str, packed: dict[str, Any], device: jax.Device) -> list[jax.Array]:
        """A packed host copy (numpy, or ``jax.Array``s in pinned_host memory) -> served weights
        on ``device``, explicitly; waits for the copy."""
        arch = self.zoo.graph.experts[expert_id].arch
        return jax.block_until_ready(unpack_to_device(packed, self.specs(arch), device))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def forward(self, arch: str):
        with self._lock:
            if arch not in self._fwd:
                graphdef, abstract = self.zoo.graphdef(arch), self.zoo.abstract_state(arch)

                def fwd(leaves, x):
                    self.traces[arch] = self.traces.get(arch, 0) + 1  # runs only while tracing
                    return nnx.merge(graphdef, leaves_to_state(abstract, leaves))(x)

                self._fwd[arch] = jax.jit(fwd)
            return self._fwd[arch]

    def warm_up(self, devices: Sequence[jax.Device], max_batch: dict[str, int]) -> float:
        """Compile every (arch, device, bucket) before serving; returns seconds spent."""
        t0 = time.perf_counter()
        for arch, mb in sorted(max_batch.items()):
            specs = self.specs(arch)
            shape = tuple(self.zoo.archs[arch].input_shape)
            fwd = self.forward(arch)
            samples = [e for e in self.zoo.graph.experts.values() if e.arch == arch]
            for dev in devices:
                # Restoring onto the device compiles the checkpoint unpacker for (arch, device)
                # now, outside any timed run. A broken checkpoint is the serving run's to report.
                for e in samples:
                    try:
                        self.restore(e.expert_id, dev)
                        break
                    except CheckpointError:
                        continue
                zeros = [jax.device_put(np.zeros(sh, dt), dev) for sh, dt in specs]
                b = 1
                while True:
                    x = jax.device_put(np.zeros((b, *shape), np.float32), dev)
                    jax.block_until_ready(fwd(zeros, x))
                    if b >= mb:
                        break
                    b *= 2
        self.compile_s += time.perf_counter() - t0
        return time.perf_counter() - t0


class BatchHandoffs:
    """What a batch costs between threads beyond its forward, on the backend's clock (the
    simulator's ``overheads.batch_handoff_s``, measured by the profiler from this):

    - ``to_worker``: from the end of the loop's work that dispatched it (its ``charge``, where
      the simulator starts a batch) to its worker thread beginning it;
    - ``after_forward``: from the end of the forward to the completion event, the worker's own
      work on it (outputs split per task, labels);
    - ``to_loop``: from that event to the loop taking it, counted only when the loop sat waiting
      for events meanwhile (a wake-up); a loop still busy is the loop's own cost, which the
      simulator charges per event.

    The last ``keep`` batches of each, so a long-running replica keeps a bounded record."""

    PARTS = ("to_worker", "after_forward", "to_loop")

    def __init__(self, keep: int = 4096):
        self._dispatched: dict[int, float | None] = {}  # batch id -> when its dispatch's charge ended
        self._samples = {part: collections.deque(maxlen=keep) for part in self.PARTS}

    def dispatched(self, batch_id: int) -> None:
        self._dispatched[batch_id] = None

    def charged(self, now_s: float) -> None:
        for b, t in self._dispatched.items():
            if t is None:
                self._dispatched[b] = now_s

    def taken(self, ev: BatchDone, taken_s: float, waited_since_s: float | None) -> None:
        """The loop took ``ev`` at ``taken_s``, after waiting since ``waited_since_s`` (None: it
        did not wait for it)."""
        charged = self._dispatched.pop(ev.batch.batch_id, None)
        if ev.started_s is None or ev.at_s is None:
            return
        if charged is not None:
            self._samples["to_worker"].append(ev.started_s - charged)
        self._samples["after_forward"].append(max(0.0, ev.at_s - ev.started_s - ev.seconds))
        if waited_since_s is not None and waited_since_s <= ev.at_s:
            self._samples["to_loop"].append(max(0.0, taken_s - ev.at_s))

    def summary(self) -> dict[str, Any]:
        """Median seconds of each part (0 without samples), their sum (at least 0: a worker may
        begin before the dispatching charge ends), the same as means (``mean``: the tails cost
        throughput too; on the demo the means are about twice the medians) and the sample counts."""
        med = {p: statistics.median(v) if v else 0.0 for p, v in self._samples.items()}
        mean = {p: statistics.fmean(v) if v else 0.0 for p, v in self._samples.items()}
        return {**{f"{p}_s": med[p] for p in self.PARTS}, "total_s": max(0.0, sum(med.values())),
                "mean": {**{f"{p}_s": mean[p] for p in self.PARTS}, "total_s": max(0.0, sum(mean.values()))},
                "samples": {p: len(v) for p, v in self._samples.items()}}


class _Worker(threading.Thread):
    """One executor's compute lane: runs its batches one at a time."""

    def __init__(self, backend: RealBackend, name: str):
        super().__init__(name=name, daemon=True)
        self.backend, self.jobs = backend, queue.Queue()

    def run(self) -> None:
        while True:
            item = self.jobs.get()
            if item is None:
                return
            self.backend._run_batch(*item)


def _let_go(state: Any) -> None:
    """Nothing: the last reference to ``state`` goes when this returns, on the calling thread."""


class RealBackend:
    """One arm's real backend over a shared Runtime."""

    routing_default = "model"

    def __init__(self, runtime: Runtime, *, load_threads: int = 2, drop_page_cache: bool = False,
                 stall_timeout_s: float = 120.0, fault_injector: Any = None, annotate: bool = False,
                 host_tier: str = "auto"):
        self.rt = runtime
        self.annotate = annotate  # name batches and loads in a JAX profiler trace (metrics.jax_annotations)
        self.host_tier_mode = host_tier  # backend.host_tier: auto | pinned_host | numpy
        self.drop_page_cache = drop_page_cache
        self.stall_timeout_s = stall_timeout_s
        self.fault_injector = fault_injector  # tests: callable(kind, job_or_batch) may raise
        self._events: queue.Queue[tuple[float, Event]] = queue.Queue()  # (when it happened, event)
        self._held: tuple[float, Event] | None = None  # taken by ready_at, next for next_event
        self._io = concurrent.futures.ThreadPoolExecutor(load_threads, thread_name_prefix="coserve-io")
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._weights: dict[str, dict[str, Any]] = {}  # pool -> expert -> state on its device
        self._host: dict[str, HostCopy] = {}  # host cache: expert -> its packed vectors (store/host_tier.py)
        self._pool_device: dict[str, jax.Device] = {}
        self._tier: dict[jax.Device, str] = {}  # host tier of experts loaded for each device
        self._has_host_cache = False
        self._t0 = time.perf_counter()
        self._closed = False
        self.events_handled = 0  # events next_event returned
        self.wait_s = 0.0  # seconds the loop spent blocked in next_event (the rest it was busy)
        # The loop's busy seconds and count per kind of work it charged ("arrival", "event"):
        # from the end of its last wait or charge to the next charge.
        self.busy_s: dict[str, float] = {}
        self.charged: dict[str, int] = {}
        self._mark = time.perf_counter()
        self.handoffs = BatchHandoffs()
        self._event_busy: collections.deque[tuple[int, float]] = collections.deque(maxlen=16384)  # (tasks, busy s)

    # ---- clock and events ------------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter() - self._t0

    def next_event(self, until_s: float | None) -> Event | None:
        if self._held is not None:
            ev, self._held = self._held[1], None
            self.events_handled += 1
            if isinstance(ev, BatchDone):
                self.handoffs.taken(ev, self.now(), None)
            return ev
        timeout = self.stall_timeout_s if until_s is None else max(0.0, until_s - self.now())
        t = time.perf_counter()
        try:
            ev = self._events.get(timeout=timeout)[1]
        except queue.Empty:
            return None
        finally:
            self._mark = time.perf_counter()
            self.wait_s += self._mark - t
        self.events_handled += 1
        if isinstance(ev, BatchDone):
            self.handoffs.taken(ev, self._mark - self._t0, t - self._t0)
        return ev

    def ready_at(self) -> float | None:
        """When the oldest waiting event happened (backend clock), or None if none waits."""
        if self._held is None:
            try:
                self._held = self._events.get_nowait()
            except queue.Empty:
                return None
        return self._held[0]

    def _put(self, ev: Event) -> None:
        self._events.put((self.now(), ev))

    def charge(self, kind: str = "event", tasks: int = 0) -> None:
        """Real time passes by itself while the loop works; record how much this piece took."""
        now = time.perf_counter()
        busy = now - self._mark
        self.busy_s[kind] = self.busy_s.get(kind, 0.0) + busy
        self.charged[kind] = self.charged.get(kind, 0) + 1
        if kind == "event":
            self._event_busy.append((tasks, busy))
        self._mark = now
        self.handoffs.charged(now - self._t0)

    def loop_busy(self) -> dict[str, dict[str, float]]:
        """The loop's busy seconds per kind of work it charged: count, total, per piece; for
        events also ``base_s`` and ``per_task_s``, a least-squares line (both >= 0) of each event's
        busy seconds over the tasks it completed (the profiler's ``loop_s_per_event`` and
        ``loop_s_per_task``; over the last events, bounded)."""
        out = {kind: {"handled": self.charged.get(kind, 0), "total_s": s,
                      "per_handled_s": s / max(1, self.charged.get(kind, 0))} for kind, s in self.busy_s.items()}
        if "event" in out:
            per_task, base = fit_linear_nonneg([t for t, _ in self._event_busy], [b for _, b in self._event_busy])
            out["event"].update(base_s=base, per_task_s=per_task)
        return out

    def has_events(self) -> bool:
        """Whether completions or submissions are waiting for the loop."""
        return self._held is not None or not self._events.empty()

    def post(self, event: Arrival | Preload) -> None:
        """Online submissions (and preload requests) enter the loop as events."""
        self._put(event)

    def bind_pool(self, pool_id: str, device: jax.Device | None) -> None:
        """Declare where a pool's weights live (None: the host cache)."""
        self._pool_device[pool_id] = device
        self._weights.setdefault(pool_id, {})
        if device is None:
            self._has_host_cache = True
        else:
            self._tier[device] = resolve_tier(self.host_tier_mode, device)

    @property
    def host_tier(self) -> str:
        """Which host tier ran (results.json ``arms[*].host_tier``): ``pinned_host``, ``numpy``,
        both joined by ``+`` when devices differ, or ``none`` without a host cache."""
        if not self._has_host_cache:
            return "none"
        return "+".join(sorted(set(self._tier.values()))) or "none"

    # ---- loads ------------------------------------------------------------------------------
    def start_load(self, job: LoadJob) -> None:
        self._io.submit(self._load, job)

    def _annotation(self, name: str) -> contextlib.AbstractContextManager:
        return jax.profiler.TraceAnnotation(name) if self.annotate else contextlib.nullcontext()

    def _load(self, job: LoadJob) -> None:
        with self._annotation(f"coserve load {job.expert_id} -> {job.pool_id}"):
            self._load_job(job)

    def _load_job(self, job: LoadJob) -> None:
        t = time.perf_counter()
        try:
            if self.fault_injector is not None:
                self.fault_injector("load", job)
            info = self.rt.zoo.graph.experts[job.expert_id]
            if job.src == Tier.HOST:
                with self._lock:
                    host_copy = self._host.get(job.expert_id)
                if host_copy is None:
                    raise RuntimeError(f"expert {job.expert_id} is not in the host cache")
            else:
                if self.drop_page_cache:
                    drop_page_cache(Path(info.checkpoint_path))
                host_copy = None
            device = self._pool_device.get(job.pool_id)
            if host_copy is None and device is not None and not job.via_host_cache:
                # Straight from disk onto the device: one packed transfer, unpacked there.
                state = self.rt.restore(job.expert_id, device)
            else:
                if host_copy is None:
                    # Disk -> the host cache (pinned_host memory of this pool's device, or numpy).
                    packed = self.rt.restore(job.expert_id, None)
                    host_copy = to_host(packed, self._tier.get(device, NUMPY), device)
                # Host cache -> device: async device_put + on-device unpack; this thread waits.
                state = host_copy if device is None else self.rt.put(job.expert_id, host_copy.flats, device)
            with self._lock:
                if job.via_host_cache:
                    self._host[job.expert_id] = host_copy
                self._weights.setdefault(job.pool_id, {})[job.expert_id] = state
            self._put(LoadDone(job, time.perf_counter() - t, at_s=self.now()))
        except Exception as e:  # noqa: BLE001 - every failure must come back as an event
            self._put(LoadDone(job, time.perf_counter() - t, error=f"{type(e).__name__}: {e}", at_s=self.now()))

    def drop(self, pool_id: str, expert_id: str) -> None:
        with self._lock:
            if pool_id == "host":
                state = self._host.pop(expert_id, None)
            else:
                state = self._weights.get(pool_id, {}).pop(expert_id, None)
        device = self._pool_device.get(pool_id)
        if state is not None and not self._closed and (device is None or device.platform == "cpu"):
            # Host memory is freed on a load thread: freeing the arrays lets go of the GIL, and
            # the loop then waited ~0.35 ms per eviction for it behind the workers. (A device's
            # memory is freed here, at once: a load may need those bytes next.)
            self._io.submit(_let_go, state)

    # ---- batches ----------------------------------------------------------------------------
    def start_batch(self, batch: Batch, executor: Any, inputs: list[Any]) -> None:
        w = self._workers.get(executor.executor_id)
        if w is None:
            w = self._workers[executor.executor_id] = _Worker(self, f"coserve-ex{executor.executor_id}")
            w.start()
        self.handoffs.dispatched(batch.batch_id)
        w.jobs.put((batch, executor.pool.pool_id, inputs))

    def _run_batch(self, batch: Batch, pool_id: str, inputs: list[Any]) -> None:
        with self._annotation(f"coserve batch {batch.expert_id} x{len(batch.tasks)}"):
            self._run_batch_job(batch, pool_id, inputs)

    def _run_batch_job(self, batch: Batch, pool_id: str, inputs: list[Any]) -> None:
        t = time.perf_counter()
        started = t - self._t0
        try:
            if self.fault_injector is not None:
                self.fault_injector("batch", batch)
            with self._lock:
                state = self._weights[pool_id][batch.expert_id]
            arch = self.rt.zoo.graph.experts[batch.expert_id].arch
            logits = run_padded(self.rt.forward(arch), state, inputs, self._pool_device[pool_id])
            # The labels here, in one call per batch, not one per task on the loop's thread.
            self._put(BatchDone(batch, time.perf_counter() - t, outputs=list(logits),
                                labels=logits.argmax(axis=-1).tolist(), at_s=self.now(), started_s=started))
        except Exception as e:  # noqa: BLE001
            self._put(BatchDone(batch, time.perf_counter() - t, error=f"{type(e).__name__}: {e}", at_s=self.now(),
                                started_s=started))

    # ---- input checks -----------------------------------------------------------------------
    def validate_input(self, request: Request, image: Any) -> str | None:
        graph = self.rt.zoo.graph
        expected = tuple(graph.experts[graph.preliminary(request.component_type)].input_shape)
        if not isinstance(image, np.ndarray):
            return f"bad input: request {request.request_id}: image must be a numpy array, got {type(image).__name__}"
        if image.dtype != np.float32:
            return f"bad input: request {request.request_id}: image dtype {image.dtype}, expected float32"
        if tuple(image.shape) != expected:
            return f"bad input: request {request.request_id}: image shape {tuple(image.shape)}, expected {expected}"
        if not np.all(np.isfinite(image)):
            return f"bad input: request {request.request_id}: image has NaN or inf values"
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers.values():
            w.jobs.put(None)
        for w in self._workers.values():
            w.join(timeout=30)
        self._io.shutdown(wait=True, cancel_futures=False)
        with self._lock:
            self._weights.clear()
            self._host.clear()
