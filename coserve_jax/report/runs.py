"""Load run directories (single Hydra runs or multirun sweeps) into `RunRecord`s.

A run directory holds ``results.json`` (DESIGN.md §10) and, optionally, Hydra's resolved
``.hydra/config.yaml``. A multirun directory holds numbered run directories and
``multirun.yaml``; any folder is searched recursively for ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from coserve_jax.report import paper_values as pv

RESULTS_FILE = "results.json"


class ReportInputError(ValueError):
    """A report input is missing or unreadable; the message names the path."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run: its results, resolved config and the labels the tables group by.

    ``hardware`` is ``"NUMA"``/``"UMA"`` for the paper's machines, else the config's name;
    ``task`` is ``"A1".."B2"`` when it can be told, else None. ``device_budget`` is the raw
    ``hardware.device_budget`` value (a byte count or a string such as ``"25%"``), or None.
    """

    path: Path
    label: str
    results: dict[str, Any]
    hydra_config: dict[str, Any] | None
    hardware: str | None
    task: str | None
    device_budget: Any

    @property
    def arms(self) -> dict[str, dict[str, Any]]:
        """The results' ``arms`` mapping of arms that ran (empty when absent); arms reported
        infeasible (``{"infeasible": reason, ...}``) are left out: see ``infeasible``."""
        arms = self.results.get("arms")
        if not isinstance(arms, dict):
            return {}
        return {name: arm for name, arm in arms.items() if is_infeasible(arm) is None}

    @property
    def infeasible(self) -> dict[str, str]:
        """Arms that did not run because their memory budget could not hold them: name → reason."""
        arms = self.results.get("arms")
        if not isinstance(arms, dict):
            return {}
        return {name: reason for name, arm in arms.items() if (reason := is_infeasible(arm)) is not None}

    @property
    def group(self) -> tuple[str, str]:
        """(hardware, task) with readable fallbacks, the row key of comparison tables."""
        return (self.hardware or "?", self.task or _model_name(self) or "?")


def is_infeasible(arm: Any) -> str | None:
    """An arm entry's infeasibility reason (results.json ``arms[name].infeasible``), else None."""
    if isinstance(arm, dict) and arm.get("infeasible") is not None:
        return str(arm["infeasible"])
    return None


def name_of(value: Any) -> str | None:
    """A config entry's name: the string itself, or a dict's ``name`` (else ``_name``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("name", "_name"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def find_result_files(path: str | Path) -> list[Path]:
    """Every ``results.json`` under ``path`` (or ``path`` itself), sorted naturally.

    Raises ReportInputError naming ``path`` when it does not exist or holds none.
    """
    root = Path(path)
    if not root.exists():
        raise ReportInputError(f"{root}: no such file or directory")
    if root.is_file():
        if root.name != RESULTS_FILE:
            raise ReportInputError(f"{root}: expected a run directory or a {RESULTS_FILE}")
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if RESULTS_FILE in filenames:
            found.append(Path(dirpath) / RESULTS_FILE)
    if not found:
        raise ReportInputError(f"{root}: no {RESULTS_FILE} found in this directory or below")
    return sorted(found, key=_natural_key)


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Load every run found under ``paths`` (run dirs, multirun dirs or results.json files)."""
    runs: list[RunRecord] = []
    for path in paths:
        root = Path(path)
        for results_path in find_result_files(root):
            runs.append(load_run(results_path.parent, label_root=root))
    return runs


def load_run(run_dir: str | Path, label_root: str | Path | None = None) -> RunRecord:
    """Load one run directory; ``label_root`` makes the label a path relative to it."""
    run_dir = Path(run_dir)
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file():
        raise ReportInputError(f"{run_dir}: no {RESULTS_FILE}")
    try:
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportInputError(f"{results_path}: cannot read JSON ({err})") from err
    if not isinstance(results, dict):
        raise ReportInputError(f"{results_path}: top level is not a JSON object")
    hydra_config = _load_hydra_config(run_dir / ".hydra" / "config.yaml")
    partial = RunRecord(run_dir, _label(run_dir, label_root), results, hydra_config,
                        None, None, None)
    return dataclasses.replace(
        partial,
        hardware=infer_hardware(partial),
        task=infer_task(partial),
        device_budget=infer_device_budget(partial),
    )


def infer_hardware(run: RunRecord) -> str | None:
    """``"NUMA"``/``"UMA"`` for the paper's machines, else the hardware config's name."""
    name = name_of(_config(run).get("hardware")) or name_of(
        (run.hydra_config or {}).get("hardware"))
    if name is None:
        return None
    if name in pv.HARDWARE_CONFIG_TO_PAPER:
        return pv.HARDWARE_CONFIG_TO_PAPER[name]
    if name.upper() in pv.HARDWARES:
        return name.upper()
    return name


def infer_task(run: RunRecord) -> str | None:
    """Paper task (A1/A2/B1/B2): ``config.task``, else model board + workload size."""
    task = _config(run).get("task")
    if isinstance(task, str) and task:
        return task.upper()
    hydra = run.hydra_config or {}
    board = _board(_config(run).get("model")) or _board(hydra.get("model"))
    if board is None:
        return None
    suffix = pv.NUM_REQUESTS_TO_TASK_SUFFIX.get(_num_requests(run))
    return board + suffix if suffix else None


def infer_device_budget(run: RunRecord) -> Any:
    """``hardware.device_budget`` from the resolved config, else from results' config."""
    hw = (run.hydra_config or {}).get("hardware")
    if isinstance(hw, dict) and hw.get("device_budget") is not None:
        return hw["device_budget"]
    cfg = _config(run)
    if cfg.get("device_budget") is not None:
        return cfg["device_budget"]
    if isinstance(cfg.get("hardware"), dict):
        return cfg["hardware"].get("device_budget")
    return None


def _config(run: RunRecord) -> dict[str, Any]:
    cfg = run.results.get("config")
    return cfg if isinstance(cfg, dict) else {}


def _model_name(run: RunRecord) -> str | None:
    return name_of(_config(run).get("model")) or name_of((run.hydra_config or {}).get("model"))


def _board(model: Any) -> str | None:
    if isinstance(model, dict) and isinstance(model.get("board"), str):
        board = model["board"].upper()
        if board in ("A", "B"):
            return board
    return pv.MODEL_CONFIG_TO_BOARD.get(name_of(model) or "")


def _num_requests(run: RunRecord) -> int | None:
    """Workload size from results' config, the resolved config, or the arms' submitted count."""
    for workload in (_config(run).get("workload"), (run.hydra_config or {}).get("workload")):
        if isinstance(workload, dict) and isinstance(workload.get("num_requests"), int):
            return workload["num_requests"]
    submitted = {
        arm.get("requests", {}).get("submitted")
        for arm in run.arms.values()
        if isinstance(arm, dict) and isinstance(arm.get("requests"), dict)
    }
    return submitted.pop() if len(submitted) == 1 else None


def _load_hydra_config(path: Path) -> dict[str, Any] | None:
    """The resolved Hydra config as a dict, or None when absent or PyYAML is missing."""
    if not path.is_file():
        return None
    try:
        import yaml  # noqa: PLC0415 (optional: the GPU machine has no hydra/omegaconf)
    except ImportError:
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ReportInputError(f"{path}: cannot read YAML ({err})") from err
    return data if isinstance(data, dict) else None


def _label(run_dir: Path, label_root: str | Path | None) -> str:
    if label_root is not None:
        root = Path(label_root)
        root = root.parent if root.is_file() else root
        try:
            rel = run_dir.resolve().relative_to(root.resolve())
            return f"{root.name}/{rel}" if str(rel) != "." else root.name or str(root)
        except ValueError:
            pass
    return run_dir.name or str(run_dir)


def _natural_key(path: Path) -> list[Any]:
    """Sort 2/ before 10/ in multirun dirs."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]
