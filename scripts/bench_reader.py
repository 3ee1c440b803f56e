"""Checkpoint read latency in a loader thread vs a reader process: alone, beside a busy thread,
and while serving.

    python scripts/bench_reader.py [--reads 10] [--serve-repeats 3]

1. Reads one demo classifier (the demo zoo is built if missing) onto the first CPU device, as
   the real backend does, ``--reads`` times per cell: in this thread vs through
   ``store.reader.ProcessReader``, with the interpreter otherwise idle vs beside a thread that
   never releases the GIL on its own (a worst case for the engine's loop in a burst).
2. Serves the default workload with ``coserve`` on the real backend with
   ``backend.load_processes=0`` (reads in the load threads) and ``=2`` (reader processes),
   interleaved, and reports mean seconds per load (the backend's own timing) and img/s.
Numbers go into store/reader.py's docstring.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=10)
    ap.add_argument("--serve-repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from coserve_jax.api import configure_jax_devices

    configure_jax_devices(2)  # the default hardware's two CPU executors, before JAX starts
    import jax

    from coserve_jax.api import as_run_config, load_model, run_experiment
    from coserve_jax.store.checkpoint import restore_expert
    from coserve_jax.store.reader import ProcessReader

    cfg, _ = as_run_config(["backend=real"])
    zoo = load_model(cfg).zoo
    info = min((e for e in zoo.graph.experts.values() if e.arch == "resnet_tiny"), key=lambda e: e.expert_id)
    abstract = zoo.abstract_state(info.arch)
    device = jax.devices("cpu")[0]
    reader = ProcessReader(1)

    def read_ms(via: ProcessReader | None) -> float:
        t = time.perf_counter()
        jax.block_until_ready(restore_expert(info.checkpoint_path, abstract, device=device,
                                             expert_id=info.expert_id, reader=via))
        return 1e3 * (time.perf_counter() - t)

    stop = threading.Event()

    def busy() -> None:  # pure Python work that never blocks, like a loop behind on arrivals
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    print(f"{info.expert_id} ({info.param_bytes:,} B), {args.reads} reads per cell, "
          f"switch interval {1e3 * sys.getswitchinterval():.1f} ms")
    print("| read path | idle: median (max) ms | beside a busy thread: median (max) ms |")
    print("| --- | --- | --- |")
    try:
        for label, via in (("loader thread", None), ("reader process", reader)):
            for _ in range(3):
                read_ms(via)  # warm: Orbax start-up, the unpacker's compile
            idle = [read_ms(via) for _ in range(args.reads)]
            stop.clear()
            th = threading.Thread(target=busy, daemon=True)
            th.start()
            try:
                loaded = [read_ms(via) for _ in range(args.reads)]
            finally:
                stop.set()
                th.join()
            print(f"| {label} | {statistics.median(idle):.1f} ({max(idle):.1f}) "
                  f"| {statistics.median(loaded):.1f} ({max(loaded):.1f}) |")
    finally:
        reader.close()

    print("\nServing (coserve, default workload), interleaved runs:")
    print("| read path | mean s per load | img/s (median of runs) |")
    print("| --- | --- | --- |")
    rows: dict[str, list] = {"0": [], "2": []}
    for _ in range(args.serve_repeats):
        for n in rows:
            res = run_experiment(["arms=[coserve]", "repeats=1", f"backend.load_processes={n}"],
                                 f"runs/bench_reader/p{n}", progress=False)["arms"]["coserve"]
            rows[n].append((res["time_s"]["load"] / max(1, res["switches"]["count"]), res["throughput_rps"]))
    for n, label in (("0", "loader threads"), ("2", "reader processes")):
        per_load = statistics.median(r[0] for r in rows[n])
        rps = statistics.median(r[1] for r in rows[n])
        print(f"| {label} | {per_load * 1e3:.1f} ms | {rps:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
