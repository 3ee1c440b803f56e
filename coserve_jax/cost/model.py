"""The Profile (profile.json) and the cost model every policy and the simulator read.

Schema ``coserve_jax.profile/1`` (all times in seconds, sizes in bytes)::

    {
      "schema": "coserve_jax.profile/1",
      "device": {...free-form description...}, "jax_version": "...", "settings": {...},
      "kinds": {                          # executor kinds: "cpu", "gpu", ...
        "<kind>": {
          "archs": {
            "<arch>": {
              "k_s": float, "b_s": float,           # batch latency = k_s * n + b_s
              "max_batch": int,                     # where per-image latency plateaus
              "compile_s": float, "param_bytes": int,
              "activation_bytes": {"<n>": int, ...} # working memory of a batch of n
            }
          },
          "loads": {"disk": {"a_s": float, "b_s_per_byte": float},   # into a pool of this kind
                    "host": {"a_s": float, "b_s_per_byte": float}}
        }
      },
      "host_cache_loads": {"disk": {"a_s": float, "b_s_per_byte": float}},  # disk -> host cache
      # optional in any load fit: "parts": {"disk": share, "cpu": share, "link": share}, the
      # shares of the load's seconds spent reading the disk, deserialising on a host core and
      # copying over the device's link, in that order (the simulator shares each resource;
      # engine/sim.py). Without it a load is one undivided job, as before.
      "overheads": {"dispatch_s": float,     # optional: per-batch engine overhead
                    "batch_handoff_s": float,    # optional: per-batch hand-offs between the loop and
                                                 # a worker thread (a fixed delay in the simulator)
                    "loop_s_per_event": float,   # optional: the loop's own time per completion
                    "loop_s_per_task": float,    # optional: ... plus this per task it completes
                    "loop_s_per_arrival": float},  # optional: ... per arrival (default: per event)
      "host": {"cores": int,                 # optional: cores the simulated host shares
                                             # (default: device.cpu_count, else 1)
               "load_slowdown_beside_batches": [1.0, float, ...],  # optional: a host load runs
                                             # that many times slower beside 0, 1, ... CPU batches
               "load_slowdown_beside_loads": [1.0, float, ...]}  # optional: ... beside 0, 1, ...
    }                                        # other host loads

Extra keys are allowed everywhere (measurement tables, provenance, citations).
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coserve_jax.metrics.results import read_json, write_json_atomic
from coserve_jax.types import Tier

SCHEMA = "coserve_jax.profile/1"
LOAD_PARTS = ("disk", "cpu", "link")  # the order a split load's parts run in
HOST_POOL_KIND = "host"


class ProfileError(ValueError):
    """A profile is missing a figure the cost model needs."""


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ProfileError(f"profile: {where}.{key} is missing")
    return d[key]


class CostModel:
    """Predicts batch latency, load latency and memory from a Profile.

    Policies and the simulator see costs only through this object.
    """

    def __init__(self, profile: Mapping[str, Any]):
        if profile.get("schema") != SCHEMA:
            raise ProfileError(f"profile: schema must be {SCHEMA!r}, got {profile.get('schema')!r}")
        self.profile: dict[str, Any] = copy.deepcopy(dict(profile))
        kinds = _require(self.profile, "kinds", "profile")
        if not kinds:
            raise ProfileError("profile: kinds is empty")
        self._act: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for kind, kd in kinds.items():
            for arch, ad in _require(kd, "archs", f"kinds.{kind}").items():
                for key in ("k_s", "b_s", "max_batch"):
                    _require(ad, key, f"kinds.{kind}.archs.{arch}")
                pts = sorted((int(n), int(b)) for n, b in ad.get("activation_bytes", {}).items())
                self._act[(kind, arch)] = ([n for n, _ in pts], [b for _, b in pts])
            _require(kd, "loads", f"kinds.{kind}")
        self._fits: dict[tuple[str, Tier], Mapping[str, Any]] = {}
        self.sha = hashlib.sha256(json.dumps(self.profile, sort_keys=True).encode()).hexdigest()[:16]
        # How far this profile can be trusted here: its source, age and live drift check, set by
        # profiler/cache.py (load_cost_model, with profiler/trust.py); None for a cost model built directly.
        self.trust: dict[str, Any] | None = None

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        return cls(read_json(path, ProfileError, "profile"))

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.profile)

    # ---- lookups -----------------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.profile["kinds"])

    def arch(self, kind: str, arch: str) -> Mapping[str, Any]:
        try:
            return self.profile["kinds"][kind]["archs"][arch]
        except KeyError:
            raise ProfileError(
                f"profile has no figures for architecture {arch!r} on executor kind {kind!r}"
            ) from None

    def batch_latency_s(self, kind: str, arch: str, n: int) -> float:
        a = self.arch(kind, arch)
        return float(a["k_s"]) * n + float(a["b_s"])

    def max_batch(self, kind: str, arch: str) -> int:
        return int(self.arch(kind, arch)["max_batch"])

    def activation_bytes(self, kind: str, arch: str, n: int) -> int:
        """Working memory of a batch of n: piecewise-linear in the measured points."""
        self.arch(kind, arch)
        ns, bs = self._act[(kind, arch)]
        if not ns:
            return 0
        if len(ns) == 1:
            return int(math.ceil(bs[0] * n / ns[0]))
        i = bisect.bisect_left(ns, n)
        if i < len(ns) and ns[i] == n:
            return bs[i]
        lo, hi = (0, 1) if i == 0 else (len(ns) - 2, len(ns) - 1) if i >= len(ns) else (i - 1, i)
        slope = (bs[hi] - bs[lo]) / (ns[hi] - ns[lo])
        return max(0, int(math.ceil(bs[lo] + slope * (n - ns[lo]))))

    def _load_fit(self, pool_kind: str, src: Tier) -> Mapping[str, Any]:
        hit = self._fits.get((pool_kind, src))
        if hit is not None:
            return hit
        if pool_kind == HOST_POOL_KIND:
            table = self.profile.get("host_cache_loads", {})
        else:
            table = self.profile["kinds"].get(pool_kind, {}).get("loads", {})
        key = src.name.lower()
        if key not in table:
            raise ProfileError(f"profile has no load figures from {key} into a {pool_kind} pool")
        self._fits[(pool_kind, src)] = table[key]
        return table[key]

    def load_latency_s(self, pool_kind: str, src: Tier, size_bytes: int) -> float:
        """Seconds to bring an expert of size_bytes from tier src into a pool of pool_kind."""
        fit = self._load_fit(pool_kind, src)
        return float(fit["a_s"]) + float(fit["b_s_per_byte"]) * size_bytes

    def load_parts_s(self, pool_kind: str, src: Tier, size_bytes: int) -> tuple[tuple[str, float], ...]:
        """The load's parts in order, (resource, seconds), where the profile's fit splits it
        (``parts``: shares of its seconds); () when it does not."""
        parts = self._load_fit(pool_kind, src).get("parts")
        if not parts:
            return ()
        total = self.load_latency_s(pool_kind, src, size_bytes)
        norm = sum(float(v) for v in parts.values())
        order = [r for r in LOAD_PARTS if r in parts] + sorted(set(parts) - set(LOAD_PARTS))
        return tuple((r, total * float(parts[r]) / norm) for r in order if float(parts[r]) > 0)

    def has_load(self, pool_kind: str, src: Tier) -> bool:
        if (pool_kind, src) in self._fits:
            return True
        try:
            self._load_fit(pool_kind, src)
            return True
        except ProfileError:
            return False

    @property
    def loop_s_per_event(self) -> float:
        """The engine loop's own seconds per handled arrival or completion (simulator clock)."""
        return float(self.profile.get("overheads", {}).get("loop_s_per_event", 0.0))

    @property
    def loop_s_per_arrival(self) -> float:
        """The engine loop's own seconds per arrival it takes in (default: ``loop_s_per_event``)."""
        return float(self.profile.get("overheads", {}).get("loop_s_per_arrival", self.loop_s_per_event))

    @property
    def host_cores(self) -> int:
        """Cores the simulator's host shares among CPU batches and loads: the measuring machine's
        CPU count for a measured profile; 1 (plain processor sharing) when the profile has none."""
        return int(self.profile.get("host", {}).get("cores") or self.profile.get("device", {}).get("cpu_count") or 1)

    @property
    def load_slowdown(self) -> tuple[float, ...]:
        """How much slower a host load runs beside 0, 1, 2, ... CPU batches (profiler-measured;
        empty when the profile has none, e.g. the paper's hardware: core sharing alone)."""
        return tuple(float(r) for r in self.profile.get("host", {}).get("load_slowdown_beside_batches") or ())

    @property
    def load_slowdown_loads(self) -> tuple[float, ...]:
        """How much slower a host load runs beside 0, 1, ... other host loads (profiler-measured;
        empty when the profile has none: core sharing alone)."""
        return tuple(float(r) for r in self.profile.get("host", {}).get("load_slowdown_beside_loads") or ())

    @property
    def dispatch_s(self) -> float:
        return float(self.profile.get("overheads", {}).get("dispatch_s", 0.0))

    @property
    def loop_s_per_task(self) -> float:
        """The engine loop's own seconds per task a completion routes, on top of
        ``loop_s_per_event`` (0 when the profile has none: a flat cost per completion)."""
        return float(self.profile.get("overheads", {}).get("loop_s_per_task", 0.0))

    @property
    def batch_handoff_s(self) -> float:
        """A batch's hand-offs between the real loop and its worker thread, beyond its forward
        (profiler-measured while serving, ``engine/real.py: BatchHandoffs``; 0 when the profile
        has none): the simulator delivers each batch's completion that much after its compute."""
        return float(self.profile.get("overheads", {}).get("batch_handoff_s", 0.0))
