"""How a config spells executor counts: ``"3G+1C"`` is ``{"gpu": 3, "cpu": 1}`` (planner.candidates,
plan tables)."""

from __future__ import annotations

import re
from collections.abc import Mapping

_KIND_LETTER = {"gpu": "G", "cpu": "C"}
_LETTER_KIND = {v: k for k, v in _KIND_LETTER.items()}


def format_executors(executors: Mapping[str, int]) -> str:
    """{gpu: 3, cpu: 1} -> "3G+1C" (GPU first; zero counts left out)."""
    parts = [f"{n}{_KIND_LETTER[k]}" for k, n in sorted(executors.items(), key=lambda kv: (kv[0] != "gpu", kv[0]))
             if n]
    return "+".join(parts)


def parse_executors(name: str, field: str = "planner.candidates") -> dict[str, int]:
    """"3G+1C" -> {"gpu": 3, "cpu": 1}; raises ValueError naming ``field`` on a bad name."""
    out: dict[str, int] = {}
    for part in str(name).replace(" ", "").upper().split("+"):
        m = re.fullmatch(r"(\d+)([GC])", part)
        if not m or int(m.group(1)) < 1 or _LETTER_KIND[m.group(2)] in out:
            raise ValueError(f"{field}: bad executor candidate {name!r}; write counts like '3G+1C' or '2C'")
        out[_LETTER_KIND[m.group(2)]] = int(m.group(1))
    return out
