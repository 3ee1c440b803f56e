"""Profile trust: is a cached measured profile still this machine's?

``profiler/cache.py`` (``load_cost_model``) reuses a measured profile (``profile-<hash>.json`` in the zoo dir) run after
run. One measured while the machine was busy (or before its load changed) silently misleads every
cost-aware policy, so before a real-backend run reuses it, ``check_profile`` times a few live
figures and compares them with the profile's predictions, per executor kind:

- per architecture, a served batch at the largest profiled batch size (``batch_timer``: the padded
  path, compiled and warmed up first) against the profile's ``K·n + B``;
- per architecture, the disk -> pool load of one expert (``LoadSampler``, the profiler's own load
  timing) against the profile's ``a + b·bytes`` disk fit (the load every switch from disk pays;
  host -> device copies are not checked).

Each figure is timed ``repeats`` (5) times in interleaved rounds (a batch, then a load, per
architecture, as the profiler times a load after each batch round), so a burst of other work on
a shared machine hits one round, not all of one figure's repeats. The profile holds medians; the
check compares them with the live range ``[fastest, median]`` of the repeats, and the drift of a
figure is the symmetric ratio ``max(x, p) / min(x, p) - 1`` between the prediction ``p`` and the
nearest end ``x`` of that range (0 inside it):

- the machine is slower than the profile only if even the fastest repeat is (noise only slows
  runs down, so a busy moment during the check does not read as drift);
- the profile is too slow (measured on a busy machine) only if even the median repeat is faster
  (the fastest of a few sits below a median by noise alone: compared with the fastest, a
  freshly measured tiny-zoo profile read load drifts of 0.3-1.1 on this 2-core machine).

Symmetric, so a profile three times too slow and one three times too fast both read 2.0
(``|x/p - 1|`` would read 0.67 and 2.0: a busy-machine profile would look less wrong than it is).
The check passes when the largest drift is at most ``profiler.max_drift`` (0.25: every figure
within ×0.8..×1.25 of the profile). A first pass over it is confirmed by as many rounds again
(the drift is then that of all the timings), and only then does the caller measure the whole
profile again: a re-measure costs minutes on the demo, a check about a second.

On this shared 2-core machine (load average 2-7 from other work), checks of a tiny-zoo profile
measured minutes before took 0.4-2.9 s and read a max drift of 0.0-0.28 (batches at ×0.78-1.3
of the profile, loads ×0.8-1.7 at their median); a profile with K and B tripled read 1.5-2.0.
On the demo zoo a check took 0.75-1.3 s of timing, plus 5-8.5 s the first time in a process to
compile and warm up the largest batch and restore onto the device, which ``ArmRunner.warm_up``
then does not repeat (warm-up alone 11.6-16.1 s; check and warm-up 11.8-13.6 s); max drift 0.02-0.23.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from coserve_jax.cost.model import CostModel
from coserve_jax.profiler.microbench import LoadSampler, batch_timer
from coserve_jax.types import Tier

log = logging.getLogger(__name__)

CHECK_REPEATS = 5  # timed rounds; each times every figure once


def drift(measured_s: float, predicted_s: float) -> float:
    """Symmetric relative gap: max(m, p) / min(m, p) - 1 (0 when equal; inf when one is <= 0)."""
    lo, hi = min(measured_s, predicted_s), max(measured_s, predicted_s)
    if lo <= 0:
        return 0.0 if hi <= 0 else math.inf
    return hi / lo - 1.0


def range_drift(timings_s: list[float], predicted_s: float) -> float:
    """``drift`` between a prediction and the nearest end of the timings' [fastest, median]
    (0 when the prediction lies inside; the module docstring says why)."""
    fastest, median = min(timings_s), float(np.median(timings_s))
    if predicted_s < fastest:
        return drift(fastest, predicted_s)
    if predicted_s > median:
        return drift(median, predicted_s)
    return 0.0


def profile_age(profile: dict[str, Any], path: str | Path | None, now: float | None = None
                ) -> tuple[float | None, str | None]:
    """Seconds since the profile was measured and where that time came from: the profile's
    ``measured_at`` (unix time, written by ``measure_profile``), else the file's mtime (profiles
    measured before ``measured_at`` existed), else (None, None)."""
    now = time.time() if now is None else now
    at = profile.get("measured_at")
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        return max(0.0, now - float(at)), "measured_at"
    if path is not None:
        try:
            return max(0.0, now - os.path.getmtime(path)), "mtime"
        except OSError:
            pass
    return None, None


def largest_batch(arch_profile: dict[str, Any]) -> int:
    """The largest batch size the profile measured for an architecture (else its max batch)."""
    sizes = (arch_profile.get("measured") or {}).get("batch_sizes") or []
    return int(max(sizes)) if sizes else int(arch_profile["max_batch"])


def check_profile(rt: Any, cost: CostModel, kinds: list[str] | tuple[str, ...], repeats: int = CHECK_REPEATS,
                  drop_cache: bool = False, seed: int = 0, max_drift: float | None = None) -> dict[str, Any]:
    """Time the live figures of the module docstring on ``rt`` (an ``engine.real.Runtime``) and
    compare them with ``cost``; returns ``{"measurements": [...], "max_drift", "passes", "setup_s",
    "check_s"}`` (``check_s`` in all, ``setup_s`` of it compiling and warming up before any timing).

    With ``max_drift``, a first pass over the bound is confirmed by a second pass of ``repeats``
    more rounds, and each figure's drift is then that of both passes' timings together: drift
    must last a few seconds, not one busy moment, before the caller re-measures a whole profile.
    Each measurement is logged; kinds the profile lacks are skipped."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    zoo_archs = {e.arch for e in rt.zoo.graph.experts.values()}
    plans = []  # per kind: (kind, archs, batch sizes, batch timers, load sampler, batch timings)
    for kind in kinds:
        if kind not in cost.profile["kinds"]:
            continue
        dev = rt.device(kind, 0)
        archs = sorted(a for a in cost.profile["kinds"][kind]["archs"] if a in zoo_archs)
        sizes = {a: largest_batch(cost.arch(kind, a)) for a in archs}
        timers = {a: batch_timer(rt, dev, a, sizes[a], rng=rng) for a in archs}
        loads = LoadSampler(rt, dev, samples=1, drop_cache=drop_cache) if cost.has_load(kind, Tier.DISK) else None
        plans.append((kind, archs, sizes, timers, loads, {a: [] for a in archs}))
    setup_s = time.perf_counter() - t0  # compiles, first restores: what runner.warm_up would do

    def timed_pass() -> None:
        for _kind, archs, _sizes, timers, loads, batch_s in plans:
            for _ in range(max(repeats, 1)):  # interleaved rounds: a batch, then a load, per architecture
                for a in archs:
                    batch_s[a].append(timers[a]())
                    if loads is not None:
                        loads.sample()  # round-robin over its experts: one per architecture

    def compare() -> list[dict[str, Any]]:
        out = []
        for kind, archs, sizes, _timers, loads, batch_s in plans:
            rows = [({"kind": kind, "what": "batch", "arch": a, "n": sizes[a],
                      "predicted_s": cost.batch_latency_s(kind, a, sizes[a])}, batch_s[a]) for a in archs]
            rows += [({"kind": kind, "what": "load", "arch": e.arch, "expert": e.expert_id, "bytes": e.param_bytes,
                       "predicted_s": cost.load_latency_s(kind, Tier.DISK, e.param_bytes)}, seconds)
                     for e, seconds in (loads.disk_timings() if loads is not None else []) if e.arch in archs and seconds]
            for m, timings in rows:
                m.update(fastest_s=min(timings), median_s=float(np.median(timings)), repeats=len(timings),
                         drift=range_drift(timings, m["predicted_s"]))
                out.append(m)
        return out

    timed_pass()
    measurements, passes = compare(), 1
    if max_drift is not None and max((m["drift"] for m in measurements), default=0.0) > max_drift:
        timed_pass()  # confirm with as many rounds again
        measurements, passes = compare(), 2
    for m in measurements:
        what = f"batch of {m['n']}" if m["what"] == "batch" else f"load of {m['expert']} ({m['bytes']} B)"
        log.info("profile check: %s %s %s: fastest %.2f ms, median %.2f ms of %d; profile predicts %.2f ms; "
                 "drift %.2f", m["kind"], m["arch"], what, 1e3 * m["fastest_s"], 1e3 * m["median_s"],
                 m["repeats"], 1e3 * m["predicted_s"], m["drift"])
    worst = max((m["drift"] for m in measurements), default=0.0)
    return {"measurements": measurements, "max_drift": worst, "passes": passes, "setup_s": setup_s,
            "check_s": time.perf_counter() - t0}
