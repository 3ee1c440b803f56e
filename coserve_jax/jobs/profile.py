"""``job: profile`` (``python -m coserve_jax.run +experiment=profile``): this machine's profile.

Measures the configured CoE on disk (the demo zoo by default; model=pcb_synth's untrained
experts too) on one device of every executor kind
in ``hardware.executors`` with ``microbench.measure_profile``: K·n+B per architecture fitted on
``profiler.batch_sizes`` and checked on ``profiler.heldout_batch_sizes`` (left out of the fit),
compile seconds, parameter and activation bytes, and load fits (disk -> pool, host -> pool,
disk -> host cache) measured twice, with the page cache dropped before each disk read and kept.
The profile's own ``loads`` are the variant ``hardware.drop_page_cache`` selects; both are kept
under ``loads_page_cache``. Usage probabilities come from the CoE's rules
(``CoEGraph.usage_probs``), from the ground-truth routes of a sampled trace, and — with
``profiler.router_sample`` > 0 — from running the real router (the experts' outputs through the
routing rules) on that sample.

Writes ``profile.json`` (usable as ``hardware.profile=<run dir>/profile.json``), ``results.json``
with a ``profile`` block, ``profile_summary.{md,csv}`` and ``profile_loads.{md,csv}``, and prints
the tables.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from coserve_jax.config import ConfigError, RunConfig, as_run_config
from coserve_jax.jobs.rundir import run_dir, write_run_record
from coserve_jax.metrics.results import git_sha
from coserve_jax.profiler.microbench import measure_loads, measure_profile
from coserve_jax.report.profile_tables import loads_table, summary_table, usage_table
from coserve_jax.report.table_render import to_markdown, write_table
from coserve_jax.runner.devices import configure_jax_devices
from coserve_jax.runner.model import load_model, make_runtime
from coserve_jax.workload.trace import make_trace

log = logging.getLogger("coserve_jax")


# ---- pure summaries -----------------------------------------------------------------------------
def fit_errors(profile: Mapping[str, Any], served: bool = False) -> list[float]:
    """Every held-out relative error of the K·n+B fits in a profile (all kinds, all archs)."""
    key = "served_abs_rel_error" if served else "abs_rel_error"
    return [e for kd in profile["kinds"].values() for ad in kd["archs"].values()
            for e in ad.get("heldout", {}).get(key, [])]


def usage_from_routes(routes: Sequence[Sequence[str]], experts: Sequence[str]) -> dict[str, float]:
    """Fraction of requests whose route uses each expert."""
    n = max(len(routes), 1)
    counts = dict.fromkeys(experts, 0)
    for route in routes:
        for e in set(route):
            counts[e] = counts.get(e, 0) + 1
    return {e: c / n for e, c in counts.items()}


def usage_gap(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Largest absolute difference between two usage maps over their experts."""
    return max((abs(a.get(e, 0.0) - b.get(e, 0.0)) for e in set(a) | set(b)), default=0.0)


# ---- the job ------------------------------------------------------------------------------------
def run_profile_job(cfg: RunConfig | DictConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Measure this machine's profile of the configured trained CoE; write profile.json."""
    run_cfg, resolved = as_run_config(cfg)
    if run_cfg.model.kind == "paper":
        raise ConfigError(f"model: the profile job measures a zoo on disk (model.kind=demo or synth); "
                          f"{run_cfg.model.name!r} is kind {run_cfg.model.kind!r} (paper-scale graphs "
                          "use hardware.paper_profile in the simulator)")
    p = run_cfg.profiler
    batch_sizes, heldout, load_samples, router_sample = p.batch_sizes, p.heldout_batch_sizes, p.load_samples, p.router_sample
    hw = run_cfg.hardware
    configure_jax_devices(hw.cpu_devices)
    out = run_dir(out_dir)
    model = load_model(run_cfg, progress)
    rt = make_runtime(run_cfg, model)
    try:
        kinds = sorted(hw.executors)
        t0 = time.perf_counter()
        prof = measure_profile(rt, kinds, batch_sizes=batch_sizes, repeats=p.repeats, load_samples=load_samples,
                               drop_cache=hw.drop_page_cache, seed=run_cfg.seed, progress=progress,
                               heldout_sizes=heldout, warmup=p.warmup, executors=dict(hw.executors),
                               loop_requests=p.loop_requests, cpu_devices=hw.cpu_devices,
                               load_threads=run_cfg.backend.load_threads)
        # The other page-cache setting, so both load fits are on record.
        other = not hw.drop_page_cache
        variants: dict[str, Any] = {k: {_pc(hw.drop_page_cache): prof["kinds"][k]["loads"]} for k in kinds}
        for k in kinds:
            variants[k][_pc(other)] = measure_loads(rt, rt.device(k, 0), load_samples, other)
        host_other = measure_loads(rt, None, load_samples, other)
        prof["loads_page_cache"] = {
            "selected": _pc(hw.drop_page_cache), "kinds": variants,
            "host_cache": {_pc(hw.drop_page_cache): prof["host_cache_loads"]["disk"], _pc(other): host_other["disk"]},
        }
    finally:
        rt.close()
    measure_s = time.perf_counter() - t0

    # Usage probabilities: rules, ground-truth routes of a sample, and (optionally) the router.
    graph = model.graph
    sample_cfg = dataclasses.replace(run_cfg, workload=dataclasses.replace(
        run_cfg.workload, num_requests=max(router_sample, 500), trace_path=None))
    sample = make_trace(sample_cfg, graph)
    rules = dict(graph.usage_probs())
    usage: dict[str, Any] = {
        "rules": rules,
        "trace": usage_from_routes([r.route or graph.truth_route(r.component_type, r.truth or "ok")
                                    for r in sample], list(graph.experts)),
        "trace_requests": len(sample),
    }
    if router_sample > 0 and model.zoo.routing == "model":  # untrained (synthetic) experts do not route
        routes = route_with_router(model.zoo, sample[:router_sample], progress)
        usage["router"] = usage_from_routes(routes, list(graph.experts))
        usage["router_requests"] = len(routes)
        usage["max_abs_gap_router_vs_rules"] = usage_gap(usage["router"], rules)
    usage["max_abs_gap_trace_vs_rules"] = usage_gap(usage["trace"], rules)
    prof["usage"] = usage

    errs, served = fit_errors(prof), fit_errors(prof, served=True)
    summary = {
        "fit_median_abs_error": statistics.median(errs) if errs else None,
        "fit_max_abs_error": max(errs) if errs else None,
        "served_median_abs_error": statistics.median(served) if served else None,
        "fit_batch_sizes": list(batch_sizes), "heldout_batch_sizes": list(heldout),
        "per_arch": {f"{k}/{a}": _arch_summary(ad) for k in kinds for a, ad in prof["kinds"][k]["archs"].items()},
        "load_fits": {
            **{f"{k}/{src}/{pc}": _load_summary(v[src]) for k in kinds for pc, v in variants[k].items()
               for src in ("disk", "host")},
            **{f"host_cache/disk/{pc}": _load_summary(v) for pc, v in prof["loads_page_cache"]["host_cache"].items()},
        },
        "selected_page_cache": _pc(hw.drop_page_cache),
        "usage": {k: v for k, v in usage.items() if k not in ("rules", "trace", "router")},
        "usage_top": _usage_top(usage, 10),
        "measure_s": measure_s,
    }
    tables = [summary_table(summary), loads_table(summary), usage_table(summary)]
    for t in tables:
        write_table(t, out)
    results = {
        "experiment": run_cfg.experiment,
        "job": "profile",
        "config": {"model": run_cfg.model.name, "hardware": hw.name, "backend": run_cfg.backend.name,
                   "seed": run_cfg.seed, "git_sha": git_sha(), "executors": dict(hw.executors),
                   "drop_page_cache": hw.drop_page_cache, "jax_version": jax.__version__,
                   "devices": [str(d) for d in jax.devices()]},
        "zoo": {"num_experts": len(graph.experts), "total_bytes": graph.total_bytes,
                "root": str(model.zoo.root)},
        "profile": summary,
        "profile_path": str(out / "profile.json"),
    }
    write_run_record(out, results, resolved, profile=prof)
    print()
    for t in tables:
        print(to_markdown(t))
    med = summary["fit_median_abs_error"]
    print(f"K·n+B fit, held-out sizes {list(heldout)}: median |error| "
          f"{'—' if med is None else f'{100 * med:.1f}%'} (exact shapes), "
          f"{100 * (summary['served_median_abs_error'] or 0):.1f}% through the padded served path")
    print(f"profile: {out / 'profile.json'} (use with hardware.profile=...)")
    return results


def _pc(dropped: bool) -> str:
    return "dropped" if dropped else "kept"


def route_with_router(zoo: Any, requests: Sequence[Any], progress: bool = False) -> list[tuple[str, ...]]:
    """Each request's route as the real experts decide it (classifier output -> rules -> detector)."""
    graph = zoo.graph
    images = np.stack([zoo.render(r) for r in requests]) if requests else np.zeros((0,))
    routes: dict[int, list[str]] = {i: [] for i in range(len(requests))}
    stage: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        stage.setdefault(graph.preliminary(r.component_type), []).append(i)
    bar = tqdm(desc="router sample", unit="expert", leave=False, disable=not progress or None)
    while stage:
        nxt: dict[str, list[int]] = {}
        for eid in sorted(stage):
            ids = stage[eid]
            logits = zoo.logits(eid, zoo.restore(eid), images[ids])
            for i, lg in zip(ids, logits):
                routes[i].append(eid)
                o = graph.route_from_output(requests[i], eid, np.asarray(lg))
                if o.next_expert is not None:
                    nxt.setdefault(o.next_expert, []).append(i)
            bar.update()
        stage = nxt
    bar.close()
    return [tuple(routes[i]) for i in range(len(requests))]


def _arch_summary(ad: Mapping[str, Any]) -> dict[str, Any]:
    act = ad.get("activation_bytes", {})
    mb = str(ad["max_batch"])
    h = ad.get("heldout", {})
    return {
        "k_s": ad["k_s"], "b_s": ad["b_s"], "max_batch": ad["max_batch"], "compile_s": ad.get("compile_s"),
        "param_bytes": ad.get("param_bytes"), "activation_bytes": act,
        "activation_bytes_at_max_batch": act.get(mb),
        "heldout_abs_rel_error": h.get("abs_rel_error"), "heldout_served_abs_rel_error": h.get("served_abs_rel_error"),
    }


def _load_summary(fit: Mapping[str, Any]) -> dict[str, Any]:
    b = float(fit["b_s_per_byte"])
    return {"a_s": fit["a_s"], "b_s_per_byte": b, "bytes_per_s": (1 / b) if b > 0 else None,
            "samples": len(fit.get("samples", {}).get("bytes", []))}


def _usage_top(usage: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    rules = usage["rules"]
    top = sorted(rules, key=lambda e: (-rules[e], e))[:n]
    return [{"expert": e, "rules": rules[e], "trace": usage["trace"].get(e),
             "router": usage.get("router", {}).get(e)} for e in top]
