"""ResNetV2 (pre-activation) with GroupNorm and weight standardisation, as in BiT.

Parameter names follow big_vision's `bit_paper.py` (`root_block/conv_root`,
`block{i}/unit{jj}/{gn1,conv1,...}`, `norm-pre-head`, `head`) so that official
checkpoints map onto them one to one. The same family, with a small 3x3 root and
basic (two 3x3 convs) units, gives the fast models of the embedded default.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def standardize(w: jax.Array, eps: float = 1e-10) -> jax.Array:
    """Weight standardisation: zero mean, unit variance per output channel over (H, W, Cin)."""
    mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(w, axis=(0, 1, 2), keepdims=True)
    return (w - mean) * jax.lax.rsqrt(var + eps)


NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: tuple) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC, HWIO), whose gradients are convolutions in that same layout.

    jax differentiates a convolution into convolutions of permuted dimensions, which XLA's CPU backend
    rewrites into this layout (transposes around a fast convolution) at a program's top level but not
    inside a loop's body, where a training step ran about 3x slower (jax-ml/jax#12868): a multi-step
    program (`ablate.step.make_multi_step`) was slower than one step at a time. Written out here, the
    gradients are those convolutions in any program: jax's own gradients up to float rounding. Reverse mode
    only (a `jax.custom_vjp`): `jax.jvp` through these models raises; StdConv(impl="lax") gives jax's own.
    """
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _conv2d_fwd(x, w, strides, padding):
    return conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, res, dy):
    """The input's gradient: dy dilated by the stride, through the spatially flipped kernel with its input and
    output channels swapped. The kernel's: x with its channels as the batch, convolved with dy (its batch as
    the input channels) dilated by the stride. Paddings as jax's own transpose rules compute them."""
    x, w = res
    k, n, m = w.shape[:2], x.shape[1:3], dy.shape[1:3]
    span = [(mi - 1) * s + 1 for mi, s in zip(m, strides)]  # dy's extent once dilated by the stride
    lo = [ki - 1 - p for ki, (p, _) in zip(k, padding)]
    pad_x = [(b, ni + ki - 1 - sp - b) for b, ni, ki, sp in zip(lo, n, k, span)]
    dx = jax.lax.conv_general_dilated(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), (1, 1), pad_x,
                                      lhs_dilation=strides, dimension_numbers=NHWC)
    pad_w = [(p, sp - ni + ki - p - 1) for (p, _), sp, ni, ki in zip(padding, span, n, k)]
    dw = jax.lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), pad_w,
                                      rhs_dilation=strides, dimension_numbers=NHWC)
    return dx, dw.transpose(1, 2, 0, 3)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_as_matmul(x: jax.Array, w: jax.Array, stride: int, padding: tuple) -> jax.Array:
    """A 2-D convolution (NHWC, HWIO) as shifted strided slices concatenated, then one matmul.

    On CPU, XLA's own convolution backward pass is slow for small kernels; this
    lowering turns forward and backward into matmuls, pads and slices.
    """
    kh, kw, cin, cout = w.shape
    if (kh, kw) != (1, 1) or any(p != (0, 0) for p in padding):
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    _, h, wd, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    cols = [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return jnp.einsum("nhwk,ko->nhwo", patches, w.reshape(kh * kw * cin, cout))


class StdConv(nn.Module):
    """A bias-free convolution whose kernel is weight-standardised at every call."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple = ((0, 0), (0, 0))
    impl: str = "xla"  # "xla" (conv2d), "lax" (jax's own gradients) or "matmul" (conv_as_matmul); benchmarks/README.md

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        w = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        w = standardize(w)
        if self.impl == "matmul":
            return conv_as_matmul(x, w, self.strides, tuple(self.padding))
        if self.impl == "lax":
            return jax.lax.conv_general_dilated(x, w, (self.strides, self.strides), tuple(self.padding),
                                                dimension_numbers=NHWC)
        return conv2d(x, w, (self.strides, self.strides), tuple(map(tuple, self.padding)))


class GroupNorm(nn.Module):
    """GroupNorm over NHWC, computed from per-channel sums (same result as flax's `nn.GroupNorm`).

    Statistics are reduced over (H, W) per channel first and only then over each
    group's channels, and scale and shift fold into one per-(example, channel)
    multiply-add; on CPU this is ~15-20% faster per model than flax's grouped
    reshape (benchmarks/bench_groupnorm.py). Parameters `scale`, `bias` of shape (C,)
    as in flax, so checkpoints are interchangeable. The variance is E[x^2] - E[x]^2
    from one pass over x, as flax's default `use_fast_variance=True` (a funmatch step
    1.08x faster than the two-pass E[(x - mean)^2]); `fast_variance=False` gives the
    two-pass variance, for activations whose mean dwarfs their spread.
    """

    num_groups: int
    epsilon: float = 1e-5
    fast_variance: bool = True

    @nn.compact
    def __call__(self, x):
        c, g = x.shape[-1], self.num_groups
        per_group = c // g
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        count = x.shape[1] * x.shape[2] * per_group

        def to_channels(per_channel_sum):  # (B, C) summed over (H, W) -> per-group value broadcast to (B, C)
            grouped = per_channel_sum.reshape(-1, g, per_group).sum(-1) / count
            return jnp.repeat(grouped, per_group, axis=-1)

        mean = to_channels(jnp.sum(x, axis=(1, 2)))
        if self.fast_variance:  # E[x^2] - E[x]^2: both sums in one pass over x
            var = jnp.maximum(to_channels(jnp.sum(jnp.square(x), axis=(1, 2))) - jnp.square(mean), 0.0)
        else:
            var = to_channels(jnp.sum(jnp.square(x - mean[:, None, None, :]), axis=(1, 2)))
        a = scale * jax.lax.rsqrt(var + self.epsilon)
        return x * a[:, None, None, :] + (bias - mean * a)[:, None, None, :]


CONV_IMPLS = ("xla", "lax", "matmul")


@contextlib.contextmanager
def conv_impl(impl: str):
    """Build every StdConv with `impl` ("xla", "lax" or "matmul") while jax traces inside this block.

    For benchmarks and tests: the units look `StdConv` up by name, so this swaps
    in a subclass with another default; parameter names and shapes are unchanged.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {', '.join(CONV_IMPLS)}; got {impl!r}")
    global StdConv
    original = StdConv
    StdConv = type("StdConv", (original,), {"__annotations__": {"impl": str}, "impl": impl})
    try:
        yield
    finally:
        StdConv = original


def group_norm(channels: int, groups: int, name: str) -> GroupNorm:
    """GroupNorm with at most `groups` groups (fewer when a small model has fewer channels)."""
    g = groups
    while channels % g:
        g -= 1
    return GroupNorm(num_groups=g, epsilon=1e-5, name=name)


class BottleneckUnit(nn.Module):
    """BiT bottleneck unit: gn-relu, 1x1 -> gn-relu, 3x3 (strided) -> gn-relu, 1x1; 4x expansion."""

    nmid: int
    stride: int = 1
    groups: int = 32

    @nn.compact
    def __call__(self, x):
        nout = 4 * self.nmid
        residual = x
        x = nn.relu(group_norm(x.shape[-1], self.groups, "gn1")(x))
        if x.shape[-1] != nout or self.stride != 1:
            residual = StdConv(nout, (1, 1), self.stride, name="conv_proj")(x)
        x = StdConv(self.nmid, (1, 1), name="conv1")(x)
        x = nn.relu(group_norm(self.nmid, self.groups, "gn2")(x))
        x = StdConv(self.nmid, (3, 3), self.stride, padding=((1, 1), (1, 1)), name="conv2")(x)
        x = nn.relu(group_norm(self.nmid, self.groups, "gn3")(x))
        x = StdConv(nout, (1, 1), name="conv3")(x)
        return x + residual


class BasicUnit(nn.Module):
    """Pre-activation basic unit: gn-relu, 3x3 (strided) -> gn-relu, 3x3; no expansion."""

    nout: int
    stride: int = 1
    groups: int = 32

    @nn.compact
    def __call__(self, x):
        residual = x
        x = nn.relu(group_norm(x.shape[-1], self.groups, "gn1")(x))
        if x.shape[-1] != self.nout or self.stride != 1:
            residual = StdConv(self.nout, (1, 1), self.stride, name="conv_proj")(x)
        x = StdConv(self.nout, (3, 3), self.stride, padding=((1, 1), (1, 1)), name="conv1")(x)
        x = nn.relu(group_norm(self.nout, self.groups, "gn2")(x))
        x = StdConv(self.nout, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x)
        return x + residual


def _max_pool_zero_padded(x):
    """3x3 stride-2 max-pool padded with zeros, as the original BiT code does."""
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class ResNetV2(nn.Module):
    """ResNetV2 classifier.

    `unit="bottleneck", root="bit"` is BiT's R{50,101,152}x{w}; `unit="basic",
    root="small"` is a compact variant for small images. Stage i has
    `widths[i]` channels (the bottleneck's mid width; its output is 4x that)
    and stride 1 for the first stage, 2 for the others.
    """

    num_classes: int
    depths: Sequence[int]
    widths: Sequence[int]
    unit: str = "bottleneck"
    root: str = "bit"
    root_width: int = 64
    root_stride: int = 2
    groups: int = 32
    pool_padding: str = "zeros"  # "zeros" (original BiT) or "-inf" (big_vision)

    @nn.compact
    def __call__(self, x):
        if self.root == "bit":
            x = StdConv(self.root_width, (7, 7), 2, padding=((3, 3), (3, 3)),
                        name="root_block/conv_root")(x)
            if self.pool_padding == "zeros":
                x = _max_pool_zero_padded(x)
            elif self.pool_padding == "-inf":
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            else:
                raise ValueError(f"pool_padding must be 'zeros' or '-inf', got {self.pool_padding!r}")
        elif self.root == "small":
            x = StdConv(self.root_width, (3, 3), self.root_stride, padding=((1, 1), (1, 1)),
                        name="root_block/conv_root")(x)
        else:
            raise ValueError(f"root must be 'bit' or 'small', got {self.root!r}")

        for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                name = f"block{i + 1}/unit{j + 1:02d}"
                if self.unit == "bottleneck":
                    x = BottleneckUnit(width, stride, self.groups, name=name)(x)
                elif self.unit == "basic":
                    x = BasicUnit(width, stride, self.groups, name=name)(x)
                else:
                    raise ValueError(f"unit must be 'bottleneck' or 'basic', got {self.unit!r}")
            # each stage's output, for losses on intermediate activations (`ablate.models.apply_with_features`);
            # kept only when the caller asks for the collection, so other losses pay nothing
            self.sow("intermediates", f"stage{i + 1}", x)

        x = nn.relu(group_norm(x.shape[-1], self.groups, "norm-pre-head")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)
