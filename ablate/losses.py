"""Distillation losses: one registered function each, combined by a spec such as "kl + 0.1*label_ce".

Every loss maps (student logits, teacher logits, soft labels) to a per-example
value, log-softmax based for stability. Soft labels are one-hot ground truth,
mixed like the inputs under mixup.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Callable

from ablate.registry import Registry

if TYPE_CHECKING:  # jax is imported where a loss is computed: `ablate list` and config validation need no jax
    import jax

LossFn = Callable[..., "jax.Array"]
LOSSES: Registry[LossFn] = Registry("loss", "losses")


def loss(name: str, *, needs_teacher: bool = True):
    """Register a per-example loss `fn(student, teacher, labels, *, temperature, label_smoothing)`."""

    def decorate(fn: LossFn) -> LossFn:
        fn.needs_teacher = needs_teacher
        return LOSSES.register(name)(fn)

    return decorate


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) per example from log-probabilities; exactly 0 where p == q."""
    import jax.numpy as jnp

    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _smooth(targets: jax.Array, eps: float) -> jax.Array:
    return targets * (1.0 - eps) + eps / targets.shape[-1]


def _cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    import jax
    import jax.numpy as jnp

    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


@loss("kl")
def kl(student, teacher, labels, *, temperature=1.0, **_):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)): the paper's distillation loss."""
    import jax

    t = temperature
    return t * t * _kl(jax.nn.log_softmax(teacher / t), jax.nn.log_softmax(student / t))


@loss("reverse_kl")
def reverse_kl(student, teacher, labels, *, temperature=1.0, **_):
    """T^2 * KL(softmax(student/T) || softmax(teacher/T)): mode-seeking direction."""
    import jax

    t = temperature
    return t * t * _kl(jax.nn.log_softmax(student / t), jax.nn.log_softmax(teacher / t))


@loss("mse_logits")
def mse_logits(student, teacher, labels, **_):
    """Mean squared difference of logits over classes."""
    import jax.numpy as jnp

    return jnp.mean(jnp.square(student - teacher), axis=-1)


@loss("hard")
def hard(student, teacher, labels, *, label_smoothing=0.0, **_):
    """Cross-entropy to the teacher's argmax (one-hot, optionally label-smoothed)."""
    import jax
    import jax.numpy as jnp

    onehot = jax.nn.one_hot(jnp.argmax(teacher, -1), teacher.shape[-1])
    return _cross_entropy(student, _smooth(onehot, label_smoothing))


@loss("label_ce", needs_teacher=False)
def label_ce(student, teacher, labels, *, label_smoothing=0.0, **_):
    """Cross-entropy to the ground-truth labels (optionally label-smoothed); needs no teacher."""
    return _cross_entropy(student, _smooth(labels, label_smoothing))


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A weighted sum of registered losses, parsed from e.g. "kl + 0.1*label_ce"."""

    terms: tuple[tuple[float, str], ...]

    @classmethod
    def parse(cls, spec: str) -> "LossSpec":
        terms = []
        for part in spec.replace(" ", "").split("+"):
            m = re.fullmatch(r"(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\*)?([A-Za-z_][\w/]*)", part)
            if not m:
                raise ValueError(f"cannot parse loss term {part!r} in {spec!r}; "
                                 "write e.g. 'kl' or 'kl + 0.1*label_ce'")
            weight = float(m.group(1)) if m.group(1) else 1.0
            LOSSES.check(m.group(2))
            terms.append((weight, m.group(2)))
        return cls(tuple(terms))

    @property
    def needs_teacher(self) -> bool:
        return any(LOSSES.get(name).needs_teacher for _, name in self.terms)

    def __call__(self, student, teacher, labels, **hp) -> jax.Array:
        """Per-example weighted sum of the terms."""
        return sum(w * LOSSES.get(name)(student, teacher, labels, **hp) for w, name in self.terms)
