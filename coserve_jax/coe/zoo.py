"""The trained demo PCB CoE ("pcb_demo"): build once, cache by config hash, load as a ``Zoo``.

Layout of a zoo directory ``<cache_dir>/<config hash>/``::

    manifest.json          experts, component types, arch specs, generator spec, config, accuracy
    experts/cls_000/ ...   one Orbax checkpoint per expert (store.checkpoint format)

A build happens in ``<cache_dir>/.tmp-<hash>-<pid>`` and is renamed into place only when
complete, so an interrupted build never looks finished; a later call reuses a finished zoo and
any change to a field that shapes the zoo gives another hash, hence a rebuild.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from coserve_jax.coe.graph import CoEGraph, ComponentType
from coserve_jax.data.boards import BoardLayout, make_layout
from coserve_jax.data.generator import GeneratorSpec, render_batch, render_image, sample_verdicts
from coserve_jax.metrics.results import write_json_atomic
from coserve_jax.models import ArchSpec, abstract_state, param_bytes, tiny_resnet, tiny_yolo
from coserve_jax.store.checkpoint import restore_expert, save_expert
from coserve_jax.train.datasets import classifier_dataset, detector_dataset
from coserve_jax.train.trainer import TrainSettings, train_experts
from coserve_jax.types import CLASSIFY_VERDICTS, DETECT_VERDICTS, ExpertInfo, Request, Role

# Bump when the build procedure changes in a way the config fields do not capture.
ZOO_FORMAT = 3  # 2: checkpoints carry CRC-32 checksums; 3: store.checkpoint FORMAT 3 (uncompressed, one header)
MODEL_NAME = "pcb_demo"
# Image seeds: training sets count up from 0; held-out sets live far above.
_HELDOUT_SEED_BASE = 1_000_000_000
_BOARD_SEED_BASE = 2_000_000_000


def default_cache_dir() -> str:
    """``$COSERVE_JAX_CACHE`` if set, else ``~/.cache/coserve_jax/zoo``."""
    return os.environ.get("COSERVE_JAX_CACHE") or str(Path.home() / ".cache" / "coserve_jax" / "zoo")


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """Everything that shapes the demo zoo (all but ``cache_dir`` enter its hash)."""

    num_types: int = 48
    """Component types; one classification expert each."""
    num_detectors: int = 6
    """Detection experts, shared round-robin by the types that have a detection check."""
    detect_share: float = 0.5
    """Share of types with a detection check (misalignment / polarity)."""
    image_size: int = 32
    classifier_arch: ArchSpec = dataclasses.field(default_factory=tiny_resnet)
    detector_arch: ArchSpec = dataclasses.field(default_factory=tiny_yolo)
    p_damaged: float = 0.08
    p_misaligned: float = 0.05
    p_reversed: float = 0.05
    classifier_steps: int = 150
    detector_steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3
    classifier_train_images: int = 1024
    """Training images per classification expert (per type)."""
    detector_train_images: int = 3072
    """Training images per detection expert (over its types)."""
    heldout_images: int = 300
    """Held-out images per expert for the manifest's accuracy."""
    board_mean_count: float = 6.0
    """Mean components per type on the demo board layout (sets the component mix)."""
    seed: int = 0
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        if self.num_types < 1:
            raise ValueError(f"ZooConfig.num_types must be >= 1, got {self.num_types}")
        if not 0.0 <= self.detect_share <= 1.0:
            raise ValueError(f"ZooConfig.detect_share must be in [0, 1], got {self.detect_share}")
        n_det_types = self.num_detection_types
        if n_det_types > 0 and not 1 <= self.num_detectors <= n_det_types:
            raise ValueError(
                f"ZooConfig.num_detectors must be in [1, {n_det_types}] (types with a detection "
                f"check), got {self.num_detectors}"
            )
        for name in ("p_damaged", "p_misaligned", "p_reversed"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ZooConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.p_damaged + self.p_misaligned + self.p_reversed >= 1.0:
            raise ValueError("ZooConfig: p_damaged + p_misaligned + p_reversed must be < 1")
        for name, arch, n in (("classifier_arch", self.classifier_arch, len(CLASSIFY_VERDICTS)),
                              ("detector_arch", self.detector_arch, len(DETECT_VERDICTS))):
            if arch.num_outputs != n:
                raise ValueError(f"ZooConfig.{name}.num_outputs must be {n}, got {arch.num_outputs}")
            if arch.input_shape != self.generator_spec.image_shape:
                raise ValueError(f"ZooConfig.{name}.input_shape {arch.input_shape} != image shape "
                                 f"{self.generator_spec.image_shape}")
        if self.classifier_arch.name == self.detector_arch.name:
            raise ValueError("ZooConfig: classifier_arch and detector_arch need distinct names")

    @classmethod
    def tiny(cls, **overrides: Any) -> ZooConfig:
        """A few-second zoo for tests: 6 types, 2 detectors, very few steps.

        Its experts are minimal ResNets (the detector too): compiling a YOLO training step takes
        tens of seconds on 2 CPU cores, which the tests do not need to pay to check the zoo.
        """
        image_size = overrides.get("image_size", 32)
        shape = (image_size, image_size, 3)
        kw: dict[str, Any] = dict(
            num_types=6, num_detectors=2, classifier_steps=3, detector_steps=3, batch_size=8,
            classifier_train_images=32, detector_train_images=48, heldout_images=24,
            classifier_arch=ArchSpec(name="resnet_micro", family="resnet", input_shape=shape, num_outputs=2,
                                     stage_depths=(1, 1), stage_widths=(8, 16), stem_width=8, stem_stride=2),
            detector_arch=ArchSpec(name="resnet_micro_det", family="resnet", input_shape=shape, num_outputs=3,
                                   stage_depths=(1, 1), stage_widths=(8, 16), stem_width=8, stem_stride=2),
        )
        kw.update(overrides)
        return cls(**kw)

    @property
    def num_detection_types(self) -> int:
        return int(round(self.num_types * self.detect_share))

    @property
    def generator_spec(self) -> GeneratorSpec:
        return GeneratorSpec(image_size=self.image_size, seed=self.seed)

    def identity(self) -> dict[str, Any]:
        """The fields that shape the zoo, JSON-ready (hashed for the cache key)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cache_dir"}
        d["classifier_arch"] = self.classifier_arch.to_dict()
        d["detector_arch"] = self.detector_arch.to_dict()
        d["zoo_format"] = ZOO_FORMAT
        return d

    def config_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- the plan: component types and their experts ------------------------------------------------
def _plan(cfg: ZooConfig) -> tuple[BoardLayout, list[dict[str, Any]]]:
    layout = make_layout(MODEL_NAME, cfg.num_types, cfg.seed, mean_count=cfg.board_mean_count)
    rng = np.random.default_rng((cfg.seed, 2027))
    with_det = sorted(rng.permutation(cfg.num_types)[: cfg.num_detection_types].tolist())
    det_of = {t: f"det_{i % cfg.num_detectors}" for i, t in enumerate(with_det)}
    mix = layout.mix
    types = [dict(name=f"type_{t:03d}", type_index=t, classifier=f"cls_{t:03d}", detector=det_of.get(t),
                  mix=float(mix[t]), p_damaged=cfg.p_damaged) for t in range(cfg.num_types)]
    return layout, types


def _components(types: list[dict[str, Any]]) -> list[ComponentType]:
    return [ComponentType(name=t["name"], classifier=t["classifier"], detector=t["detector"],
                          mix=t["mix"], p_damaged=t["p_damaged"]) for t in types]


# ---- build ----------------------------------------------------------------------------------------
def build_or_load_zoo(cfg: ZooConfig | None = None, progress: bool = True) -> Zoo:
    """The zoo for ``cfg``: loaded from ``cache_dir/<hash>`` if built before, else trained now."""
    cfg = cfg or ZooConfig()
    root = build_once(Path(cfg.cache_dir).expanduser(), cfg.config_hash(), lambda tmp: _build(cfg, tmp, progress))
    return Zoo(root)


def build_once(cache: Path, name: str, build: Any) -> Path:
    """``cache/name``, built by ``build(tmp_dir)`` unless a finished one (with a manifest) is
    there: built in ``cache/.tmp-<name>-<pid>`` and renamed into place only when complete."""
    root = cache / name
    if not (root / "manifest.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build(tmp)
            try:
                os.rename(tmp, root)
            except OSError:
                # Another process finished the same zoo first; theirs is as good as ours.
                if not (root / "manifest.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _build(cfg: ZooConfig, out: Path, progress: bool) -> None:
    t0 = time.perf_counter()
    gen = cfg.generator_spec
    layout, types = _plan(cfg)
    det_ids = sorted({t["detector"] for t in types if t["detector"]}, key=lambda s: int(s.split("_")[1]))
    det_types = {d: [t["type_index"] for t in types if t["detector"] == d] for d in det_ids}
    n_cls, n_det = len(types), len(det_ids)
    bar = tqdm(total=n_cls * cfg.classifier_steps + n_det * cfg.detector_steps + n_cls + n_det,
               desc=f"building {MODEL_NAME} zoo", unit="step", disable=not progress)

    bar.set_postfix_str("rendering data")
    cls_sets = [classifier_dataset(t["type_index"], t["detector"] is not None, cfg.classifier_train_images,
                                   gen, seed_base=0) for t in types]
    det_sets = [detector_dataset(det_types[d], cfg.detector_train_images, gen, seed_base=0) for d in det_ids]
    t_data = time.perf_counter()

    bar.set_postfix_str("training classifiers")
    cls_states = train_experts(cfg.classifier_arch, cls_sets,
                               TrainSettings(cfg.classifier_steps, cfg.batch_size, cfg.learning_rate, cfg.seed),
                               on_step=bar.update)
    bar.set_postfix_str("training detectors")
    det_states = train_experts(cfg.detector_arch, det_sets,
                               TrainSettings(cfg.detector_steps, cfg.batch_size, cfg.learning_rate, cfg.seed + 1),
                               on_step=bar.update) if det_ids else []
    t_train = time.perf_counter()

    bar.set_postfix_str("held-out accuracy, saving")
    cls_fwd, det_fwd = _forward(cfg.classifier_arch), _forward(cfg.detector_arch)
    usage = CoEGraph(_placeholder_experts(cfg, types, det_ids), _components(types)).usage_probs()
    experts = []
    for t, state in zip(types, cls_states):
        x, y = classifier_dataset(t["type_index"], t["detector"] is not None, cfg.heldout_images, gen,
                                  seed_base=_HELDOUT_SEED_BASE)
        experts.append(_save_one(out, t["classifier"], Role.PRELIMINARY, cfg.classifier_arch, state,
                                 _accuracy(cls_fwd, state, x, y), usage[t["classifier"]]))
        bar.update(1)
    for d, state in zip(det_ids, det_states):
        x, y = detector_dataset(det_types[d], cfg.heldout_images, gen, seed_base=_HELDOUT_SEED_BASE)
        experts.append(_save_one(out, d, Role.SUBSEQUENT, cfg.detector_arch, state,
                                 _accuracy(det_fwd, state, x, y), usage[d]))
        bar.update(1)
    bar.close()
    manifest = {
        "model": MODEL_NAME,
        "zoo_format": ZOO_FORMAT,
        "config_hash": cfg.config_hash(),
        "config": cfg.identity(),
        "built_at": time.time(),
        "build_s": {"data": t_data - t0, "train": t_train - t_data, "total": time.perf_counter() - t0},
        "generator": gen.to_dict(),
        "archs": {a.name: a.to_dict() for a in (cfg.classifier_arch, cfg.detector_arch)},
        "layout": {"name": layout.name, "counts": list(layout.counts)},
        "component_types": types,
        "experts": experts,
    }
    write_json_atomic(out / "manifest.json", manifest)


def _placeholder_experts(cfg, types, det_ids) -> list[ExpertInfo]:
    """Experts without checkpoints yet: only to compute usage probabilities from the rules."""
    cls = [ExpertInfo(t["classifier"], Role.PRELIMINARY, cfg.classifier_arch.name, 0,
                      cfg.classifier_arch.input_shape) for t in types]
    det = [ExpertInfo(d, Role.SUBSEQUENT, cfg.detector_arch.name, 0, cfg.detector_arch.input_shape)
           for d in det_ids]
    return cls + det


def _save_one(out: Path, expert_id: str, role: Role, arch: ArchSpec, state: nnx.State, acc: float,
              usage_prob: float) -> dict[str, Any]:
    rel = f"experts/{expert_id}"
    save_expert(out / rel, state)
    return {"expert_id": expert_id, "role": role.value, "arch": arch.name, "param_bytes": param_bytes(arch),
            "input_shape": list(arch.input_shape), "accuracy": acc, "usage_prob": usage_prob,
            "checkpoint": rel}


@functools.lru_cache(maxsize=16)
def _forward(arch: ArchSpec):
    """Jitted eval-mode forward ``(state, x) -> logits`` (one compile per arch and batch shape)."""
    graphdef, _ = abstract_state(arch)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))


def _logits(fwd, state, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    # Fixed-size chunks (last one padded) keep the jitted forward at one compiled shape.
    out = []
    for i in range(0, len(x), chunk):
        part = x[i: i + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        out.append(np.asarray(fwd(state, part))[: chunk - pad])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _accuracy(fwd, state, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(_logits(fwd, state, x), axis=-1) == y).mean())


# ---- the loaded zoo -------------------------------------------------------------------------------
class Zoo:
    """A built demo zoo on disk: manifest, CoE graph, architectures, checkpoints, renderer."""

    # How requests are routed when backend.routing=auto: by the experts' outputs (trained
    # experts) or by each request's ground-truth route (coe/synth.py: untrained experts).
    routing = "model"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        path = self.root / "manifest.json"
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RuntimeError(f"zoo at {self.root}: cannot read manifest {path}: {e}") from e
        self.config = self._read_config(dict(self.manifest["config"]))
        self.archs: dict[str, ArchSpec] = {n: ArchSpec.from_dict(d) for n, d in self.manifest["archs"].items()}
        self.generator_spec = GeneratorSpec(**self.manifest["generator"])
        layout = self.manifest.get("layout")
        self.layout = None if layout is None else BoardLayout(layout["name"], tuple(layout["counts"]))
        experts = [ExpertInfo(expert_id=e["expert_id"], role=Role(e["role"]), arch=e["arch"],
                              param_bytes=int(e["param_bytes"]), input_shape=tuple(e["input_shape"]),
                              usage_prob=float(e["usage_prob"]),
                              checkpoint_path=str(self.root / e["checkpoint"]), accuracy=e["accuracy"])
                   for e in self.manifest["experts"]]
        self._types = {t["name"]: t for t in self.manifest["component_types"]}
        self.graph = CoEGraph(experts, _components(self.manifest["component_types"]))

    def _read_config(self, cfg: dict[str, Any]) -> Any:
        cfg.pop("zoo_format", None)
        cfg["classifier_arch"] = ArchSpec.from_dict(cfg["classifier_arch"])
        cfg["detector_arch"] = ArchSpec.from_dict(cfg["detector_arch"])
        return ZooConfig(**cfg, cache_dir=str(self.root.parent))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root}, experts={len(self.graph.experts)}, total_bytes={self.graph.total_bytes})"

    def graphdef(self, arch: str) -> nnx.GraphDef:
        """Eval-mode graphdef of architecture ``arch`` (merge with a restored state to serve)."""
        return abstract_state(self._arch(arch))[0]

    def abstract_state(self, arch: str) -> nnx.State:
        """Allocation-free state (ShapeDtypeStructs) of architecture ``arch``."""
        return abstract_state(self._arch(arch))[1]

    def _arch(self, arch: str) -> ArchSpec:
        try:
            return self.archs[arch]
        except KeyError:
            raise KeyError(f"unknown architecture {arch!r}; this zoo has {sorted(self.archs)}") from None

    def expert(self, expert_id: str) -> ExpertInfo:
        try:
            return self.graph.experts[expert_id]
        except KeyError:
            raise KeyError(f"unknown expert {expert_id!r}; this zoo has {len(self.graph.experts)} experts "
                           f"(e.g. {', '.join(list(self.graph.experts)[:3])})") from None

    def restore(self, expert_id: str, device: jax.Device | None = None) -> nnx.State:
        """The expert's state from its checkpoint: numpy on the host (device None) or on ``device``."""
        info = self.expert(expert_id)
        return restore_expert(info.checkpoint_path, self.abstract_state(info.arch), device=device,
                              expert_id=expert_id)

    def type_index(self, component_type: str) -> int:
        self.graph.component(component_type)  # raises UnknownComponentError with a clear message
        return int(self._types[component_type]["type_index"])

    def render(self, request: Request) -> np.ndarray:
        """The request's component image, float32 ``[H, W, C]``, from its type, truth and seed."""
        if request.image_seed is None:
            raise ValueError(f"request {request.request_id}: image_seed is None; cannot render its image")
        return render_image(self.type_index(request.component_type), request.truth or "ok",
                            int(request.image_seed), self.generator_spec)

    def _forward_of(self, arch: str):
        return _forward(self._arch(arch))

    def logits(self, expert_id: str, state: nnx.State, images: np.ndarray) -> np.ndarray:
        """Run one expert on a batch of images on CPU (eval mode); float32 ``[N, num_outputs]``."""
        return _logits(self._forward_of(self.expert(expert_id).arch), state, images)

    def evaluate(self, num_boards: int = 10, seed: int = 0, progress: bool = False) -> dict[str, Any]:
        """Accuracy on freshly generated held-out boards (natural defect rates), routed for real.

        classification: classifier says damaged iff the truth is damaged (every request).
        detection: detector verdict == truth, over requests of types with a detection check whose
          truth is not damaged (the detector's own domain).
        end_to_end: the request's final routed verdict == truth.
        """
        cfg, gen = self.config, self.generator_spec
        rng = np.random.default_rng((seed, 555))
        requests: list[Request] = []
        for _board in range(num_boards):
            for ti in self.layout.components():
                t = self.manifest["component_types"][ti]
                v = sample_verdicts(rng, 1, t["detector"] is not None, t["p_damaged"],
                                    cfg.p_misaligned, cfg.p_reversed)[0]
                rid = len(requests)
                requests.append(Request(request_id=rid, component_type=t["name"], arrival_s=0.0, truth=v,
                                        image_seed=_BOARD_SEED_BASE + seed * 10_000_000 + rid))
        images = render_batch([self.type_index(r.component_type) for r in requests],
                              [r.truth for r in requests], [r.image_seed for r in requests], gen)
        verdict: dict[int, str] = {}
        cls_pred: dict[int, int] = {}
        det_pred: dict[int, int] = {}
        per_expert: dict[str, dict[str, float]] = {}
        by_expert: dict[str, list[int]] = {}
        for r in requests:
            by_expert.setdefault(self.graph.preliminary(r.component_type), []).append(r.request_id)
        next_stage: dict[str, list[int]] = {}
        for eid in tqdm(sorted(by_expert), desc="classifiers", disable=not progress):
            ids = by_expert[eid]
            out = self.logits(eid, self.restore(eid), images[ids])
            for rid, lg in zip(ids, out):
                cls_pred[rid] = int(np.argmax(lg))
                o = self.graph.route_from_output(requests[rid], eid, lg)
                if o.next_expert is None:
                    verdict[rid] = o.verdict
                else:
                    next_stage.setdefault(o.next_expert, []).append(rid)
            truth = np.array([requests[i].truth == "damaged" for i in ids])
            per_expert[eid] = {"accuracy": float(((out.argmax(-1) == 1) == truth).mean()), "n": len(ids)}
        # Detectors run on their own domain (truth not damaged) for the detection score, plus on
        # whatever the classifiers routed to them for the end-to-end score.
        domain: dict[str, list[int]] = {}
        for r in requests:
            d = self.graph.component(r.component_type).detector
            if d is not None and r.truth != "damaged":
                domain.setdefault(d, []).append(r.request_id)
        for d in sorted(set(domain) | set(next_stage)):
            ids = sorted(set(domain.get(d, [])) | set(next_stage.get(d, [])))
            out = self.logits(d, self.restore(d), images[ids])
            for rid, lg in zip(ids, out):
                det_pred[rid] = int(np.argmax(lg))
            for rid in next_stage.get(d, []):
                verdict[rid] = self.graph.route_from_output(requests[rid], d, out[ids.index(rid)]).verdict
            dom = domain.get(d, [])
            ok = [DETECT_VERDICTS[det_pred[i]] == requests[i].truth for i in dom]
            per_expert[d] = {"accuracy": float(np.mean(ok)) if ok else float("nan"), "n": len(dom)}
        cls_ok = [(cls_pred[r.request_id] == 1) == (r.truth == "damaged") for r in requests]
        det_ok = [DETECT_VERDICTS[det_pred[i]] == requests[i].truth for ids in domain.values() for i in ids]
        e2e_ok = [verdict[r.request_id] == r.truth for r in requests]
        return {"classification": float(np.mean(cls_ok)),
                "detection": float(np.mean(det_ok)) if det_ok else float("nan"),
                "end_to_end": float(np.mean(e2e_ok)), "num_requests": len(requests),
                "per_expert": per_expert}


def zoo_config(overrides: Mapping[str, Any] | None = None, seed: int = 0) -> ZooConfig:
    """ZooConfig from Hydra's ``model.zoo`` mapping; ``preset: tiny`` starts from ZooConfig.tiny.
    A bad value is a ValueError naming the field (the runner reports it as a ConfigError)."""
    preset, kw = zoo_kwargs(overrides, ZooConfig)
    for key in ("classifier_arch", "detector_arch"):
        if isinstance(kw.get(key), Mapping):
            kw[key] = ArchSpec.from_dict(dict(kw[key]))
    kw.setdefault("seed", seed)
    try:
        return ZooConfig.tiny(**kw) if preset == "tiny" else ZooConfig(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.zoo: {e}") from None


def zoo_kwargs(overrides: Mapping[str, Any] | None, cls: type) -> tuple[str | None, dict[str, Any]]:
    """Hydra's ``model.zoo`` mapping as (preset, keyword arguments of the dataclass ``cls``):
    ``preset`` is null or 'tiny'; a bad preset or an unknown key is a ValueError naming it."""
    kw = dict(overrides or {})
    preset = kw.pop("preset", None)
    if preset not in (None, "tiny"):
        raise ValueError(f"model.zoo.preset: must be null or 'tiny', got {preset!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"model.zoo: unknown key(s) {unknown}; known: {sorted(known)}")
    return preset, kw
