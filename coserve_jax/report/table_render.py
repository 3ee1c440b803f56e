"""The `Table` value and its Markdown/CSV renderings; number and cell formatting.

A Table carries display rows (strings, for GitHub Markdown) and tidy records (one dict per
value with numeric fields, for CSV): people read the first, scripts the second.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any

EMPTY = "—"


@dataclasses.dataclass
class Table:
    """A titled table: ``header``/``rows`` for Markdown, ``records`` for CSV, ``notes`` below."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    records: list[dict[str, Any]]
    notes: list[str] = dataclasses.field(default_factory=list)


def fmt_number(value: float | None, digits: int = 3, integers: bool = True) -> str:
    """A readable number: ``digits`` significant digits with at least one decimal; whole
    numbers without decimals when ``integers`` (counts), kept as ``30.0`` otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return EMPTY
    if integers and float(value).is_integer():
        return f"{int(value):,}"
    magnitude = int(math.floor(math.log10(abs(value)))) + 1 if value else 1
    decimals = max(1, digits - magnitude)
    return f"{value:,.{decimals}f}"


def fmt_bytes(value: float | None) -> str:
    """Bytes in binary units (KiB, MiB, GiB)."""
    if value is None:
        return EMPTY
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


def ratio(ours: float | None, paper: float | None) -> float | None:
    """ours / paper, or None when either is missing or paper is 0."""
    if ours is None or paper is None or paper == 0:
        return None
    return ours / paper


def comparison_cell(ours: float | None, paper: float | None,
                    paper_range: tuple[float, float] | None = None,
                    integers: bool = True) -> str:
    """``"ours (paper) ×ratio"``; ``"ours (paper lo–hi)"`` when only a range is known.

    Missing parts are left out: ``"ours"`` alone, or ``"— (paper)"`` when we have no value.
    ``integers`` as in `fmt_number` (True for counts, False for rates).
    """
    if ours is None and paper is None and paper_range is None:
        return ""
    cell = fmt_number(ours, integers=integers)
    if paper is not None:
        cell += f" ({fmt_number(paper, integers=integers)})"
        r = ratio(ours, paper)
        if r is not None:
            cell += f" ×{r:.2f}"
    elif paper_range is not None:
        cell += f" ({fmt_number(paper_range[0])}–{fmt_number(paper_range[1])})"
    return cell


def to_markdown(table: Table) -> str:
    """A GitHub Markdown section: ``### title``, the table, then notes as a list."""
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_escape(h) for h in table.header) + " |")
    lines.append("| " + " | ".join("---" for _ in table.header) + " |")
    for row in table.rows:
        lines.append("| " + " | ".join(_escape(c) for c in row) + " |")
    if table.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in table.notes)
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The records as CSV; columns are the union of record keys in first-seen order."""
    columns: list[str] = []
    for record in table.records:
        columns.extend(k for k in record if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in table.records:
        writer.writerow({k: _csv_value(v) for k, v in record.items()})
    return buf.getvalue()


def write_table(table: Table, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.csv`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
    md_path.write_text(to_markdown(table))
    csv_path.write_text(to_csv(table))
    return md_path, csv_path


def _escape(cell: str) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 6)
    return value
