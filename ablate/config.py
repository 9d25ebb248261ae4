"""Run configs: frozen, validated, and named by a hash of their content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

OPTIMIZERS = ("adam", "lion", "sgdm")
"""The update directions `ablate.optim.direction` implements."""

EVAL_SPACINGS = ("linear", "log")
"""How a run's evaluations are spaced over its steps (`ablate.evaluate.evaluation_steps`)."""

TEACHER_MIXES = ("sum", "ensemble")
"""How several teachers combine (`ablate.step.distill_loss`): the sum of the per-teacher losses, or the loss to the
ensemble's mean probabilities."""

TEACHER_SEP = "+"
"""Joins several teacher names in the `teacher` field, e.g. 'fmnist_t+fmnist_t_s1'."""


class ConfigError(ValueError):
    """A config value that is wrong; the message says which field, what was given and what is valid."""


def _field(default: Any, help: str) -> Any:
    """A config field with its one-line description (shown by `ablate distill --help`)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (a distillation run or a supervised one)."""

    dataset: str = _field("fashion_mnist", "dataset name (`ablate list`)")
    teacher: str | None = _field("fmnist_t", "named teacher (`ablate list`), or several joined by '+' (e.g. "
                                             "'fmnist_t+fmnist_t_s1'), all on the same view; None for label-only runs")
    teacher_mix: str = _field("sum", "how several teachers combine: 'sum' (of the losses to each) or 'ensemble' "
                                     "(the loss to their mean probabilities); ignored with one teacher")
    model: str = _field("resnet_s", "student model (`ablate list`)")
    policy: str = _field("funmatch", "teacher-input policy (`ablate list`)")
    loss: str = _field("kl", "loss, or a weighted sum such as 'kl + 0.5*label_ce' (`ablate list`)")
    temperature: float = _field(1.0, "softmax temperature of the distillation loss")
    label_smoothing: float = _field(0.0, "label smoothing of hard targets, in [0, 1)")
    mixup_p: float = _field(1.0, "Beta(p, p) mixup for policies that mix; 0 disables mixing")
    ic_min_area: float = _field(0.25, "smallest inception-crop area fraction")
    ens_crops: int = _field(16, "K crops averaged by fix/ic_ens")
    epochs: float = _field(100.0, "passes over the (sub)set the run trains on")
    batch_size: int = _field(128, "images per step")
    lr: float = _field(3e-2, "peak learning rate, chosen on the validation split (studies/hparams.py)")
    wd: float = _field(1e-4, "decoupled weight decay on kernels, not multiplied by lr")
    warmup_frac: float = _field(0.05, "share of the schedule spent in linear warmup")
    optimizer: str = _field("adam", f"one of {', '.join(OPTIMIZERS)}")
    clip: float = _field(1.0, "global gradient-norm clipping threshold")
    subset_per_class: int | None = _field(50, "training examples per class; None trains on the full train split")
    subset_seed: int = _field(0, "which examples the per-class subset draws")
    resolution: int = _field(0, "student input size; 0 means the dataset's default")
    init: str | None = _field(None, "run id of a finished run whose student initialises this one")
    seed: int = _field(0, "data order, views, mixup and (unless init_seed is set) the student's initialisation")
    init_seed: int | None = _field(None, "the student's initialisation alone; None uses seed")
    num_evals: int = _field(10, "evaluations over the schedule, spaced by eval_spacing (plus one at step 0)")
    eval_spacing: str = _field("linear", "evaluation steps: 'linear' (evenly spaced) or 'log' (log-uniform; "
                                          "always step 0 and the last step)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from a dict; unknown fields and wrongly typed values are errors."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(names)}")
        coerced = {k: _coerce(k, v, names[k].type) for k, v in values.items()}
        return cls(**coerced)

    def replace(self, **changes) -> "RunConfig":
        return RunConfig.from_dict({**self.to_dict(), **changes})

    @property
    def run_id(self) -> str:
        """A deterministic id: 12 hex digits of the SHA-256 of the canonical JSON of the config.

        Fields added after runs were stored (`_HASHED_WHEN_SET`) enter the hash only
        when set to another value than every earlier run had, so a config that
        leaves them unset keeps the id it always had. The
        code's `NUMERICS` version enters it too: a run made by code that trains
        differently (another crop sampler) is another run, never found done in its place.
        """
        values = {k: v for k, v in self.to_dict().items()
                  if not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])}
        if len(self.teachers) < 2:  # one teacher or none: nothing to mix, whatever teacher_mix says
            values.pop("teacher_mix", None)
        return content_hash({**values, "numerics": NUMERICS} if NUMERICS > 1 else values)[:12]

    @property
    def teachers(self) -> tuple[str, ...]:
        """The run's teacher names, in the order given (empty for a label-only run)."""
        return teacher_names(self.teacher)

    @property
    def student_seed(self) -> int:
        """The seed of the student's random initialisation."""
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def total_steps_per_example(self) -> float:
        return self.epochs / self.batch_size


_HASHED_WHEN_SET = {"init_seed": None, "eval_spacing": "linear", "teacher_mix": "sum"}  # field -> earlier runs' value
NUMERICS = 2
"""What a run of a given config computes, by version; every run id (and so every cached teacher) changes with it.
1: until 2026-12: inception crops of uniform area and log-uniform aspect, clipped to the image.
2: inception crops drawn as TF's sample_distorted_bounding_box draws them (ablate/views.py)."""


def teacher_names(teacher: str | None) -> tuple[str, ...]:
    """The names in a `teacher` field: () for None, one name, or several joined by '+' (spaces around them ignored)."""
    if teacher is None:
        return ()
    return tuple(name.strip() for name in teacher.split(TEACHER_SEP))


def num_steps(cfg: RunConfig, n_examples: int) -> int:
    """Training steps of a run of `cfg` over `n_examples` examples (at least 1)."""
    return max(1, int(cfg.epochs * n_examples) // cfg.batch_size)


def content_hash(obj: Any) -> str:
    """SHA-256 hex digest of an object's canonical JSON: the one hash used for ids and cache keys."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Accept ints for floats and numeric strings from the command line; reject everything else clearly."""
    optional = "None" in annotation
    base = annotation.replace(" | None", "")
    if value is None or (isinstance(value, str) and value.lower() == "none" and optional):
        if optional:
            return None
        raise ConfigError(f"{name} must be a {base}, got None")
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "str" and isinstance(value, str):
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{name} must be a{'n' if base == 'int' else ''} {base}"
                      f"{' or None' if optional else ''}, got {value!r}")


def validate(cfg: RunConfig) -> None:
    """Check names against the registries and values against their ranges; raise ConfigError."""
    from ablate.data import DATASETS
    from ablate.losses import LossSpec
    from ablate.models import MODELS
    from ablate.policies import POLICIES
    from ablate.registry import UnknownNameError
    from ablate.teacher_registry import TEACHERS

    try:
        DATASETS.check(cfg.dataset)
        MODELS.check(cfg.model)
        policy = POLICIES.get(cfg.policy)
        spec = LossSpec.parse(cfg.loss)
        if cfg.teacher is not None and TEACHER_SEP not in cfg.teacher:
            TEACHERS.check(cfg.teacher)
    except (UnknownNameError, ValueError) as e:
        raise ConfigError(str(e)) from None
    _validate_teachers(cfg, spec, TEACHERS)
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    if cfg.eval_spacing not in EVAL_SPACINGS:
        raise ConfigError(f"unknown eval_spacing {cfg.eval_spacing!r}; valid values: {', '.join(EVAL_SPACINGS)}")
    if policy.teacher and cfg.teacher is None:
        raise ConfigError(f"policy {cfg.policy!r} needs a teacher, but teacher is None")
    if policy.teacher and not spec.needs_teacher:
        raise ConfigError(f"loss {cfg.loss!r} ignores the teacher; with policy {cfg.policy!r} use a "
                          "teacher loss (e.g. 'kl'), or policy 'supervised' for labels only")
    if not policy.teacher and spec.needs_teacher:
        raise ConfigError(f"policy {cfg.policy!r} has no teacher, so loss {cfg.loss!r} cannot be used; "
                          "use 'label_ce'")
    if policy.fixed_view is not None and spec.needs_features:
        raise ConfigError(f"loss {cfg.loss!r} compares intermediate activations, but policy {cfg.policy!r} "
                          "trains on the fixed teacher's cached logits, which keep none; use an on-the-fly policy "
                          "(e.g. 'same/ic' or 'funmatch') or a loss on logits only")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
    checks = [
        ("epochs", cfg.epochs > 0, "> 0"),
        ("batch_size", cfg.batch_size > 0, "> 0"),
        ("temperature", cfg.temperature > 0, "> 0"),
        ("lr", cfg.lr > 0, "> 0"),
        ("wd", cfg.wd >= 0, ">= 0"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        ("mixup_p", cfg.mixup_p >= 0, ">= 0"),
        ("ic_min_area", 0 < cfg.ic_min_area <= 1, "in (0, 1]"),
        ("ens_crops", cfg.ens_crops >= 1, ">= 1"),
        ("warmup_frac", 0 <= cfg.warmup_frac < 1, "in [0, 1)"),
        ("clip", cfg.clip > 0, "> 0"),
        ("resolution", cfg.resolution >= 0, ">= 0 (0 = dataset default)"),
        ("num_evals", cfg.num_evals >= 1, ">= 1"),
        ("subset_per_class", cfg.subset_per_class is None or cfg.subset_per_class > 0, "> 0 or None"),
        ("subset_seed", cfg.subset_seed >= 0, ">= 0"),
        ("seed", cfg.seed >= 0, ">= 0"),
        ("init_seed", cfg.init_seed is None or cfg.init_seed >= 0, ">= 0 or None"),
    ]
    for name, ok, valid in checks:
        if not ok:
            raise ConfigError(f"{name} must be {valid}, got {getattr(cfg, name)!r}")
    if cfg.init is not None and cfg.init_seed is not None:
        raise ConfigError(f"init_seed {cfg.init_seed} has no effect: the student starts from run {cfg.init} "
                          "(set init_seed or init, not both)")


def _validate_teachers(cfg: RunConfig, spec, teachers) -> None:
    """Several teachers: each name registered, once, written 'a+b'; a known teacher_mix that suits the loss."""
    from ablate.registry import UnknownNameError

    if cfg.teacher_mix not in TEACHER_MIXES:
        raise ConfigError(f"unknown teacher_mix {cfg.teacher_mix!r}; valid values: {', '.join(TEACHER_MIXES)}")
    names = cfg.teachers
    if len(names) < 2:
        return
    example = TEACHER_SEP.join(("fmnist_t", "fmnist_t_s1"))
    if not all(names):
        raise ConfigError(f"teacher {cfg.teacher!r} has an empty name; join registered teacher names with "
                          f"{TEACHER_SEP!r}, e.g. {example!r}")
    for name in names:
        try:
            teachers.check(name)
        except UnknownNameError as e:
            raise ConfigError(f"{e} (in teacher {cfg.teacher!r}: several teachers are registered names joined by "
                              f"{TEACHER_SEP!r}, e.g. {example!r})") from None
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"teacher {cfg.teacher!r} names {', '.join(twice)} more than once; each teacher may "
                          "appear once")
    if cfg.teacher != TEACHER_SEP.join(names):
        raise ConfigError(f"write teacher {cfg.teacher!r} as {TEACHER_SEP.join(names)!r} (no spaces): the field "
                          "is part of the run id")
    if cfg.teacher_mix == "ensemble" and spec.needs_features:
        raise ConfigError(f"loss {cfg.loss!r} compares intermediate activations, which an ensemble of teachers "
                          "does not have (it averages their probabilities only); use teacher_mix 'sum' (one "
                          "feature term per teacher) or a loss on logits only")
