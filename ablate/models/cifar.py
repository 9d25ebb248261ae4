"""The CIFAR-100 teacher/student families of CRD (Tian et al., ICLR 2020) and mdistiller: CIFAR ResNets and WRNs.

`CifarResNet` is mdistiller's `models/cifar/resnet.py` `ResNet` with basic blocks:
a 3x3 stem conv to `widths[0]` channels, then 3 stages of n = (depth - 2) / 6
post-activation basic blocks (3x3 conv-norm-relu, 3x3 conv-norm, + shortcut,
relu) of `widths[1:]` channels at strides 1, 2, 2; the shortcut is a 1x1
conv-norm wherever the shape changes (so also in the first block of stage 1
when widths[0] != widths[1]). resnet8x4 is depth 8 and resnet32x4 depth 32, both
with widths (32, 64, 128, 256).

`WideResNet` is mdistiller's `models/cifar/wrn.py`: a 3x3 stem conv to 16
channels, 3 stages of n = (depth - 4) / 6 pre-activation blocks of 16k, 32k, 64k
channels (k the widen factor) at strides 1, 2, 2, then norm-relu before the
pool. As there, a block whose channel count changes normalises and activates
its input once and feeds the activated input to both its first conv and its
1x1 shortcut conv; a block that keeps it adds the raw input.

Each stage's output (post-ReLU for the ResNets, the raw block sum for the
pre-activation WRNs, as mdistiller's `feats`) is sown as "stage1".."stage3"
for feature losses. Deviations from mdistiller, all deliberate:

- GroupNorm instead of BatchNorm. ablate's models are stateless (its trainer
  carries no `batch_stats`), as BiT's GroupNorm ResNets are. GroupNorm has
  the same parameters as BatchNorm (a scale and a bias per channel) and
  BatchNorm's running statistics are not parameters, so the parameter counts
  are exactly those of the published models: resnet8x4 1,233,540, resnet32x4
  7,433,860, wrn_16_2 703,284, wrn_40_2 2,255,156 with 100 classes (CRD's
  table: 1.23M, 7.43M, 0.70M, 2.26M). The activations differ from the BN model,
  so torch checkpoints do not carry over as they are.
- Zero-initialised head (kernel and bias), as ablate's other models; convs
  use mdistiller's He-normal fan-out init (std sqrt(2 / (k * k * out))).
- Global average pooling instead of `AvgPool2d(8)`: the same at 32 px, and
  defined at other resolutions.
- No dropout (mdistiller's WRNs are built with dropRate 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ablate.models.resnet import group_norm

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torch's kaiming_normal_(mode="fan_out")


def conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> nn.Conv:
    """A bias-free k x k convolution padded by k // 2 on each side (torch's padding=1 for 3x3, 0 for 1x1)."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=conv_init, name=name)


class CifarBasicBlock(nn.Module):
    """Post-activation basic block: conv3x3 (strided)-norm-relu, conv3x3-norm, + shortcut, relu."""

    planes: int
    stride: int = 1
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        residual = x
        out = conv(self.planes, 3, self.stride, "conv1")(x)
        out = nn.relu(group_norm(self.planes, self.groups, "norm1")(out))
        out = conv(self.planes, 3, name="conv2")(out)
        out = group_norm(self.planes, self.groups, "norm2")(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            residual = conv(self.planes, 1, self.stride, "downsample_conv")(x)
            residual = group_norm(self.planes, self.groups, "downsample_norm")(residual)
        return nn.relu(out + residual)


class CifarResNet(nn.Module):
    """mdistiller's CIFAR ResNet (basic blocks, depth 6n + 2) with GroupNorm; see the module docstring."""

    num_classes: int
    depth: int
    widths: Sequence[int] = (16, 16, 32, 64)  # stem, then the three stages
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        if (self.depth - 2) % 6:
            raise ValueError(f"a basic-block CIFAR ResNet has depth 6n + 2, got {self.depth}")
        n = (self.depth - 2) // 6
        x = conv(self.widths[0], 3, name="conv1")(x)
        x = nn.relu(group_norm(self.widths[0], self.groups, "norm1")(x))
        for i, planes in enumerate(self.widths[1:]):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                x = CifarBasicBlock(planes, stride, self.groups, name=f"layer{i + 1}/{j}")(x)
            self.sow("intermediates", f"stage{i + 1}", x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)


class WideBasicBlock(nn.Module):
    """Pre-activation WRN block: norm-relu, conv3x3 (strided), norm-relu, conv3x3, + shortcut."""

    planes: int
    stride: int = 1
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        act = nn.relu(group_norm(x.shape[-1], self.groups, "norm1")(x))
        equal = x.shape[-1] == self.planes
        out = conv(self.planes, 3, self.stride, "conv1")(act)
        out = nn.relu(group_norm(self.planes, self.groups, "norm2")(out))
        out = conv(self.planes, 3, name="conv2")(out)
        # as mdistiller (and the WRN authors' code): only a block that changes the channel count has a shortcut
        # conv, and it reads the normalised, activated input; every stride-2 block changes the channel count
        shortcut = x if equal else conv(self.planes, 1, self.stride, "shortcut")(act)
        return out + shortcut


class WideResNet(nn.Module):
    """mdistiller's WRN-depth-k (depth 6n + 4) with GroupNorm and no dropout; see the module docstring."""

    num_classes: int
    depth: int
    widen_factor: int = 1
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        if (self.depth - 4) % 6:
            raise ValueError(f"a wide ResNet has depth 6n + 4, got {self.depth}")
        n = (self.depth - 4) // 6
        x = conv(16, 3, name="conv1")(x)
        for i, planes in enumerate(w * self.widen_factor for w in (16, 32, 64)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                x = WideBasicBlock(planes, stride, self.groups, name=f"block{i + 1}/{j}")(x)
            self.sow("intermediates", f"stage{i + 1}", x)
        x = nn.relu(group_norm(x.shape[-1], self.groups, "norm")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)
