"""Which setting made the checkpoint read fast: each step from main's read path to format 3, timed.

    python scripts/ablate_load.py [--rounds 5] [--sizes 20,170] [--out ablation.json]

For each expert of ``scripts/bench_load.py`` (same architectures, same random weights) it saves
three layouts: format 2 as main wrote it (Orbax OCDBT, zarr2, zstd; ``leaf_sizes``, flat vectors,
``crc32``), the same without compression, and format 3 (``store.checkpoint.save_expert``). Then
in ``--rounds`` interleaved rounds it times, against a raw read of the format-3 files:

1. main: ``Checkpointer(PyTreeCheckpointHandler)`` restore to numpy, CRC-32 of ``tobytes()``;
2. + no compression;
3. + CRC-32 over the array itself (no ``tobytes()`` copy);
4. + files memory-mapped (TensorStore ``file_io_mode: memmap``; ``TensorStore.read()``);
5. + read into numpy buffers (``orbax_read.IntoNumpyHandler`` under ``PyTreeCheckpointHandler``);
6. + the type handler driven directly (``orbax_read.read_arrays``), no ``PyTreeCheckpointHandler``;
7. + format 3: one header, block-sum checksums (``store.checkpoint.read_packed``, the shipped path);
8. format 3 read without any check (a floor, not a shipped path).

Each row's "vs raw" is the median over rounds of (raw time / row time).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

_BENCH = Path(__file__).with_name("bench_load.py")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_load", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="20,170", help="which experts of bench_load.py (MB), comma-separated")
    ap.add_argument("--out", type=Path, help="write the timings as JSON here")
    args = ap.parse_args(argv)

    import jax
    import orbax.checkpoint as ocp
    import tensorstore as ts
    from flax import nnx

    from coserve_jax.models import host_init_state, param_bytes
    from coserve_jax.store.checkpoint import HEADER, leaf_specs, read_packed, save_expert
    from coserve_jax.store.orbax_read import IntoArgs, IntoNumpyHandler, read_arrays

    bench = _bench()
    experts = {k: v for k, v in bench._experts(False).items() if k in {f"{s.strip()}MB" for s in args.sizes.split(",")}}

    class MemmapOnly(ocp.type_handlers.NumpyHandler):
        """Orbax's NumpyHandler with files memory-mapped; it still returns TensorStore's arrays."""

        async def deserialize(self, infos, args=None):
            for info in infos:
                info.ts_context = ts.Context(ts.Context.Spec({"file_io_mode": {"mode": "memmap"}}), info.ts_context)
            return await super().deserialize(infos, args)

    def registry(handler):
        return ocp.type_handlers.create_type_handler_registry(
            (np.ndarray, handler), (jax.Array, ocp.type_handlers.ArrayHandler()))

    def save_v2(path: Path, state, compress: bool) -> dict:
        leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(state))]
        flat = np.concatenate([x.ravel() for x in leaves])  # all float32: one vector
        packed = {"leaf_sizes": np.array([x.size for x in leaves], np.int64), "flat_float32": flat,
                  "crc32": np.array([zlib.crc32(flat)], np.int64)}
        handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_compression=compress)
        ocp.Checkpointer(handler).save(path, args=ocp.args.PyTreeSave(packed))
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in packed.items()}

    def restore_v2(path: Path, item: dict, handler, restore_args, crc: str) -> dict:
        packed = ocp.Checkpointer(handler).restore(path, args=ocp.args.PyTreeRestore(
            item=item, restore_args={k: restore_args() for k in item}))
        flat = packed["flat_float32"]
        got = zlib.crc32(flat.tobytes() if crc == "tobytes" else flat)
        assert got == int(packed["crc32"][0]), path
        return packed

    def plain():
        return ocp.RestoreArgs(restore_type=np.ndarray)

    def v2_direct(path: Path) -> dict:
        packed = read_arrays(path, ["leaf_sizes", "flat_float32", "crc32"])
        assert zlib.crc32(packed["flat_float32"]) == int(packed["crc32"][0]), path
        return packed

    variants = {
        "1 main: zstd, PyTree restore, CRC-32 of tobytes()": ("v2", lambda c: restore_v2(
            c["v2"], c["item"], ocp.PyTreeCheckpointHandler(use_ocdbt=True), plain, "tobytes")),
        "2 + no compression": ("v2raw", lambda c: restore_v2(
            c["v2raw"], c["item"], ocp.PyTreeCheckpointHandler(use_ocdbt=True), plain, "tobytes")),
        "3 + CRC-32 over the array, no copy": ("v2raw", lambda c: restore_v2(
            c["v2raw"], c["item"], ocp.PyTreeCheckpointHandler(use_ocdbt=True), plain, "array")),
        "4 + files memory-mapped": ("v2raw", lambda c: restore_v2(
            c["v2raw"], c["item"], ocp.PyTreeCheckpointHandler(type_handler_registry=registry(MemmapOnly())), plain, "array")),
        "5 + read into numpy buffers": ("v2raw", lambda c: restore_v2(
            c["v2raw"], c["item"], ocp.PyTreeCheckpointHandler(type_handler_registry=registry(IntoNumpyHandler())), IntoArgs,
            "array")),
        "6 + type handler driven directly": ("v2raw", lambda c: v2_direct(c["v2raw"])),
        "7 + format 3: header, block-sum checksums (shipped)": ("v3", lambda c: read_packed(c["v3"], c["specs"])),
        "8 format 3 without any check (floor)": ("v3", lambda c: read_arrays(c["v3"], [HEADER, "flat_float32"])),
    }

    with tempfile.TemporaryDirectory(prefix="ablate_load_") as tmp:
        cases = {}
        for name, spec in experts.items():
            state = host_init_state(spec, seed=0)
            case = {"specs": leaf_specs(state), "param_bytes": param_bytes(spec)}
            for layout in ("v2", "v2raw", "v3"):
                case[layout] = Path(tmp) / f"{name}_{layout}"
            case["item"] = save_v2(case["v2"], state, compress=True)
            save_v2(case["v2raw"], state, compress=False)
            save_expert(case["v3"], state)
            cases[name] = case
            del state

        def timed(fn, case) -> float:
            t = time.perf_counter()
            fn(case)
            return time.perf_counter() - t

        raw = {name: [] for name in cases}
        times = {name: {v: [] for v in variants} for name in cases}
        for case in cases.values():  # warm: imports, first opens
            for _, fn in variants.values():
                fn(case)
        for r in range(args.rounds):
            for name, case in cases.items():
                order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
                raw[name].append(timed(lambda c: bench.raw_read(c["v3"]), case))
                for v, (_, fn) in order:
                    times[name][v].append(timed(fn, case))

    print(f"{args.rounds} interleaved rounds; ms: median (best); vs raw: median over rounds of raw / row")
    print("| read path | " + " | ".join(f"{n} ms | {n} vs raw" for n in cases) + " |")
    print("| --- | " + " | ".join(["---", "---"] * len(cases)) + " |")
    print("| raw read (format-3 files) | " + " | ".join(
        f"{1e3 * statistics.median(raw[n]):.1f} ({1e3 * min(raw[n]):.1f}) | 100%" for n in cases) + " |")
    for v in variants:
        cells = []
        for n in cases:
            t = times[n][v]
            cells += [f"{1e3 * statistics.median(t):.1f} ({1e3 * min(t):.1f})",
                      f"{100 * statistics.median(a / b for a, b in zip(raw[n], t)):.0f}%"]
        print(f"| {v} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(["ablate_load.py", *(argv or sys.argv[1:])]),
                                        "raw_s": raw, "times_s": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
