"""The zoo job (``+experiment=zoo``): build or reuse the demo zoo, held-out accuracy, results.json."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from coserve_jax.config import ConfigError, ZooEvalConfig, compose
from coserve_jax.jobs.zoo import run_zoo_job


def eval_settings(raw):  # the zoo_eval node, checked (config.ZooEvalConfig), as results.json records it
    return dataclasses.asdict(ZooEvalConfig.from_mapping(raw))


def test_eval_settings_name_the_field():
    assert eval_settings(None) == {"num_boards": 10, "seed": 1234}
    assert eval_settings({"num_boards": 2}) == {"num_boards": 2, "seed": 1234}
    with pytest.raises(ConfigError, match=r"zoo_eval\.num_boards"):
        eval_settings({"num_boards": 0})
    with pytest.raises(ConfigError, match=r"zoo_eval: unknown key"):
        eval_settings({"boards": 3})


def test_zoo_job_reuses_the_session_zoo(real, tiny_overrides, tmp_path, capsys):
    cfg = compose(["+experiment=zoo", *tiny_overrides, "zoo_eval.num_boards=2", "zoo_eval.seed=7"])
    res = run_zoo_job(cfg, tmp_path / "run", progress=False)
    z = res["zoo"]
    assert res["experiment"] == "zoo" and res["config"]["model"] == "pcb_tiny" and res["config"]["git_sha"]
    assert z["reused"] is True and z["build_s"] is None
    assert z["num_experts"] == len(real.model.graph.experts) and z["total_bytes"] == real.model.graph.total_bytes
    assert sum(d["total_bytes"] for d in z["per_expert_bytes"].values()) == z["total_bytes"]
    assert set(z["per_expert_bytes"]) == {"preliminary/resnet_micro", "subsequent/resnet_micro_det"}
    assert z["manifest"]["path"] == str(real.model.zoo.root / "manifest.json")
    assert len(z["manifest"]["experts"]) == z["num_experts"]
    acc = z["accuracy"]
    for key in ("classification", "detection", "end_to_end"):
        assert 0.0 <= acc[key] <= 1.0
    assert acc["num_boards"] == 2 and acc["seed"] == 7 and acc["num_requests"] > 0
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["zoo"]["accuracy"]["end_to_end"] == acc["end_to_end"]
    assert "held-out accuracy" in capsys.readouterr().out


def test_zoo_job_rejects_a_paper_model(tmp_path):
    with pytest.raises(ConfigError, match="model"):
        run_zoo_job(compose(["+experiment=zoo", "model=pcb_paper_a"]), tmp_path, progress=False)


@pytest.mark.slow
def test_zoo_job_cli_builds_then_reuses(tmp_path):
    """``python -m coserve_jax.run +experiment=zoo model=pcb_tiny`` end to end, twice."""
    env = dict(os.environ, COSERVE_JAX_CACHE=str(tmp_path / "cache"))
    for i, reused in enumerate((False, True)):
        run_dir = tmp_path / f"run{i}"
        proc = subprocess.run([sys.executable, "-m", "coserve_jax.run", "+experiment=zoo", "model=pcb_tiny",
                               "zoo_eval.num_boards=1", f"hydra.run.dir={run_dir}"],
                              check=False, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        z = json.loads((run_dir / "results.json").read_text())["zoo"]
        assert z["reused"] is reused and (z["build_s"] is None) is reused
        assert z["num_experts"] == 8 and "held-out accuracy" in proc.stdout
