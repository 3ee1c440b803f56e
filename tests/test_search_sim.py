"""+experiment=search_sim: Hydra's Optuna sweeper over the simulator, tiny (2 trials, 40 requests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coserve_jax.api import run_experiment
from coserve_jax.config import BudgetError, ConfigError, compose
from coserve_jax.profiler.objective import INFEASIBLE_RPS, infeasible, objective

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[dev]' (Optuna sweeper)")

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_search_sweeps_and_returns_the_objective(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "coserve_jax.run", "+experiment=search_sim",
                           "workload.num_requests=40", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted(sweep.glob("*/results.json"))
    assert len(trials) == 2
    rps = [json.loads(p.read_text())["arms"]["search"]["throughput_rps"] for p in trials]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(rps)) and max(rps) > 0
    assert set(best["best_params"]) == {
        "arm_catalog.search.executors.gpu", "arm_catalog.search.executors.cpu",
        "arm_catalog.search.expert_fraction", "arm_catalog.search.prefetcher.depth.gpu",
        "arm_catalog.search.batch_memory"}


def test_objective_is_the_objective_arms_throughput(tmp_path: Path) -> None:
    cfg = compose(["+experiment=search_sim", "workload.num_requests=40", "arm_catalog.search.prefetcher.depth.gpu=0"])
    res = run_experiment(cfg, out_dir=tmp_path, progress=False)
    assert res["arms"]["search"]["policy"]["prefetcher"]["max_inflight"] == {"gpu": 0, "cpu": 2}  # follows depth
    assert objective(cfg, res) == res["arms"]["search"]["throughput_rps"] > 0
    assert infeasible(cfg, BudgetError("hardware.device_budget: too small")) == INFEASIBLE_RPS
    assert infeasible(cfg, ConfigError("arms: unknown arm")) is None  # a typo still stops the sweep
    plain = compose(["backend=sim"])
    assert objective(plain, res) is None and infeasible(plain, BudgetError("x")) is None


def test_too_small_a_budget_is_infeasible_not_a_typo(tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match="hardware.cpu_pool_budget"):
        run_experiment(["+experiment=search_sim", "workload.num_requests=20", "arm_catalog.search.executors.cpu=40"],
                       out_dir=tmp_path, progress=False)
