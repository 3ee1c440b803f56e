"""YOLOv5-like detector (Ultralytics v6.0 layout) in Flax NNX, NHWC.

Backbone: Conv-BN-SiLU, C3 (CSP) blocks, SPPF. Neck: top-down FPN + bottom-up PAN with C3.
Head: a 1x1 conv per scale to ``num_anchors * (5 + num_outputs)`` channels (box, objectness,
class scores). For the CoE the forward returns *verdict logits* ``[B, num_outputs]``: the class
scores of every cell and anchor, weighted by softmax-normalised objectness over all cells — the
"most object-like cell decides" reading of a dense detection map, kept differentiable so the
demo trains end to end on image-level labels. ``dense(x)`` exposes the raw per-scale head output.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from coserve_jax.models.spec import ArchSpec

_BN = dict(momentum=0.97, epsilon=1e-3)  # YOLOv5's BatchNorm settings


def _scale_width(c: int, width_multiple: float) -> int:
    # YOLOv5 rounds scaled channels up to a multiple of 8.
    return max(8, int(math.ceil(c * width_multiple / 8) * 8))


def _scale_depth(n: int, depth_multiple: float) -> int:
    return max(round(n * depth_multiple), 1) if n > 1 else n


class ConvBnSiLU(nnx.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs, padding: int | None = None):
        p = k // 2 if padding is None else padding
        self.conv = nnx.Conv(cin, cout, (k, k), strides=stride, padding=p, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, **_BN, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(self.bn(self.conv(x)))


class YoloBottleneck(nnx.Module):
    def __init__(self, c: int, shortcut: bool, rngs: nnx.Rngs):
        self.cv1 = ConvBnSiLU(c, c, 1, 1, rngs)
        self.cv2 = ConvBnSiLU(c, c, 3, 1, rngs)
        self.shortcut = shortcut

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C3(nnx.Module):
    """CSP bottleneck with 3 convolutions."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool, rngs: nnx.Rngs):
        c_ = cout // 2
        self.cv1 = ConvBnSiLU(cin, c_, 1, 1, rngs)
        self.cv2 = ConvBnSiLU(cin, c_, 1, 1, rngs)
        self.cv3 = ConvBnSiLU(2 * c_, cout, 1, 1, rngs)
        self.m = nnx.List([YoloBottleneck(c_, shortcut, rngs) for _ in range(n)])

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.cv1(x)
        for b in self.m:
            a = b(a)
        return self.cv3(jnp.concatenate([a, self.cv2(x)], axis=-1))


class SPPF(nnx.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs, k: int = 5):
        c_ = cin // 2
        self.cv1 = ConvBnSiLU(cin, c_, 1, 1, rngs)
        self.cv2 = ConvBnSiLU(4 * c_, cout, 1, 1, rngs)
        self.k = k

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.cv1(x)
        pad = ((self.k // 2, self.k // 2),) * 2
        y1 = nnx.max_pool(x, (self.k, self.k), strides=(1, 1), padding=pad)
        y2 = nnx.max_pool(y1, (self.k, self.k), strides=(1, 1), padding=pad)
        y3 = nnx.max_pool(y2, (self.k, self.k), strides=(1, 1), padding=pad)
        return self.cv2(jnp.concatenate([x, y1, y2, y3], axis=-1))


def _upsample2(x: jax.Array, like: jax.Array) -> jax.Array:
    # Nearest-neighbour x2, cropped to the skip connection (odd sizes at tiny inputs).
    y = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return y[:, : like.shape[1], : like.shape[2]]


class Yolo(nnx.Module):
    """YOLOv5-style detector returning verdict logits ``[B, num_outputs]``."""

    def __init__(self, spec: ArchSpec, rngs: nnx.Rngs):
        self.spec = spec
        w = lambda c: _scale_width(c, spec.width_multiple)  # noqa: E731
        d = lambda n: _scale_depth(n, spec.depth_multiple)  # noqa: E731
        cin = spec.input_shape[2]
        # backbone
        self.b0 = ConvBnSiLU(cin, w(64), 6, 2, rngs, padding=2)  # P1/2
        self.b1 = ConvBnSiLU(w(64), w(128), 3, 2, rngs)  # P2/4
        self.b2 = C3(w(128), w(128), d(3), True, rngs)
        self.b3 = ConvBnSiLU(w(128), w(256), 3, 2, rngs)  # P3/8
        self.b4 = C3(w(256), w(256), d(6), True, rngs)
        self.b5 = ConvBnSiLU(w(256), w(512), 3, 2, rngs)  # P4/16
        self.b6 = C3(w(512), w(512), d(9), True, rngs)
        self.b7 = ConvBnSiLU(w(512), w(1024), 3, 2, rngs)  # P5/32
        self.b8 = C3(w(1024), w(1024), d(3), True, rngs)
        self.b9 = SPPF(w(1024), w(1024), rngs)
        # neck (FPN top-down, then PAN bottom-up)
        self.h10 = ConvBnSiLU(w(1024), w(512), 1, 1, rngs)
        self.h13 = C3(w(512) + w(512), w(512), d(3), False, rngs)
        self.h14 = ConvBnSiLU(w(512), w(256), 1, 1, rngs)
        self.h17 = C3(w(256) + w(256), w(256), d(3), False, rngs)  # P3 out
        self.h18 = ConvBnSiLU(w(256), w(256), 3, 2, rngs)
        self.h20 = C3(w(256) + w(256), w(512), d(3), False, rngs)  # P4 out
        self.h21 = ConvBnSiLU(w(512), w(512), 3, 2, rngs)
        self.h23 = C3(w(512) + w(512), w(1024), d(3), False, rngs)  # P5 out
        # detection head: one 1x1 conv per scale
        per_cell = spec.num_anchors * (5 + spec.num_outputs)
        self.detect = nnx.List(
            [nnx.Conv(c, per_cell, (1, 1), rngs=rngs) for c in (w(256), w(512), w(1024))]
        )

    def dense(self, x: jax.Array) -> list[jax.Array]:
        """Raw head output per scale: ``[B, h, w, num_anchors, 5 + num_outputs]``."""
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        t10 = self.h10(p5)
        t13 = self.h13(jnp.concatenate([_upsample2(t10, p4), p4], axis=-1))
        t14 = self.h14(t13)
        o3 = self.h17(jnp.concatenate([_upsample2(t14, p3), p3], axis=-1))
        o4 = self.h20(jnp.concatenate([self.h18(o3), t14], axis=-1))
        o5 = self.h23(jnp.concatenate([self.h21(o4), t10], axis=-1))
        outs = []
        for conv, feat in zip(self.detect, (o3, o4, o5)):
            y = conv(feat)
            outs.append(y.reshape(*y.shape[:3], self.spec.num_anchors, 5 + self.spec.num_outputs))
        return outs

    def __call__(self, x: jax.Array) -> jax.Array:
        outs = self.dense(x)
        b = x.shape[0]
        flat = jnp.concatenate([o.reshape(b, -1, o.shape[-1]) for o in outs], axis=1)
        weights = jax.nn.softmax(flat[..., 4], axis=1)  # objectness over all cells and anchors
        return jnp.einsum("bn,bnc->bc", weights, flat[..., 5:]).astype(jnp.float32)
