"""Report package: paper values, run loading, tables (Markdown/CSV), plots and the CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from coserve_jax.report import paper_values as pv
from coserve_jax.report import plots, tables
from coserve_jax.report.cli import build_tables, main
from coserve_jax.report.runs import ReportInputError, find_result_files, load_runs
from coserve_jax.report.table_render import comparison_cell, fmt_number, to_csv, to_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]


def _arm(rps: float, switches: int, p50_ms: float = 100.0, preloads: int = 0) -> dict:
    """``switches`` during the run, after ``preloads`` initial loads."""
    count = switches + preloads
    return {
        "throughput_rps": rps,
        "switches": {"count": count, "during_run": switches, "bytes": count * 10**8, "from_disk": count,
                     "from_host": 0},
        "latency_ms": {"p50": p50_ms, "p95": 2 * p50_ms, "p99": 3 * p50_ms},
        "requests": {"submitted": 2500, "completed": 2500, "failed": 0},
        "wall_s": 2500 / rps,
        "peak_bytes": {"gpu0/pool0": 3 * 2**30, "gpu0/pool1": 2**30},
        "time_s": {"compute": 1.0, "load": 2.0},
    }


def _write_run(run_dir: Path, arms: dict, *, model="pcb_paper_a", hardware="numa_3080ti",
               workload=None, task=None, hydra_yaml: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "workload": workload or {"name": "paper", "num_requests": 2500},
              "hardware": hardware, "backend": "sim", "seed": 0, "git_sha": "abc",
              "profile_sha": "def"}
    if task:
        config["task"] = task
    results = {"experiment": "test", "config": config, "arms": arms}
    (run_dir / "results.json").write_text(json.dumps(results))
    if hydra_yaml is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text(hydra_yaml)
    return run_dir


@pytest.fixture
def paper_runs(tmp_path: Path) -> Path:
    """NUMA A1 (two seeds) and UMA B2 runs with baselines, CoServe arms, ablation and bounds."""
    root = tmp_path / "runs"
    a1 = {"samba": _arm(26.3 / 9.4, 1000), "samba_fifo": _arm(3.0, 900),
          "coserve_best": _arm(26.3 * 0.9, 64, preloads=20), "coserve_casual": _arm(22.2, 80),
          "none": _arm(4.5, 600), "em": _arm(5.8, 500), "em_ra": _arm(11.8, 173),
          "coserve": _arm(26.3, 64), "oracle": _arm(30.0, 40), "all_resident": _arm(40.0, 0)}
    _write_run(root / "numa_a1_s0", a1)
    a1_seed1 = {**a1, "coserve_best": _arm(26.3 * 1.1, 64, preloads=20)}
    _write_run(root / "numa_a1_s1", a1_seed1)
    _write_run(root / "uma_b2", {"samba": _arm(2.0, 1200), "coserve_best": _arm(27.6, 73)},
               model={"name": "pcb_paper_b", "num_experts": 342}, hardware={"name": "uma_m2"},
               workload={"num_requests": 3500})
    return root


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """A Hydra multirun sweep over hardware.device_budget (0/, 1/, 2/ and multirun.yaml)."""
    root = tmp_path / "multirun"
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for i, (budget, rps) in enumerate([("75%", 20.0), ("25%", 8.0), ("50%", 14.0)]):
        hydra_yaml = (f"model:\n  name: pcb_paper_a\nworkload:\n  num_requests: 3500\n"
                      f"hardware:\n  name: numa_3080ti\n  device_budget: '{budget}'\n")
        _write_run(root / str(i), {"samba": _arm(rps / 5, 900), "coserve": _arm(rps, 70)},
                   model="pcb_paper_a", workload="paper", hydra_yaml=hydra_yaml)
    return root


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- paper values ---------------------------------------------------------------------------

def test_paper_values_map_arms_and_derive_baselines() -> None:
    assert pv.paper_throughput_rps("NUMA", "A1", "coserve_best") == 26.3
    assert pv.paper_throughput_rps("NUMA", "A1", "coserve") == 26.3  # ablation's full
    assert pv.paper_throughput_rps("UMA", "B2", "coserve_casual") == 24.9
    assert pv.paper_throughput_rps("NUMA", "A1", "samba") == pytest.approx(26.3 / 9.4)
    assert pv.paper_throughput_rps("NUMA", "B1", "samba_parallel") == pytest.approx(27.2 / 4.5)
    assert pv.paper_throughput_rps("UMA", "A2", "samba_fifo") == pytest.approx(27.6 / 12.0)
    assert pv.paper_throughput_rps("UMA", "A1", "em_ra") == 10.9
    assert pv.paper_throughput_rps("NUMA", "A1", "coserve_plus") is None
    assert pv.paper_throughput_rps(None, None, "coserve_best") is None
    assert pv.BASELINE_LABEL_ORDER["NUMA"] == ("samba", "samba_fifo", "samba_parallel")
    assert pv.paper_speedup_label("NUMA", "B1", "samba") == 10.5
    assert pv.paper_switches("NUMA", "B2", "samba") == 1060
    assert pv.paper_switches("UMA", "A2", "coserve_casual") == 111
    assert pv.paper_switches("NUMA", "A1", "em_ra") == 173
    assert pv.paper_switch_range("UMA", "samba_fifo") == (293, 1241)
    assert pv.FIG17_BEST_EXECUTORS == {"A": "3G+1C", "B": "4G+1C"}
    assert pv.FIG18_SEARCH["A"]["window"] == (28, 39)
    # Every derived baseline lies inside the paper's headline speedup range.
    for hw in pv.HARDWARES:
        lo, hi = pv.FIG13_HEADLINE_SPEEDUP_RANGE[hw]
        for task in pv.TASKS:
            assert all(lo <= s <= hi for s in pv.FIG13_SPEEDUP_LABELS[hw][task])


# --- loading --------------------------------------------------------------------------------

def test_load_runs_infers_hardware_task_and_budget(paper_runs: Path, multirun: Path) -> None:
    runs = load_runs([paper_runs])
    assert [(r.hardware, r.task) for r in runs] == [("NUMA", "A1"), ("NUMA", "A1"),
                                                   ("UMA", "B2")]
    sweep = load_runs([multirun])
    assert [r.label for r in sweep] == ["multirun/0", "multirun/1", "multirun/2"]
    assert {(r.hardware, r.task) for r in sweep} == {("NUMA", "A2")}  # from .hydra/config.yaml
    assert [r.device_budget for r in sweep] == ["75%", "25%", "50%"]


def test_task_from_config_and_natural_order(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        _write_run(tmp_path / "m" / str(i), {"coserve": _arm(1.0, 1)}, model="pcb_demo",
                   hardware="cpu_small", task="b1" if i == 2 else None)
    runs = load_runs([tmp_path / "m"])
    assert [r.path.name for r in runs] == ["1", "2", "10"]
    assert [r.task for r in runs] == [None, "B1", None]
    assert runs[0].group == ("cpu_small", "pcb_demo")


def test_missing_and_empty_dirs_raise_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="nowhere"):
        find_result_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportInputError, match="empty.*no results.json"):
        load_runs([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    with pytest.raises(ReportInputError, match="bad/results.json"):
        load_runs([bad])


# --- tables ---------------------------------------------------------------------------------

def test_format_helpers() -> None:
    assert comparison_cell(23.67, 26.3) == "23.7 (26.3) ×0.90"
    assert comparison_cell(None, 26.3) == "— (26.3)"
    assert comparison_cell(5.0, None) == "5"
    assert comparison_cell(5.0, None, integers=False) == "5.00"
    assert comparison_cell(900.0, None, (287, 1226)) == "900 (287–1,226)"
    assert fmt_number(1060.0) == "1,060"


def test_throughput_table_has_paper_values_and_ratios(paper_runs: Path) -> None:
    table = tables.throughput_table(load_runs([paper_runs]))
    md = to_markdown(table)
    assert table.header[:2] == ["hardware", "task"]
    assert table.header.index("samba") < table.header.index("coserve_best")
    row = {h: c for h, c in zip(table.header, table.rows[0], strict=True)}
    assert (row["hardware"], row["task"]) == ("NUMA", "A1")
    assert row["coserve_best"] == "26.3 (26.3) ×1.00"  # mean of ×0.9 and ×1.1 seeds
    assert row["samba"] == "2.80 (2.80) ×1.00"
    assert row["coserve_casual"] == "22.2 (22.2) ×1.00"
    assert row["oracle"] == "30.0"  # no paper value: ours alone
    uma = {h: c for h, c in zip(table.header, table.rows[1], strict=True)}
    assert uma["samba"] == f"2.00 ({27.6 / 6.7:.2f}) ×{2.0 / (27.6 / 6.7):.2f}"
    assert uma["coserve_casual"] == "— (24.9)"  # arm run elsewhere, paper value kept
    assert "| NUMA | A1 |" in md and "derived" in md and "means over runs" in md
    rows = _csv_rows(to_csv(table))
    best = next(r for r in rows if r["arm"] == "coserve_best" and r["task"] == "A1")
    assert float(best["ours"]) == pytest.approx(26.3)
    assert float(best["paper"]) == 26.3 and float(best["ratio"]) == pytest.approx(1.0)
    assert best["n_runs"] == "2" and float(best["ours_std"]) > 0
    samba = next(r for r in rows if r["arm"] == "samba" and r["task"] == "A1")
    assert samba["paper_derived"] == "True"


def test_switches_speedup_and_ablation_tables(paper_runs: Path) -> None:
    runs = load_runs([paper_runs])
    sw = tables.switches_table(runs)
    row = dict(zip(sw.header, sw.rows[0], strict=True))
    assert row["coserve_best"] == "64 (64) ×1.00 +20 pre"  # during the run, preloads beside
    assert row["samba"] == "1,000 (287–1,226)"
    assert row["em_ra"] == "173 (173) ×1.00"
    speed = tables.speedup_table(runs)
    row = dict(zip(speed.header, speed.rows[0], strict=True))
    assert "samba" not in speed.header
    assert row["coserve_best"] == f"{26.3 / (26.3 / 9.4):.2f} (9.40) ×1.00"
    abl = tables.ablation_table(runs)
    row = dict(zip(abl.header, abl.rows[0], strict=True))
    assert row["none img/s"] == "4.50 (4.50) ×1.00"
    assert row["coserve switches"] == "64 (64) ×1.00"
    assert row["em switches"] == "500 (270–710)"
    assert _csv_rows(to_csv(abl))[0].keys() >= {"metric", "arm", "ours", "paper", "ratio"}


def test_arm_table_reports_bounds(paper_runs: Path) -> None:
    run = load_runs([paper_runs])[0]
    table = tables.arm_table(run)
    row = dict(zip(table.header, table.rows[table.header and [r[0] for r in table.rows]
                                            .index("coserve")], strict=True))
    assert row["img/s"] == "26.3 (26.3) ×1.00"
    # The oracle is the Belady-on-trace reference, not a bound (issue #22): the header says so.
    assert row["% of Belady ref. (oracle)"] == f"{26.3 / 30 * 100:.1f}%"
    assert row["% of all_resident"] == f"{26.3 / 40 * 100:.1f}%"
    assert not any("bound" in h for h in table.header)
    assert any(n.startswith("oracle: the Belady-on-trace reference") and "not a bound" in n for n in table.notes)
    assert row["peak memory"] == "4.00 GiB" and row["p99 ms"] == "300"
    rec = next(r for r in _csv_rows(to_csv(table)) if r["arm"] == "coserve")
    assert float(rec["peak_bytes"]) == 4 * 2**30


def test_throughput_counted_from_initialisation(tmp_path: Path) -> None:
    """throughput_rps counts from the first arrival; throughput_rps_incl_init adds the initial
    preloads' seconds (older results without the key: completed / (wall_s + time_s.init))."""
    new = {**_arm(25.0, 64, preloads=30), "throughput_rps_incl_init": 2500 / (100 + 30.0)}
    old = _arm(20.0, 64, preloads=30)
    old["time_s"]["init"] = 25.0
    _write_run(tmp_path / "r", {"coserve_casual": new, "coserve_best": old})
    runs = load_runs([tmp_path / "r"])
    table = tables.throughput_incl_init_table(runs)
    row = dict(zip(table.header, table.rows[0], strict=True))
    assert row["coserve_casual"] == f"{2500 / 130:.1f} (22.2) ×{2500 / 130 / 22.2:.2f}"
    assert row["coserve_best"].startswith(f"{2500 / (125 + 25):.1f} ")
    assert any("counted from the first arrival" in n for n in tables.throughput_table(runs).notes)
    arms = dict(zip(tables.arm_table(runs[0]).header, tables.arm_table(runs[0]).rows[0], strict=True))
    assert arms["arm"] == "coserve_casual" and arms["img/s incl. init"] == f"{2500 / 130:.1f}"


def test_variants_are_set_against_their_paper_arm(tmp_path: Path) -> None:
    """samba_casual_split ↔ Samba-CoE, samba_parallel_gpu ↔ Parallel, *_gpu rungs ↔ the ladder."""
    assert pv.paper_throughput_rps("NUMA", "A1", "samba_casual_split") == pv.paper_throughput_rps("NUMA", "A1", "samba")
    assert pv.paper_speedup_label("NUMA", "A1", "samba_parallel_gpu") == 4.9
    assert pv.paper_switches("NUMA", "A1", "em_ra_gpu") == 173
    assert pv.paper_switch_range("NUMA", "samba_casual_split") == (287, 1226)
    _write_run(tmp_path / "r", {"samba": _arm(5.0, 700), "samba_casual_split": _arm(3.5, 900),
                                "none": _arm(4.0, 1900), "none_gpu": _arm(5.5, 1800),
                                "em_ra_gpu": _arm(19.0, 400), "coserve": _arm(24.0, 200),
                                "coserve_best": _arm(25.0, 200)})
    runs = load_runs([tmp_path / "r"])
    abl = tables.ablation_table(runs)
    assert "none_gpu img/s" in abl.header and "em_gpu img/s" not in abl.header
    row = dict(zip(abl.header, abl.rows[0], strict=True))
    assert row["none_gpu img/s"] == "5.50 (4.50) ×1.22"
    split = tables.speedup_table(runs, "samba_casual_split")
    row = dict(zip(split.header, split.rows[0], strict=True))
    assert row["coserve_best"] == f"{25 / 3.5:.2f} (9.40) ×{25 / 3.5 / 9.4:.2f}"
    names = [t.name for t in build_tables(runs, "paper")]
    assert names == ["throughput", "throughput_incl_init", "switches", "speedup_vs_samba",
                     "speedup_vs_samba_casual_split"]


def test_budget_table_sorts_budgets(multirun: Path) -> None:
    table = tables.budget_table(load_runs([multirun]))
    assert [r[2] for r in table.rows] == ["25%", "50%", "75%"]
    assert table.header[3:] == ["samba img/s", "coserve img/s", "samba switches",
                                "coserve switches"]
    assert table.rows[0][4] == "8.00"
    rows = _csv_rows(to_csv(table))
    assert {r["device_budget"] for r in rows} == {"25%", "50%", "75%"}
    mixed = tables.throughput_table(load_runs([multirun]))
    assert any(n.startswith("Warning: NUMA A2 averages runs of different device budgets")
               for n in mixed.notes)


# --- plots ----------------------------------------------------------------------------------

def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_plots_write_pngs(tmp_path: Path, paper_runs: Path, multirun: Path) -> None:
    runs = load_runs([paper_runs])
    out = tmp_path / "png"
    paths = [plots.plot_throughput(runs, out / "t.png"), plots.plot_switches(runs, out / "s.png"),
             *plots.plot_ablation(runs, out), plots.plot_arms(runs[0], out / "arms.png"),
             plots.plot_budget_sweep(load_runs([multirun]), out / "budget.png")]
    paths.append(plots.plot_executor_sweep(
        {"candidates": [{"name": "2G+1C", "throughput_rps": 20.0},
                        {"name": "3G+1C", "throughput_rps": 25.0},
                        {"name": "4G+1C", "throughput_rps": 24.0}], "chosen": "3G+1C"},
        out / "fig17.png", paper_best=pv.FIG17_BEST_EXECUTORS["A"]))
    trace = [{"n_experts": n, "throughput_rps": 10 + 0.5 * n - (0.05 * (n - 30) ** 2 if n > 30
                                                               else 0),
              "fit_rps": 10 + 0.5 * n if n > 5 else None, "window": [lo, hi],
              "error": 0.02 if n > 5 else None}
             for n, (lo, hi) in [(5, (0, 15)), (15, (0, 15)), (28, (15, 28)), (39, (28, 39))]]
    paths.append(plots.plot_decay_window({"trace": trace, "chosen": 35}, out / "fig18.png",
                                         paper=pv.FIG18_SEARCH["A"]))
    assert all(_is_png(p) for p in paths), paths


# --- CLI ------------------------------------------------------------------------------------

def test_cli_main_writes_tables_and_plots(tmp_path: Path, paper_runs: Path, multirun: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"candidates": [{"name": "3G+1C", "throughput_rps": 25.0}],
                                 "chosen": "3G+1C"}))
    out = tmp_path / "report"
    rc = main([str(paper_runs), str(multirun), "--out", str(out), "--kind", "all",
               "--executor-sweep", str(sweep), "--board", "A"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "26.3 (26.3) ×1.00" in stdout and "### Throughput" in stdout
    for name in ("throughput", "switches", "speedup_vs_samba", "ablation", "budget_sweep"):
        assert (out / f"{name}.md").read_text().startswith("### ")
        assert _csv_rows((out / f"{name}.csv").read_text())
    for name in ("fig13_throughput", "fig14_switches", "fig15_ablation", "fig16_ablation",
                 "budget_sweep", "fig17_executor_sweep"):
        assert _is_png(out / f"{name}.png"), name
    assert len(list(out.glob("arms_*.csv"))) == 6
    assert (out / "report.md").read_text().strip() == stdout.strip()


def test_cli_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'empty'}: no results.json" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_cli_module_runs_as_subprocess(tmp_path: Path, paper_runs: Path) -> None:
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "coserve_jax.report", str(paper_runs), "--out", str(out),
         "--kind", "paper"], check=False, capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "2.80 (2.80) ×1.00" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["throughput.md", "throughput.csv", "throughput_incl_init.md", "throughput_incl_init.csv",
         "switches.md", "switches.csv",
         "speedup_vs_samba.md", "speedup_vs_samba.csv", "fig13_throughput.png",
         "fig14_switches.png", "report.md"])


def test_infeasible_arms_show_in_tables_and_are_skipped_in_plots(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An arm results.json reports infeasible ({"infeasible": reason, "policy": ...}) is a row
    saying so in the arms table, a cell in the budget table, and absent from plots."""
    reason = "hardware.device_budget: each cpu executor gets 2315678 B, which cannot hold ..."
    root = tmp_path / "sweep"
    nothing_fits = {a: {"infeasible": reason, "policy": {"name": a}} for a in ("samba", "coserve")}
    for budget, arms in (("10%", nothing_fits),
                         ("15%", {"samba": _arm(5.0, 90),
                                  "coserve": {"infeasible": reason, "policy": {"name": "coserve"}}}),
                         ("25%", {"samba": _arm(6.0, 80), "coserve": _arm(9.0, 40)})):
        _write_run(root / budget, arms, model="pcb_demo", hardware="cpu",
                   hydra_yaml=f"hardware:\n  name: cpu\n  device_budget: '{budget}'\n")
    runs = load_runs([root])
    run15 = next(r for r in runs if r.device_budget == "15%")
    assert list(run15.arms) == ["samba"] and run15.infeasible == {"coserve": reason}
    table = tables.arm_table(run15)
    assert [r[0] for r in table.rows] == ["samba", "coserve"]
    assert table.rows[1][1] == f"infeasible: {reason}" and len(table.rows[1]) == len(table.header)
    assert f"| coserve | infeasible: {reason} |" in to_markdown(table)
    assert _csv_rows(to_csv(table))[1]["infeasible"] == reason
    budget = tables.budget_table(runs)
    by_budget = {r[2]: dict(zip(budget.header, r, strict=True)) for r in budget.rows}
    assert by_budget["15%"]["coserve img/s"] == "infeasible"
    assert by_budget["15%"]["coserve switches"] == "infeasible"
    assert by_budget["25%"]["coserve img/s"] == "9.00"
    assert [by_budget["10%"][f"{a} img/s"] for a in ("samba", "coserve")] == ["infeasible"] * 2
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--kind", "all"]) == 0
    stdout = capsys.readouterr().out
    assert "infeasible, not run: coserve" in stdout and f"infeasible: {reason}" in stdout
    # no arms plot for the 10% run, where nothing ran
    per_arm = ("_latency_cdf", "_throughput_over_time", "_pool_occupancy", "_time_breakdown")  # timeline_plots
    arms_pngs = [p for p in out.glob("arms_*.png") if not p.stem.endswith(per_arm)]
    assert _is_png(out / "budget_sweep.png") and len(arms_pngs) == 2
    assert len(list(out.glob("arms_*.md"))) == 3
