"""scripts/device_check.sh --dry-run: the device machine's script, whole, on this CPU (~6 min on 2 cores)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "COSERVE_JAX_CACHE": str(tmp_path / "cache"),
           # the user's persistent compilation cache: the tiny zoo's YOLO-family compiles are paid once
           "JAX_CACHE_DIR": os.path.join(os.environ.get("COSERVE_JAX_CACHE", os.path.expanduser("~/.cache/coserve_jax")),
                                         "jax_cache")}
    env.pop("XLA_FLAGS", None)  # as on the device machine: the script's configs choose the devices
    proc = subprocess.run([str(ROOT / "scripts" / "device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    with open(out / "steps.tsv") as f:
        steps = {r["step"]: r["rc"] for r in csv.DictReader(f, delimiter="\t")}
    assert all(steps[s] == "0" for s in ("env", "wheels", "pytest", "zoo", "serve", "profile", "bench")), steps
    assert "SKIPPED" in (out / "pytest.log").read_text()  # -m gpu ran, and said why it skipped
    res = json.loads((out / "serve" / "results.json").read_text())
    assert set(res["arms"]) == {"samba", "coserve", "coserve_plus", "all_resident"}
    assert res["config"]["model"] == "pcb_synth_tiny" and res["config"]["device_budget"] == "25%"
    for arm in res["arms"].values():
        assert arm["requests"]["completed"] == res["config"]["num_requests"]
        assert arm["host_tier"] == "pinned_host"
    assert {p["device"] for p in res["arms"]["coserve"]["pools"]} == {"cpu:0", "cpu:1", "host"}
    bench = json.loads((out / "bench_load.json").read_text())
    for r in bench["archs"].values():
        assert r["host_to_device"]["engine_pinned"]["bytes_per_s"] > 0
        assert r["disk_to_host"]["raw_cold"]["bytes_per_s"] > 0
        assert r["disk_to_device"]["lease"]["bytes_per_s"] > 0 and r["disk_to_device"]["lease/copied"] > 0
    assert "dry run on CPU" in (out / "summary.md").read_text()
