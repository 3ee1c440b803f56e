"""Simulated vs real runs of the same workload, arms and profile, side by side (issue: sim validation).

    python scripts/validate_sim.py --out experiments/sim_validation [--requests 1000] [--seeds 0 1]
        [--fresh-profile --blocks 6]

Runs the real engine on the demo CoE (the run's median of interleaved repeats per arm; the table
also shows the range over the repeats), then the simulator on the same trace with the same
profile (the one the real run used, pinned by path), and writes a Markdown/CSV table and a PNG
with throughput and switch errors per arm. Run on a quiet machine: the real side is timed.
Real switches are the median over the real runs (the median-throughput run's own count is in
the CSV). ``--from-runs`` re-tabulates the run dirs of an earlier call without running anything.

``--blocks B`` (with ``--fresh-profile``) splits each seed's real runs into B blocks, each
right after its own fresh profile, and simulates every block's profile: the simulated figure is
the median over the B profiles, the real one the median over all real runs. The profiles then
sample the same minutes of this shared machine as the real runs they are compared with; one
10-second profile catches one phase of its speed, which drifts by about as much as the target.
Each block gets 3 real runs per arm unless ``--repeats`` says otherwise (at least 9 in all). On
a 2-core machine one block's simulated img/s spreads about ±20% around its real runs; the
median over 6 blocks came within 15% for every arm in two runs, over 3 blocks in none of four
(10 or 11 of 12 arms; ``experiments/sim_validation``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
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
                    help="re-measure the profile right before each block's real runs (profiler.refresh=true), "
                         "so the simulator sees the machine's speed of the moment")
    ap.add_argument("--blocks", type=int, default=1,
                    help="per seed: blocks of real runs, each after its own profile (with --fresh-profile); "
                         "the simulated figures are the median over the blocks' profiles")
    ap.add_argument("--repeats", type=int, default=None,
                    help="real runs per arm and seed, split over the blocks (default: 3 per block, at least 9)")
    ap.add_argument("--from-runs", action="store_true",
                    help="run nothing: tabulate the run dirs a previous call left under --runs")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for both backends")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = max(9, 3 * args.blocks)

    if args.blocks < 1 or args.repeats < args.blocks:
        ap.error(f"--blocks must be >= 1 and <= --repeats, got --blocks {args.blocks} --repeats {args.repeats}")
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        pairs = (block_dirs(runs / f"seed{seed}") if args.from_runs
                 else run_blocks(runs / f"seed{seed}", seed, args))
        reals, sims = zip(*((json.loads((r / "results.json").read_text()), json.loads((s / "results.json").read_text()))
                            for r, s in pairs))
        rows += [compare(seed, arm, [r["arms"][arm] for r in reals], [s["arms"][arm] for s in sims])
                 for arm in args.arms]
    with open(out / "validation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    sim_head = "sim" if all(r["profiles"] == 1 for r in rows) else "sim, median over profiles"
    lines = [f"| seed | arm | real img/s (range over runs) | {sim_head} img/s | error | paired error, per block "
             f"| real switches, median (range) | {sim_head} switches | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['arm']} | {r['real_rps']:.1f} ({r['real_rps_min']:.0f}–{r['real_rps_max']:.0f}, "
                     f"{r['real_runs']} runs) | {r['sim_rps']:.1f} | {r['rps_error']:+.1%} "
                     f"| {r['rps_error_paired']:+.1%} ({', '.join(f'{e:+.0%}' for e in r['rps_error_per_block'])}) "
                     f"| {r['real_switches']:g} ({r['real_switches_min']}–{r['real_switches_max']}) "
                     f"| {r['sim_switches']:g} | {r['switch_error']:+.1%} |")
    (out / "validation.md").write_text("\n".join(lines) + "\n")
    (out / "validation.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out / "validation.png")
    print("\n".join(lines))
    worst_rps = max(abs(r["rps_error"]) for r in rows)
    worst_paired = max(abs(r["rps_error_paired"]) for r in rows)
    worst_sw = max(abs(r["switch_error"]) for r in rows)
    print(f"\nworst throughput error {worst_rps:.1%} (paired per block {worst_paired:.1%}), "
          f"worst switch error {worst_sw:.1%}")
    return 0


def run_blocks(seed_dir: Path, seed: int, args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """Run each block's real runs (after a fresh profile with ``--fresh-profile``), then simulate
    the same trace with that block's profile. Returns the (real dir, sim dir) pairs. The seed's
    scratch folder is emptied first, so ``--from-runs`` never mixes in an earlier call's blocks."""
    from coserve_jax.api import run_experiment

    shutil.rmtree(seed_dir, ignore_errors=True)

    common = [f"arms=[{','.join(args.arms)}]", f"workload.num_requests={args.requests}", f"seed={seed}",
              *args.overrides]
    pairs = []
    for b in range(args.blocks):
        suffix = "" if args.blocks == 1 else str(b)
        real_dir, sim_dir = seed_dir / f"real{suffix}", seed_dir / f"sim{suffix}"
        reps = args.repeats // args.blocks + (b < args.repeats % args.blocks)
        run_experiment(common + ["backend=real", f"repeats={reps}"]
                       + (["profiler.refresh=true"] if args.fresh_profile else []), real_dir)
        run_experiment(common + ["backend=sim", f"hardware.profile={(real_dir / 'profile.json').resolve()}"], sim_dir)
        pairs.append((real_dir, sim_dir))
    return pairs


def block_dirs(seed_dir: Path) -> list[tuple[Path, Path]]:
    """The (real, sim) run dirs an earlier call left: ``real``/``sim``, or ``real0``/``sim0``, ..."""
    if (seed_dir / "real").is_dir():
        return [(seed_dir / "real", seed_dir / "sim")]
    blocks = sorted(int(d.name[4:]) for d in seed_dir.glob("real*") if d.name[4:].isdigit())
    if not blocks:
        raise SystemExit(f"--from-runs: no real run dirs under {seed_dir}")
    return [(seed_dir / f"real{b}", seed_dir / f"sim{b}") for b in blocks]


def compare(seed: int, arm: str, reals: list[dict], sims: list[dict]) -> dict:
    """One table row from a seed's blocks (one real and one simulated result per block).
    Real throughput is the median run's over all blocks' runs; real switches are the median over
    those runs (the median-throughput run's own count is one draw from a spread of about ±10%).
    Simulated throughput and switches are the medians over the blocks' profiles. The paired
    error is the median over blocks of each block's simulated img/s (its own profile) against
    the median of that block's real runs: the profile and the runs it is compared with come from
    the same minutes, so a drift of the machine's speed between blocks cancels."""
    runs = []  # (img/s, switches) of every real run
    paired = []  # per block: its profile's simulated img/s against its own real runs' median
    for r, sim in zip(reals, sims):
        rep = r.get("repeats") or {}
        block = list(zip(rep.get("throughput_rps") or [r["throughput_rps"]],
                         rep.get("switches") or [r["switches"]["count"]]))
        runs += block
        paired.append(sim["throughput_rps"] / statistics.median(rps for rps, _ in block) - 1)
    median_rps, median_run_sw = sorted(runs)[(len(runs) - 1) // 2]
    sw_reps = [sw for _, sw in runs]
    sw_r = statistics.median(sw_reps)
    sim_rps = [s["throughput_rps"] for s in sims]
    sim_sw = [s["switches"]["count"] for s in sims]
    rps_s, sw_s = statistics.median(sim_rps), statistics.median(sim_sw)
    return {
        "seed": seed, "arm": arm,
        "real_rps": median_rps, "sim_rps": rps_s,
        "rps_error": rps_s / median_rps - 1,
        "rps_error_paired": statistics.median(paired), "rps_error_per_block": paired,
        "real_rps_min": min(r for r, _ in runs), "real_rps_max": max(r for r, _ in runs), "real_runs": len(runs),
        "real_switches": sw_r, "sim_switches": sw_s,
        "switch_error": (sw_s - sw_r) / max(sw_r, 1),
        "real_switches_min": min(sw_reps), "real_switches_max": max(sw_reps),
        "real_switches_of_median_run": median_run_sw,
        "profiles": len(sims), "sim_rps_per_profile": sim_rps, "sim_switches_per_profile": sim_sw,
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
