"""Per-request records: one CSV row per request of every arm (``requests.csv`` in the run dir).

Columns: arm, request_id, component_type, arrival_s, start_s (its first batch launched),
finish_s, latency_s (finish − arrival, completed requests only), experts ("+"-joined, in the
order they ran), verdict, failure (the reason, when it failed), truth (the ground truth, when
the trace has it). Times are seconds of the backend's clock (virtual in the simulator) from the
arm's first arrival; an empty cell is a value the request never had. Written gzipped
(``requests.csv.gz``) when larger than ``metrics.requests_gzip_over_bytes``; ``read_records``
reads either.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from coserve_jax.metrics.results import write_bytes_atomic
from coserve_jax.metrics.timeline import write_timeline

COLUMNS = ("arm", "request_id", "component_type", "arrival_s", "start_s", "finish_s", "latency_s",
           "experts", "verdict", "failure", "truth")
FILE = "requests.csv"


def request_rows(arm: str, states: Iterable[Any]) -> list[tuple]:
    """Rows (in COLUMNS order) of one arm's RequestStates, by arrival."""
    states = sorted(states, key=lambda rs: (rs.arrived_s, rs.request.request_id))
    t0 = states[0].arrived_s if states else 0.0

    def rel(t: float | None) -> str:
        return "" if t is None else f"{t - t0:.6f}"

    return [(arm, rs.request.request_id, rs.request.component_type, rel(rs.arrived_s), rel(rs.started_s),
             rel(rs.done_s), f"{rs.done_s - rs.arrived_s:.6f}" if rs.done and rs.failed is None else "",
             "+".join(rs.experts), rs.verdict or "", rs.failed or "", rs.request.truth or "")
            for rs in states]


def write_records(out_dir: str | Path, rows: Sequence[tuple], gzip_over_bytes: int) -> Path:
    """Write the rows as requests.csv (or requests.csv.gz when larger than gzip_over_bytes),
    atomically; removes the other form if an earlier run left it. Returns the path."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    data = buf.getvalue().encode()
    out_dir = Path(out_dir)
    zipped = len(data) > gzip_over_bytes
    path = out_dir / (FILE + ".gz" if zipped else FILE)
    (out_dir / (FILE if zipped else FILE + ".gz")).unlink(missing_ok=True)
    write_bytes_atomic(path, gzip.compress(data, mtime=0) if zipped else data)
    return path


def find_records(run_dir: str | Path) -> Path | None:
    """The run dir's requests.csv or requests.csv.gz, or None."""
    for name in (FILE, FILE + ".gz"):
        p = Path(run_dir) / name
        if p.is_file():
            return p
    return None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows as dicts; times as floats (None when empty), request_id as int."""
    path = Path(path)
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        for k in ("arrival_s", "start_s", "finish_s", "latency_s"):
            row[k] = float(row[k]) if row[k] else None
        row["request_id"] = int(row["request_id"])
        out.append(row)
    return out


def by_arm(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["arm"], []).append(r)
    return out


@dataclasses.dataclass
class ArmRecords:
    """What one run of an arm leaves beside its summary: its request rows and its timeline."""

    rows: list[tuple]
    timeline: Any = None  # metrics.timeline.Timeline when metrics.timeline is on

    @classmethod
    def of(cls, arm: str, engine: Any, metrics: Any) -> ArmRecords:
        rows = request_rows(arm, engine.request_states().values()) if metrics.requests else []
        return cls(rows, engine.timeline)


def write_arm_records(out_dir: str | Path, metrics: Any, kept: Mapping[str, ArmRecords],
                      meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write the kept run of every arm: requests.csv(.gz) and, when on, timeline-<arm>.json.
    Returns {"requests": file name, "timelines": {arm: what write_timeline returned}}."""
    out: dict[str, Any] = {}
    if metrics.requests:
        out["requests"] = write_records(out_dir, [r for rec in kept.values() for r in rec.rows],
                                        metrics.requests_gzip_over_bytes).name
    timelines = {arm: write_timeline(out_dir, arm, rec.timeline, dict(meta))
                 for arm, rec in kept.items() if rec.timeline is not None}
    if timelines:
        out["timelines"] = timelines
    return out
