"""ArchSpec: the frozen description of one expert architecture (shared by many experts)."""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("resnet", "yolo")


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One architecture. Experts of the same spec share a compiled forward.

    family "resnet": ``stage_depths`` blocks per stage, ``stage_widths`` block widths
      (bottleneck blocks output ``width * 4``), ``block`` "basic" or "bottleneck",
      ``stem`` "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "small" (3x3 conv, ``stem_stride``).
    family "yolo": YOLOv5 (v6.0 layout) scaled by ``depth_multiple`` / ``width_multiple``;
      ``num_outputs`` is the class count of the detection head, ``num_anchors`` per scale.
    """

    name: str
    family: str
    input_shape: tuple[int, int, int]  # (H, W, C)
    num_outputs: int
    # resnet
    block: str = "basic"
    stage_depths: tuple[int, ...] = (1, 1, 1)
    stage_widths: tuple[int, ...] = (16, 32, 64)
    stem: str = "small"
    stem_width: int = 16
    stem_stride: int = 1
    # yolo
    depth_multiple: float = 1.0
    width_multiple: float = 1.0
    num_anchors: int = 3

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ArchSpec {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if len(self.input_shape) != 3:
            raise ValueError(f"ArchSpec {self.name!r}: input_shape must be (H, W, C), got {self.input_shape}")
        if self.num_outputs < 1:
            raise ValueError(f"ArchSpec {self.name!r}: num_outputs must be >= 1")
        if self.family == "resnet":
            if self.block not in ("basic", "bottleneck"):
                raise ValueError(f"ArchSpec {self.name!r}: block must be 'basic' or 'bottleneck'")
            if self.stem not in ("imagenet", "small"):
                raise ValueError(f"ArchSpec {self.name!r}: stem must be 'imagenet' or 'small'")
            if len(self.stage_depths) != len(self.stage_widths):
                raise ValueError(f"ArchSpec {self.name!r}: stage_depths and stage_widths differ in length")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        """Inverse of ``to_dict``; unknown keys are an error naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"ArchSpec.from_dict: unknown field(s) {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)
