"""Labelled training / held-out sets for the demo experts, drawn from the generator.

Training sets are class-balanced (half damaged for a classifier; a third per class for a
detector) so that rare defects are learnt; held-out evaluation on boards uses natural rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coserve_jax.data.generator import GeneratorSpec, render_batch
from coserve_jax.types import CLASSIFY_VERDICTS, DETECT_VERDICTS


def classifier_dataset(type_index: int, has_detector: bool, n: int, spec: GeneratorSpec,
                       seed_base: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of one type labelled by ``CLASSIFY_VERDICTS`` (ok / damaged).

    Half are damaged; the other half are ok, or (types with a detection check) split evenly
    among ok, misaligned and reversed, which the classifier must call "ok" (not damaged).
    """
    rng = np.random.default_rng((seed_base, type_index, 11))
    undamaged = ["ok", "misaligned", "reversed"] if has_detector else ["ok"]
    verdicts = ["damaged" if i % 2 == 0 else undamaged[rng.integers(len(undamaged))] for i in range(n)]
    x = render_batch([type_index] * n, verdicts, [seed_base + i for i in range(n)], spec)
    y = np.array([CLASSIFY_VERDICTS.index("damaged" if v == "damaged" else "ok") for v in verdicts], np.int32)
    return x, y


def detector_dataset(type_indices: Sequence[int], n: int, spec: GeneratorSpec,
                     seed_base: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-damaged images of the detector's types labelled by ``DETECT_VERDICTS``, balanced."""
    types = [int(type_indices[i % len(type_indices)]) for i in range(n)]
    verdicts = [DETECT_VERDICTS[(i // len(type_indices)) % 3] for i in range(n)]
    x = render_batch(types, verdicts, [seed_base + i for i in range(n)], spec)
    y = np.array([DETECT_VERDICTS.index(v) for v in verdicts], np.int32)
    return x, y
