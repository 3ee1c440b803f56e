"""Atomic JSON output and run provenance (git SHA)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a part
    (``indent`` None: compact, for large files such as timelines)."""
    text = json.dumps(data, indent=indent, sort_keys=False, default=_default,
                      separators=None if indent is not None else (",", ":"))
    write_bytes_atomic(path, (text + "\n").encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, error: type[Exception], what: str) -> Any:
    """Read a JSON file; a missing or malformed file raises ``error`` naming ``what`` and the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what}: no such file {path}") from None
    except json.JSONDecodeError as e:
        raise error(f"{what}: {path} is not valid JSON: {e}") from None


def git_sha(repo_dir: str | Path | None = None) -> str:
    """The checkout's commit (with '-dirty' when tracked files changed), or 'unknown'."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], check=False, cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False, cwd=cwd, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
