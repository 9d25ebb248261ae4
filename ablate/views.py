"""Views of a batch: crop parameters drawn once, rendered at any resolution, and mixup.

A view is a box (y0, x0, h, w) in fractions of the source image plus a flip bit,
per example. Drawing the parameters is separate from rendering them, so the
teacher and the student can see the very same crop at their own resolutions.
Every draw function takes (key, n) where n is the batch size or the shape
(n, H, W, ...) of its images; inception crops use H and W to draw whole-pixel
boxes as TF does.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

CROP_FRACTION = 0.8  # "resize to 1.25x, then crop to the target size" covers 1/1.25 of each side
ASPECT_RANGE = (0.75, 1.33)  # width / height: TF's default aspect_ratio_range, which big_vision's inception_crop keeps
MAX_ATTEMPTS = 100  # TF's default max_attempts, also kept by big_vision
IC_SAMPLER = "tf_sample_distorted_bounding_box"  # in the cache keys of targets over inception crops: change it
# whenever the boxes drawn for a key change, so that targets computed from other boxes are not read back
_CHUNK = 4  # attempts drawn at once per example; more chunks only while an example has no success
_SAMPLE_GRID = 1024  # pixel grid of an image of unknown size (a count n instead of a shape): close to continuous


def _batch(n) -> tuple[int, int, int]:
    """(count, height, width) of a batch given as a count n or as the shape (n, H, W, ...) of its images."""
    if isinstance(n, (tuple, list)):
        return int(n[0]), int(n[1]), int(n[2])
    return int(n), _SAMPLE_GRID, _SAMPLE_GRID


class Crops(NamedTuple):
    """Per-example crop boxes (B, 4) as (y0, x0, h, w) in [0, 1], and horizontal flips (B,)."""

    boxes: jax.Array
    flips: jax.Array


def _boxes(y0, x0, h, w) -> jax.Array:
    return jnp.stack([y0, x0, h, w], axis=-1).astype(jnp.float32)


def resize(key: jax.Array, n) -> Crops:
    """`rs`: the whole image, no flip."""
    del key
    n = _batch(n)[0]
    one, zero = jnp.ones((n,)), jnp.zeros((n,))
    return Crops(_boxes(zero, zero, one, one), jnp.zeros((n,), bool))


def central_crop(key: jax.Array, n) -> Crops:
    """`cc`: resize to 1.25x and take the central crop, no flip."""
    del key
    n = _batch(n)[0]
    side = jnp.full((n,), CROP_FRACTION)
    off = jnp.full((n,), (1 - CROP_FRACTION) / 2)
    return Crops(_boxes(off, off, side, side), jnp.zeros((n,), bool))


def random_crop(key: jax.Array, n) -> Crops:
    """`rc`: resize to 1.25x, crop at a uniformly random position, random horizontal flip."""
    n = _batch(n)[0]
    ky, kx, kf = jax.random.split(key, 3)
    side = jnp.full((n,), CROP_FRACTION)
    y0 = jax.random.uniform(ky, (n,), maxval=1 - CROP_FRACTION)
    x0 = jax.random.uniform(kx, (n,), maxval=1 - CROP_FRACTION)
    return Crops(_boxes(y0, x0, side, side), jax.random.bernoulli(kf, 0.5, (n,)))


def _round(x: jax.Array) -> jax.Array:
    """C's lrintf: to the nearest integer, halves to even, as int32."""
    return jnp.round(x).astype(jnp.int32)


def _below(u: jax.Array, m: jax.Array) -> jax.Array:
    """An integer uniform in [0, m) from u uniform in [0, 1) (float32: within 2^-23 * m of uniform, m << 2^23)."""
    return jnp.minimum((u * m).astype(jnp.int32), m - 1)


def _attempt(key: jax.Array, shape: tuple[int, int], height: int, width: int, min_area: jax.Array,
             aspect: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Attempts (shape) at a box as TF's GenerateRandomCrop makes them: (h, w, succeeded), in pixels.

    An aspect ratio r (width / height) uniform in `aspect`; the smallest and
    largest heights round(sqrt(area / r)) for the areas min_area * H * W and
    H * W, the largest lowered until round(height * r) fits the width, then to
    at most H; a height uniform over the integers between them; the width
    round(height * r), the height nudged by one row where rounding put the
    area out of range. An attempt fails where the area or a side still does
    not fit. Computed in float32 as the kernel does (its one double
    expression, for the largest height that fits, is float32 here).
    """
    f32 = jnp.float32
    u = jax.random.uniform(key, (2, *shape), f32)
    lo, hi = aspect[0], aspect[1]
    r = u[0] * (hi - lo) + lo
    min_px = min_area * f32(width) * f32(height)  # the kernel's order of operations
    max_px = f32(1.0) * f32(width) * f32(height)
    h_lo = _round(jnp.sqrt(min_px / r))
    h_hi = _round(jnp.sqrt(max_px / r))
    h_fit = ((width + 0.5 - 1e-7) / r).astype(jnp.int32)  # the largest height whose rounded width fits
    h_fit = jnp.where(_round(h_fit * r) > width, h_fit - 1, h_fit)
    h_hi = jnp.minimum(jnp.where(_round(h_hi * r) > width, h_fit, h_hi), height)
    h_lo = jnp.minimum(h_lo, h_hi)
    h = h_lo + _below(u[1], h_hi - h_lo + 1)  # uniform over the closed range [h_lo, h_hi]
    w = _round(h * r)
    h = jnp.where(w * h < min_px, h + 1, h)  # rounding put the area below the range: one row taller
    w = _round(h * r)
    h = jnp.where(w * h > max_px, h - 1, h)  # ... or above it: one row shorter
    w = _round(h * r)
    area = (w * h).astype(f32)
    ok = (area >= min_px) & (area <= max_px) & (w <= width) & (h <= height) & (w > 0) & (h > 0)
    return h, w, ok


@functools.partial(jax.jit, static_argnums=(1, 2, 3))  # one program per batch shape, whatever the ranges
def _inception_boxes(key: jax.Array, n: int, height: int, width: int, min_area: jax.Array, aspect: jax.Array,
                     attempts: jax.Array) -> jax.Array:
    """Integer boxes (n, 4) as (y, x, h, w) pixels, distributed as TF's SampleDistortedBoundingBoxV2 draws them.

    With no bounding boxes, use_image_if_no_bounding_boxes and
    min_object_covered 0 (big_vision's inception_crop), the kernel makes up to
    `attempts` attempts (`_attempt`) and keeps the first that succeeds, else
    the whole image; then offsets uniform in [0, H - h) and [0, W - w) (the
    last position is never drawn unless the box spans that side). Here the
    attempts are i.i.d. draws made a chunk at a time for the whole batch, each
    example keeping its first success; further chunks are drawn only while
    some example has none, up to `attempts` in all: the kernel's distribution,
    at the cost of about one chunk.
    """
    kb, kp = jax.random.split(key)

    def more(state):
        done, _, _, found = state
        return (done < attempts) & ~found.all()

    def chunk(state):
        done, h, w, found = state
        th, tw, ok = _attempt(jax.random.fold_in(kb, done), (n, _CHUNK), height, width, min_area, aspect)
        ok = ok & (done + jnp.arange(_CHUNK) < attempts)  # the last chunk may hold attempts past the limit
        first = jnp.argmax(ok, axis=1)[:, None]
        new = ~found & ok.any(axis=1)
        h = jnp.where(new, jnp.take_along_axis(th, first, 1)[:, 0], h)
        w = jnp.where(new, jnp.take_along_axis(tw, first, 1)[:, 0], w)
        return done + _CHUNK, h, w, found | new

    whole = jnp.full((n,), height, jnp.int32), jnp.full((n,), width, jnp.int32)  # kept where nothing succeeds
    _, h, w, _ = jax.lax.while_loop(more, chunk, (0, *whole, jnp.zeros((n,), bool)))
    u = jax.random.uniform(kp, (2, n), jnp.float32)
    y = _below(u[0], jnp.maximum(height - h, 1))  # [0, H - h), or 0 when h == H
    x = _below(u[1], jnp.maximum(width - w, 1))
    return jnp.stack([y, x, h, w], axis=-1)


def inception_crop(key: jax.Array, n, min_area: float = 0.05, aspect: tuple[float, float] = ASPECT_RANGE,
                   attempts: int = MAX_ATTEMPTS) -> Crops:
    """`ic`: TF's `sample_distorted_bounding_box` box (area in [min_area, 1], aspect in `aspect`), random flip.

    `n` is the batch size, or better the shape (n, H, W, ...) of its images:
    boxes are then whole pixels of that image, as in big_vision. Given only a
    count, they are whole pixels of a 1024 x 1024 image, close to continuous.
    Mean areas against a NumPy port of TF's loop in tests/test_crops.py.
    """
    count, height, width = _batch(n)
    kb, kf = jax.random.split(key)
    y, x, h, w = _inception_boxes(kb, count, height, width, jnp.float32(min_area),
                                  jnp.asarray(aspect, jnp.float32), jnp.int32(attempts)).T
    return Crops(_boxes(y / height, x / width, h / height, w / width), jax.random.bernoulli(kf, 0.5, (count,)))


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
