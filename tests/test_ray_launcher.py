"""Hydra's Ray launcher (``hydra/launcher=ray_local``, conf/hydra/launcher/ray_local.yaml) runs a
small simulated sweep: the cluster-launcher configs are known to work with the Ray we install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ray_local_launcher_runs_a_simulated_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "coserve_jax.run", "-m", "+experiment=task_a1", "workload.num_requests=40",
         "arms=[samba,coserve_plus]", "hardware=numa_3080ti,uma_m2", "hydra/launcher=ray_local",
         "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == 2, (runs, proc.stderr[-2000:])
