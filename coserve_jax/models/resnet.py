"""ResNet family (He et al. 2016) in Flax NNX, NHWC, with basic and bottleneck blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from coserve_jax.models.spec import ArchSpec

# torchvision-compatible BatchNorm: momentum 0.9 running averages, eps 1e-5.
_BN = dict(momentum=0.9, epsilon=1e-5)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=k // 2, use_bias=False, rngs=rngs)


def _shortcut(cin: int, cout: int, stride: int, rngs: nnx.Rngs):
    """Projection shortcut (1x1 conv + BN) only when the shape changes, else (None, None).

    Assigned once per block: NNX fixes an attribute's kind at first assignment.
    """
    if stride != 1 or cin != cout:
        return _conv(cin, cout, 1, stride, rngs), nnx.BatchNorm(cout, **_BN, rngs=rngs)
    return None, None


class BasicBlock(nnx.Module):
    """Two 3x3 convs; projection shortcut when shape changes."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, rngs: nnx.Rngs):
        cout = width
        self.conv1 = _conv(cin, width, 3, stride, rngs)
        self.bn1 = nnx.BatchNorm(width, **_BN, rngs=rngs)
        self.conv2 = _conv(width, cout, 3, 1, rngs)
        self.bn2 = nnx.BatchNorm(cout, **_BN, rngs=rngs)
        self.proj, self.proj_bn = _shortcut(cin, cout, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        sc = x if self.proj is None else self.proj_bn(self.proj(x))
        return jax.nn.relu(y + sc)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided, as torchvision v1.5), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, rngs: nnx.Rngs):
        cout = width * 4
        self.conv1 = _conv(cin, width, 1, 1, rngs)
        self.bn1 = nnx.BatchNorm(width, **_BN, rngs=rngs)
        self.conv2 = _conv(width, width, 3, stride, rngs)
        self.bn2 = nnx.BatchNorm(width, **_BN, rngs=rngs)
        self.conv3 = _conv(width, cout, 1, 1, rngs)
        self.bn3 = nnx.BatchNorm(cout, **_BN, rngs=rngs)
        self.proj, self.proj_bn = _shortcut(cin, cout, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        sc = x if self.proj is None else self.proj_bn(self.proj(x))
        return jax.nn.relu(y + sc)


class ResNet(nnx.Module):
    """ResNet classifier: ``model(x[B,H,W,C]) -> logits[B, num_outputs]``."""

    def __init__(self, spec: ArchSpec, rngs: nnx.Rngs):
        self.spec = spec
        cin = spec.input_shape[2]
        if spec.stem == "imagenet":
            self.stem = _conv(cin, spec.stem_width, 7, 2, rngs)
        else:
            self.stem = _conv(cin, spec.stem_width, 3, spec.stem_stride, rngs)
        self.stem_bn = nnx.BatchNorm(spec.stem_width, **_BN, rngs=rngs)
        block_cls = BasicBlock if spec.block == "basic" else Bottleneck
        blocks = []
        c = spec.stem_width
        for i, (depth, width) in enumerate(zip(spec.stage_depths, spec.stage_widths)):
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block_cls(c, width, stride, rngs))
                c = width * block_cls.expansion
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(c, spec.num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_bn(self.stem(x)))
        if self.spec.stem == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x).astype(jnp.float32)
