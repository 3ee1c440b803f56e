"""Disk -> host: the project's checkpoint read against a raw read of the same files.

    python scripts/bench_load.py [--rounds 7] [--sizes 2,20,170] [--cold] [--out load.json]
    python scripts/bench_load.py --quick          # one 0.4 MB expert, 2 rounds (a test runs it)

Writes one expert per size with ``store.checkpoint.save_expert`` into a temporary directory,
with random weights (``models.host_init_state``) of real architectures:

- 2 MB: ``yolo_tiny``, the demo's detector (1.8 MB, 291 leaves);
- 20 MB: YOLOv5 at depth 0.33, width 0.4 (19.4 MB, 291 leaves);
- 170 MB: ResNet-101, the paper's classifier (178.6 MB, 522 leaves).

Then, in ``--rounds`` interleaved rounds (every expert once per round, the order of the read
paths alternating), times per expert:

- raw: every file under the checkpoint directory read whole into a new buffer (``readinto``
  an ``np.empty``), the speed of the disk or the page cache;
- restore: ``store.checkpoint.read_packed`` in this process (Orbax read + layout and checksum
  checks, to host memory), what a reader process runs;
- reader: the same through ``store.reader.ProcessReader``: the vectors come back from a reader
  process, copied out of its staging buffer (what a load into the host cache keeps);
- device: what the engine runs for a load from disk into a CPU executor's pool,
  ``store.checkpoint.unpack_onto`` through the same reader onto JAX's CPU device: the vectors go
  from the reader's staging buffer straight into the unpacked leaves (one copy), waited for;
- copied: the same load with the vectors copied out of the staging buffer first (``reader``,
  then ``unpack_to_device``), as the engine ran it before ``ProcessReader.lease``.

``--cold`` drops every checkpoint from the page cache (``posix_fadvise(DONTNEED)``) before each
read. The machine may be shared, so each ratio is the median over rounds of (raw time / path
time) within the round; GB/s counts the expert's parameter bytes. Prints a Markdown table and
writes the raw timings with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PATHS = ("raw", "restore", "reader", "device", "copied")


def _experts(quick: bool) -> dict[str, object]:
    from coserve_jax.models.registry import resnet101, tiny_resnet, tiny_yolo
    from coserve_jax.models.spec import ArchSpec

    if quick:
        return {"0.4MB": tiny_resnet()}
    return {"2MB": tiny_yolo(),
            "20MB": ArchSpec(name="yolo_20mb", family="yolo", input_shape=(640, 640, 3), num_outputs=80,
                             depth_multiple=0.33, width_multiple=0.4),
            "170MB": resnet101()}


def raw_read(path: Path) -> int:
    """Read every file under ``path`` whole into a new buffer; returns the bytes read."""
    total = 0
    for f in sorted(path.rglob("*")):
        if f.is_file():
            buf = np.empty(f.stat().st_size, np.uint8)
            with open(f, "rb", buffering=0) as fh:
                total += fh.readinto(buf)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", default="2,20,170", help="which experts (MB), comma-separated")
    ap.add_argument("--cold", action="store_true", help="drop the checkpoint from the page cache before each read")
    ap.add_argument("--no-reader", action="store_true", help="skip the reader-process paths (reader, device, copied)")
    ap.add_argument("--quick", action="store_true", help="one 0.4 MB expert, 2 rounds")
    ap.add_argument("--out", type=Path, help="write the timings as JSON here")
    args = ap.parse_args(argv)

    import jax

    from coserve_jax.models import host_init_state, param_bytes
    from coserve_jax.store.checkpoint import leaf_specs, read_packed, save_expert, unpack_onto
    from coserve_jax.store.disk import drop_page_cache
    from coserve_jax.store.reader import ProcessReader

    experts = _experts(args.quick)
    if not args.quick:
        wanted = {f"{s.strip()}MB" for s in args.sizes.split(",")}
        experts = {k: v for k, v in experts.items() if k in wanted}
    rounds = 2 if args.quick else args.rounds
    paths = [p for p in PATHS if not (p in ("reader", "device", "copied") and args.no_reader)]
    reader = ProcessReader(1) if "reader" in paths else None
    cpu = jax.devices("cpu")[0]

    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        cases = {}
        for name, spec in experts.items():
            state = host_init_state(spec, seed=0)
            path = Path(tmp) / name
            save_expert(path, state)
            specs = leaf_specs(state)
            cases[name] = dict(path=path, specs=specs, leaves=len(specs), param_bytes=param_bytes(spec),
                               file_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
            del state

        def read(how: str, case: dict) -> float:
            if args.cold:
                drop_page_cache(case["path"])
            t = time.perf_counter()
            if how == "raw":
                raw_read(case["path"])
            elif how == "restore":
                read_packed(case["path"], case["specs"], "bench")
            elif how == "reader":
                reader(case["path"], case["specs"], "bench")
            else:  # device, or copied out of the reader's buffer first
                unpack_onto(cpu, case["path"], case["specs"], "bench", reader, lease=how == "device")
            return time.perf_counter() - t

        times = {name: {p: [] for p in paths} for name in cases}
        try:
            for case in cases.values():  # warm: imports, the layout cache, the reader's first read
                for p in paths:
                    read(p, case)
            for r in range(rounds):
                for name, case in cases.items():
                    for p in (paths if r % 2 == 0 else paths[::-1]):
                        times[name][p].append(read(p, case))
        finally:
            if reader is not None:
                reader.close()

    rows = []
    for name, case in cases.items():
        row = {"expert": name, "leaves": case["leaves"], "param_bytes": case["param_bytes"],
               "file_bytes": case["file_bytes"], "times_s": times[name]}
        for p in paths:
            t = times[name][p]
            row[p] = {"median_ms": 1e3 * statistics.median(t), "best_ms": 1e3 * min(t),
                      "gb_s": case["param_bytes"] / statistics.median(t) / 1e9}
            if p != "raw":
                row[p]["vs_raw"] = statistics.median(a / b for a, b in zip(times[name]["raw"], t))
        rows.append(row)

    cols = " | ".join(f"{p} ms (best) | {p} GB/s" + ("" if p == "raw" else f" | {p}/raw") for p in paths)
    print(f"{'cold' if args.cold else 'warm'} page cache, {rounds} interleaved rounds, median (best)")
    print(f"| expert | leaves | {cols} |")
    print("| --- | --- | " + " | ".join(["---"] * (3 * len(paths) - 1)) + " |")
    for row in rows:
        cells = []
        for p in paths:
            cells += [f"{row[p]['median_ms']:.1f} ({row[p]['best_ms']:.1f})", f"{row[p]['gb_s']:.2f}"]
            if p != "raw":
                cells.append(f"{100 * row[p]['vs_raw']:.0f}%")
        print(f"| {row['expert']} | {row['leaves']} | " + " | ".join(cells) + " |")
    if args.out:
        meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                "cold": args.cold, "rounds": rounds, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                "load_avg": os.getloadavg()}
        args.out.write_text(json.dumps({"meta": meta, "experts": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
