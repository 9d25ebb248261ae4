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

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ablate.models.resnet import group_norm

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=conv_init, name=name)


def _windows(x: jax.Array, k: tuple[int, int], stride: int):
    """For each tap (i, j) of a kh x kw kernel, the shifted, strided slice of the padded x (N, H, W, C) that the
    tap multiplies at every output position."""
    oh, ow = (x.shape[1] - k[0]) // stride + 1, (x.shape[2] - k[1]) // stride + 1
    for i in range(k[0]):
        for j in range(k[1]):
            yield i, j, x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]


def _taps(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """Each channel of the padded x (N, H, W, C) correlated with its own kernel w (kh, kw, C): the sum of the
    kernel's windows, each scaled per channel (elementwise work XLA fuses)."""
    return sum(window * w[i, j] for i, j, window in _windows(x, w.shape[:2], stride))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv2d(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """A depthwise convolution (NHWC; kernel HWIO with I = 1, O = C) as shifted slices, forward and backward.

    XLA's CPU backend runs a convolution with one group per channel (`feature_group_count` = C) and its
    gradients about 10x slower than this (at 28 px and 64 channels: 3.8 s against 0.33 s for one fwd+bwd of a
    128-image batch), so a MobileNet student took 4 s a step. Equal to the grouped convolution and to jax's
    gradients of it up to float rounding. Reverse mode only (a `jax.custom_vjp`).
    """
    return _taps(_pad(x, pad), w[:, :, 0], stride)


def _pad(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _depthwise_fwd(x, w, stride, pad):
    xp = _pad(x, pad)  # kept for the kernel's gradient, which reads the same windows
    return _taps(xp, w[:, :, 0], stride), (xp, w)


def _depthwise_bwd(stride, pad, res, dy):
    """The input's gradient: dy dilated by the stride and padded, correlated with the flipped kernel; the
    kernel's, per tap, the sum over images and positions of the tap's slice of x times dy."""
    xp, w = res
    k = w.shape[:2]
    span = [(m - 1) * stride + 1 for m in dy.shape[1:3]]  # dy's extent once dilated by the stride
    dilate = [(k_ - 1 - pad, n - pad - sp, stride - 1) for k_, n, sp in zip(k, xp.shape[1:3], span)]
    dy_wide = jax.lax.pad(dy, jnp.zeros((), dy.dtype), [(0, 0, 0), *dilate, (0, 0, 0)])
    dx = _taps(dy_wide, jnp.flip(w[:, :, 0], (0, 1)), 1)
    dw = jnp.stack([jnp.sum(window * dy, (0, 1, 2)) for _, _, window in _windows(xp, k, stride)])
    return dx, dw.reshape(*k, 1, -1).astype(w.dtype)


depthwise_conv2d.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv(nn.Module):
    """A bias-free depthwise kxk convolution by `depthwise_conv2d`; its parameters are those of
    `nn.Conv(C, (k, k), feature_group_count=C, use_bias=False)`: kernel (k, k, 1, C), drawn by `conv_init`."""

    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", conv_init, (self.kernel, self.kernel, 1, x.shape[-1]), jnp.float32)
        return depthwise_conv2d(x, w.astype(x.dtype), self.stride, self.kernel // 2)


class PointwiseConv(nn.Module):
    """A bias-free 1x1 convolution as one matmul over the channels: XLA's CPU backend runs this 3-6x faster,
    forward and backward, than the same convolution through `lax.conv_general_dilated` at MobileNetS's shapes.
    Its parameters are those of `nn.Conv(features, (1, 1), use_bias=False)`: kernel (1, 1, C, features)."""

    features: int

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features), jnp.float32)
        return jnp.einsum("nhwc,cf->nhwf", x, w[0, 0].astype(x.dtype))


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
        out = PointwiseConv(hidden, name="expand")(x)
        out = nn.relu6(group_norm(hidden, self.groups, "expand_norm")(out))
        out = DepthwiseConv(3, self.stride, name="depthwise")(out)
        out = nn.relu6(group_norm(hidden, self.groups, "depthwise_norm")(out))
        out = PointwiseConv(self.features, name="project")(out)
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
        x = PointwiseConv(self.last_width, name="last")(x)
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
