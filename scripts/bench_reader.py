"""Checkpoint read latency in a loader thread vs a reader process, idle and beside a busy loop.

    python scripts/bench_reader.py [--reads 10] [--switch-interval 0.005]

Reads one demo classifier (the demo zoo is built if missing) onto the first CPU device, as the
real backend does, ``--reads`` times per cell, and prints the median and max milliseconds for:
a read in this thread vs through ``store.reader.ProcessReader``; with the interpreter otherwise
idle vs beside a thread that keeps the GIL busy (what the engine's loop does while it takes in a
burst of arrivals). Numbers go into store/reader.py's docstring.
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
    ap.add_argument("--switch-interval", type=float, default=sys.getswitchinterval())
    args = ap.parse_args(argv)
    sys.setswitchinterval(args.switch_interval)

    import jax

    from coserve_jax.api import as_run_config, load_model
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
