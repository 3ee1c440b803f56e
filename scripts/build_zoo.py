"""Build (or reuse) the demo PCB CoE zoo and print its summary.

    python scripts/build_zoo.py                 # default zoo (48 types, 6 detectors)
    python scripts/build_zoo.py --tiny          # the test preset
    python scripts/build_zoo.py --boards 20 --cache-dir /tmp/zoo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from coserve_jax.coe.zoo import ZooConfig, build_or_load_zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="use the tiny test preset")
    p.add_argument("--cache-dir", default=None, help="zoo cache (default: $COSERVE_JAX_CACHE or ~/.cache/coserve_jax/zoo)")
    p.add_argument("--seed", type=int, default=0, help="zoo seed")
    p.add_argument("--boards", type=int, default=10, help="held-out boards to evaluate (0: skip)")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the held-out boards")
    args = p.parse_args()

    cfg = ZooConfig.tiny() if args.tiny else ZooConfig()
    cfg = dataclasses.replace(cfg, seed=args.seed, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    t0 = time.perf_counter()
    zoo = build_or_load_zoo(cfg, progress=True)
    wall_s = time.perf_counter() - t0
    experts = zoo.manifest["experts"]
    by_arch: dict[str, list[int]] = {}
    for e in experts:
        by_arch.setdefault(e["arch"], []).append(e["param_bytes"])
    summary = {
        "root": str(zoo.root),
        "build_or_load_s": round(wall_s, 1),
        "build_s": zoo.manifest["build_s"],
        "num_experts": len(experts),
        "num_component_types": len(zoo.manifest["component_types"]),
        "total_bytes": zoo.graph.total_bytes,
        "bytes_per_expert": {a: b[0] for a, b in by_arch.items()},
        "experts_per_arch": {a: len(b) for a, b in by_arch.items()},
        "heldout_accuracy_min": min(e["accuracy"] for e in experts),
    }
    if args.boards > 0:
        t1 = time.perf_counter()
        ev = zoo.evaluate(num_boards=args.boards, seed=args.eval_seed)
        summary["evaluate"] = {k: v for k, v in ev.items() if k != "per_expert"}
        summary["evaluate"]["worst_experts"] = sorted(
            ((k, round(v["accuracy"], 4)) for k, v in ev["per_expert"].items()), key=lambda kv: kv[1])[:5]
        summary["evaluate_s"] = round(time.perf_counter() - t1, 1)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
