"""Two concurrent expert loads on this machine: real time vs what the simulator predicts (issue #22).

    python scripts/concurrent_loads.py --out experiments/sim_validation [--rounds 100] [overrides ...]

The real side uses the demo zoo's real ``Runtime`` exactly as the engine's loader threads do: a
load is ``Runtime.restore(expert, device)`` (Orbax read in a reader process, then the copy and
unpack onto the CPU executor's device); two concurrent loads are two such restores started
together from two threads (``backend.load_threads: 2``), on two different experts of one
architecture. Each round times one load alone, then two together, with the page cache warm (as
the demo runs: the zoo's 31 MB stay in RAM) and cold (``drop_page_cache`` before each load, so
the read comes from the disk). Figures are medians over the rounds, interleaved so that this
shared machine's drift hits every case alike.

The simulated side runs the same loads through ``engine/sim.py``'s ``SimBackend`` with the
measured profile (``api.load_cost_model``: this machine's cached profile) and the engine's lanes:
as the engine would build them, the measured profile has no ``parts``, so each load is one
host-core job (max-min over the profile's host cores) — two at once on two cores take as long as
one. A second simulation splits each load into its disk read and the rest, with the read's share
measured here (the checkpoint's files read cold with plain ``open().read()`` against a cold
restore): what the shared-disk model of issue #22 predicts for cold loads on this machine.
Writes ``concurrent_loads.md`` and ``concurrent_loads.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_files(path: Path) -> int:
    """Read every file of a checkpoint (plain reads): bytes read."""
    n = 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb") as fh:
            n += len(fh.read())
    return n


def api_profile_cached(cfg: Any, model: Any) -> bool:
    from coserve_jax.api import profile_cache_path

    return cfg.hardware.profile is not None or profile_cache_path(cfg, model).exists()


def measured_setup(overrides: list[str], who: str) -> tuple[Any, Any, Any, Any]:
    """The demo setup (or ``overrides``) on this machine: its config, model, cached measured
    profile (exits with a hint when there is none) and real runtime."""
    import os

    from coserve_jax.config import compose, parse_config

    cfg = parse_config(compose(["profiler.max_drift=null", *overrides]))
    # Before anything imports JAX (coserve_jax.api does): the profile's cache key has the devices.
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={cfg.hardware.cpu_devices}").strip()
    from coserve_jax.api import load_cost_model, load_model, make_runtime

    model = load_model(cfg, progress=False)
    if not api_profile_cached(cfg, model):
        sys.exit(f"{who}: no cached profile of this machine for this setup; measure it first "
                 "(python -m coserve_jax.run +experiment=profile)")
    cost = load_cost_model(cfg, model, progress=False)  # the cached measured profile of this machine
    return cfg, model, cost, make_runtime(cfg, model)


def simulate(cost: Any, load_threads: int, sizes: list[int], disk_share: float | None = None) -> list[float]:
    """Seconds each load of ``sizes`` takes when all start together in the simulator (CPU pool,
    from disk), with the engine's lanes and the profile's host; ``disk_share`` splits each load
    into a disk read (that share of its seconds) and a CPU part."""
    from coserve_jax.engine.loop import LoadDone
    from coserve_jax.engine.sim import SimBackend
    from coserve_jax.types import LoadJob, Tier

    be = SimBackend(load_threads, host_cores=cost.host_cores, load_slowdown=cost.load_slowdown,
                    load_slowdown_loads=cost.load_slowdown_loads)
    for i, size in enumerate(sizes):
        s = cost.load_latency_s("cpu", Tier.DISK, size)
        parts = cost.load_parts_s("cpu", Tier.DISK, size)  # () for a measured profile: as the engine does
        if disk_share is not None:
            parts = (("disk", disk_share * s), ("cpu", (1 - disk_share) * s))
        be.start_load(LoadJob(i, f"ex{i}:cpu", f"e{i}", size, Tier.DISK, i, predicted_s=s, parts=parts))
    done: dict[int, float] = {}
    while (ev := be.next_event(None)) is not None:
        assert isinstance(ev, LoadDone)
        done[ev.job.load_id] = be.now()
    return [done[i] for i in range(len(sizes))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="experiments/sim_validation")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--arch", default=None, help="architecture of the two experts (default: the classifiers')")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (default: the demo setup)")
    args = ap.parse_args(argv)

    cfg, model, cost, rt = measured_setup(args.overrides, "concurrent_loads")
    import jax

    from coserve_jax.store.disk import drop_page_cache
    from coserve_jax.types import Role

    try:
        graph = model.graph
        arch = args.arch or next(e.arch for e in graph.experts.values() if e.role == Role.PRELIMINARY)
        experts = sorted((e for e in graph.experts.values() if e.arch == arch), key=lambda e: e.expert_id)[:6]
        device = rt.device("cpu", 0)
        for e in experts[:2]:  # untimed: reader start-up, the unpacker's compile for this device
            jax.block_until_ready(rt.restore(e.expert_id, device))

        def load(e: Any, cold: bool, out: list[float], i: int, barrier: threading.Barrier | None) -> None:
            if cold:
                drop_page_cache(e.checkpoint_path)
            if barrier is not None:
                barrier.wait()
            t = time.perf_counter()
            jax.block_until_ready(rt.restore(e.expert_id, device))
            out[i] = time.perf_counter() - t

        times: dict[str, list[float]] = {k: [] for k in ("warm_alone", "warm_pair", "warm_pair_span",
                                                        "cold_alone", "cold_pair", "cold_pair_span",
                                                        "cold_read", "cold_restore")}
        for r in range(args.rounds):
            a, b = experts[(2 * r) % len(experts)], experts[(2 * r + 1) % len(experts)]
            for cold in (False, True):
                tag = "cold" if cold else "warm"
                one = [0.0]
                load(a, cold, one, 0, None)
                times[f"{tag}_alone"].append(one[0])
                two = [0.0, 0.0]
                barrier = threading.Barrier(2)
                t0 = time.perf_counter()
                threads = [threading.Thread(target=load, args=(e, cold, two, i, barrier)) for i, e in enumerate((a, b))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                times[f"{tag}_pair"] += two
                times[f"{tag}_pair_span"].append(time.perf_counter() - t0)
            # The read's share of a cold load: plain reads of the files vs a full restore, both cold.
            drop_page_cache(a.checkpoint_path)
            t = time.perf_counter()
            read_files(Path(a.checkpoint_path))
            times["cold_read"].append(time.perf_counter() - t)
            one = [0.0]
            load(a, True, one, 0, None)
            times["cold_restore"].append(one[0])
    finally:
        rt.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    size = experts[0].param_bytes
    threads = cfg.backend.load_threads
    sim_alone = simulate(cost, threads, [size])[0]
    sim_pair = simulate(cost, threads, [size, size])
    share = min(max(med["cold_read"] / med["cold_restore"], 0.0), 1.0)
    split_alone = simulate(cost, threads, [size], share)[0]
    split_pair = simulate(cost, threads, [size, size], share)
    rows = [
        ("one load, page cache warm", med["warm_alone"], sim_alone, None),
        ("each of two at once, warm", med["warm_pair"], max(sim_pair), None),
        ("one load, page cache cold", med["cold_alone"], sim_alone, split_alone),
        ("each of two at once, cold", med["cold_pair"], max(sim_pair), max(split_pair)),
    ]
    ratio = {"warm": med["warm_pair"] / med["warm_alone"], "cold": med["cold_pair"] / med["cold_alone"]}
    lines = [
        f"### Two concurrent loads: real vs simulated ({arch}, {size / 1e6:.2f} MB, {args.rounds} rounds, "
        f"{threads} load lanes, profile host cores {cost.host_cores})", "",
        "| case | real, median ms | sim (measured profile, as the engine builds loads) ms | error | "
        "sim with the disk read split off (shared disk) ms | error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, real, sim, split in rows:
        err = f"{100 * (sim / real - 1):+.0f}%"
        split_cell = "—" if split is None else f"{1e3 * split:.2f}"
        split_err = "—" if split is None else f"{100 * (split / real - 1):+.0f}%"
        lines.append(f"| {name} | {1e3 * real:.2f} | {1e3 * sim:.2f} | {err} | {split_cell} | {split_err} |")
    lines += ["",
              f"- Real: two at once take ×{ratio['warm']:.2f} (warm) and ×{ratio['cold']:.2f} (cold) one load alone; "
              f"simulated (measured profile) ×{max(sim_pair) / sim_alone:.2f}; with the read split off "
              f"×{max(split_pair) / split_alone:.2f}.",
              f"- Read share of a cold load: plain reads of its files cold {1e3 * med['cold_read']:.2f} ms against a "
              f"cold restore {1e3 * med['cold_restore']:.2f} ms = {share:.2f}.",
              f"- Wall span of the pair (both started together): warm {1e3 * med['warm_pair_span']:.2f} ms, "
              f"cold {1e3 * med['cold_pair_span']:.2f} ms.",
              f"- Profile: {cost.sha} ({(cost.trust or {}).get('path', '?')})."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrent_loads.md").write_text("\n".join(lines) + "\n")
    (out / "concurrent_loads.json").write_text(json.dumps(
        {"arch": arch, "bytes": size, "rounds": args.rounds, "load_threads": threads, "host_cores": cost.host_cores,
         "profile_sha": cost.sha, "real_s": times, "real_median_s": med, "read_share": share,
         "sim_s": {"alone": sim_alone, "pair": sim_pair, "split_alone": split_alone, "split_pair": split_pair}},
        indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
