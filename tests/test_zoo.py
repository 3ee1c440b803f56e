"""The demo zoo: tiny build, cache reuse, rebuild on config change, manifest, restorable experts."""

import dataclasses

import numpy as np
import pytest

import coserve_jax.coe.zoo as zoo_mod
from coserve_jax.coe.zoo import ZooConfig, build_or_load_zoo
from coserve_jax.types import Request, Role


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo_cache")


@pytest.fixture(scope="module")
def zoo(cache):
    return build_or_load_zoo(ZooConfig.tiny(cache_dir=str(cache)), progress=False)


def test_manifest_fields(zoo):
    m = zoo.manifest
    assert len(m["experts"]) == 6 + 2
    for e in m["experts"]:
        for key in ("expert_id", "role", "arch", "param_bytes", "input_shape", "accuracy", "usage_prob",
                    "checkpoint"):
            assert key in e, key
        assert not e["checkpoint"].startswith("/")
    for t in m["component_types"]:
        for key in ("name", "classifier", "detector", "mix", "p_damaged", "type_index"):
            assert key in t, key
    assert set(m["archs"]) == {"resnet_micro", "resnet_micro_det"} and "generator" in m
    assert np.isclose(sum(t["mix"] for t in m["component_types"]), 1.0)


def test_graph_and_experts_restorable(zoo):
    assert zoo.graph.experts["det_0"].role == Role.SUBSEQUENT
    assert zoo.graph.experts["cls_000"].role == Role.PRELIMINARY
    for eid, info in zoo.graph.experts.items():
        assert info.checkpoint_path.startswith(str(zoo.root))
        state = zoo.restore(eid)
        x = np.zeros((2, *info.input_shape), np.float32)
        assert zoo.logits(eid, state, x).shape == (2, zoo.archs[info.arch].num_outputs)


def test_second_call_reuses(zoo, cache, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("retrained a cached zoo")

    monkeypatch.setattr(zoo_mod, "_build", boom)
    again = build_or_load_zoo(ZooConfig.tiny(cache_dir=str(cache)), progress=False)
    assert again.root == zoo.root and again.manifest["built_at"] == zoo.manifest["built_at"]


def test_config_change_rebuilds(zoo, cache):
    cfg = ZooConfig.tiny(cache_dir=str(cache), seed=1)
    assert cfg.config_hash() != ZooConfig.tiny(cache_dir=str(cache)).config_hash()
    # cache_dir alone does not change the identity of a zoo
    assert dataclasses.replace(cfg, cache_dir="/elsewhere").config_hash() == cfg.config_hash()
    other = build_or_load_zoo(cfg, progress=False)
    assert other.root != zoo.root and (other.root / "manifest.json").is_file()
    assert not any(p.name.startswith(".tmp-") for p in cache.iterdir())


def test_render_and_evaluate(zoo):
    req = Request(request_id=0, component_type="type_001", arrival_s=0.0, truth="damaged", image_seed=9)
    img = zoo.render(req)
    assert img.shape == zoo.archs["resnet_micro"].input_shape
    ev = zoo.evaluate(num_boards=1, seed=3)
    for key in ("classification", "detection", "end_to_end", "per_expert"):
        assert key in ev
    assert 0.0 <= ev["end_to_end"] <= 1.0


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COSERVE_JAX_CACHE", str(tmp_path))
    assert ZooConfig().cache_dir == str(tmp_path)


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="num_detectors"):
        ZooConfig.tiny(num_detectors=10)


def test_the_model_zoo_node_is_typed_with_every_zoo_config_field():
    """``model.zoo`` (config.ZooOverrides) lists the fields of ZooConfig and of the synthetic zoo's
    SynthConfig, plus the preset, so an override like model.zoo.num_types=64 composes without '+'
    and a typo fails while composing."""
    from coserve_jax.coe.synth import SynthConfig
    from coserve_jax.config import ZooOverrides

    assert ({f.name for f in dataclasses.fields(ZooOverrides)}
            == {f.name for f in dataclasses.fields(ZooConfig)} | {f.name for f in dataclasses.fields(SynthConfig)}
            | {"preset"})
