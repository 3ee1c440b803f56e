"""Microbenchmarks of a real zoo on this machine -> a Profile (schema coserve_jax.profile/1).

Per executor kind and per architecture (not per expert): batch latency at several batch sizes
through the same path the real backend serves (stack, pad to the bucket, device_put, jitted
forward, device_get), fitted as latency = K·n + B by least squares; the maximum batch size is
the smallest n whose per-image latency is within ``plateau_tol`` of the best measured (the
paper's "per-image latency plateaus", Fig. 5); activation bytes per batch size from XLA's
compiled memory analysis; load seconds per tier transition fitted as a + b·bytes over experts of
different sizes.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from coserve_jax.engine.real import Runtime, bucket_size
from coserve_jax.profiler.cost_model import SCHEMA
from coserve_jax.store.checkpoint import restore_expert
from coserve_jax.store.disk import drop_page_cache


def fit_linear(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept (slope 0 when x has one distinct value)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(np.unique(x)) < 2:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def plateau_batch(sizes: Sequence[int], latency_s: Sequence[float], tol: float = 0.10) -> int:
    """Smallest batch whose per-image latency is within tol of the best per-image latency."""
    per = [t / n for n, t in zip(sizes, latency_s)]
    best = min(per)
    return next(n for n, p in zip(sizes, per) if p <= best * (1 + tol))


def _time_batch(fwd: Any, state: Any, images: np.ndarray, device: jax.Device) -> float:
    t = time.perf_counter()
    n = len(images)
    x = np.zeros((bucket_size(n), *images.shape[1:]), np.float32)
    x[:n] = images
    jax.device_get(fwd(state, jax.device_put(x, device)))
    return time.perf_counter() - t


def _activation_bytes(fwd: Any, state: Any, shape: tuple[int, ...], n: int, device: jax.Device) -> int:
    x = jax.device_put(np.zeros((bucket_size(n), *shape), np.float32), device)
    ma = fwd.lower(state, x).compile().memory_analysis()
    if ma is None:
        return int(np.prod((bucket_size(n), *shape)) * 4)
    return int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
               - sum(a.nbytes for a in jax.tree.leaves(state)))


def measure_batches(rt: Runtime, kind: str, device: jax.Device, arch: str, batch_sizes: Sequence[int],
                    repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    zoo = rt.zoo
    expert = next(e for e in zoo.graph.experts.values() if e.arch == arch)
    _, abstract = zoo.abstract_state(arch)
    state = jax.device_put(restore_expert(expert.checkpoint_path, abstract, expert_id=expert.expert_id), device)
    shape = tuple(zoo.archs[arch].input_shape)
    fwd = rt.forward(arch)
    t = time.perf_counter()
    _time_batch(fwd, state, rng.random((1, *shape), np.float32), device)
    compile_s = time.perf_counter() - t
    lat = []
    for n in batch_sizes:
        imgs = rng.random((n, *shape), np.float32)
        _time_batch(fwd, state, imgs, device)  # compile this bucket
        lat.append(float(np.median([_time_batch(fwd, state, imgs, device) for _ in range(repeats)])))
    k, b = fit_linear(batch_sizes, lat)
    return {
        "k_s": max(k, 1e-6), "b_s": max(b, 0.0),
        "max_batch": plateau_batch(batch_sizes, lat),
        "compile_s": compile_s,
        "param_bytes": expert.param_bytes,
        "activation_bytes": {str(n): _activation_bytes(fwd, state, shape, n, device) for n in batch_sizes},
        "measured": {"batch_sizes": list(batch_sizes), "latency_s": lat},
    }


def measure_loads(rt: Runtime, device: jax.Device | None, samples: int, drop_cache: bool) -> dict[str, Any]:
    """Fit disk->pool, host->pool (and disk->host when device is None) as a + b·bytes."""
    zoo = rt.zoo
    by_arch: dict[str, list] = {}
    for e in sorted(zoo.graph.experts.values(), key=lambda e: e.expert_id):
        by_arch.setdefault(e.arch, []).append(e)
    disk_x, disk_y, host_y = [], [], []
    for arch, experts in by_arch.items():
        _, abstract = zoo.abstract_state(arch)
        for e in experts[:samples]:
            if drop_cache:
                drop_page_cache(e.checkpoint_path)
            t = time.perf_counter()
            host = restore_expert(e.checkpoint_path, abstract, expert_id=e.expert_id)
            t_restore = time.perf_counter() - t
            t = time.perf_counter()
            if device is not None:
                jax.block_until_ready(jax.device_put(host, device))
            t_put = time.perf_counter() - t
            disk_x.append(e.param_bytes)
            disk_y.append(t_restore + t_put)
            host_y.append(t_put)
    bd, ad = fit_linear(disk_x, disk_y)
    bh, ah = fit_linear(disk_x, host_y)
    return {
        "disk": {"a_s": max(ad, 0.0), "b_s_per_byte": max(bd, 0.0),
                 "samples": {"bytes": disk_x, "seconds": disk_y}, "page_cache_dropped": drop_cache},
        "host": {"a_s": max(ah, 0.0), "b_s_per_byte": max(bh, 0.0),
                 "samples": {"bytes": disk_x, "seconds": host_y}},
    }


def measure_profile(rt: Runtime, kinds: Sequence[str], batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
                    repeats: int = 3, load_samples: int = 3, drop_cache: bool = False,
                    seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Measure every architecture on one device of each kind; return a Profile dict."""
    rng = np.random.default_rng(seed)
    archs = sorted({e.arch for e in rt.zoo.graph.experts.values()})
    work = [(k, a) for k in kinds for a in archs]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(work) + len(kinds) + 1, desc="profile", unit="step")
    out_kinds: dict[str, Any] = {}
    for kind in kinds:
        dev = rt.device(kind, 0)
        out_kinds[kind] = {"archs": {}, "device": str(dev)}
        for arch in archs:
            out_kinds[kind]["archs"][arch] = measure_batches(rt, kind, dev, arch, batch_sizes, repeats, rng)
            if bar:
                bar.update()
        out_kinds[kind]["loads"] = measure_loads(rt, dev, load_samples, drop_cache)
        if bar:
            bar.update()
    host = measure_loads(rt, None, load_samples, drop_cache)
    if bar:
        bar.update()
        bar.close()
    return {
        "schema": SCHEMA,
        "device": {"platform": platform.platform(), "processor": platform.processor(),
                   "jax_devices": [str(d) for d in jax.devices()], "cpu_count": __import__("os").cpu_count()},
        "jax_version": jax.__version__,
        "settings": {"batch_sizes": list(batch_sizes), "repeats": repeats, "load_samples": load_samples,
                     "drop_page_cache": drop_cache, "plateau_tol": 0.10, "seed": seed},
        "kinds": out_kinds,
        "host_cache_loads": {"disk": host["disk"]},
    }
