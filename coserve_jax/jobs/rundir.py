"""A run dir and its record, written the same way by every job: results.json, the profile the
run used (profile.json, usable as hardware.profile=...) and the composed config
(resolved_config.yaml; empty when the run was configured in Python)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from coserve_jax.metrics.results import write_json_atomic


def run_dir(path: str | Path) -> Path:
    """The run dir, created if needed."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_run_record(out: Path, results: dict[str, Any], resolved: dict[str, Any],
                     profile: dict[str, Any] | None = None) -> None:
    """results.json (atomically), profile.json when the job used or measured one, and
    resolved_config.yaml."""
    if profile is not None:
        write_json_atomic(out / "profile.json", profile)
    write_json_atomic(out / "results.json", results)
    (out / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)) if resolved else "")
