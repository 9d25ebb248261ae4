"""Views of a batch: crop parameters drawn once, rendered at any resolution, and mixup.

A view is a box (y0, x0, h, w) in fractions of the source image plus a flip bit,
per example. Drawing the parameters is separate from rendering them, so the
teacher and the student can see the very same crop at their own resolutions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

CROP_FRACTION = 0.8  # "resize to 1.25x, then crop to the target size" covers 1/1.25 of each side


class Crops(NamedTuple):
    """Per-example crop boxes (B, 4) as (y0, x0, h, w) in [0, 1], and horizontal flips (B,)."""

    boxes: jax.Array
    flips: jax.Array


def _boxes(y0, x0, h, w) -> jax.Array:
    return jnp.stack([y0, x0, h, w], axis=-1).astype(jnp.float32)


def resize(key: jax.Array, n: int) -> Crops:
    """`rs`: the whole image, no flip."""
    del key
    one, zero = jnp.ones((n,)), jnp.zeros((n,))
    return Crops(_boxes(zero, zero, one, one), jnp.zeros((n,), bool))


def central_crop(key: jax.Array, n: int) -> Crops:
    """`cc`: resize to 1.25x and take the central crop, no flip."""
    del key
    side = jnp.full((n,), CROP_FRACTION)
    off = jnp.full((n,), (1 - CROP_FRACTION) / 2)
    return Crops(_boxes(off, off, side, side), jnp.zeros((n,), bool))


def random_crop(key: jax.Array, n: int) -> Crops:
    """`rc`: resize to 1.25x, crop at a uniformly random position, random horizontal flip."""
    ky, kx, kf = jax.random.split(key, 3)
    side = jnp.full((n,), CROP_FRACTION)
    y0 = jax.random.uniform(ky, (n,), maxval=1 - CROP_FRACTION)
    x0 = jax.random.uniform(kx, (n,), maxval=1 - CROP_FRACTION)
    return Crops(_boxes(y0, x0, side, side), jax.random.bernoulli(kf, 0.5, (n,)))


def inception_crop(key: jax.Array, n: int, min_area: float = 0.05,
                   aspect: tuple[float, float] = (3 / 4, 4 / 3)) -> Crops:
    """`ic`: a box of random area in [min_area, 1] and log-uniform aspect ratio, random position and flip.

    A side longer than the image is clipped to it (TF's `sample_distorted_bounding_box`
    redraws such a box instead): 17% of boxes at min_area 0.25 (mean area 0.617
    instead of 0.625), 14% at 0.05 (0.518 instead of 0.525).
    """
    ka, kr, ky, kx, kf = jax.random.split(key, 5)
    area = jax.random.uniform(ka, (n,), minval=min_area, maxval=1.0)
    log_r = jax.random.uniform(kr, (n,), minval=jnp.log(aspect[0]), maxval=jnp.log(aspect[1]))
    ratio = jnp.exp(log_r)  # width / height
    w = jnp.minimum(jnp.sqrt(area * ratio), 1.0)
    h = jnp.minimum(jnp.sqrt(area / ratio), 1.0)
    y0 = jax.random.uniform(ky, (n,)) * (1 - h)
    x0 = jax.random.uniform(kx, (n,)) * (1 - w)
    return Crops(_boxes(y0, x0, h, w), jax.random.bernoulli(kf, 0.5, (n,)))


def _interpolation(start: jax.Array, size: jax.Array, in_len: int, out_len: int) -> jax.Array:
    """(B, out_len, in_len) bilinear weights sampling [start, start + size) of an axis at out_len points."""
    step = size * (in_len / out_len)  # source pixels per output pixel
    coords = start[:, None] * in_len + (jnp.arange(out_len) + 0.5) * step[:, None] - 0.5  # source pixel units
    coords = jnp.clip(coords, 0.0, in_len - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(coords[..., None] - jnp.arange(in_len)))


def render(images: jax.Array, crops: Crops, resolution: int) -> jax.Array:
    """Render uint8 images (B, H, W, C) through their crops at `resolution`, as float32 in [-1, 1]."""
    _, h, w, _ = images.shape
    b = crops.boxes
    ry = _interpolation(b[:, 0], b[:, 2], h, resolution)
    rx = _interpolation(b[:, 1], b[:, 3], w, resolution)
    rx = jnp.where(crops.flips[:, None, None], rx[:, ::-1, :], rx)
    x = images.astype(jnp.float32) * (2.0 / 255.0) - 1.0
    return jnp.einsum("byh,bhwc,bxw->byxc", ry, x, rx)


def mixup_coefficient(key: jax.Array, p: float) -> jax.Array:
    """One coefficient for the whole batch: a ~ Beta(p, p) folded to max(a, 1 - a) in [0.5, 1]; p = 0 gives 1."""
    if p <= 0:
        return jnp.float32(1.0)
    a = jax.random.beta(key, p, p)
    return jnp.maximum(a, 1.0 - a)


def mix(x: jax.Array, coef: jax.Array) -> jax.Array:
    """Mix every example with its neighbour in the batch (roll by one): coef * x + (1 - coef) * roll(x)."""
    return coef * x + (1.0 - coef) * jnp.roll(x, 1, axis=0)


VIEWS = {"rs": resize, "cc": central_crop, "rc": random_crop, "ic": inception_crop}
