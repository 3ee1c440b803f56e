"""Simulated vs real runs of the same workload, arms and profile, side by side (issue: sim validation).

    python scripts/validate_sim.py --out experiments/sim_validation [--requests 1000] [--seeds 0 1]

Runs the real engine on the demo CoE (the run's median of interleaved repeats per arm; the table
also shows the range over the repeats), then the simulator on the same trace with the same
profile (the one the real run used, pinned by path), and writes a Markdown/CSV table and a PNG
with throughput and switch errors per arm. Run on a quiet machine: the real side is timed.
Real switches are the median over the real runs (the median-throughput run's own count is in
the CSV). ``--from-runs`` re-tabulates the run dirs of an earlier call without running anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

ARMS = ["samba", "coserve", "coserve_plus", "all_resident"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="experiments/sim_validation")
    ap.add_argument("--runs", default="runs/sim_validation", help="scratch folder for run dirs")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="+", default=ARMS)
    ap.add_argument("--fresh-profile", action="store_true",
                    help="re-measure the profile right before each seed's real runs (profiler.refresh=true), "
                         "so the simulator sees the machine's speed of the moment")
    ap.add_argument("--from-runs", action="store_true",
                    help="run nothing: tabulate the run dirs a previous call left under --runs")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for both backends")
    args = ap.parse_args(argv)

    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        real_dir, sim_dir = runs / f"seed{seed}" / "real", runs / f"seed{seed}" / "sim"
        if args.from_runs:
            real, sim = (json.loads((d / "results.json").read_text()) for d in (real_dir, sim_dir))
        else:
            from coserve_jax.api import run_experiment

            common = [f"arms=[{','.join(args.arms)}]", f"workload.num_requests={args.requests}", f"seed={seed}",
                      *args.overrides]
            real = run_experiment(common + ["backend=real"] + (["profiler.refresh=true"] if args.fresh_profile else []),
                                  real_dir)
            sim = run_experiment(common + ["backend=sim", f"hardware.profile={(real_dir / 'profile.json').resolve()}"],
                                 sim_dir)
        rows += [compare(seed, arm, real["arms"][arm], sim["arms"][arm]) for arm in args.arms]
    with open(out / "validation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| seed | arm | real img/s (range over runs) | sim img/s | error | real switches, median (range) "
             "| sim switches | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['arm']} | {r['real_rps']:.1f} ({r['real_rps_min']:.0f}–{r['real_rps_max']:.0f}, "
                     f"{r['real_runs']} runs) | {r['sim_rps']:.1f} | {r['rps_error']:+.1%} "
                     f"| {r['real_switches']:g} ({r['real_switches_min']}–{r['real_switches_max']}) "
                     f"| {r['sim_switches']} | {r['switch_error']:+.1%} |")
    (out / "validation.md").write_text("\n".join(lines) + "\n")
    (out / "validation.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out / "validation.png")
    print("\n".join(lines))
    worst_rps = max(abs(r["rps_error"]) for r in rows)
    worst_sw = max(abs(r["switch_error"]) for r in rows)
    print(f"\nworst throughput error {worst_rps:.1%}, worst switch error {worst_sw:.1%}")
    return 0


def compare(seed: int, arm: str, r: dict, s: dict) -> dict:
    """One table row. Real throughput is the median run's; real switches are the median over the
    runs: the median-throughput run's own count is one draw from a spread of about ±10%."""
    reps = r.get("repeats", {}).get("throughput_rps") or [r["throughput_rps"]]
    sw_reps = r.get("repeats", {}).get("switches") or [r["switches"]["count"]]
    sw_r, sw_s = statistics.median(sw_reps), s["switches"]["count"]
    return {
        "seed": seed, "arm": arm,
        "real_rps": r["throughput_rps"], "sim_rps": s["throughput_rps"],
        "rps_error": s["throughput_rps"] / r["throughput_rps"] - 1,
        "real_rps_min": min(reps), "real_rps_max": max(reps), "real_runs": len(reps),
        "real_switches": sw_r, "sim_switches": sw_s,
        "switch_error": (sw_s - sw_r) / max(sw_r, 1),
        "real_switches_min": min(sw_reps), "real_switches_max": max(sw_reps),
        "real_switches_of_median_run": r["switches"]["count"],
    }


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    for k, (metric, label) in enumerate([("rps", "throughput (img/s)"), ("switches", "expert switches")]):
        ax = fig.add_subplot(1, 2, k + 1)
        xs = range(len(arms))
        for off, side, hatch in [(-0.2, "real", None), (0.2, "sim", "//")]:
            vals = [sum(r[f"{side}_{metric}"] for r in rows if r["arm"] == a) /
                    max(1, sum(r["arm"] == a for r in rows)) for a in arms]
            ax.bar([x + off for x in xs], vals, width=0.4, label=side, hatch=hatch,
                   color="#4c72b0" if side == "real" else "#dd8452")
        ax.set_xticks(list(xs), arms, rotation=20)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle("Simulated vs real, demo CoE on this CPU machine")
    fig.tight_layout()
    fig.savefig(path, dpi=150)


if __name__ == "__main__":
    sys.exit(main())
