"""How busy the host's cores are while each arm serves: CPU seconds of this process (the loop,
the executors' XLA work, the loader threads) and of the reader processes, against cores x wall.

    python scripts/host_utilisation.py [--arms coserve coserve_plus all_resident] [--repeats 5] [overrides ...]

Runs the arms on the real backend, interleaved (A B C A B C ...), on the default demo setup
(or the Hydra overrides given), and prints a Markdown table of each arm's median-throughput run:
img/s, wall seconds of the run, CPU seconds in this process and in the reader processes, and
utilisation = CPU seconds / (cores x wall). Linux only (reads /proc/<pid>/stat for the readers).

Why: on a 2-core machine an arm is slower either because it does more work (loads, batches,
loop events) or because cores sit idle while it waits; the split says which, and so which kind
of policy change can help (experiments/coserve_plus/README.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["coserve", "coserve_plus", "all_resident"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (backend is always real)")
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        ap.error("reads /proc: Linux only")

    from coserve_jax.api import as_run_config, make_trace, prepare_runner

    cfg, _ = as_run_config([f"arms=[{','.join(args.arms)}]", *args.overrides, "backend=real"])
    runner = prepare_runner(cfg, progress=False)
    cores = os.cpu_count() or 1
    runs: dict[str, list[tuple]] = {a.name: [] for a in cfg.arms}
    try:
        runner.warm_up(cfg.arms)
        requests = make_trace(cfg, runner.model.graph)
        images = runner.images(requests)
        reader = runner.runtime.reader
        for _ in range(args.repeats):
            for arm in cfg.arms:
                gc.collect()
                pids = reader.pids() if reader is not None else []
                r0, m0, t0 = sum(map(_proc_cpu_s, pids)), time.process_time(), time.perf_counter()
                s, _ = runner.run_arm(arm, requests, images, progress=False)
                wall = time.perf_counter() - t0
                main_s, read_s = time.process_time() - m0, sum(map(_proc_cpu_s, pids)) - r0
                runs[arm.name].append((s["throughput_rps"], wall, main_s, read_s,
                                       s["switches"]["count"], s["batches"]["count"]))
    finally:
        runner.close()
    print(f"{cores} cores; median-throughput run of {args.repeats} per arm\n")
    print("| arm | img/s | wall s | CPU s, this process | CPU s, readers | utilisation | switches | batches |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in runs.items():
        rps, wall, main_s, read_s, sw, nb = sorted(rs)[(len(rs) - 1) // 2]
        print(f"| {name} | {rps:.0f} | {wall:.3f} | {main_s:.3f} | {read_s:.3f} | "
              f"{(main_s + read_s) / (cores * wall):.0%} | {sw} | {nb} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
