"""Every ``conf/experiment/*.yaml``: it composes, opens with its command and question, and runs in
a tiny mode (few requests; the simulator where the study is simulated; model=pcb_tiny for the
real-backend ones). Sweeps compose to their default point here; the slow tests also launch a
real multirun and regenerate the committed paper tables (scripts/reproduce_paper.py --check).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from coserve_jax.api import as_run_config, frozen_heap, run_experiment
from coserve_jax.config import CONF_DIR, compose
from coserve_jax.jobs import run_job

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
SIM_TINY = ["workload.num_requests=60", "planner.sample_requests=60", "planner.repeats=1",
            "planner.candidates=[2G+1C,3G+1C]"]

REAL_TINY = ["{tiny}", "workload.num_requests=40"]
# Tiny overrides per experiment; "{plans}" becomes a per-test plan folder, "{tiny}" the
# session's tiny-zoo overrides (tests/conftest.py). Experiments missing here run with SIM_TINY
# when they simulate a paper-scale model, else with REAL_TINY (see tiny_for).
TINY: dict[str, list[str]] = {
    "zoo": ["{tiny}", "zoo_eval.num_boards=2"],
    "profile": ["{tiny}", "profiler.repeats=2"],
    "plan": ["model=pcb_paper_a", "hardware=numa_3080ti", "backend=sim", *SIM_TINY,
             "planner.output={plans}/plan.yaml"],
    "paper_fig17_18": [*SIM_TINY, "planner.output={plans}/plan.yaml"],
    "paper_fig13_14": [*SIM_TINY, "planner.output={plans}/plan.yaml"],
    "demo_fig13_16": ["{tiny}", "workload.num_requests=40", "planner.output={plans}/plan.yaml"],
    "budget_sweep_demo": REAL_TINY,
    "cluster_scaling": ["cluster.models=[pcb_paper_a]", "cluster.replicas=[1,2]", "cluster.requests_per_replica=50",
                        "cluster.min_requests=100", "cluster.jobs=1", "cluster.out_dir=null"],
}
# Experiments whose coserve_best needs a plan first: (plan overrides) made with the simulator.
NEEDS_PLAN = {
    "paper_fig13_14": ["+experiment=paper_fig17_18", *SIM_TINY, "planner.output={plans}/plan.yaml"],
    "demo_fig13_16": ["+experiment=plan", "{tiny}", "backend=sim", "planner.repeats=1",
                      "planner.candidates=[1C,2C]", "planner.output={plans}/plan.yaml"],
}


def tiny_for(name: str) -> list[str]:
    """The experiment's tiny overrides: listed in TINY, else by its model (paper: sim, else real)."""
    if name in TINY:
        return TINY[name]
    cfg = compose([f"+experiment={name}"])
    return SIM_TINY if cfg.model.kind == "paper" else REAL_TINY


def _expand(overrides: list[str], plans: Path, tiny: list[str]) -> list[str]:
    out: list[str] = []
    for o in overrides:
        out += tiny if o == "{tiny}" else [o.replace("{plans}", str(plans))]
    return out


def needs_plugins(name: str) -> None:
    """Skip experiments whose Hydra plugin is not installed (search_sim: pip install -e '.[dev]')."""
    if name == "search_sim":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[dev]' (Optuna sweeper)")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_opens_with_command_and_question(name: str) -> None:
    needs_plugins(name)
    text = (Path(CONF_DIR) / "experiment" / f"{name}.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == "# @package _global_", name
    assert "python -m coserve_jax.run +experiment=" in lines[1], name  # its command first
    assert "Question" in text, name
    cfg = compose([f"+experiment={name}"])
    assert cfg.experiment == name
    as_run_config(cfg)  # typed and validated (errors name the field)


def test_paper_sweeps_cover_the_papers_grid() -> None:
    """The Fig. 13-16 sweeps are tasks A1 A2 B1 B2 x NUMA, UMA on the simulator."""
    for name in ("paper_fig13_14", "paper_fig15_16"):
        raw = OmegaConf.load(Path(CONF_DIR) / "experiment" / f"{name}.yaml")
        params = raw.hydra.sweeper.params
        assert set(str(params.model).split(",")) == {"pcb_paper_a", "pcb_paper_b"}
        assert set(str(params["workload.num_requests"]).split(",")) == {"2500", "3500"}
        assert set(str(params.hardware).split(",")) == {"numa_3080ti", "uma_m2"}
        assert raw.workload.interval_ms == 4.0
    for task, (model, n) in {"a1": ("a", 2500), "a2": ("a", 3500), "b1": ("b", 2500),
                             "b2": ("b", 3500)}.items():
        cfg = compose([f"+experiment=task_{task}"])
        assert (cfg.model.board, cfg.workload.num_requests, cfg.workload.interval_ms) == (model, n, 4.0)
        assert cfg.workload.task == task.upper() and cfg.backend.name == "sim"


def test_task_experiment_runs_tiny_on_the_simulator(tmp_path: Path) -> None:
    """Fast smoke test: a paper task in the simulator, a few requests, three arms."""
    res = run_experiment(["+experiment=task_b2", "workload.num_requests=60",
                          "arms=[samba,coserve,coserve_plus]"], out_dir=tmp_path, progress=False)
    assert res["config"]["task"] == "B2" and res["config"]["hardware"] == "numa_3080ti"
    assert gc.get_freeze_count() == 0  # each arm's run froze the heap and let it go
    for arm in res["arms"].values():
        assert arm["requests"]["completed"] == 60


def test_frozen_heap_holds_while_any_user_serves() -> None:
    """The collector skips long-lived objects while an arm runs; the count survives nesting.

    Frozen objects are in no generation ``gc.get_objects()`` lists, so a probe's membership says
    whether it is frozen. Counts would not do: reference counting still frees frozen objects, and
    another thread (a Ray or JAX worker) may free some between two reads.
    """

    def frozen(obj: object) -> bool:
        return not any(o is obj for o in gc.get_objects())

    # A fresh instance: an engine another test left open may still hold the shared frozen_heap.
    heap = type(frozen_heap)()
    before = []
    with heap:
        assert frozen(before) and gc.get_freeze_count() > 0
        during = []
        with heap:
            assert not frozen(during)  # not frozen twice
        assert frozen(before) and not frozen(during)  # the outer user still serves
    assert not frozen(before) and gc.get_freeze_count() == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_in_tiny_mode(name: str, tmp_path: Path, tiny_overrides: list[str]) -> None:
    needs_plugins(name)
    plans = tmp_path / "plans"
    if name in NEEDS_PLAN:
        run_job(compose(_expand(NEEDS_PLAN[name], plans, tiny_overrides)), tmp_path / "plan")
        assert (plans / "plan.yaml").is_file()
    overrides = _expand(tiny_for(name), plans, tiny_overrides)
    cfg = compose([f"+experiment={name}", *overrides])
    out = tmp_path / "run"
    run_job(cfg, out)
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == name
    for arm in results.get("arms", {}).values():
        assert arm["requests"]["failed"] == 0, name


@pytest.mark.slow
def test_paper_sweep_launches_as_multirun(tmp_path: Path) -> None:
    """+experiment=paper_fig15_16 is a sweep by itself (hydra.mode=MULTIRUN, joblib launcher).

    Overriding workload.num_requests on the command line replaces that sweep axis, so the tiny
    sweep has 4 jobs (boards A, B x NUMA, UMA) instead of 8."""
    sweep = tmp_path / "sweep"
    subprocess.run([sys.executable, "-m", "coserve_jax.run", "+experiment=paper_fig15_16",
                    "workload.num_requests=40", f"hydra.sweep.dir={sweep}"],
                   cwd=ROOT, check=True, capture_output=True)
    runs = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert runs == sorted(f"{hw}_pcb_paper_{b}_40" for hw in ("numa_3080ti", "uma_m2") for b in "ab"), runs


@pytest.mark.slow
def test_committed_sim_tables_match_a_fresh_regeneration() -> None:
    """scripts/reproduce_paper.py --check: same seeds -> the same simulated tables (~4 min)."""
    proc = subprocess.run([sys.executable, "scripts/reproduce_paper.py", "--check"], check=False, cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
