"""Model architectures: output shapes, eval determinism, paper-scale parameter counts."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from coserve_jax.models import (
    ArchSpec, abstract_state, build_model, eval_mode, host_init_state, param_bytes, param_count, resnet101, tiny_resnet,
    tiny_yolo, yolov5l, yolov5m,
)


@pytest.mark.parametrize("spec", [tiny_resnet(), tiny_yolo()], ids=lambda s: s.name)
def test_tiny_forward_shapes_and_eval_determinism(spec):
    # Host init + jit: eager Flax init compiles an RNG program per kernel shape (seconds each).
    graphdef, state = abstract_state(spec)[0], host_init_state(spec, 0)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = np.random.default_rng(0).random((3, *spec.input_shape), dtype=np.float32)
    y1, y2 = fwd(state, x), fwd(state, x)
    assert y1.shape == (3, spec.num_outputs) and y1.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))


def test_yolo_dense_head():
    spec = tiny_yolo()
    graphdef, state = abstract_state(spec)[0], host_init_state(spec, 0)
    outs = jax.jit(lambda s, x: nnx.merge(graphdef, s).dense(x))(state, np.zeros((2, *spec.input_shape), np.float32))
    assert len(outs) == 3
    for o in outs:
        assert o.shape[0] == 2 and o.shape[-2:] == (spec.num_anchors, 5 + spec.num_outputs)


def test_bottleneck_resnet_small():
    spec = ArchSpec(name="rb", family="resnet", input_shape=(32, 32, 3), num_outputs=5, block="bottleneck",
                    stage_depths=(1,), stage_widths=(4,), stem="imagenet", stem_width=4)
    model = eval_mode(build_model(spec, nnx.Rngs(0)))  # eager Flax init path, on a micro model
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 5)


@pytest.mark.parametrize("spec,expected", [(resnet101(), 44.5e6), (yolov5m(), 21.2e6), (yolov5l(), 46.5e6)],
                         ids=["resnet101", "yolov5m", "yolov5l"])
def test_paper_scale_param_counts(spec, expected):
    n = param_count(spec)  # abstract shapes only: nothing is allocated
    assert abs(n - expected) / expected < 0.10, n


def test_abstract_state_has_no_arrays_and_matches_real():
    spec = tiny_resnet()
    _, abstract = abstract_state(spec)
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    real = host_init_state(spec, 0)
    assert [x.shape for x in leaves] == [x.shape for x in jax.tree.leaves(real)]
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(real))


def test_demo_sizes():
    assert 0.3e6 <= param_bytes(tiny_resnet()) <= 1.5e6
    assert param_bytes(tiny_yolo()) > param_bytes(tiny_resnet())


def test_spec_round_trip_and_validation():
    spec = tiny_yolo()
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="family"):
        dataclasses.replace(spec, family="vit")
    with pytest.raises(ValueError, match="unknown field"):
        ArchSpec.from_dict({**spec.to_dict(), "widht": 3})
