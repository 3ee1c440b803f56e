"""A CPU batch or load beside other work on this host: real slowdown against the simulator's host model.

    python scripts/host_contention.py --out experiments/sim_validation [--passes 5] [overrides ...]
    python scripts/host_contention.py --runs REAL_RUN_DIR [SIM_RUN_DIR ...]   # in serving, from timelines

Measured (``profiler/microbench.py``, on the demo zoo's real ``Runtime``, CPU device 0, batches
of 16 images of the most common architecture, passes interleaved so the machine's drift hits
every case alike), each as a ratio to the same job alone:

- a batch beside 1..E-1 threads serving batches back to back (E: the hardware's CPU executors);
- a batch beside 1..L threads loading experts back to back (L: ``backend.load_threads``);
- a load beside 1..E batch threads (what the profile's ``load_slowdown_beside_batches`` holds);
- a batch beside one thread running pure Python (holding the GIL) 20%, 50% and 100% of the time,
  in 0.7 ms stretches: the engine loop's thread, which the simulator models as one more job
  taking a core (``backend.loop_shares_host``).

Simulated: the same situations in ``engine/sim.py``'s ``SimBackend`` with this machine's cached
measured profile (max-min sharing of the profile's host cores, the load cap), the timed job
1 s of work and the others long. Writes ``host_contention.md`` and ``host_contention.json`` to ``--out``.

``--runs`` instead reads run dirs made with ``metrics.timeline=true``: for each arm's timeline,
the batches launched after the loop took in the last arrival (the steady phase), each one's
``run_s`` (real: the worker's time for the forward; simulated: the same on the virtual clock)
against ``predicted_s`` (the cost model's for the batch alone): the slowdown batches met while
serving, by how much of their span another executor's batch overlapped. Then every load's
``seconds`` against its ``predicted_s`` (alone), by the batches running beside it for at least
80% of its span (0, 1, 2 or more) and by phase (the arrival burst, until the loop took in the last
arrival, or after it), beside the profile's ``load_slowdown_beside_batches``, which is what the
simulator charges a load for the batches beside it. Last, every wait of an executor for a load,
split into the hand-off before the load, the load and the hand-off after it (mean ms).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from coserve_jax.engine.sim import slowdown_beside

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrent_loads import measured_setup  # noqa: E402 - this folder's helper

DUTIES = (0.2, 0.5, 1.0)
BUSY_S = 0.0007  # the loop's busy stretch (``experiments/sim_validation``: 0.5-0.9 ms a completion)


def simulated(cost: Any, load_threads: int, timed: str, others: str, n: int, duty: float = 0.0) -> float:
    """Seconds a 1 s ``timed`` job ("batch" or "load") takes in the simulator beside ``n`` long
    ``others`` jobs ("batch", "load"), or beside the loop's thread busy ``duty`` of the time
    (``others`` "python")."""
    from types import SimpleNamespace

    from coserve_jax.engine.events import BatchDone
    from coserve_jax.engine.sim import SimBackend
    from coserve_jax.types import Batch, LoadJob, Tier

    be = SimBackend(max(load_threads, n, 1), host_cores=cost.host_cores, load_slowdown=cost.load_slowdown,
                    load_slowdown_loads=cost.load_slowdown_loads,
                    loop_s_per_event=BUSY_S, loop_shares_host=True)
    ids = itertools.count()

    def start(kind: str, seconds: float) -> None:
        i = next(ids)
        if kind == "batch":
            be.start_batch(Batch(i, i, f"e{i}", (), predicted_s=seconds),
                           SimpleNamespace(kind="cpu", device_index=0, executor_id=i), [])
        else:
            be.start_load(LoadJob(i, f"ex{i}:cpu", f"e{i}", 1, Tier.DISK, i, predicted_s=seconds))

    start(timed, 1.0)  # job 0: the timed one
    if others != "python":
        for _ in range(n):
            start(others, 1e6)
    be.ready_at()  # the jobs start now, before the loop's first busy stretch
    while True:
        if others == "python" and duty > 0:
            be.charge("event")  # the loop's busy stretch: one core in the simulator
            until = be.now() + BUSY_S * (1 - duty) / duty
        else:
            until = None
        ev = be.next_event(until)
        if ev is not None and (ev.batch.batch_id if isinstance(ev, BatchDone) else ev.job.load_id) == 0:
            return be.now()


def measure(args: argparse.Namespace) -> int:
    cfg, model, cost, rt = measured_setup(args.overrides, "host_contention")
    from coserve_jax.profiler.microbench import (LoadSampler, measure_batch_beside_python, measure_batch_contention,
                                                 measure_load_contention)

    graph = model.graph
    arch = max({e.arch for e in graph.experts.values()},
               key=lambda a: sum(e.arch == a for e in graph.experts.values()))
    executors = int(cfg.hardware.executors.get("cpu", 1))
    lanes = int(cfg.backend.load_threads)
    try:
        device = rt.device("cpu", 0)
        loads = LoadSampler(rt, device, 3, drop_cache=False)
        real = {  # (timed job, the others): [1.0, beside one, beside two, ...]
            ("batch", "batch"): measure_batch_contention(rt, device, max(1, executors - 1), arch,
                                                         passes=args.passes),
            ("batch", "load"): measure_batch_contention(rt, device, max(1, lanes), arch, loads=loads,
                                                        passes=args.passes),
            ("load", "batch"): measure_load_contention(rt, device, loads, max(1, executors), arch,
                                                       passes=args.passes),
        }
        python = measure_batch_beside_python(rt, device, arch, DUTIES, BUSY_S, passes=args.passes)
    finally:
        rt.close()
    rows = []
    plural = {"batch": "batches", "load": "loads"}
    for (timed, others), ratios in real.items():
        for n, r in enumerate(ratios[1:], start=1):
            rows.append({"case": f"{timed} beside {n} {plural[others] if n > 1 else others}", "real": r,
                         "sim": simulated(cost, lanes, timed, others, n)})
    for duty, r in python.items():
        rows.append({"case": f"batch beside a Python thread busy {duty:.0%}", "real": r,
                     "sim": simulated(cost, lanes, "batch", "python", 0, duty)})
    lines = [f"### A CPU job beside other work: real vs simulated slowdown ({arch}, batches of 16, "
             f"{args.passes} passes, host cores {cost.host_cores}, Python switch interval "
             f"{1e3 * sys.getswitchinterval():.1f} ms)", "",
             "| case | real, × alone | simulated, × alone | sim / real |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['real']:.2f} | {r['sim']:.2f} | {r['sim'] / r['real']:.2f} |" for r in rows]
    lines += ["", f"- Profile: {cost.sha} ({(cost.trust or {}).get('path', '?')})."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host_contention.md").write_text("\n".join(lines) + "\n")
    (out / "host_contention.json").write_text(json.dumps(
        {"arch": arch, "passes": args.passes, "host_cores": cost.host_cores, "profile_sha": cost.sha,
         "switch_interval_s": sys.getswitchinterval(), "busy_s": BUSY_S, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


def _overlap(e: dict, spans: dict[int, list[tuple[float, float]]]) -> float:
    """The share of batch ``e``'s span that other executors' batch spans cover."""
    a, b = e["ts"], e["ts"] + e["dur"]
    other = sum(max(0.0, min(b, d) - max(a, c)) for t, s in spans.items() if t != e["tid"] for c, d in s)
    return other / max(b - a, 1e-9)


@functools.lru_cache(maxsize=4)
def _timelines(run_dir: Path) -> tuple[tuple[str, list[dict[str, Any]], float], ...]:
    """(arm, its timeline's events, when its loop took in the last arrival, in the events' µs)
    per arm of ``run_dir`` with a timeline; read once for the three ``--runs`` tables."""
    results = json.loads((run_dir / "results.json").read_text())
    out = []
    for path in sorted(run_dir.glob("timeline-*.json")):
        arm = path.stem.removeprefix("timeline-")
        if arm not in results.get("arms", {}):
            continue
        events = json.loads(path.read_text())["traceEvents"]
        start = next((e["ts"] for e in events if e.get("ph") == "i" and e.get("name") == "serving starts"), 0.0)
        out.append((arm, events, start + 1e6 * (results["arms"][arm]["time_s"].get("arrivals_ingested") or 0.0)))
    return tuple(out)


def serving(run_dir: Path) -> list[dict[str, Any]]:
    """Per arm with a timeline in ``run_dir``: steady-phase batches' run_s / predicted_s."""
    rows = []
    for arm, events, burst_end in _timelines(run_dir):
        batches = [e for e in events if e.get("ph") == "X" and e.get("cat") == "batch"
                   and e["args"].get("run_s") and e["args"].get("predicted_s")]
        if not batches:
            continue
        steady = [e for e in batches if e["ts"] >= burst_end]
        spans = {}
        for e in steady:
            spans.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))

        ratio = [(e["args"]["run_s"] / e["args"]["predicted_s"], _overlap(e, spans)) for e in steady]
        mostly = [r for r, o in ratio if o >= 0.8]
        rows.append({"run": str(run_dir), "arm": arm, "batches": len(ratio),
                     "median": statistics.median(r for r, _ in ratio) if ratio else float("nan"),
                     "beside_batch_median": statistics.median(mostly) if mostly else float("nan"),
                     "beside_batch_batches": len(mostly),
                     "sum_run_s": sum(e["args"]["run_s"] for e in steady),
                     "sum_predicted_s": sum(e["args"]["predicted_s"] for e in steady)})
    return rows


def _beside(a: float, b: float, spans: list[tuple[float, float]]) -> int | None:
    """How many of ``spans`` run beside the interval [a, b] for at least 80% of it (None: no
    count does)."""
    cuts = sorted({a, b} | {x for c, d in spans for x in (c, d) if a < x < b})
    share: dict[int, float] = {}
    for u, v in zip(cuts, cuts[1:]):
        m = (u + v) / 2
        n = sum(c <= m < d for c, d in spans)
        share[n] = share.get(n, 0.0) + (v - u)
    n, t = max(share.items(), key=lambda kv: kv[1], default=(0, 0.0))
    return n if t >= 0.8 * (b - a) else None


def serving_loads(run_dir: Path) -> list[dict[str, Any]]:
    """Per arm, phase and batches beside: loads' seconds / predicted_s (alone)."""
    profile = json.loads((run_dir / "profile.json").read_text()) if (run_dir / "profile.json").exists() else {}
    caps = profile.get("host", {}).get("load_slowdown_beside_batches") or []
    rows = []
    for arm, events, burst_end in _timelines(run_dir):
        spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and e.get("cat") == "batch"]
        groups: dict[tuple[str, str], list[float]] = {}
        for e in events:
            args = e.get("args") or {}
            if e.get("ph") != "X" or e.get("cat") != "load" or args.get("kind") in ("initial", "failed") \
                    or not args.get("predicted_s"):
                continue
            a, b = e["ts"], e["ts"] + e["dur"]
            near = [(c, d) for c, d in spans if c < b and d > a]
            n = _beside(a, b, near)
            if n is None:
                continue
            phase = "burst" if a < burst_end else "after"
            groups.setdefault((phase, "2+" if n >= 2 else str(n)), []).append(args["seconds"] / args["predicted_s"])
        for (phase, n), ratios in sorted(groups.items()):
            rows.append({"run": str(run_dir), "arm": arm, "phase": phase, "beside": n, "loads": len(ratios),
                         "median": statistics.median(ratios),
                         "cap": slowdown_beside(caps, int(n[0])) if caps else float("nan")})
    return rows


def serving_waits(run_dir: Path) -> list[dict[str, Any]]:
    """Per arm: each time an executor waited for a load ("wait for load" spans), split into the
    hand-off before the load (the wait's start to the load's start: the loop's dispatch, the load
    thread's and the reader's wake-up), the load, and the hand-off after it (the load's end to the
    wait's end, when the loop dispatched the batch), in mean ms. A load already in flight when
    the wait began (a prefetch) counts negative before it."""
    rows = []
    for arm, events, _ in _timelines(run_dir):
        loads: dict[str, list[tuple[float, float]]] = {}
        for e in events:
            if e.get("ph") == "X" and e.get("cat") == "load":
                loads.setdefault(e["args"]["expert"], []).append((e["ts"], e["ts"] + e["dur"]))
        parts = []
        for w in events:
            if w.get("ph") != "X" or w.get("cat") != "wait":
                continue
            a, b = w["ts"], w["ts"] + w["dur"]
            # the load of that expert whose end is nearest the wait's end, among those it overlaps
            cands = [(c, d) for c, d in loads.get(w["args"]["expert"], ()) if c <= b and d >= a]
            if cands:
                c, d = min(cands, key=lambda cd: abs(cd[1] - b))
                parts.append((b - a, c - a, d - c, b - d))
        if parts:
            mean = [statistics.fmean(p[i] for p in parts) / 1e3 for i in range(4)]
            rows.append({"run": str(run_dir), "arm": arm, "waits": len(parts), "wait_ms": mean[0],
                         "before_ms": mean[1], "load_ms": mean[2], "after_ms": mean[3]})
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table, after a blank line (nothing without rows)."""
    if rows:
        print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="experiments/sim_validation")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--runs", nargs="+", type=Path, help="run dirs with timelines: the slowdown while serving")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (default: the demo setup)")
    args = ap.parse_args(argv)
    if not args.runs:
        return measure(args)
    rows = [r for d in args.runs for r in serving(d)]
    if not rows:
        sys.exit("host_contention: no timeline-<arm>.json with batch predictions in "
                 f"{', '.join(map(str, args.runs))} (run with metrics.timeline=true)")
    _table(["run", "arm", "steady-phase batches", "run_s / predicted alone, median",
            "the same, batches ≥80% beside another (count)", "Σ run_s / Σ predicted"],
           [[r["run"], r["arm"], r["batches"], f"{r['median']:.2f}",
             f"{r['beside_batch_median']:.2f} ({r['beside_batch_batches']})",
             f"{r['sum_run_s'] / max(r['sum_predicted_s'], 1e-12):.2f}"] for r in rows])
    _table(["run", "arm", "phase", "batches beside (≥80% of the load)", "loads", "seconds / predicted alone, median",
            "the profile's load_slowdown for that many"],
           [[r["run"], r["arm"], r["phase"], r["beside"], r["loads"], f"{r['median']:.2f}", f"{r['cap']:.2f}"]
            for d in args.runs for r in serving_loads(d)])
    _table(["run", "arm", "waits for a load", "wait, mean ms", "wait start → load start", "load",
            "load end → batch dispatched"],
           [[r["run"], r["arm"], r["waits"], *(f"{r[k]:.2f}" for k in ("wait_ms", "before_ms", "load_ms", "after_ms"))]
            for d in args.runs for r in serving_waits(d)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
