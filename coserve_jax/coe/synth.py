"""A paper-size zoo without training: ``model=pcb_synth`` (``pcb_synth_tiny`` for tests and dry runs).

The paper's CoE shape (``coe/paper.py``: per-type classifiers, ~30% of types with a detection
check stratified over popularity, shared YOLOv5m and YOLOv5l detectors interleaved, a Zipf
component mix with a Fig. 11-like head) with real Flax NNX experts of the paper's architectures
and sizes, untrained: random weights drawn from a seed on the host (``models.host_init_into``,
straight into each checkpoint's packed vectors) and written as the same Orbax checkpoints the real
engine reads (``store/checkpoint.py``). Requests route by their ground truth (``Zoo.routing`` is
"trace"): random experts' outputs mean nothing.

Sizes (fp32, weights + BatchNorm statistics, as stored): ResNet101 with 2 outputs 170.4 MB,
YOLOv5m 83.7 MB, YOLOv5l 184.8 MB (PAPER.md: ~170-200 MB per expert). The default (48 types,
3 + 3 detectors) writes 8.98 GB: a paper-size working set for one GPU machine, within the
device machine's disk and time (the paper's 352 types would be 60 GB). Every input is
``image_size`` x ``image_size`` x 3 (default 224): one image feeds both stages of a request, so
the detectors take the classifiers' input size rather than YOLO's native 640.

The usage mix: the paper fixes the head of its usage CDF (Fig. 11: the top 35 experts cover
0.602); with fewer types we keep its proportion over the experts a paper task touches: 35 of the
116 (coe/paper.py ``derived_tail_types``) is 30%, so the top 30% of the experts cover 0.602.

Build: each expert's vectors are drawn and saved in a thread pool (numpy's generator, CRC-32 and
the checkpoint writes release the GIL); one zoo per config hash under the cache directory,
built in a temporary directory and renamed into place when complete.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coserve_jax.coe.graph import CoEGraph, ComponentType
from coserve_jax.coe.paper import paper_shaped_mix
from coserve_jax.coe.zoo import Zoo, build_once, default_cache_dir, zoo_kwargs
from coserve_jax.data.generator import GeneratorSpec
from coserve_jax.metrics.results import write_json_atomic
from coserve_jax.models import ArchSpec, abstract_state, named_spec, param_bytes
from coserve_jax.models.host_init import host_init_into
from coserve_jax.store.checkpoint import leaf_layout, leaf_specs, save_packed
from coserve_jax.types import CLASSIFY_VERDICTS, DETECT_VERDICTS, ExpertInfo, Role

SYNTH_FORMAT = 2  # 2: store.checkpoint FORMAT 3 checkpoints (one header; format 2 ones fail naming their path)
MODEL_NAME = "pcb_synth"
TOP_FRACTION = 35 / 116  # coe/paper.py: the 35 head experts of the 116 a paper task A1 touches
TOP_SHARE = 0.602  # Fig. 11

# The tiny variant's experts: the same families and layouts at 1-2 MB.
_TINY_ARCHS = {
    "classifier_arch": {"base": "resnet101", "name": "resnet101_tiny", "stage_depths": [1, 1, 1, 1],
                        "stage_widths": [16, 32, 64, 128], "stem_width": 8},  # 2.04 MB
    "yolov5m_arch": {"base": "yolov5m", "name": "yolov5m_tiny", "depth_multiple": 0.33,
                     "width_multiple": 0.09375},  # 1.04 MB
    "yolov5l_arch": {"base": "yolov5l", "name": "yolov5l_tiny", "depth_multiple": 0.33,
                     "width_multiple": 0.125},  # 1.81 MB: about the paper's 170 : 84 : 185 MB
}


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes a synthetic zoo (all but ``cache_dir`` and ``workers`` enter its hash).

    An architecture is a registered name (``models.registry``: resnet101, yolov5m, yolov5l, ...)
    or a mapping of ``ArchSpec`` fields with an optional ``base`` name they override; its input
    shape and outputs are set here (``image_size``; 2 classifier verdicts, 3 detector verdicts).
    """

    num_types: int = 48
    num_yolov5m: int = 3
    num_yolov5l: int = 3
    image_size: int = 224
    classifier_arch: Any = "resnet101"
    yolov5m_arch: Any = "yolov5m"
    yolov5l_arch: Any = "yolov5l"
    seed: int = 0
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    workers: int = 0  # build threads (0: min(8, CPU count))

    def __post_init__(self) -> None:
        if not isinstance(self.num_types, int) or self.num_types < 1:
            raise ValueError(f"model.zoo.num_types: must be a whole number >= 1, got {self.num_types!r}")
        for f in ("num_yolov5m", "num_yolov5l"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 0:
                raise ValueError(f"model.zoo.{f}: must be a whole number >= 0, got {getattr(self, f)!r}")
        if self.num_yolov5m + self.num_yolov5l < 1:
            raise ValueError("model.zoo: needs at least one detector (num_yolov5m + num_yolov5l >= 1)")
        if not isinstance(self.image_size, int) or self.image_size < 24:
            raise ValueError(f"model.zoo.image_size: must be a whole number >= 24, got {self.image_size!r}")
        names = [a.name for a in self.archs.values()]
        if len(set(names)) != len(names):
            raise ValueError(f"model.zoo: the architectures need distinct names, got {names}")

    @classmethod
    def tiny(cls, **overrides: Any) -> SynthConfig:
        """Seconds to build: 8 types, one detector of each kind, 1-2 MB archs of the same families, 32x32."""
        kw: dict[str, Any] = dict(num_types=8, num_yolov5m=1, num_yolov5l=1, image_size=32, **_TINY_ARCHS)
        kw.update(overrides)
        return cls(**kw)

    @property
    def archs(self) -> dict[str, ArchSpec]:
        """Role -> its architecture at this image size: classifier, yolov5m, yolov5l."""
        shape = (self.image_size, self.image_size, 3)
        return {"classifier": _arch(self.classifier_arch, "classifier_arch", shape, len(CLASSIFY_VERDICTS)),
                "yolov5m": _arch(self.yolov5m_arch, "yolov5m_arch", shape, len(DETECT_VERDICTS)),
                "yolov5l": _arch(self.yolov5l_arch, "yolov5l_arch", shape, len(DETECT_VERDICTS))}

    def identity(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("cache_dir", "workers")}
        d.update({f"{role}_arch": a.to_dict() for role, a in self.archs.items()})
        d["synth_format"] = SYNTH_FORMAT
        return d

    def config_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return "synth-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _arch(value: Any, field: str, shape: tuple[int, int, int], outputs: int) -> ArchSpec:
    if isinstance(value, ArchSpec):
        spec, over = value, {}
    elif isinstance(value, str):
        spec, over = _named(value, field), {}
    elif isinstance(value, Mapping):
        over = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        base = over.pop("base", None)
        if base is not None:
            spec = _named(base, f"{field}.base")
        else:
            try:
                spec = ArchSpec.from_dict({"input_shape": list(shape), "num_outputs": outputs, **dict(value)})
            except (TypeError, ValueError) as e:
                raise ValueError(f"model.zoo.{field}: {e}") from None
            over = {}
    else:
        raise ValueError(f"model.zoo.{field}: expected an architecture name or a mapping of ArchSpec fields, "
                         f"got {value!r}")
    try:
        return dataclasses.replace(spec, **{**over, "input_shape": shape, "num_outputs": outputs})
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.zoo.{field}: {e}") from None


def _named(name: str, field: str) -> ArchSpec:
    try:
        return named_spec(name)
    except KeyError as e:
        raise ValueError(f"model.zoo.{field}: {e.args[0]}") from None


def synth_config(overrides: Mapping[str, Any] | None = None, seed: int = 0) -> SynthConfig:
    """SynthConfig from Hydra's ``model.zoo`` mapping; ``preset: tiny`` starts from ``SynthConfig.tiny``.
    A bad value is a ValueError naming the field (the runner reports it as a ConfigError)."""
    preset, kw = zoo_kwargs(overrides, SynthConfig)
    kw.setdefault("seed", seed)
    try:
        return SynthConfig.tiny(**kw) if preset == "tiny" else SynthConfig(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e) if str(e).startswith("model.") else f"model.zoo: {e}") from None


# ---- the plan -------------------------------------------------------------------------------------
def plan(cfg: SynthConfig) -> tuple[list[dict[str, Any]], list[tuple[str, Role, ArchSpec]]]:
    """(component types, experts as (id, role, arch)) of the paper-shaped graph (coe/paper.py)."""
    archs = cfg.archs
    detectors = {"yolov5m": cfg.num_yolov5m, "yolov5l": cfg.num_yolov5l}
    det_ids = [f"det_{a[-1]}{i}" for a, n in detectors.items() for i in range(n)]
    det_archs = [archs[a] for a, n in detectors.items() for _ in range(n)]
    n_experts = cfg.num_types + len(det_ids)
    top_k = max(1, round(TOP_FRACTION * n_experts))
    rng = np.random.default_rng([cfg.seed, 0x5717])
    p_damaged, det_of, mix, _ = paper_shaped_mix(rng, cfg.num_types, detectors, top_k, TOP_SHARE)
    types = [dict(name=f"type_{t:03d}", type_index=t, classifier=f"cls_{t:03d}",
                  detector=det_ids[det_of[t]] if det_of[t] >= 0 else None,
                  mix=float(mix[t]), p_damaged=float(p_damaged[t])) for t in range(cfg.num_types)]
    experts = [(f"cls_{t:03d}", Role.PRELIMINARY, archs["classifier"]) for t in range(cfg.num_types)]
    experts += [(d, Role.SUBSEQUENT, a) for d, a in zip(det_ids, det_archs)]
    return types, experts


def planned_bytes(cfg: SynthConfig) -> int:
    """Bytes the zoo's checkpoints hold (weights), before building it."""
    per_arch = {a.name: param_bytes(a) for a in cfg.archs.values()}
    return sum(per_arch[arch.name] for _, _, arch in plan(cfg)[1])


def _components(types: list[dict[str, Any]]) -> list[ComponentType]:
    return [ComponentType(name=t["name"], classifier=t["classifier"], detector=t["detector"], mix=t["mix"],
                          p_damaged=t["p_damaged"]) for t in types]


# ---- build ----------------------------------------------------------------------------------------
def build_or_load_synth_zoo(cfg: SynthConfig | None = None, progress: bool = True) -> SynthZoo:
    """The synthetic zoo for ``cfg``: loaded from ``cache_dir/<hash>`` if built before, else drawn now."""
    cfg = cfg or SynthConfig()
    root = build_once(Path(cfg.cache_dir).expanduser(), cfg.config_hash(), lambda tmp: _build(cfg, tmp, progress))
    return SynthZoo(root)


def draw_expert(path: Path, arch: ArchSpec, seed: int) -> int:
    """Draw one expert's weights into its packed vectors and save them; returns bytes written."""
    specs = leaf_specs(abstract_state(arch)[1])
    lengths, leaves = leaf_layout(specs)
    flats = {key: np.empty(n, np.dtype(key.removeprefix("flat_"))) for key, n in lengths.items()}
    host_init_into(arch, seed, [flats[key][off: off + n] for key, off, n, _ in leaves])
    save_packed(path, flats, [n for _, _, n, _ in leaves])
    return int(sum(v.nbytes for v in flats.values()))


def _build(cfg: SynthConfig, out: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    types, experts = plan(cfg)
    for arch in {a.name: a for _, _, a in experts}.values():
        abstract_state(arch)  # traced once here, not in every worker at once
    graph = CoEGraph([ExpertInfo(e, r, a.name, 0, a.input_shape) for e, r, a in experts], _components(types))
    usage = graph.usage_probs()
    workers = cfg.workers or min(8, os.cpu_count() or 1)
    (out / "experts").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(experts), desc=f"drawing {MODEL_NAME} zoo", unit="expert", disable=not progress)
    written = 0
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="synth") as pool:
        futs = [pool.submit(draw_expert, out / "experts" / eid, arch, cfg.seed * 1_000_003 + i)
                for i, (eid, _, arch) in enumerate(experts)]
        for f in concurrent.futures.as_completed(futs):
            written += f.result()
            bar.update()
    bar.close()
    build_s = time.perf_counter() - t0
    gen = GeneratorSpec(image_size=cfg.image_size, seed=cfg.seed)
    manifest = {
        "model": MODEL_NAME,
        "synth_format": SYNTH_FORMAT,
        "config_hash": cfg.config_hash(),
        "config": cfg.identity(),
        "built_at": time.time(),
        "build_s": {"total": build_s, "workers": workers, "bytes_per_s": written / max(build_s, 1e-9)},
        "bytes_written": written,
        "routing": "trace",
        "generator": gen.to_dict(),
        "archs": {a.name: a.to_dict() for a in cfg.archs.values()},
        "component_types": types,
        "experts": [{"expert_id": e, "role": r.value, "arch": a.name, "param_bytes": param_bytes(a),
                     "input_shape": list(a.input_shape), "accuracy": None, "usage_prob": usage[e],
                     "checkpoint": f"experts/{e}"} for e, r, a in experts],
    }
    write_json_atomic(out / "manifest.json", manifest)


class SynthZoo(Zoo):
    """A built synthetic zoo: untrained experts, so requests route by their ground truth."""

    routing = "trace"

    def _read_config(self, cfg: dict[str, Any]) -> SynthConfig:
        cfg.pop("synth_format", None)
        return SynthConfig(**cfg, cache_dir=str(self.root.parent))

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError(f"{MODEL_NAME}: the experts are untrained (random weights); "
                                  "there is no accuracy to evaluate")

