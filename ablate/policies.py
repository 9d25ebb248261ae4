"""Teacher-input policies: what the teacher and the student see at every step.

A policy is one registered function `(key, n, hp) -> (student_crops, teacher_crops)`
that draws the crops of a batch of n examples (the trainer passes the images'
shape (n, H, W, C) as n, for whole-pixel inception boxes: see `ablate.views`),
passing n on to the view draws; `teacher_crops` is None when the
teacher is not run during training (fixed targets are looked up from the cache,
or there is no teacher). Whether the batch is mixed up, and which precomputed
view a fixed teacher uses, are declared with the registration.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Optional

from ablate.registry import Registry

if TYPE_CHECKING:  # jax and the views are imported where crops are drawn: `ablate list` needs no jax
    import jax

    from ablate.views import Crops

DrawFn = Callable[["jax.Array", "int | tuple[int, ...]", "object"], "tuple[Crops, Optional[Crops]]"]


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    draw: DrawFn
    fixed_view: str | None = None  # "rs", "cc" or "ic_ens": the teacher's precomputed targets
    mixup: bool = False  # mix student (and teacher) inputs with one coefficient per batch
    teacher: bool = True  # False: labels only, no teacher at all

    @property
    def __doc__(self):  # noqa: D401  (for `ablate list`)
        return self.draw.__doc__

    @property
    def runs_teacher(self) -> bool:
        """True when the teacher runs inside the training step."""
        return self.teacher and self.fixed_view is None


POLICIES: Registry[Policy] = Registry("policy", "policies")


def policy(name: str, *, fixed_view: str | None = None, mixup: bool = False, teacher: bool = True):
    """Register a draw function as the policy `name`."""

    def decorate(fn: DrawFn) -> DrawFn:
        POLICIES.register(name)(Policy(name, fn, fixed_view, mixup, teacher))
        return fn

    return decorate


@policy("fix/rs", fixed_view="rs")
def fix_rs(key, n, hp):
    """Fixed teacher: teacher and student both see the whole image resized, no augmentation."""
    from ablate import views

    return views.resize(key, n), None


@policy("fix/cc", fixed_view="cc")
def fix_cc(key, n, hp):
    """Fixed teacher on the central crop; the student sees mild random crops."""
    from ablate import views

    return views.random_crop(key, n), None


@policy("fix/ic_ens", fixed_view="ic_ens")
def fix_ic_ens(key, n, hp):
    """Fixed teacher: mean of its predictions over K inception crops; the student sees inception crops."""
    from ablate import views

    return views.inception_crop(key, n, hp.ic_min_area), None


@policy("ind/rc")
def ind_rc(key, n, hp):
    """Independent noise: teacher and student get two independent mild random crops of the same image."""
    import jax

    from ablate import views

    kt, ks = jax.random.split(key)
    return views.random_crop(ks, n), views.random_crop(kt, n)


@policy("ind/ic")
def ind_ic(key, n, hp):
    """Independent noise: teacher and student get two independent inception crops of the same image."""
    import jax

    from ablate import views

    kt, ks = jax.random.split(key)
    return views.inception_crop(ks, n, hp.ic_min_area), views.inception_crop(kt, n, hp.ic_min_area)


@policy("same/rc")
def same_rc(key, n, hp):
    """Consistent: teacher and student see the identical mild random crop."""
    from ablate import views

    c = views.random_crop(key, n)
    return c, c


@policy("same/ic")
def same_ic(key, n, hp):
    """Consistent: teacher and student see the identical inception crop."""
    from ablate import views

    c = views.inception_crop(key, n, hp.ic_min_area)
    return c, c


@policy("funmatch", mixup=True)
def funmatch(key, n, hp):
    """Function matching: identical inception crop, then the same mixup for both models."""
    from ablate import views

    c = views.inception_crop(key, n, hp.ic_min_area)
    return c, c


@policy("supervised", teacher=False)
def supervised(key, n, hp):
    """Labels only, no teacher (the baseline): the student sees inception crops."""
    from ablate import views

    return views.inception_crop(key, n, hp.ic_min_area), None


@policy("supervised/mixup", teacher=False, mixup=True)
def supervised_mixup(key, n, hp):
    """Labels only with inception crops and mixup (mixed labels); how default teachers are trained."""
    from ablate import views

    return views.inception_crop(key, n, hp.ic_min_area), None


@policy("supervised/rc", teacher=False)
def supervised_rc(key, n, hp):
    """Labels only on mild random crops (CIFAR's pad-4 crop and flip on zero-padded records): the benchmark's
    student alone and how its teachers are trained."""
    from ablate import views

    return views.random_crop(key, n), None
