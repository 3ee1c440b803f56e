"""``job: zoo`` (``python -m coserve_jax.run +experiment=zoo``): build or reuse the zoo, report it.

Builds the configured trained CoE (``model=pcb_demo``, or ``pcb_tiny`` in seconds) unless its
cache already holds it, then evaluates it on freshly generated held-out boards
(``Zoo.evaluate``: board image seeds live in their own range, disjoint from the training and
manifest held-out images, and ``zoo_eval.seed`` picks which boards). Writes ``results.json``
(atomically) with a ``zoo`` block — expert counts, bytes per role/architecture, the manifest's
path and expert list, held-out accuracy (classification, detection, end to end), build seconds
or ``reused: true`` — and prints a short summary. A synthetic zoo (``model=pcb_synth``) is drawn
instead (``run_synth_zoo_job``): its bytes and build speed, no accuracy (random weights).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from coserve_jax.coe.synth import build_or_load_synth_zoo
from coserve_jax.coe.zoo import build_or_load_zoo
from coserve_jax.config import ConfigError, RunConfig, as_run_config
from coserve_jax.jobs.rundir import run_dir, write_run_record
from coserve_jax.metrics.results import git_sha
from coserve_jax.runner.model import synth_config_of, zoo_config_of

log = logging.getLogger("coserve_jax")


def bytes_by_role_arch(zoo: Any) -> dict[str, dict[str, int]]:
    """``"<role>/<arch>" -> {num_experts, param_bytes (per expert), total_bytes}``."""
    out: dict[str, dict[str, int]] = {}
    for e in zoo.graph.experts.values():
        d = out.setdefault(f"{e.role.value}/{e.arch}", {"num_experts": 0, "param_bytes": 0, "total_bytes": 0})
        d["num_experts"] += 1
        d["param_bytes"] = max(d["param_bytes"], e.param_bytes)  # equal within an architecture
        d["total_bytes"] += e.param_bytes
    return dict(sorted(out.items()))


def run_zoo_job(cfg: RunConfig | DictConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Build (or reuse) the configured demo zoo, evaluate it on held-out boards, write results.json."""
    run_cfg, resolved = as_run_config(cfg)
    if run_cfg.model.kind == "synth":
        return run_synth_zoo_job(run_cfg, resolved, out_dir, progress)
    if run_cfg.model.kind != "demo":
        raise ConfigError(f"model: the zoo job builds a zoo on disk (model.kind=demo or synth, e.g. model=pcb_demo, "
                          f"pcb_tiny or pcb_synth); {run_cfg.model.name!r} is kind {run_cfg.model.kind!r}")
    settings = dataclasses.asdict(run_cfg.zoo_eval)
    out = run_dir(out_dir)

    zoo, reused, build_s = build_timed(zoo_config_of(run_cfg), build_or_load_zoo, progress)

    t1 = time.perf_counter()
    ev = zoo.evaluate(num_boards=settings["num_boards"], seed=settings["seed"], progress=progress)
    eval_s = time.perf_counter() - t1

    m = zoo.manifest
    experts = [{k: e[k] for k in ("expert_id", "role", "arch", "param_bytes", "accuracy", "usage_prob",
                                  "checkpoint")} for e in m["experts"]]
    results: dict[str, Any] = {
        "experiment": run_cfg.experiment,
        "config": {"model": run_cfg.model.name, "seed": run_cfg.seed, "model_seed": run_cfg.model.seed,
                   "git_sha": git_sha(), "zoo_eval": settings},
        "zoo": {
            "num_experts": len(zoo.graph.experts),
            "num_component_types": len(zoo.graph.components),
            "total_bytes": zoo.graph.total_bytes,
            "per_expert_bytes": bytes_by_role_arch(zoo),
            "manifest": {"path": str(zoo.root / "manifest.json"), "config_hash": m["config_hash"],
                         "zoo_format": m["zoo_format"], "experts": experts},
            "accuracy": {
                "classification": ev["classification"], "detection": ev["detection"],
                "end_to_end": ev["end_to_end"], "num_requests": ev["num_requests"],
                "num_boards": settings["num_boards"], "seed": settings["seed"],
                "per_expert": ev["per_expert"],
            },
            "reused": reused,
            "build_s": build_s,
            "manifest_build_s": m.get("build_s"),  # the original build's breakdown (also when reused)
            "eval_s": eval_s,
            "root": str(zoo.root),
        },
    }
    write_run_record(out, results, resolved)
    print_summary(results, out)
    return results


def print_summary(results: dict[str, Any], out_dir: str | Path) -> None:
    z, acc = results["zoo"], results["zoo"]["accuracy"]
    how = "reused from cache" if z["reused"] else f"built in {z['build_s']:.1f} s"
    print(f"\nzoo {results['config']['model']}: {z['num_experts']} experts, "
          f"{z['total_bytes'] / 2**20:.2f} MiB, {z['num_component_types']} component types ({how}; {z['root']})")
    for key, d in z["per_expert_bytes"].items():
        print(f"  {key:<32} {d['num_experts']:>4} experts x {d['param_bytes']:>12,} B = {d['total_bytes']:>14,} B")
    print(f"held-out accuracy on {acc['num_boards']} fresh boards ({acc['num_requests']} requests, seed "
          f"{acc['seed']}): classification {acc['classification']:.3f}, detection {acc['detection']:.3f}, "
          f"end to end {acc['end_to_end']:.3f}")
    print(f"results: {Path(out_dir) / 'results.json'}")


def build_timed(zcfg: Any, build: Any, progress: bool) -> tuple[Any, bool, float | None]:
    """(zoo, whether its cache had it, seconds the build took or None when reused)."""
    reused = (Path(zcfg.cache_dir).expanduser() / zcfg.config_hash() / "manifest.json").is_file()
    t0 = time.perf_counter()
    zoo = build(zcfg, progress=progress)
    return zoo, reused, None if reused else time.perf_counter() - t0


def run_synth_zoo_job(run_cfg: RunConfig, resolved: dict[str, Any], out_dir: str | Path,
                      progress: bool = True) -> dict[str, Any]:
    """Draw (or reuse) a synthetic paper-size zoo (coe/synth.py) and report its bytes and build
    speed; there is no accuracy (random weights)."""
    out = run_dir(out_dir)
    zoo, reused, build_s = build_timed(synth_config_of(run_cfg), build_or_load_synth_zoo, progress)
    m = zoo.manifest
    results = {
        "experiment": run_cfg.experiment,
        "config": {"model": run_cfg.model.name, "seed": run_cfg.seed, "model_seed": run_cfg.model.seed,
                   "git_sha": git_sha()},
        "zoo": {"num_experts": len(zoo.graph.experts), "num_component_types": len(zoo.graph.components),
                "total_bytes": zoo.graph.total_bytes, "per_expert_bytes": bytes_by_role_arch(zoo),
                "bytes_written": m.get("bytes_written"), "usage_top30pct": float(zoo.graph.usage_cdf()[
                    max(0, round(0.3 * len(zoo.graph.experts)) - 1)]),
                "reused": reused, "build_s": build_s,
                "manifest_build_s": m.get("build_s"), "root": str(zoo.root), "routing": zoo.routing},
    }
    write_run_record(out, results, resolved)
    z = results["zoo"]
    how = "reused from cache" if reused else f"drawn in {z['build_s']:.1f} s"
    print(f"\nzoo {run_cfg.model.name}: {z['num_experts']} untrained experts, {z['total_bytes'] / 1e9:.2f} GB, "
          f"{z['num_component_types']} component types ({how}; {z['root']})")
    for key, d in z["per_expert_bytes"].items():
        print(f"  {key:<32} {d['num_experts']:>4} experts x {d['param_bytes']:>12,} B = {d['total_bytes']:>14,} B")
    print(f"results: {out / 'results.json'}")
    return results
