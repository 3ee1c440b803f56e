"""The README's Python API example is a real script: it runs with plain ``python``, unguarded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "online_api.py"


def test_readme_shows_the_example_script_verbatim():
    script = SCRIPT.read_text()
    body = script[script.index("from coserve_jax.api"):]
    assert f"```python\n{body}```" in (ROOT / "README.md").read_text()


def test_api_example_runs_as_a_plain_script(tmp_path):
    env = {**os.environ, "COSERVE_JAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # as a user's shell has it, not the test session's two devices
    proc = subprocess.run([sys.executable, str(SCRIPT)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "freeze_support" not in proc.stderr and "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("samba: ") for line in lines) and any(line.startswith("coserve: ") for line in lines)
    served = [line for line in lines if " via [" in line]
    assert len(served) == 20, proc.stdout[-2000:]
    assert (tmp_path / "runs" / "api" / "results.json").is_file()
