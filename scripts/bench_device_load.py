"""The load path against the hardware's own speeds: the engine's switches vs plain copies.

    python scripts/bench_device_load.py model=pcb_synth --kind gpu --out load.json
    python scripts/bench_device_load.py model=pcb_synth_tiny --kind cpu --repeats 3   # CPU dry run

Per architecture of the zoo (one expert each, ``--repeats`` timings, medians):

1. host -> device, bytes/s:
   - ``engine_pinned``: the engine's switch from the host cache (``store/host_tier.py``): the
     expert's packed vectors in ``pinned_host`` memory -> one ``device_put`` per vector into
     device memory -> the on-device unpack into leaves;
   - ``engine_numpy``: the same from numpy vectors (the tier where no host memory kind exists);
   - ``contiguous_pinned`` / ``contiguous_numpy``: one ``device_put`` of a single contiguous
     buffer of the same bytes (the copy engine's speed, no unpack).
2. disk -> host, bytes/s, with the page cache dropped (``cold``, after ``os.sync``) and kept
   (``warm``): ``engine``: ``read_packed`` (the Orbax read and checks the engine's reader
   processes run) vs ``raw``: reading the checkpoint's files into memory.
3. disk -> device, warm page cache, through a reader process (``store.reader.ProcessReader``):
   ``lease``: the engine's load into a device pool (``store.checkpoint.unpack_onto``: the
   vectors go from the reader's staging buffer onto the device, then the unpack) vs ``copied``:
   the vectors copied out of the buffer first, as the engine loaded before (and as the host
   cache still does).
4. overlap: a thread runs batches of another expert on the device; switch seconds and the
   batches' rate, each alone and together (a switch that overlaps compute slows neither much).

Writes one JSON (``--out``) and prints a table. Host<->device copies here are explicit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any


def _median_s(fn, repeats: int) -> float:
    out = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _read_raw(path: Path) -> int:
    n = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(f, "rb", buffering=0) as fh:
            n += len(fh.read())
    return n


def measure_arch(zoo: Any, e: Any, dev: Any, repeats: int, pinned_ok: bool, reader: Any) -> dict[str, Any]:
    """Host->device, disk->host and disk->device figures of one expert (module docstring, 1-3)."""
    import jax
    import numpy as np

    from coserve_jax.store.checkpoint import leaf_specs, read_packed, unpack_onto, unpack_to_device
    from coserve_jax.store.disk import drop_page_cache
    from coserve_jax.store.host_tier import PINNED, to_device, to_host

    specs = leaf_specs(zoo.abstract_state(e.arch))
    path = Path(e.checkpoint_path)
    packed = read_packed(path, specs, e.expert_id)
    nbytes = int(sum(v.nbytes for k, v in packed.items() if k.startswith("flat_")))
    flat = np.concatenate([v.view(np.uint8) for k, v in packed.items() if k.startswith("flat_")])
    on_device = jax.sharding.SingleDeviceSharding(dev, memory_kind=dev.default_memory().kind)
    r: dict[str, Any] = {"expert": e.expert_id, "bytes": nbytes, "leaves": len(specs)}
    # --- host -> device ---
    paths = {"engine_numpy": lambda: unpack_to_device(packed, specs, dev),
             "contiguous_numpy": lambda: jax.device_put(flat, on_device)}
    if pinned_ok:
        copy = to_host(packed, PINNED, dev)
        flat_pinned = jax.block_until_ready(
            jax.device_put(flat, jax.sharding.SingleDeviceSharding(dev, memory_kind=PINNED)))
        paths["engine_pinned"] = lambda: to_device(copy, specs, dev)
        paths["contiguous_pinned"] = lambda: jax.device_put(flat_pinned, on_device)
    h2d: dict[str, Any] = {}
    for name, fn in paths.items():
        jax.block_until_ready(fn())  # compiles the unpacker, warms the allocator
        s = _median_s(lambda fn=fn: jax.block_until_ready(fn()), repeats)
        h2d[name] = {"s": s, "bytes_per_s": nbytes / s}
    for eng, ref in (("engine_pinned", "contiguous_pinned"), ("engine_numpy", "contiguous_numpy"),
                     ("engine_pinned", "contiguous_numpy")):
        if eng in h2d and ref in h2d:
            h2d[f"{eng}/{ref}"] = h2d[eng]["bytes_per_s"] / h2d[ref]["bytes_per_s"]
    r["host_to_device"] = h2d
    # --- disk -> host ---
    d2h: dict[str, Any] = {}
    reads = {"raw": lambda: _read_raw(path), "engine": lambda: read_packed(path, specs, e.expert_id)}
    for cache in ("cold", "warm"):
        for name, fn in reads.items():
            ts = []
            for _ in range(max(1, repeats)):
                if cache == "cold":
                    os.sync()  # a just-written checkpoint's dirty pages would stay cached
                    drop_page_cache(path)
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            s = statistics.median(ts)
            d2h[f"{name}_{cache}"] = {"s": s, "bytes_per_s": nbytes / s}
        d2h[f"engine/raw_{cache}"] = d2h[f"engine_{cache}"]["bytes_per_s"] / d2h[f"raw_{cache}"]["bytes_per_s"]
    d2h["checkpoint_file_bytes"] = _read_raw(path)
    r["disk_to_host"] = d2h
    # --- disk -> device, through a reader process ---
    loads = {name: functools.partial(unpack_onto, dev, path, specs, e.expert_id, reader, lease=name == "lease")
             for name in ("lease", "copied")}
    d2d: dict[str, Any] = {}
    for fn in loads.values():
        fn()  # warm: the reader's first read of this layout
    for name, fn in loads.items():
        s = _median_s(fn, repeats)
        d2d[name] = {"s": s, "bytes_per_s": nbytes / s}
    d2d["lease/copied"] = d2d["lease"]["bytes_per_s"] / d2d["copied"]["bytes_per_s"]
    r["disk_to_device"] = d2d
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides selecting the zoo, e.g. model=pcb_synth")
    ap.add_argument("--kind", default="gpu", help="device platform to load onto (gpu, cpu)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--overlap-s", type=float, default=3.0, help="seconds of batches per overlap phase")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the overlap's compute thread")
    ap.add_argument("--out", default=None, help="write the figures here (JSON)")
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    from coserve_jax.api import as_run_config, load_model
    from coserve_jax.engine.real import Runtime, run_padded
    from coserve_jax.store.checkpoint import leaf_specs, read_packed
    from coserve_jax.store.host_tier import NUMPY, PINNED, memory_kinds, to_device, to_host
    from coserve_jax.store.reader import ProcessReader

    cfg, _ = as_run_config(list(args.overrides))
    model = load_model(cfg, progress=False)
    zoo = model.zoo
    dev = jax.devices(args.kind)[0]
    pinned_ok = PINNED in memory_kinds(dev)
    by_arch: dict[str, Any] = {}
    for e in sorted(zoo.graph.experts.values(), key=lambda e: e.expert_id):
        by_arch.setdefault(e.arch, e)
    report: dict[str, Any] = {"device": str(dev), "platform": dev.platform, "jax": jax.__version__,
                              "memory_kinds": sorted(memory_kinds(dev)), "model": cfg.model.name,
                              "repeats": args.repeats, "archs": {}}
    reader = ProcessReader(1)
    try:
        for arch, e in sorted(by_arch.items()):
            report["archs"][arch] = measure_arch(zoo, e, dev, args.repeats, pinned_ok, reader)
    finally:
        reader.close()

    # --- overlap: switches beside running batches -----------------------------------------------
    arch = sorted(by_arch, key=lambda a: -by_arch[a].param_bytes)[0]  # the largest expert switches
    e = by_arch[arch]
    specs = leaf_specs(zoo.abstract_state(arch))
    packed = read_packed(Path(e.checkpoint_path), specs, e.expert_id)
    tier = PINNED if pinned_ok else NUMPY
    copy = to_host(packed, tier, dev)
    rt = Runtime(zoo, cfg.backend.compilation_cache_dir)
    other = next(x for x in sorted(zoo.graph.experts.values(), key=lambda x: x.expert_id) if x.arch == arch
                 and x.expert_id != e.expert_id) if sum(x.arch == arch for x in zoo.graph.experts.values()) > 1 else e
    weights = rt.restore(other.expert_id, dev)
    fwd = rt.forward(arch)
    images = np.random.default_rng(0).random((args.batch, *zoo.archs[arch].input_shape), np.float32)
    run_padded(fwd, weights, images, dev)  # compiled
    jax.block_until_ready(to_device(copy, specs, dev))

    def batches_for(seconds: float, stop: threading.Event | None = None) -> float:
        n, t0 = 0, time.perf_counter()
        while (time.perf_counter() - t0 < seconds) if stop is None else not stop.is_set():
            run_padded(fwd, weights, images, dev)
            n += 1
        return n / (time.perf_counter() - t0)

    switch_alone = _median_s(lambda: jax.block_until_ready(to_device(copy, specs, dev)), args.repeats)
    rate_alone = batches_for(args.overlap_s)
    stop = threading.Event()
    rate: list[float] = []
    th = threading.Thread(target=lambda: rate.append(batches_for(0, stop)), daemon=True)
    th.start()
    time.sleep(0.2)
    switches, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < args.overlap_s:
        t = time.perf_counter()
        jax.block_until_ready(to_device(copy, specs, dev))
        switches.append(time.perf_counter() - t)
    stop.set()
    th.join()
    rt.close()
    report["overlap"] = {
        "arch": arch, "tier": tier, "bytes": e.param_bytes, "batch": args.batch,
        "switch_s_alone": switch_alone, "switch_s_beside_batches": statistics.median(switches),
        "switches_beside_batches": len(switches),
        "batches_per_s_alone": rate_alone, "batches_per_s_during_switches": rate[0] if rate else None,
    }

    print(f"\nload path on {dev} ({cfg.model.name}); bytes/s as GB/s, medians of {args.repeats}")
    print("| arch | MB | host->dev engine pinned | contiguous pinned | engine numpy | contiguous numpy "
          "| disk->host engine cold | raw cold | engine warm | raw warm | disk->dev lease warm | copied warm |")
    print("| --- " * 12 + "|")
    for arch, r in report["archs"].items():
        h, d, dd = r["host_to_device"], r["disk_to_host"], r["disk_to_device"]
        g = lambda x: f"{x['bytes_per_s'] / 1e9:.2f}" if x else "—"  # noqa: E731
        print(f"| {arch} | {r['bytes'] / 1e6:.1f} | {g(h.get('engine_pinned'))} | {g(h.get('contiguous_pinned'))} "
              f"| {g(h['engine_numpy'])} | {g(h['contiguous_numpy'])} | {g(d['engine_cold'])} | {g(d['raw_cold'])} "
              f"| {g(d['engine_warm'])} | {g(d['raw_warm'])} | {g(dd['lease'])} | {g(dd['copied'])} |")
    o = report["overlap"]
    print(f"overlap ({o['arch']}, {o['tier']}): switch {o['switch_s_alone'] * 1e3:.1f} ms alone, "
          f"{o['switch_s_beside_batches'] * 1e3:.1f} ms beside batches; batches {o['batches_per_s_alone']:.1f}/s alone, "
          f"{o['batches_per_s_during_switches'] or 0:.1f}/s during switches")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
