"""Student families other than ResNets, sized like the default student resnet_s, for 28 px and 32 px images.

`MobileNetS` is a MobileNetV2-style network (Sandler et al., CVPR 2018): a 3x3
stem conv, three stages of inverted residual blocks (1x1 expansion by t, 3x3
depthwise conv, 1x1 linear projection; an identity shortcut where stride is 1
and the channel count is kept), ReLU6, a final 1x1 conv, global average pool.
The stem has stride 1 and the stages strides 1, 2, 2, so the stage outputs are
28/14/7 px for 28 px input (32/16/8 px for 32 px input).

`ViTS` is a small Vision Transformer (Dosovitskiy et al., ICLR 2021): a patch
embedding by a conv with kernel = stride = patch size (4: 7x7 tokens at 28 px,
8x8 at 32 px), a learned position embedding whose shape is the token grid of
the input given at init (so a ViTS initialised at 28 px runs at 28 px only),
pre-LayerNorm blocks (multi-head self-attention, GELU MLP), a final LayerNorm
and mean pooling over the tokens (no class token, so every token is a grid
position). Each block's output is sown as a (B, H', W', C) map, "stage1"..,
for feature losses: all stages of a ViT share the token grid (7x7 at 28 px).

As ablate's other models: no BatchNorm (ablate's trainer carries no
`batch_stats`; MobileNetS normalises with GroupNorm after each conv), a
zero-initialised head (kernel and bias), and each stage's output sown in
"intermediates".
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ablate.models.resnet import group_norm

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int = 1, groups: int = 1, name: str | None = None) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=False, kernel_init=conv_init, name=name)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-norm-relu6, 3x3 depthwise (strided)-norm-relu6, 1x1 project-norm (linear),
    + the input where the stride is 1 and the channel count is kept."""

    features: int
    stride: int = 1
    expansion: int = 4
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        hidden = x.shape[-1] * self.expansion
        out = _conv(hidden, 1, name="expand")(x)
        out = nn.relu6(group_norm(hidden, self.groups, "expand_norm")(out))
        out = _conv(hidden, 3, self.stride, groups=hidden, name="depthwise")(out)
        out = nn.relu6(group_norm(hidden, self.groups, "depthwise_norm")(out))
        out = _conv(self.features, 1, name="project")(out)
        out = group_norm(self.features, self.groups, "project_norm")(out)
        if self.stride == 1 and x.shape[-1] == self.features:
            out = out + x
        return out


class MobileNetS(nn.Module):
    """MobileNetV2-style student; see the module docstring. GroupNorm with `groups` groups after every conv (8: all
    channel counts of the default are multiples of 8; fewer where a count is not divisible)."""

    num_classes: int
    widths: Sequence[int] = (16, 24, 32)
    blocks: Sequence[int] = (1, 2, 3)  # as the first three stages of MobileNetV2
    strides: Sequence[int] = (1, 2, 2)
    expansion: int = 4
    stem_width: int = 16
    last_width: int = 128
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        x = _conv(self.stem_width, 3, name="stem")(x)
        x = nn.relu6(group_norm(self.stem_width, self.groups, "stem_norm")(x))
        for i, (width, n, stride) in enumerate(zip(self.widths, self.blocks, self.strides, strict=True)):
            for j in range(n):
                x = InvertedResidual(width, stride if j == 0 else 1, self.expansion, self.groups,
                                     name=f"stage{i + 1}/{j}")(x)
            self.sow("intermediates", f"stage{i + 1}", x)
        x = _conv(self.last_width, 1, name="last")(x)
        x = nn.relu6(group_norm(self.last_width, self.groups, "last_norm")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="norm1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attention")(y, y)
        y = nn.LayerNorm(name="norm2")(x)
        y = nn.Dense(self.mlp_dim, name="mlp1")(y)
        y = nn.Dense(x.shape[-1], name="mlp2")(nn.gelu(y))
        return x + y


class ViTS(nn.Module):
    """Small ViT student; see the module docstring."""

    num_classes: int
    patch: int = 4
    width: int = 40
    depth: int = 3
    heads: int = 4
    mlp_dim: int = 120

    @nn.compact
    def __call__(self, x):
        p = self.patch
        x = nn.Conv(self.width, (p, p), (p, p), padding="VALID", name="embedding")(x)
        b, h, w, c = x.shape
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (h, w, c))
        x = x.reshape(b, h * w, c)
        for i in range(self.depth):
            x = EncoderBlock(self.heads, self.mlp_dim, name=f"block{i + 1}")(x)
            self.sow("intermediates", f"stage{i + 1}", x.reshape(b, h, w, c))
        x = nn.LayerNorm(name="norm")(x)
        x = jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)
