"""Teachers: named configs, trained once and cached by config; fixed-teacher targets cached by content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import jax
import numpy as np

from ablate import paths, views
from ablate.config import RunConfig, content_hash
from ablate.data import DatasetSplits, load_dataset
from ablate.models import build_model
from ablate.registry import Registry
from ablate.train import Frozen, load_params, predict, save_params, student_source, train

TEACHERS: Registry = Registry("teacher")


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
register_teacher("fmnist_xs", dataclasses.replace(_TEACHER_BASE, model="resnet_xs", epochs=6, subset_per_class=300,
                                                  lr=1e-2, mixup_p=0.0, policy="supervised", num_evals=2),
                 "Tiny, quickly trained teacher (3k images, 6 epochs) for tests and smoke runs.")


def teacher_config(name: str) -> RunConfig:
    return TEACHERS.get(name).cfg


def teacher_dir(name: str) -> pathlib.Path:
    cfg = teacher_config(name)
    return paths.teachers_dir() / f"{name}-{cfg.run_id}"


@dataclasses.dataclass(frozen=True)
class Teacher(Frozen):
    name: str = ""
    fingerprint: str = ""  # SHA-256 of the parameters: keys every cache derived from this teacher
    summary: dict = dataclasses.field(default_factory=dict)


def params_fingerprint(params) -> str:
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def get_teacher(name: str, data: DatasetSplits | None = None, *, progress: bool = True,
                log=print) -> Teacher:
    """Load the named teacher from the cache, training it first if it is not there."""
    cfg = teacher_config(name)
    folder = teacher_dir(name)
    data = data or load_dataset(cfg.dataset)
    model = build_model(cfg.model, data.num_classes)
    res = cfg.resolution or data.default_resolution
    summary_file = folder / "summary.json"
    if not summary_file.exists():
        log(f"training teacher {name} ({cfg.model}, {cfg.epochs:g} epochs) into {folder}")
        result = train(cfg, data, ckpt_dir=folder / "checkpoints", progress=progress, desc=f"teacher {name}")
        save_params(folder / "params", result.params)
        _write_json(summary_file, {"config": cfg.to_dict(), **result.summary})
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, res, res, data.image_shape[2])))
                              )["params"]
    params = load_params(folder / "params", template)
    summary = json.loads(summary_file.read_text())
    return Teacher(model=model, params=params, resolution=res, name=name,
                   fingerprint=params_fingerprint(params), summary=summary)


def _write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)


# ----------------------------------------------------------------------------- fixed targets

def ensemble_logits(teacher: Teacher, source, k: int, min_area: float, seed: int = 0) -> np.ndarray:
    """log of the teacher's mean softmax over k inception crops per example (fix/ic_ens)."""
    fn = _ens_fn(teacher.model, teacher.resolution, min_area)
    out = []
    images = source.images if hasattr(source, "images") else np.stack([source[i]["image"] for i in range(len(source))])
    for start in range(0, len(images), 500):
        chunk = images[start:start + 500]
        probs = 0.0
        for j in range(k):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), start), j)
            probs = probs + np.asarray(fn(teacher.params, chunk, key), np.float64)
        out.append(np.log(probs / k).astype(np.float32))
    return np.concatenate(out)


_ENS_CACHE: dict = {}


def _ens_fn(model, resolution, min_area):
    key = (model, resolution, min_area)
    if key not in _ENS_CACHE:
        @jax.jit
        def fn(params, images, rng):
            crops = views.inception_crop(rng, images.shape[0], min_area)
            return jax.nn.softmax(model.apply({"params": params}, views.render(images, crops, resolution)))
        _ENS_CACHE[key] = fn
    return _ENS_CACHE[key]


def targets_key(teacher: Teacher, source_id: dict, view: str, **view_args) -> str:
    """Cache key from the teacher's parameters, the exact examples and the view: never stale."""
    return content_hash({"teacher": teacher.fingerprint, "source": source_id, "view": view,
                         "resolution": teacher.resolution, **view_args})[:24]


def source_id(source) -> dict:
    """Identify a split's content: count and a hash of its labels and images."""
    h = hashlib.sha256(np.asarray(source.labels).tobytes())
    if hasattr(source, "images"):
        h.update(np.ascontiguousarray(source.images).tobytes())
    return {"n": len(source), "content": h.hexdigest()}


def teacher_logits(teacher: Teacher, source, view: str, *, ens_crops: int = 16, min_area: float = 0.25,
                   log=print) -> np.ndarray:
    """The teacher's logits on every example of `source` under a fixed view, cached on disk.

    `view` is a deterministic view ("rs", "cc") or "ic_ens" (the mean over
    `ens_crops` inception crops). The cache key covers the teacher's parameters,
    the examples and the view, so a changed teacher or view recomputes.
    """
    extra = {"k": ens_crops, "min_area": min_area} if view == "ic_ens" else {}
    key = targets_key(teacher, source_id(source), view, **extra)
    path = paths.targets_dir() / f"{key}.npy"
    if path.exists():
        try:
            cached = np.load(path)
            if cached.shape[0] == len(source):
                return cached
        except (OSError, ValueError):
            pass
        log(f"teacher-target cache {path} is damaged; recomputing it")
    if view == "ic_ens":
        logits = ensemble_logits(teacher, source, ens_crops, min_area)
    else:
        logits = predict(teacher.model, teacher.params, source, view, teacher.resolution)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")
    np.save(tmp, logits)
    tmp.replace(path)
    return logits


def run_inputs(cfg: RunConfig, data: DatasetSplits, teacher: Teacher | None, log=print):
    """What a run needs from its teacher: fixed targets for its policy and logits on the clean val/test views."""
    from ablate.policies import POLICIES

    if teacher is None:
        return None, None
    policy = POLICIES.get(cfg.policy)
    targets = None
    if policy.fixed_view is not None:
        targets = teacher_logits(teacher, student_source(cfg, data), policy.fixed_view,
                                 ens_crops=cfg.ens_crops, min_area=cfg.ic_min_area, log=log)
    eval_teacher = {s: teacher_logits(teacher, getattr(data, s), data.eval_view, log=log) for s in ("val", "test")}
    return targets, eval_teacher
