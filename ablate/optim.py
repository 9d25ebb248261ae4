"""The paper's optimiser and schedule.

Update: delta = -s(t) * (lr * adam(clip(g)) + wd * theta), with s(t) a linear
warmup then cosine decay to 0; weight decay is decoupled (not scaled by lr) and
applies to convolution and dense kernels only.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ablate.config import OPTIMIZERS


def warmup_cosine(total_steps: int, warmup_steps: int):
    """s(t): linear from 0 to 1 over warmup_steps, then cosine from 1 to 0 at total_steps."""
    return lambda step: warmup_cosine_at(step, total_steps, warmup_steps)


def warmup_cosine_at(step, total_steps, warmup_steps) -> jax.Array:
    """s(t) for a schedule given as values (traced or not): a program that takes them as inputs serves any length."""
    step = jnp.asarray(step, jnp.float32)
    total, warmup = jnp.asarray(total_steps, jnp.float32), jnp.asarray(warmup_steps, jnp.float32)
    warm = step / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, warm, cosine)


class ScheduleState(NamedTuple):
    """The schedule's position and its length: state, not constants, so that the step's program is the same for
    runs of any length (one compilation serves a patience study's 10 to 3,000 epochs)."""

    count: jax.Array
    total_steps: jax.Array
    warmup_steps: jax.Array


def scale_by_warmup_cosine(total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
    """Multiply updates by -s(t) (`warmup_cosine`), with t and the schedule's length kept in the state."""

    def init(params):
        del params
        return ScheduleState(jnp.zeros([], jnp.int32), jnp.asarray(total_steps, jnp.int32),
                             jnp.asarray(warmup_steps, jnp.int32))

    def update(updates, state, params=None):
        del params
        scale = -warmup_cosine_at(state.count, state.total_steps, state.warmup_steps)
        updates = jax.tree.map(lambda u: scale.astype(u.dtype) * u, updates)
        return updates, state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def schedule_progress(opt_state) -> jax.Array:
    """How far through its schedule an optimiser state is, step / total steps in [0, 1] (from its ScheduleState)."""
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ScheduleState)):
        if isinstance(leaf, ScheduleState):
            return leaf.count.astype(jnp.float32) / jnp.maximum(leaf.total_steps, 1).astype(jnp.float32)
    raise ValueError("the optimiser state has no schedule (ScheduleState): build it with paper_optimizer")


def kernel_mask(params):
    """True for kernels (weight-decayed), False for norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def paper_optimizer(lr: float, wd: float, total_steps: int, warmup_steps: int, clip: float = 1.0,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    name: str = "adam") -> optax.GradientTransformation:
    """Clip -> Adam (or another direction) -> * lr -> + wd * theta on kernels -> * -s(t)."""
    return optax.chain(
        optax.clip_by_global_norm(clip),
        direction(name, b1, b2, eps),
        optax.scale(lr),
        optax.add_decayed_weights(wd, mask=kernel_mask),
        scale_by_warmup_cosine(total_steps, warmup_steps),
    )


LION_B2 = 0.99
"""Lion's momentum decay, as in its paper (Chen et al. 2023) and optax's default; Adam's b2 = 0.999 is another quantity."""


def direction(name: str, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """The update direction before lr and decay: adam (the paper's) or an alternative from optax.

    `b1` is Adam's first-moment decay, Nesterov SGD's momentum and Lion's interpolation decay; `b2` and `eps`
    are Adam's alone.
    """
    if name == "adam":
        return optax.scale_by_adam(b1, b2, eps)
    if name == "sgdm":
        return optax.trace(decay=b1, nesterov=True)
    if name == "lion":  # Lion's own interpolation (b1) and momentum (b2 = 0.99) decays, not Adam's b2
        return optax.scale_by_lion(b1=b1, b2=LION_B2)
    raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")

