"""Procedural PCB component crops with ground truth (damage, misalignment, polarity).

A crop shows one component on a green board: solder pads fixed to the board, the component
body (type-specific size, shape, colour, markings) with leads, and a polarity mark near the
body's "pin 1" end. Defects, exactly one per defective image:

- ``damaged``: a crack (dark line across the body), a missing piece (a corner of the body
  broken off, board visible) or a burn (dark scorched blob).
- ``misaligned``: body and leads shifted off the pads by 3+ pixels (pads stay put).
- ``reversed``: the polarity mark on the wrong end of the body.

Only types with a detection check ever get ``misaligned``/``reversed``. Every image is a pure
function of (spec, type index, verdict, image seed); ``render_image`` takes ~0.1 ms at 32x32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from coserve_jax.types import VERDICTS

DAMAGE_KINDS = ("crack", "missing", "burn")

_BOARD_RGB = np.array([0.10, 0.38, 0.16], np.float32)
_PAD_RGB = np.array([0.80, 0.80, 0.74], np.float32)
_LEAD_RGB = np.array([0.62, 0.62, 0.66], np.float32)


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    """What the crops look like. ``seed`` fixes the per-type appearance (not the images)."""

    image_size: int = 32
    channels: int = 3
    seed: int = 0
    noise_std: float = 0.03
    jitter_px: int = 1  # whole-component placement jitter of an "ok" crop
    misalign_min_px: int = 3
    misalign_max_px: int = 5

    def __post_init__(self) -> None:
        if self.image_size < 24:
            raise ValueError(f"GeneratorSpec.image_size must be >= 24, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"GeneratorSpec.channels must be 1 or 3, got {self.channels}")
        if not 0 < self.misalign_min_px <= self.misalign_max_px:
            raise ValueError("GeneratorSpec: need 0 < misalign_min_px <= misalign_max_px")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TypeLook:
    """Appearance of one component type (derived from the type index and the spec seed)."""

    body_rgb: tuple[float, float, float]
    mark_rgb: tuple[float, float, float]
    body_h: int
    body_w: int
    round_body: bool
    pins_per_side: int
    four_sided: bool
    stripes: int  # type markings: light bands across the body
    polarity_dot: bool  # polarity mark: a dot (True) or a bar (False)


@functools.lru_cache(maxsize=4096)
def type_look(type_index: int, spec: GeneratorSpec) -> TypeLook:
    """The appearance of type ``type_index``; distinct types differ in several features."""
    if type_index < 0:
        raise ValueError(f"type_index must be >= 0, got {type_index}")
    rng = np.random.default_rng((spec.seed, 7919, type_index))
    s = spec.image_size
    # Hue walks the colour wheel by the golden ratio so neighbouring indices differ clearly.
    hue = (type_index * 0.6180339887 + rng.uniform(0, 0.05)) % 1.0
    val = 0.25 + 0.5 * ((type_index * 7) % 5) / 4
    body = _hsv_to_rgb(hue, 0.55 + 0.4 * rng.random(), val)
    mark = (0.95, 0.95, 0.9) if val < 0.5 else (0.08, 0.08, 0.1)
    return TypeLook(
        body_rgb=body,
        mark_rgb=mark,
        body_h=int(round(s * (0.28 + 0.04 * (type_index % 4)))),
        body_w=int(round(s * (0.42 + 0.06 * ((type_index // 4) % 3)))),
        round_body=(type_index % 6) == 5,
        pins_per_side=1 + (type_index % 3),
        four_sided=(type_index % 5) == 4,
        stripes=(type_index // 3) % 4,
        polarity_dot=(type_index % 2) == 0,
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (float(r), float(g), float(b))


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    return yy.astype(np.float32), xx.astype(np.float32)


def _fill(img: np.ndarray, y0: float, x0: float, y1: float, x1: float, rgb) -> None:
    """Fill the clipped rectangle [y0, y1) x [x0, x1) (float corners rounded)."""
    s = img.shape[0]
    a, b = max(0, int(round(y0))), min(s, int(round(y1)))
    c, d = max(0, int(round(x0))), min(s, int(round(x1)))
    if a < b and c < d:
        img[a:b, c:d] = rgb


def render_image(type_index: int, verdict: str, image_seed: int, spec: GeneratorSpec) -> np.ndarray:
    """One crop, float32 ``[H, W, C]`` in [0, 1], of type ``type_index`` with ground truth ``verdict``.

    Deterministic in (spec, type_index, verdict, image_seed). Whether the type may carry a
    misaligned/reversed defect is the caller's business (see ``sample_verdicts``).
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    look = type_look(type_index, spec)
    rng = np.random.default_rng((spec.seed, type_index, VERDICTS.index(verdict), image_seed))
    s = spec.image_size
    img = np.empty((s, s, 3), np.float32)
    img[:] = _BOARD_RGB * rng.uniform(0.85, 1.15)

    j = spec.jitter_px
    cy = s / 2 + rng.integers(-j, j + 1)
    cx = s / 2 + rng.integers(-j, j + 1)
    bh, bw = look.body_h, look.body_w
    lead = max(2, s // 12)  # lead length out of the body
    pad_w = max(2, s // 16)

    # Body offset relative to the pads: zero unless misaligned.
    dy = dx = 0.0
    if verdict == "misaligned":
        mag = rng.integers(spec.misalign_min_px, spec.misalign_max_px + 1)
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = mag * np.sin(ang), mag * np.cos(ang)
        # Make sure at least one axis moves by the minimum (no sub-threshold "defects").
        if max(abs(dy), abs(dx)) < spec.misalign_min_px:
            dx = np.sign(dx or 1.0) * spec.misalign_min_px

    pins = _pin_positions(look, cy, cx, bh, bw, lead)
    for (py, px, vertical) in pins:  # pads: fixed to the board
        if vertical:
            _fill(img, py - lead / 2, px - pad_w / 2, py + lead / 2, px + pad_w / 2, _PAD_RGB)
        else:
            _fill(img, py - pad_w / 2, px - lead / 2, py + pad_w / 2, px + lead / 2, _PAD_RGB)
    for (py, px, vertical) in pins:  # leads: move with the body
        py, px = py + dy, px + dx
        if vertical:
            _fill(img, py - lead / 2, px - 0.5, py + lead / 2, px + 0.5, _LEAD_RGB)
        else:
            _fill(img, py - 0.5, px - lead / 2, py + 0.5, px + lead / 2, _LEAD_RGB)

    by0, bx0 = cy + dy - bh / 2, cx + dx - bw / 2
    body_rgb = np.asarray(look.body_rgb, np.float32) * rng.uniform(0.9, 1.1)
    yy, xx = _grid(s)
    if look.round_body:
        body_mask = ((yy - (cy + dy - 0.5)) / (bh / 2)) ** 2 + ((xx - (cx + dx - 0.5)) / (bw / 2)) ** 2 <= 1.0
        img[body_mask] = body_rgb
    else:
        _fill(img, by0, bx0, by0 + bh, bx0 + bw, body_rgb)
    mark = np.asarray(look.mark_rgb, np.float32)
    for k in range(look.stripes):  # vertical stripes in the middle third of the body
        sx = bx0 + bw * (0.38 + 0.1 * k)
        _fill(img, by0 + 2, sx, by0 + bh - 2, sx + 1, mark * 0.7 + body_rgb * 0.3)

    # Polarity mark near pin 1 (left end); reversed puts it at the right end.
    left = verdict != "reversed"
    mx = bx0 + 2 if left else bx0 + bw - 5
    if look.polarity_dot:
        _fill(img, cy + dy - 1.5, mx, cy + dy + 1.5, mx + 3, mark)
    else:
        _fill(img, by0 + 1, mx, by0 + bh - 1, mx + 2, mark)

    if verdict == "damaged":
        _draw_damage(img, rng, by0, bx0, bh, bw, yy, xx)

    img *= rng.uniform(0.9, 1.1)
    img += rng.normal(0.0, spec.noise_std, img.shape).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    if spec.channels == 1:
        return img.mean(axis=2, keepdims=True)
    return img


def _pin_positions(look: TypeLook, cy, cx, bh, bw, lead) -> list[tuple[float, float, bool]]:
    """(y, x, vertical) centres of leads/pads: left and right sides, plus top/bottom if four-sided."""
    out = []
    n = look.pins_per_side
    for i in range(n):
        y = cy - bh / 2 + bh * (i + 1) / (n + 1)
        out.append((y, cx - bw / 2 - lead / 2, False))
        out.append((y, cx + bw / 2 + lead / 2, False))
    if look.four_sided:
        for i in range(n):
            x = cx - bw / 2 + bw * (i + 1) / (n + 1)
            out.append((cy - bh / 2 - lead / 2, x, True))
            out.append((cy + bh / 2 + lead / 2, x, True))
    return out


def _draw_damage(img, rng, by0, bx0, bh, bw, yy, xx) -> None:
    kind = DAMAGE_KINDS[rng.integers(len(DAMAGE_KINDS))]
    if kind == "crack":
        # A dark, 2-px-thick line crossing most of the body, with a kink in the middle.
        y_a, y_b = by0 + rng.uniform(0, bh), by0 + rng.uniform(0, bh)
        t = np.linspace(0.0, 1.0, 48)
        ys = y_a + (y_b - y_a) * t + rng.uniform(-2, 2) * np.sin(np.pi * t)
        xs = bx0 + bw * (0.1 + 0.8 * t)
        yi = np.clip(np.round(ys).astype(int), 0, img.shape[0] - 2)
        xi = np.clip(np.round(xs).astype(int), 0, img.shape[1] - 1)
        img[yi, xi] = 0.04
        img[yi + 1, xi] = 0.04
    elif kind == "missing":
        # A corner of the body broken off: a triangle shows the board below.
        ch, cw = bh * rng.uniform(0.5, 0.8), bw * rng.uniform(0.35, 0.55)
        top, lft = rng.integers(2), rng.integers(2)
        y_c = by0 if top else by0 + bh
        x_c = bx0 if lft else bx0 + bw
        m = np.abs(yy + 0.5 - y_c) / ch + np.abs(xx + 0.5 - x_c) / cw <= 1.0
        img[m] = _BOARD_RGB * 0.8
    else:
        # A scorch mark: dark brown blob with a soft edge.
        ry, rx = rng.uniform(0.25, 0.4) * bh + 1.5, rng.uniform(0.15, 0.25) * bw + 1.5
        y_c = by0 + bh * rng.uniform(0.3, 0.7)
        x_c = bx0 + bw * rng.uniform(0.3, 0.7)
        d = ((yy - y_c) / ry) ** 2 + ((xx - x_c) / rx) ** 2
        w = np.clip(1.5 - d, 0.0, 1.0)[..., None]
        img[:] = img * (1 - w) + np.array([0.12, 0.06, 0.02], np.float32) * w


def render_batch(type_indices: Sequence[int], verdicts: Sequence[str], image_seeds: Sequence[int],
                 spec: GeneratorSpec) -> np.ndarray:
    """Many crops at once: float32 ``[N, H, W, C]`` (row i = ``render_image`` of the i-th triple)."""
    n = len(type_indices)
    if not (len(verdicts) == n and len(image_seeds) == n):
        raise ValueError("render_batch: type_indices, verdicts and image_seeds differ in length")
    out = np.empty((n, *spec.image_shape), np.float32)
    for i in range(n):
        out[i] = render_image(int(type_indices[i]), verdicts[i], int(image_seeds[i]), spec)
    return out


def sample_verdicts(rng: np.random.Generator, n: int, has_detector: bool, p_damaged: float,
                    p_misaligned: float, p_reversed: float) -> list[str]:
    """Draw ``n`` ground-truth verdicts; misaligned/reversed only when ``has_detector``."""
    if has_detector:
        p = np.array([1 - p_damaged - p_misaligned - p_reversed, p_damaged, p_misaligned, p_reversed])
    else:
        p = np.array([1 - p_damaged, p_damaged, 0.0, 0.0])
    if np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"defect rates must be in [0, 1] and sum to <= 1, got {p.tolist()}")
    idx = rng.choice(4, size=n, p=p)
    return [VERDICTS[i] for i in idx]
