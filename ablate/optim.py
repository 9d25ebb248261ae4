"""The paper's optimiser and schedule.

Update: delta = -s(t) * (lr * adam(clip(g)) + wd * theta), with s(t) a linear
warmup then cosine decay to 0; weight decay is decoupled (not scaled by lr) and
applies to convolution and dense kernels only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(total_steps: int, warmup_steps: int):
    """s(t): linear from 0 to 1 over warmup_steps, then cosine from 1 to 0 at total_steps."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def kernel_mask(params):
    """True for kernels (weight-decayed), False for norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def paper_optimizer(lr: float, wd: float, total_steps: int, warmup_steps: int, clip: float = 1.0,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    name: str = "adam") -> optax.GradientTransformation:
    """Clip -> Adam (or another direction) -> * lr -> + wd * theta on kernels -> * -s(t)."""
    schedule = warmup_cosine(total_steps, warmup_steps)
    return optax.chain(
        optax.clip_by_global_norm(clip),
        direction(name, b1, b2, eps),
        optax.scale(lr),
        optax.add_decayed_weights(wd, mask=kernel_mask),
        optax.scale_by_schedule(lambda t: -schedule(t)),
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


OPTIMIZERS = ("adam", "lion", "sgdm")
