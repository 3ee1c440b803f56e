"""The synthetic paper-size zoo (model=pcb_synth / pcb_synth_tiny): shape, bytes, checkpoints, serving."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from coserve_jax.api import ArmRunner, Model, as_run_config, make_runtime, make_trace
from coserve_jax.coe.graph import CoEGraph
from coserve_jax.coe.synth import SynthConfig, _components, build_or_load_synth_zoo, plan, planned_bytes, synth_config
from coserve_jax.coe.synthetic import synthetic_cost
from coserve_jax.config import ConfigError
from coserve_jax.runner.model import synth_config_of
from coserve_jax.types import ExpertInfo
from tests.test_engine_real import assert_accounted

MB = 1e6


def plan_graph(cfg: SynthConfig) -> CoEGraph:
    types, experts = plan(cfg)
    return CoEGraph([ExpertInfo(e, r, a.name, 1, a.input_shape) for e, r, a in experts], _components(types))


def test_the_default_has_the_papers_shape():
    """48 types with per-type classifiers, 6 shared detectors (YOLOv5m and l), ~30% of types
    checked, the top 30% of experts covering 0.602 of usage (Fig. 11's head)."""
    cfg = SynthConfig()
    g = plan_graph(cfg)
    archs = cfg.archs
    assert len(g.components) == 48 and len(g.experts) == 54
    dets = [e for e in g.experts if e.startswith("det_")]
    assert sorted(g.experts[d].arch for d in dets) == ["yolov5l"] * 3 + ["yolov5m"] * 3
    checked = [c for c in g.components.values() if c.detector]
    assert round(0.3 * 48) - 2 <= len(checked) <= round(0.3 * 48) + 2
    assert all(len(g.preliminaries_of(d)) >= 2 for d in dets)  # several types share one detector
    assert g.usage_cdf()[round(54 * 35 / 116) - 1] == pytest.approx(0.602, abs=1e-6)
    assert archs["classifier"].name == "resnet101" and archs["classifier"].input_shape == (224, 224, 3)
    assert archs["classifier"].stage_depths == (3, 4, 23, 3)
    assert plan_graph(SynthConfig(seed=1)).components != g.components  # seeded


@pytest.mark.slow
def test_paper_sizes_and_the_full_zoo_fits_the_device_machine():
    """ResNet101 ~170 MB, YOLOv5m ~84 MB, YOLOv5l ~185 MB (PAPER.md); the default <= 12 GB."""
    from coserve_jax.models import param_bytes

    sizes = {role: param_bytes(a) / MB for role, a in SynthConfig().archs.items()}
    assert sizes["classifier"] == pytest.approx(170.4, abs=0.5)
    assert sizes["yolov5m"] == pytest.approx(83.7, abs=0.5)
    assert sizes["yolov5l"] == pytest.approx(184.8, abs=0.5)
    assert planned_bytes(SynthConfig()) <= 12e9


def test_tiny_zoo_checkpoints_are_the_engines_format(tiny_zoo, synth_cache):
    z = tiny_zoo
    assert z.routing == "trace" and len(z.graph.components) == 8 and len(z.graph.experts) == 10
    assert z.manifest["bytes_written"] == z.graph.total_bytes
    sizes = {e.arch: e.param_bytes for e in z.graph.experts.values()}
    assert sizes["resnet101_tiny"] > sizes["yolov5m_tiny"] < sizes["yolov5l_tiny"]  # the paper's order
    image = np.full((1, 32, 32, 3), 0.5, np.float32)
    for eid in ("cls_000", "det_m0", "det_l0"):
        out = z.logits(eid, z.restore(eid), image)
        assert out.shape == (1, 2 if eid.startswith("cls") else 3) and np.all(np.isfinite(out))
    # kernels are random, distinct per expert; BatchNorm statistics are the identity
    a = jax.tree.leaves(z.restore("cls_000"))
    b = jax.tree.leaves(z.restore("cls_001"))
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    again = build_or_load_synth_zoo(SynthConfig.tiny(cache_dir=str(synth_cache)), progress=False)
    assert again.root == z.root and again.manifest["built_at"] == z.manifest["built_at"]  # reused
    with pytest.raises(NotImplementedError, match="untrained"):
        z.evaluate()


@pytest.mark.parametrize("overrides, field", [
    ({"num_types": 0}, "model.zoo.num_types"),
    ({"num_yolov5m": 0, "num_yolov5l": 0}, "num_yolov5m"),
    ({"image_size": 8}, "model.zoo.image_size"),
    ({"classifier_arch": "resnet7"}, "model.zoo.classifier_arch"),
    ({"yolov5m_arch": {"base": "yolov5m", "width": 2}}, "model.zoo.yolov5m_arch"),
    ({"layers": 3}, "model.zoo"),
    ({"preset": "huge"}, "model.zoo.preset"),
])
def test_bad_synth_settings_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        synth_config(overrides)


def test_a_bad_synth_setting_in_a_run_config_is_a_config_error(synth_cache):
    """coe/ raises ValueError; the runner reports it as a ConfigError naming the field."""
    cfg = as_run_config(["model=pcb_synth_tiny", f"model.zoo.cache_dir={synth_cache}", "model.zoo.num_types=0"])[0]
    with pytest.raises(ConfigError, match=r"model\.zoo\.num_types"):
        synth_config_of(cfg)
    with pytest.raises(ConfigError, match=r"model\.zoo: unknown key\(s\) \['detect_share'\]"):
        synth_config_of(as_run_config(["model=pcb_synth_tiny", "model.zoo.detect_share=0.5"])[0])


def serve_synth(zoo, synth_cache, *overrides: str, kind: str = "cpu", n: int = 80):
    """One arm of pcb_synth_tiny on the real engine with round-figure costs (no profile to
    measure); returns (summary, engine, the runtime's devices used)."""
    cfg = as_run_config(["model=pcb_synth_tiny", f"model.zoo.cache_dir={synth_cache}", f"workload.num_requests={n}",
                         *overrides])[0]
    model = Model(zoo.graph, zoo)
    cost = synthetic_cost(kinds=(kind,), archs=tuple(sorted(zoo.archs)), max_batch=2, act_bytes_per_image=20_000)
    runtime = make_runtime(cfg, model)
    try:
        runner = ArmRunner(cfg, model, cost, runtime)
        assert runner.routing == "trace"
        runner.warm_up(cfg.arms)
        requests = make_trace(cfg, model.graph)
        images = runner.images(requests)
        engine = runner.new_engine(cfg.arms[0], requests)
        engine.keep_outputs = True
        try:
            summary = engine.run(requests, images)
            summary["host_tier"] = engine.backend.host_tier
            placed = {pool: {(d.platform, d.id, a.sharding.memory_kind) for leaves in experts.values()
                             for a in leaves for d in a.devices()}
                      for pool, experts in engine.backend._weights.items() if pool != "host"}
        finally:
            engine.backend.close()
    finally:
        runtime.close()
    assert_accounted(summary, engine, n)
    for rs in engine.request_states().values():
        assert tuple(rs.experts) == rs.request.route  # routed by the trace
    return summary, engine, placed


def test_the_real_engine_serves_the_synthetic_zoo_by_trace(tiny_zoo, synth_cache, transfer_guard):
    """pcb_synth_tiny with a host cache in pinned_host memory, routed by the trace. One device:
    several are tests/test_devices_real.py's; the YOLO-family experts compile for ~30 s per
    device here, once (the default persistent compilation cache keeps them for later sessions)."""
    summary, engine, placed = serve_synth(tiny_zoo, synth_cache, "arms=[coserve_plus]", "hardware.executors={cpu:2}",
                                          "hardware.device_budget=40%", "hardware.host_budget=100%")
    assert summary["requests"]["completed"] == 80
    assert summary["host_tier"] == "pinned_host"
    assert sorted(p["device"] for p in summary["pools"]) == ["cpu:0", "host"]
    assert set().union(*placed.values()) == {("cpu", 0, "device")}
