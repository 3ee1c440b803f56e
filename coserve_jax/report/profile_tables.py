"""The profile job's tables (``+experiment=profile``, jobs/profile.py): batch latency fits per
architecture, load fits, and usage probabilities, from the ``profile`` summary in its results.json."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from coserve_jax.report.table_render import Table, fmt_bytes, fmt_number


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def summary_table(s: Mapping[str, Any]) -> Table:
    rows, records = [], []
    for key, a in s["per_arch"].items():
        kind, arch = key.split("/", 1)
        errs = a.get("heldout_abs_rel_error") or []
        served = a.get("heldout_served_abs_rel_error") or []
        med = statistics.median(errs) if errs else None
        smed = statistics.median(served) if served else None
        rows.append([kind, arch, fmt_number(1e3 * a["k_s"], integers=False), fmt_number(1e3 * a["b_s"], integers=False),
                     str(a["max_batch"]), fmt_number(a["compile_s"], integers=False), fmt_bytes(a["param_bytes"]),
                     fmt_bytes(a["activation_bytes_at_max_batch"]), _pct(med), _pct(smed)])
        records.append({"kind": kind, "arch": arch, "k_s": a["k_s"], "b_s": a["b_s"], "max_batch": a["max_batch"],
                        "compile_s": a["compile_s"], "param_bytes": a["param_bytes"],
                        "activation_bytes_at_max_batch": a["activation_bytes_at_max_batch"],
                        "heldout_median_abs_error": med, "heldout_served_median_abs_error": smed})
    return Table("profile_summary", "Profile: batch latency K·n + B per architecture",
                 ["kind", "arch", "K ms/img", "B ms", "max batch", "compile s", "params", "act. @ max batch",
                  "held-out err", "held-out err (padded)"], rows, records,
                 notes=[f"fit on batch sizes {s['fit_batch_sizes']}; held-out {s['heldout_batch_sizes']}: "
                        f"median |error| {_pct(s['fit_median_abs_error'])} with exact shapes, "
                        f"{_pct(s['served_median_abs_error'])} through the served path (padded to a power of two)",
                        "compile s: first call at batch 1 (may be served from the persistent compilation cache)"])


def loads_table(s: Mapping[str, Any]) -> Table:
    rows, records = [], []
    for key, f in s["load_fits"].items():
        pool, src, pc = key.split("/")
        rate = f["bytes_per_s"]
        rows.append([pool, src, pc, fmt_number(1e3 * f["a_s"], integers=False),
                     "—" if rate is None else f"{rate / 1e6:,.0f}", str(f["samples"])])
        records.append({"pool": pool, "source": src, "page_cache": pc, **f})
    return Table("profile_loads", "Profile: load seconds = a + bytes / rate",
                 ["into", "from", "page cache", "a ms", "rate MB/s", "samples"], rows, records,
                 notes=[f"the profile's own `loads` use page cache {s['selected_page_cache']} "
                        "(hardware.drop_page_cache); rate — when the fitted slope is 0"])


def usage_table(s: Mapping[str, Any]) -> Table:
    rows, records = [], []
    for r in s["usage_top"]:
        rows.append([r["expert"], f"{r['rules']:.3f}", "—" if r["trace"] is None else f"{r['trace']:.3f}",
                     "—" if r["router"] is None else f"{r['router']:.3f}"])
        records.append(dict(r))
    u = s["usage"]
    notes = [f"trace: ground-truth routes of {u['trace_requests']} sampled requests; max gap to rules "
             f"{u['max_abs_gap_trace_vs_rules']:.3f}"]
    if "router_requests" in u:
        notes.append(f"router: the experts' real outputs through the routing rules on {u['router_requests']} "
                     f"requests; max gap to rules {u['max_abs_gap_router_vs_rules']:.3f}")
    return Table("profile_usage", "Usage probabilities (top 10 by the rules)",
                 ["expert", "rules", "trace sample", "router sample"], rows, records, notes=notes)
