"""The component-image generator: determinism, ground truth, distinct types, layouts."""

import numpy as np
import pytest

from coserve_jax.data import (
    VERDICTS, BoardLayout, GeneratorSpec, make_layout, render_batch, render_image, sample_verdicts,
)

SPEC = GeneratorSpec()


def test_render_shape_range_dtype():
    img = render_image(3, "ok", 7, SPEC)
    assert img.shape == (32, 32, 3) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0


@pytest.mark.parametrize("verdict", VERDICTS)
def test_deterministic_per_seed(verdict):
    a = render_image(5, verdict, 123, SPEC)
    b = render_image(5, verdict, 123, SPEC)
    c = render_image(5, verdict, 124, SPEC)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batch_equals_single():
    types, verdicts, seeds = [0, 1, 2], ["ok", "damaged", "reversed"], [5, 6, 7]
    batch = render_batch(types, verdicts, seeds, SPEC)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], render_image(types[i], verdicts[i], seeds[i], SPEC))


def test_types_differ():
    # Mean ok image per type (averaging out noise and jitter) differs between every pair of types.
    means = [render_batch([t] * 16, ["ok"] * 16, range(16), SPEC).mean(0) for t in range(12)]
    for i in range(12):
        for j in range(i + 1, 12):
            assert np.abs(means[i] - means[j]).mean() > 0.01, (i, j)


@pytest.mark.parametrize("verdict", ["damaged", "misaligned", "reversed"])
def test_defect_changes_image(verdict):
    # Same type and seed: the defect is visible against the ok rendering of the same draw.
    diffs = [np.abs(render_image(t, verdict, s, SPEC) - render_image(t, "ok", s, SPEC)).max()
             for t in range(6) for s in range(4)]
    assert min(diffs) > 0.3


def test_sample_verdicts_respects_detection_check():
    rng = np.random.default_rng(0)
    no_det = sample_verdicts(rng, 2000, False, 0.2, 0.2, 0.2)
    assert set(no_det) <= {"ok", "damaged"}
    with_det = sample_verdicts(rng, 2000, True, 0.2, 0.2, 0.2)
    assert set(with_det) == set(VERDICTS)
    # One defect kind per image: each draw is exactly one verdict, at the requested rates.
    assert abs(with_det.count("misaligned") / 2000 - 0.2) < 0.04


def test_sample_verdicts_rejects_bad_rates():
    with pytest.raises(ValueError, match="defect rates"):
        sample_verdicts(np.random.default_rng(0), 1, True, 0.6, 0.3, 0.3)


def test_unknown_verdict_is_an_error():
    with pytest.raises(ValueError, match="verdict"):
        render_image(0, "broken", 0, SPEC)


def test_layout_seeded_and_mix():
    a, b = make_layout("A", 20, seed=1), make_layout("A", 20, seed=1)
    assert a == b and make_layout("A", 20, seed=2) != a
    assert len(a.counts) == 20 and min(a.counts) >= 1
    assert np.isclose(a.mix.sum(), 1.0)
    assert len(a.components()) == a.total
    with pytest.raises(ValueError, match="at least one"):
        BoardLayout("empty", (0, 0))
