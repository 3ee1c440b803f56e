"""Procedural component-image generator with ground truth, and board layouts."""

from coserve_jax.data.boards import BoardLayout, make_layout
from coserve_jax.data.generator import (
    DAMAGE_KINDS, VERDICTS, GeneratorSpec, render_batch, render_image, sample_verdicts, type_look,
)

__all__ = [
    "BoardLayout", "DAMAGE_KINDS", "GeneratorSpec", "VERDICTS", "make_layout", "render_batch",
    "render_image", "sample_verdicts", "type_look",
]
