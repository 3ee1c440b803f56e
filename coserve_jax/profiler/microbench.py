"""Microbenchmarks of a real zoo on this machine -> a Profile (schema coserve_jax.profile/1).

Per executor kind and per architecture (not per expert): batch latency at several batch sizes
through the same path the real backend serves (stack, pad to the bucket, device_put, jitted
forward, device_get), each shape warmed up and timed in interleaved, shuffled rounds (median per
shape), fitted as latency = K·n + B by least squares; the maximum batch size is
the smallest n whose per-image latency is within ``plateau_tol`` of the best measured (the
paper's "per-image latency plateaus", Fig. 5); activation bytes per batch size from XLA's
compiled memory analysis; load seconds per tier transition fitted as a + b·bytes over experts of
different sizes, each load timed between two batch rounds (``LoadSampler``); and, for the
host, how much slower a load runs beside 1, 2, ... threads serving CPU batches
(``measure_load_contention``), which the simulator applies on top of its core sharing.
``measure_batch_contention`` and ``measure_batch_beside_python`` (not part of a profile;
``scripts/host_contention.py``) time how much slower a CPU batch runs beside other batches,
loads or a GIL-holding Python thread.

Held-out check (``heldout_sizes``): batch sizes left out of the fit (e.g. 3, 6, 12, 24) are
measured too and the line's relative error on them is reported, twice: with inputs of exactly n
images (``exact``: the K·n+B model's own accuracy) and through the served path, which pads n up
to the next power-of-two bucket (``served``: what the engine pays; a batch of 24 costs a batch
of 32). The fit itself uses the sizes in ``batch_sizes`` only, where both paths coincide when
they are powers of two.
"""

from __future__ import annotations

import itertools
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from coserve_jax.cost.fit import fit_linear_nonneg
from coserve_jax.cost.model import SCHEMA
from coserve_jax.engine.real import Runtime, bucket_size, run_padded
from coserve_jax.profiler import loop_overhead
from coserve_jax.store.broken import log_broken_once
from coserve_jax.store.checkpoint import CheckpointError
from coserve_jax.store.disk import drop_page_cache

# Which serving paths a profile measured; part of the cached profile's key, so a change to how
# the engine loads or calls an expert re-measures. 2: served weights are a flat list of leaves;
# 3: the loop's cost per event is timed while serving; 4: loads are timed between batch rounds;
# 5: loads are also timed beside running CPU batches (``measure_load_contention``);
# 6: a batch's hand-offs between the loop and its worker are timed while serving (``batch_handoff_s``),
# and the loop's cost per completion is split into a base and a cost per task it routes;
# 7: each timed load follows an untimed one (``LoadSampler``), not a batch round;
# 8: loads are also timed beside other loads (``measure_load_beside_loads``);
# 9: a load from disk into a device pool copies straight from the reader's staging buffer
# (``ProcessReader.lease``, ``store.checkpoint.unpack_onto``).
PATHS_VERSION = 9


def plateau_batch(sizes: Sequence[int], latency_s: Sequence[float], tol: float = 0.10) -> int:
    """Smallest batch whose per-image latency is within tol of the best per-image latency."""
    per = [t / n for n, t in zip(sizes, latency_s)]
    best = min(per)
    return next(n for n, p in zip(sizes, per) if p <= best * (1 + tol))


def abs_rel_errors(k_s: float, b_s: float, sizes: Sequence[int], latency_s: Sequence[float]) -> list[float]:
    """|K·n + B − measured| / measured for each (n, latency)."""
    return [abs(k_s * n + b_s - t) / t for n, t in zip(sizes, latency_s)]


def _time_batch(fwd: Any, state: Any, images: np.ndarray, device: jax.Device, pad: bool = True) -> float:
    t = time.perf_counter()
    run_padded(fwd, state, images, device, pad)
    return time.perf_counter() - t


def _activation_bytes(fwd: Any, state: Any, shape: tuple[int, ...], n: int, device: jax.Device) -> int:
    x = jax.ShapeDtypeStruct((bucket_size(n), *shape), np.float32,
                             sharding=jax.sharding.SingleDeviceSharding(device))
    ma = fwd.lower(state, x).compile().memory_analysis()
    if ma is None:
        return int(np.prod((bucket_size(n), *shape)) * 4)
    return int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
               - sum(a.nbytes for a in jax.tree.leaves(state)))


def readable_experts(rt: Runtime, experts: Sequence[Any], count: int) -> list[Any]:
    """The first ``count`` of ``experts`` (one architecture) whose checkpoints read. A profile
    measures the architecture, not one file: a missing or corrupt checkpoint is skipped with a
    warning naming it (serving then fails only the requests that need it)."""
    out = []
    for e in experts:
        if len(out) >= count:
            break
        try:
            rt.restore(e.expert_id, None)
        except CheckpointError as err:
            log_broken_once(e.expert_id, str(err), f"the profiler times other experts of {e.arch}")
            continue
        out.append(e)
    if not out:
        raise CheckpointError(f"profiler: no checkpoint of architecture {experts[0].arch} reads "
                              f"({len(experts)} tried)")
    return out


def _served_state(rt: Runtime, arch: str, device: jax.Device) -> tuple[Any, Any]:
    """One readable expert of ``arch`` and its state on ``device``: what timed batches run."""
    expert = readable_experts(rt, [e for e in rt.zoo.graph.experts.values() if e.arch == arch], 1)[0]
    return expert, rt.restore(expert.expert_id, device)


def measure_batches(rt: Runtime, kind: str, device: jax.Device, arch: str, batch_sizes: Sequence[int],
                    repeats: int, rng: np.random.Generator,
                    heldout_sizes: Sequence[int] = (), warmup: int = 2,
                    between_rounds: Callable[[], None] | None = None) -> dict[str, Any]:
    """K, B (fitted on ``batch_sizes``), max batch, compile seconds, bytes; with ``heldout_sizes``
    also the line's errors on sizes left out of the fit (see the module docstring).
    ``between_rounds`` runs after each timed round (``measure_profile`` times a load there).

    Every shape (fit sizes, held-out sizes exact and padded) is compiled and run ``warmup`` times
    untimed, then timed in ``repeats`` interleaved rounds — each round runs every shape once, in a
    fresh random order — and each shape's latency is the median over the rounds. Interleaving
    measures the fit and the held-out sizes the same way, under the same drift and noise of a
    shared machine, instead of timing one size's repeats back to back."""
    zoo = rt.zoo
    expert, state = _served_state(rt, arch, device)
    shape = tuple(zoo.archs[arch].input_shape)
    fwd = rt.forward(arch)
    t = time.perf_counter()
    _time_batch(fwd, state, rng.random((1, *shape), np.float32), device)
    compile_s = time.perf_counter() - t
    # probes: (label, n, pad); the fit sizes go through the served (padded) path
    probes = [("fit", n, True) for n in batch_sizes]
    probes += [(lbl, n, pad) for n in heldout_sizes for lbl, pad in (("exact", False), ("served", True))]
    images = {n: rng.random((n, *shape), np.float32) for n in {p[1] for p in probes}}
    for _, n, pad in probes:  # compile every shape, then warm it up
        for _ in range(1 + max(warmup, 0)):
            _time_batch(fwd, state, images[n], device, pad)
    times: list[list[float]] = [[] for _ in probes]
    for _ in range(max(repeats, 1)):
        for i in rng.permutation(len(probes)):
            _, n, pad = probes[i]
            times[i].append(_time_batch(fwd, state, images[n], device, pad))
        if between_rounds is not None:
            between_rounds()
    med = [float(np.median(ts)) for ts in times]
    lat = [m for (lbl, _, _), m in zip(probes, med) if lbl == "fit"]
    k, b = fit_linear_nonneg(batch_sizes, lat)
    k = max(k, 1e-6)
    out = {
        "k_s": k, "b_s": b,
        "max_batch": plateau_batch(batch_sizes, lat),
        "compile_s": compile_s,
        "param_bytes": expert.param_bytes,
        "activation_bytes": {str(n): _activation_bytes(fwd, state, shape, n, device) for n in batch_sizes},
        "measured": {"batch_sizes": list(batch_sizes), "latency_s": lat, "rounds": max(repeats, 1),
                     "warmup": warmup},
    }
    if heldout_sizes:
        exact = [m for (lbl, _, _), m in zip(probes, med) if lbl == "exact"]
        served = [m for (lbl, _, _), m in zip(probes, med) if lbl == "served"]
        out["heldout"] = {
            "batch_sizes": list(heldout_sizes), "predicted_s": [k * n + b for n in heldout_sizes],
            "latency_s": exact, "abs_rel_error": abs_rel_errors(k, b, heldout_sizes, exact),
            "served_latency_s": served, "served_abs_rel_error": abs_rel_errors(k, b, heldout_sizes, served),
        }
    return out


def batch_timer(rt: Runtime, device: jax.Device, arch: str, n: int, warmup: int = 1,
                rng: np.random.Generator | None = None) -> Callable[[], float]:
    """A callable that times one served batch of ``n`` images of ``arch`` on ``device`` (the
    padded path, as ``measure_batches`` times its fit sizes); compiled and run ``warmup`` more
    times untimed here. ``profiler.trust`` spreads its calls over its check, between loads."""
    rng = rng or np.random.default_rng(0)
    expert, state = _served_state(rt, arch, device)
    fwd = rt.forward(arch)
    images = rng.random((n, *tuple(rt.zoo.archs[arch].input_shape)), np.float32)
    for _ in range(1 + max(warmup, 0)):
        _time_batch(fwd, state, images, device)
    return lambda: _time_batch(fwd, state, images, device)


class LoadSampler:
    """Times loads of a zoo's experts one at a time, so the samples can be spread over a profile.

    Each ``sample()`` reads the next of ``samples`` experts per architecture (round-robin over
    experts of different sizes) the ways the real backend does: disk straight onto ``device``
    (no host cache) and, when ``device`` is given, host copy -> device. ``fit()`` takes each
    expert's median and fits seconds = a + b·bytes per path.

    Why spread them: timed back to back, all loads land in one second of a shared machine's
    drift. On this 2-core machine three fresh profiles fitted a classifier load of 6.6, 5.7 and
    5.1 ms while their batch fits agreed within 6% (``experiments/sim_validation``), and the
    simulator inherits such an error in every load. ``measure_profile`` takes one sample between
    batch rounds instead, so loads and batches are timed over the same minutes: three fresh
    profiles then fitted 6.8, 7.6 and 6.8 ms (``scripts/validate_sim.py --fresh-profile``).

    Each timed load comes right after an untimed load of the expert sampled before it, as loads
    follow each other or a short batch while serving: right after a batch round (~0.1 s of
    forwards that leave the caches cold for the loader) a classifier load took 3.5 ms where the
    same loads back to back took 3.1 ms and after a batch of one 2.9 ms, and the simulator's
    samba, which waits on every load, came out 7-17% slower than the real engine
    (``experiments/sim_validation``). ``measure_load_contention``'s loads alone, the base of
    its ratios, run back to back as well.
    """

    def __init__(self, rt: Runtime, device: jax.Device | None, samples: int, drop_cache: bool):
        by_arch: dict[str, list] = {}
        for e in sorted(rt.zoo.graph.experts.values(), key=lambda e: e.expert_id):
            by_arch.setdefault(e.arch, []).append(e)
        self.rt, self.device, self.drop_cache = rt, device, drop_cache
        by_arch = {a: readable_experts(rt, experts, max(samples, 1)) for a, experts in by_arch.items()}
        self.experts = [e for experts in by_arch.values() for e in experts]
        for experts in by_arch.values():
            # Untimed first restores: Orbax's and the device's one-time start-up (and the
            # unpacker's compile for this device) are not load costs.
            warm = rt.restore(experts[0].expert_id, None)
            if device is not None:
                rt.put(experts[0].expert_id, warm, device)
                rt.restore(experts[0].expert_id, device)
        self._disk: list[list[float]] = [[] for _ in self.experts]
        self._put: list[list[float]] = [[] for _ in self.experts]
        self._next = 0

    @property
    def count(self) -> int:
        return sum(len(ts) for ts in self._disk)

    def sample(self) -> None:
        i = self._next % len(self.experts)
        self._next += 1
        e, rt, device = self.experts[i], self.rt, self.device
        # Untimed: the load before it (another expert when there are several; class docstring).
        jax.block_until_ready(rt.restore(self.experts[(i - 1) % len(self.experts)].expert_id, device))
        if self.drop_cache:
            drop_page_cache(e.checkpoint_path)
        t = time.perf_counter()
        jax.block_until_ready(rt.restore(e.expert_id, device))
        self._disk[i].append(time.perf_counter() - t)
        if device is not None:
            host = rt.restore(e.expert_id, None)
            t = time.perf_counter()
            jax.block_until_ready(rt.put(e.expert_id, host, device))
            self._put[i].append(time.perf_counter() - t)

    def fill(self, per_expert: int) -> None:
        """Sample until every expert has at least ``per_expert`` timings."""
        while min(len(ts) for ts in self._disk) < per_expert:
            self.sample()

    def disk_timings(self) -> list[tuple[Any, list[float]]]:
        """(expert, its disk->pool seconds so far) per sampled expert (``profiler.trust``)."""
        return [(e, list(ts)) for e, ts in zip(self.experts, self._disk)]

    def fit(self) -> dict[str, Any]:
        x = [e.param_bytes for e in self.experts]
        disk_y = [float(np.median(ts)) for ts in self._disk]
        host_y = [float(np.median(ts)) if ts else 0.0 for ts in self._put]
        bd, ad = fit_linear_nonneg(x, disk_y)
        bh, ah = fit_linear_nonneg(x, host_y)
        return {
            "disk": {"a_s": ad, "b_s_per_byte": bd, "samples": {"bytes": x, "seconds": disk_y},
                     "page_cache_dropped": self.drop_cache,
                     "timings_per_expert": min(len(ts) for ts in self._disk)},
            "host": {"a_s": ah, "b_s_per_byte": bh, "samples": {"bytes": x, "seconds": host_y}},
        }


class _Beside:
    """``n`` threads each running ``work`` back to back (a CPU executor's batches, a reader's
    loads) while the ``with`` block runs; a failure in one is raised in the caller's thread as
    "``label`` failed while ``timed`` were timed beside it"."""

    def __init__(self, work: Callable[[], Any], n: int, label: str, timed: str):
        self.work, self.n, self.label, self.timed = work, n, label, timed
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.work()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            self.failures.append(err)

    def __enter__(self) -> _Beside:
        for t in self.threads:
            t.start()
        if self.n:
            time.sleep(0.02)  # the threads are running before the first timing
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        if self.failures:
            err = self.failures[0]
            raise RuntimeError(f"profiler: {self.label} failed while {self.timed} were timed beside it: "
                               f"{type(err).__name__}: {err}") from err


def _batch_work(rt: Runtime, device: jax.Device, arch: str, batch: int, seed: int) -> Callable[[], Any]:
    """One served batch of ``batch`` images of ``arch`` on ``device`` as a callable, compiled."""
    rng = np.random.default_rng(seed)
    _, state = _served_state(rt, arch, device)
    fwd = rt.forward(arch)
    images = rng.random((batch, *tuple(rt.zoo.archs[arch].input_shape)), np.float32)
    run_padded(fwd, state, images, device)  # compiled before anything is timed
    return lambda: run_padded(fwd, state, images, device)


def _load_work(rt: Runtime, device: jax.Device, loads: LoadSampler) -> Callable[[], Any]:
    """The sampled experts' loads into ``device``, one per call, in turn."""
    turn = itertools.count()
    return lambda: jax.block_until_ready(rt.restore(loads.experts[next(turn) % len(loads.experts)].expert_id,
                                                    device))


def _ratios(times: dict[int, list[list[float]]], counts: int) -> list[float]:
    """``[1.0, r1, ...]``: per count, the median over the timed items of (median beside / median
    alone); never below 1 (a job beside others is not faster than alone: a ratio under 1 is noise)."""
    alone = [float(np.median(ts)) for ts in times[0]]
    return [1.0] + [max(1.0, float(np.median([np.median(ts) / a for ts, a in zip(times[n], alone)])))
                    for n in range(1, counts + 1)]


def measure_load_contention(rt: Runtime, device: jax.Device, loads: LoadSampler, max_batches: int,
                            arch: str, batch: int = 16, passes: int = 5, seed: int = 0) -> list[float]:
    """How much slower a load into ``device`` runs beside 0..``max_batches`` threads that each
    serve batches of ``batch`` images of ``arch`` back to back (as CPU executors do), as ratios
    to the same loads alone: ``[1.0, r1, r2, ...]``.

    Why: on a host shared by CPU executors and reader processes, a load beside running batches
    is slower than splitting cores says. Measured on this 2-core machine (classifier loads,
    batches of 16): ×1.4-1.6 beside one batch thread and ×2.0-2.7 beside two, where max-min core
    sharing gives ×1.0 and ×1.5; the real engine's loads while serving coserve_plus took ~40%
    longer than the simulator's (``experiments/sim_validation``). The simulator caps a host load's speed
    at 1/r_n while n batches run on the host."""
    return _loads_beside(rt, device, loads, _batch_work(rt, device, arch, batch, seed), max_batches,
                         f"a batch of {arch}", passes)


def measure_load_beside_loads(rt: Runtime, device: jax.Device, loads: LoadSampler, others: int,
                              passes: int = 5) -> list[float]:
    """How much slower a load into ``device`` runs beside 0..``others`` threads each loading the
    sampled experts back to back (the engine's other load threads), as ratios to the same loads
    alone: ``[1.0, r1, ...]``.

    Why: two loads at once each took ×1.3-1.4 one alone on a second 2-core machine of this kind
    (fresh install), where two cores' sharing gives each its own core; the simulator caps a host
    load's speed at 1/(r_n × q_m) beside n batches and m other loads."""
    return _loads_beside(rt, device, loads, _load_work(rt, device, loads), others, "a load", passes)


def _loads_beside(rt: Runtime, device: jax.Device, loads: LoadSampler, work: Callable[[], Any], most: int,
                  label: str, passes: int) -> list[float]:
    """``[1.0, r1, ...]``: the sampled experts' loads beside 0..``most`` threads running ``work``
    back to back. ``passes`` rounds each time every count in turn, so alone and beside are timed
    over the same seconds; each ratio is the median over the sampled experts of (median beside /
    median alone)."""
    times = {n: [[] for _ in loads.experts] for n in range(most + 1)}
    for _ in range(max(passes, 1)):
        for n in range(most + 1):
            with _Beside(work, n, label, "loads"):
                for i, e in enumerate(loads.experts):
                    t0 = time.perf_counter()
                    jax.block_until_ready(rt.restore(e.expert_id, device))
                    times[n][i].append(time.perf_counter() - t0)
    return _ratios(times, most)


def measure_batch_contention(rt: Runtime, device: jax.Device, others: int, arch: str, batch: int = 16,
                             loads: LoadSampler | None = None, passes: int = 5, timed: int = 10,
                             seed: int = 0) -> list[float]:
    """How much slower a batch of ``batch`` images of ``arch`` runs beside 0..``others`` threads
    each serving the same batches back to back (other CPU executors), or with ``loads`` each
    loading its experts back to back (reader threads), as ratios to the batch alone:
    ``[1.0, r1, ...]``. ``passes`` rounds each time every count in turn, ``timed`` batches each.

    Not part of a profile: the simulator lets a CPU batch use every host core, so two batches
    on two cores run at half speed (×2), and a batch beside a load at half speed too. Measured
    alone on this 2-core machine, a batch of 16 ran ×1.0-1.4 slower beside another and ×1.3-1.4
    beside a load; while serving, the real batches ran ×1.5-1.6 slower than alone (median)
    (``scripts/host_contention.py``, ``experiments/sim_validation``)."""
    serve = _batch_work(rt, device, arch, batch, seed)
    work = serve if loads is None else _load_work(rt, device, loads)
    label = f"a batch of {arch}" if loads is None else "a load"
    return _batch_beside(serve, [(work, n, label) for n in range(1, others + 1)], passes, timed)


def measure_batch_beside_python(rt: Runtime, device: jax.Device, arch: str, duties: Sequence[float] = (0.2, 0.5, 1.0),
                                busy_s: float = 0.0007, batch: int = 16, passes: int = 5, timed: int = 10,
                                seed: int = 0) -> dict[float, float]:
    """How much slower a batch of ``batch`` images of ``arch`` runs beside a thread that runs
    pure Python (holding the GIL) for ``busy_s`` stretches, that share of the time (1.0: without
    pause), as the engine loop's thread does between its waits: {duty: ratio to the batch alone}.

    Not part of a profile: the worker's Python around the forward (stacking, the jitted call,
    the result's conversion) waits for the GIL while the loop holds it, which core sharing does
    not see (``scripts/host_contention.py``)."""
    if any(not 0 < d <= 1 for d in duties):
        raise ValueError(f"duties: each must be in (0, 1], got {list(duties)}")
    serve = _batch_work(rt, device, arch, batch, seed)

    def python_busy(duty: float) -> Callable[[], None]:
        def work() -> None:
            t = time.perf_counter()
            while time.perf_counter() - t < busy_s:
                sum(range(50))
            if duty < 1:
                time.sleep(busy_s * (1 - duty) / duty)
        return work

    ratios = _batch_beside(serve, [(python_busy(d), 1, "a Python thread") for d in duties], passes, timed)
    return dict(zip(duties, ratios[1:]))


def _batch_beside(serve: Callable[[], Any], cases: Sequence[tuple[Callable[[], Any], int, str]], passes: int,
                  timed: int) -> list[float]:
    """``[1.0, r1, ...]``: how much slower ``serve()`` (one batch) runs beside each case (``work``
    run back to back by ``n`` threads, ``label`` naming it in an error) than alone. ``passes``
    rounds each time alone and every case in turn, ``timed`` batches each."""
    for _ in range(2):
        serve()  # warm
    times: dict[int, list[list[float]]] = {i: [[]] for i in range(len(cases) + 1)}
    for _ in range(max(passes, 1)):
        for i, (work, n, label) in enumerate([(serve, 0, ""), *cases]):
            with _Beside(work, n, label, "batches"):
                for _ in range(max(timed, 1)):
                    t0 = time.perf_counter()
                    serve()
                    times[i][0].append(time.perf_counter() - t0)
    return _ratios(times, len(cases))


def measure_loads(rt: Runtime, device: jax.Device | None, samples: int, drop_cache: bool,
                  per_expert: int = 3) -> dict[str, Any]:
    """Fit disk->pool, host->pool (and disk->host when device is None) as a + b·bytes, timing
    ``per_expert`` loads of each of ``samples`` experts per architecture back to back."""
    sampler = LoadSampler(rt, device, samples, drop_cache)
    sampler.fill(per_expert)
    return sampler.fit()


def measure_profile(rt: Runtime, kinds: Sequence[str], batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
                    repeats: int = 3, load_samples: int = 3, drop_cache: bool = False,
                    seed: int = 0, progress: bool = False,
                    heldout_sizes: Sequence[int] = (), warmup: int = 2,
                    executors: dict[str, int] | None = None, loop_requests: int = 1500,
                    cpu_devices: int = 1, load_threads: int = 2) -> dict[str, Any]:
    """Measure every architecture on one device of each kind; return a Profile dict.
    ``executors`` (the hardware's, e.g. ``{"cpu": 2}``): time the loop's cost per event while
    serving ``loop_requests`` requests on them, CPU ones over ``cpu_devices`` host devices
    (``loop_overhead``); None: time the policies over the simulator backend. ``load_threads``:
    the engine's, so a load is also timed beside that many others less one."""
    rng = np.random.default_rng(seed)
    archs = sorted({e.arch for e in rt.zoo.graph.experts.values()})
    work = [(k, a) for k in kinds for a in archs]
    bar = None
    if progress:
        bar = tqdm(total=len(work) + len(kinds) + 1, desc="profile", unit="step")
    out_kinds: dict[str, Any] = {}
    host_contention: dict[str, Any] | None = None
    for kind in kinds:
        dev = rt.device(kind, 0)
        out_kinds[kind] = {"archs": {}, "device": str(dev)}
        loads = LoadSampler(rt, dev, load_samples, drop_cache)  # one load between batch rounds
        for arch in archs:
            out_kinds[kind]["archs"][arch] = measure_batches(rt, kind, dev, arch, batch_sizes, repeats, rng,
                                                              heldout_sizes, warmup, loads.sample)
            if bar:
                bar.update()
        loads.fill(3)  # at least three timings per expert (short profiles)
        out_kinds[kind]["loads"] = loads.fit()
        if kind == "cpu" and (executors or {}).get("cpu"):
            # The most common architecture's batches stand for what the CPU executors serve.
            common = max(archs, key=lambda a: sum(e.arch == a for e in rt.zoo.graph.experts.values()))
            host_contention = {"load_slowdown_beside_batches": measure_load_contention(
                rt, dev, loads, int(executors["cpu"]), common, seed=seed),
                "load_slowdown_beside_loads": measure_load_beside_loads(rt, dev, loads, max(1, load_threads - 1)),
                "batch_arch": common}
        if bar:
            bar.update()
    host = measure_loads(rt, None, load_samples, drop_cache)
    if bar:
        bar.update()
        bar.close()
    profile = {
        "schema": SCHEMA,
        "device": {"platform": platform.platform(), "processor": platform.processor(),
                   "jax_devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()},
        "jax_version": jax.__version__,
        "measured_at": time.time(),  # unix time; a cached profile's age (profiler.trust)
        "settings": {"batch_sizes": list(batch_sizes), "repeats": repeats, "warmup": warmup, "load_samples": load_samples,
                     "drop_page_cache": drop_cache, "plateau_tol": 0.10, "seed": seed,
                     "heldout_sizes": list(heldout_sizes)},
        "kinds": out_kinds,
        "host_cache_loads": {"disk": host["disk"]},
    }
    if host_contention is not None:
        profile["host"] = {"cores": os.cpu_count(), **host_contention}
    # The simulator's clock also needs the loop's own cost per event, timed on this profile:
    # serving on these executors when they are given, else the policies' cost alone.
    if executors:
        profile["overheads"] = {**loop_overhead.measure_serving_loop_s(rt, profile, dict(executors),
                                                                       num_requests=loop_requests, seed=seed,
                                                                       cpu_devices=cpu_devices),
                                "loop_measured": "serving"}
    else:
        profile["overheads"] = {"loop_s_per_event": loop_overhead.measure_loop_s_per_event(rt.zoo.graph, profile),
                                "loop_measured": "policies"}
    return profile
