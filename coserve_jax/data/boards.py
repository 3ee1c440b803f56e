"""Board layouts: how many components of each type a board carries (the component mix)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BoardLayout:
    """A board type: ``counts[t]`` components of type index t. ``mix`` = counts / total."""

    name: str
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(c < 0 for c in self.counts):
            raise ValueError(f"BoardLayout {self.name!r}: counts must be >= 0")
        if sum(self.counts) == 0:
            raise ValueError(f"BoardLayout {self.name!r}: a board needs at least one component")

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    @property
    def mix(self) -> np.ndarray:
        c = np.asarray(self.counts, np.float64)
        return c / c.sum()

    def components(self) -> list[int]:
        """Type index of every component on one board, in placement order (type by type)."""
        return [t for t, c in enumerate(self.counts) for _ in range(c)]


def make_layout(name: str, num_types: int, seed: int, mean_count: float = 6.0,
                skew_sigma: float = 1.0) -> BoardLayout:
    """A seeded layout: log-normal counts (a few common types, a long tail), every type >= 1."""
    if num_types < 1:
        raise ValueError(f"make_layout: num_types must be >= 1, got {num_types}")
    rng = np.random.default_rng((seed, 4049))
    raw = rng.lognormal(mean=0.0, sigma=skew_sigma, size=num_types)
    counts = np.maximum(1, np.round(raw / raw.mean() * mean_count)).astype(int)
    return BoardLayout(name=name, counts=tuple(int(c) for c in counts))
