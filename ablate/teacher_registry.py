"""The teacher registry: each named teacher is a config that trains it, or a BiT checkpoint that is the teacher.

Declarations only, with no jax: `ablate list` and config validation read them
without starting jax. Training, loading and fixed-teacher targets are in
`ablate.teachers`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from ablate import paths
from ablate.config import RunConfig
from ablate.registry import Registry, UnknownNameError

NPZ_PREFIX = "npz:"
NPZ_FORMAT = "npz:MODEL:DATASET:RESOLUTION:PATH"


class _TeacherRegistry(Registry):
    """The teacher registry; it also resolves names of the form npz:MODEL:DATASET:RESOLUTION:PATH on the fly."""

    def get(self, name: str):
        if isinstance(name, str) and name.startswith(NPZ_PREFIX) and name not in self._entries:
            return parse_npz_name(name)
        try:
            return super().get(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"{e} (or a BiT checkpoint as {NPZ_FORMAT})") from None


TEACHERS: Registry = _TeacherRegistry("teacher")


@dataclasses.dataclass(frozen=True)
class NamedTeacher:
    """A registered teacher: the config that trains it, and a line saying what it is."""

    cfg: RunConfig
    doc: str

    @property
    def __doc__(self):  # noqa: D105  (shown by `ablate list`)
        return self.doc


def register_teacher(name: str, cfg: RunConfig, doc: str) -> None:
    TEACHERS.register(name)(NamedTeacher(dataclasses.replace(cfg, teacher=None), doc))


_TEACHER_BASE = RunConfig(dataset="fashion_mnist", teacher=None, model="resnet_t", policy="supervised/mixup",
                          loss="label_ce", mixup_p=0.2, ic_min_area=0.25, epochs=10, batch_size=128,
                          lr=3e-3, wd=1e-4, subset_per_class=None, num_evals=10)
register_teacher("fmnist_t", _TEACHER_BASE,
                 "Default Fashion-MNIST teacher: resnet_t on all 55k training images, crops + mixup, 10 epochs.")
register_teacher("fmnist_t_hr", dataclasses.replace(_TEACHER_BASE, resolution=42),
                 "Like fmnist_t but at 42 px input (1.5x the student's 28 px), for the resolution study.")
register_teacher("fmnist_t_s1", dataclasses.replace(_TEACHER_BASE, seed=1),
                 "Like fmnist_t, trained with seed 1 (initialisation, data order, crops, mixup): a second teacher.")
register_teacher("fmnist_t_deep", dataclasses.replace(_TEACHER_BASE, model="resnet_t_deep"),
                 "Like fmnist_t but deeper (resnet_t_deep: two units per stage): a third, different teacher.")
_TINY_TEACHER = dataclasses.replace(_TEACHER_BASE, model="resnet_xs", epochs=6, subset_per_class=300, lr=1e-2,
                                    mixup_p=0.0, policy="supervised", num_evals=2)
register_teacher("fmnist_xs", _TINY_TEACHER,
                 "Tiny, quickly trained teacher (3k images, 6 epochs) for tests and smoke runs.")
register_teacher("fmnist_xs_s1", dataclasses.replace(_TINY_TEACHER, seed=1),
                 "Like fmnist_xs, trained with seed 1: a second tiny teacher for tests of several teachers.")

# CIFAR-100 teachers of CRD's and mdistiller's pairs, by mdistiller's recipe (SGD momentum 0.9, lr 0.05, batch 64,
# 240 epochs, weight decay 5e-4, pad-4 crop and flip); studies/cifar100/pairs.py says what differs from it
_CIFAR100_TEACHER = RunConfig(dataset="cifar100", teacher=None, policy="supervised/rc", loss="label_ce",
                              resolution=32, subset_per_class=None, epochs=240, batch_size=64, optimizer="sgdm",
                              lr=0.05, wd=5e-4, warmup_frac=1 / 240, clip=5.0, num_evals=12)
for _model, _published in (("resnet32x4", 79.42), ("wrn_40_2", 75.61)):
    register_teacher(f"cifar100_{_model}", dataclasses.replace(_CIFAR100_TEACHER, model=_model),
                     f"CIFAR-100 teacher {_model} by mdistiller's recipe, 240 epochs (published: {_published}%).")


# ----------------------------------------------------------------------------- checkpoint teachers

BIT_DIR_ENV = "ABLATE_BIT_DIR"


def bit_dir() -> pathlib.Path:
    """Where relative teacher checkpoint paths are looked up: $ABLATE_BIT_DIR, else <cache>/bit (~/.cache/ablate/bit)."""
    return pathlib.Path(os.environ.get(BIT_DIR_ENV) or paths.cache_dir() / "bit").expanduser()


@dataclasses.dataclass(frozen=True)
class CheckpointTeacher(NamedTeacher):
    """A teacher that is a fine-tuned BiT `.npz` checkpoint (head kept): loaded, never trained.

    `cfg` carries what the rest of ablate asks of a teacher (model, dataset,
    resolution); `path` is absolute or relative to `bit_dir()`, resolved when
    the teacher is loaded, so run ids do not depend on where the files live.
    """

    path: str = ""

    @property
    def __doc__(self):  # noqa: D105  (the class docstring would otherwise hide NamedTeacher's property)
        return self.doc

    @property
    def file(self) -> pathlib.Path:
        p = pathlib.Path(self.path).expanduser()
        return p if p.is_absolute() else bit_dir() / p


def _checkpoint_entry(model: str, dataset: str, path: str, resolution: int, doc: str) -> CheckpointTeacher:
    from ablate.data import DATASETS
    from ablate.models import MODELS

    MODELS.check(model)
    DATASETS.check(dataset)
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 0:
        raise ValueError(f"checkpoint teacher resolution must be an int >= 0 (0 = dataset default), got {resolution!r}")
    if not path:
        raise ValueError("checkpoint teacher needs a path to a .npz file")
    cfg = RunConfig(dataset=dataset, teacher=None, model=model, policy="supervised", loss="label_ce",
                    resolution=resolution, subset_per_class=None)
    return CheckpointTeacher(cfg, doc, str(path))


def register_checkpoint_teacher(name: str, *, model: str, dataset: str, path: str, resolution: int = 0,
                                doc: str | None = None) -> None:
    """Register `name` as the BiT checkpoint at `path` (absolute, or relative to $ABLATE_BIT_DIR), fine-tuned on `dataset`.

    The checkpoint's head must have the dataset's class count: it is the
    teacher's classifier and is loaded, not re-initialised.
    """
    doc = doc or f"BiT checkpoint {path}: {model} fine-tuned on {dataset} at {resolution or 'default'} px."
    TEACHERS.register(name)(_checkpoint_entry(model, dataset, path, resolution, doc))


def parse_npz_name(name: str) -> CheckpointTeacher:
    """npz:MODEL:DATASET:RESOLUTION:PATH -> an unregistered checkpoint teacher (PATH may itself contain ':')."""
    parts = name[len(NPZ_PREFIX):].split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise UnknownNameError(f"teacher {name!r} does not look like {NPZ_FORMAT} "
                               f"(e.g. npz:bit_r152x2:oxford_flowers102:128:R152x2_T_flowers128.npz)")
    model, dataset, res, path = parts
    try:
        resolution = int(res)
    except ValueError:
        raise UnknownNameError(f"teacher {name!r}: RESOLUTION must be an int, got {res!r} ({NPZ_FORMAT})") from None
    try:
        return _checkpoint_entry(model, dataset, path, resolution, f"BiT checkpoint {path} ({model}, {dataset}).")
    except UnknownNameError as e:
        raise UnknownNameError(f"teacher {name!r}: {e}") from None


# The paper's teachers: BiT-M R152x2 fine-tuned per dataset (gs://bit_models/distill/R152x2_T_*.npz).
PAPER_TEACHERS = {
    "bit_flowers_t": ("oxford_flowers102", 128, "R152x2_T_flowers128.npz"),
    "bit_pets_t": ("oxford_iiit_pet", 128, "R152x2_T_pet128.npz"),
    "bit_food_t": ("food101", 128, "R152x2_T_food128.npz"),
    "bit_sun_t": ("sun397", 128, "R152x2_T_sun128.npz"),
    "bit_imagenet_t224": ("imagenet2012", 224, "R152x2_T_224.npz"),
    "bit_imagenet_t384": ("imagenet2012", 384, "R152x2_T_384.npz"),
}
for _name, (_dataset, _res, _file) in PAPER_TEACHERS.items():
    register_checkpoint_teacher(_name, model="bit_r152x2", dataset=_dataset, path=_file, resolution=_res,
                                doc=f"Paper teacher: BiT-M R152x2 fine-tuned on {_dataset} at {_res} px "
                                    f"({_file} in $ABLATE_BIT_DIR, default ~/.cache/ablate/bit).")


def teacher_config(name: str) -> RunConfig:
    return TEACHERS.get(name).cfg


def teacher_dir(name: str) -> pathlib.Path:
    """Where a trained teacher is cached; for a checkpoint teacher, its `.npz` file."""
    entry = TEACHERS.get(name)
    if isinstance(entry, CheckpointTeacher):
        return entry.file
    cfg = entry.cfg
    return paths.teachers_dir() / f"{name}-{cfg.run_id}"
