"""Teachers: named configs, trained once and cached by config; fixed-teacher targets cached by content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import jax
import numpy as np

from ablate import parallel, paths, views
from ablate.config import RunConfig, content_hash
from ablate.data import DatasetSplits, load_dataset
from ablate.lanes import map_rows
from ablate.models import build_model
from ablate.registry import Registry, UnknownNameError
from ablate.train import Frozen, load_params, predict, save_params, stack_images, student_source, train

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
register_teacher("fmnist_xs", dataclasses.replace(_TEACHER_BASE, model="resnet_xs", epochs=6, subset_per_class=300,
                                                  lr=1e-2, mixup_p=0.0, policy="supervised", num_evals=2),
                 "Tiny, quickly trained teacher (3k images, 6 epochs) for tests and smoke runs.")


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


def _num_classes(dataset: str, data: DatasetSplits | None) -> tuple[int, int, int]:
    """(classes, channels, default resolution) of `dataset`, from `data`, else the TFDS table, else the data."""
    from ablate.data.tfds import SPECS

    if data is None and dataset in SPECS:
        spec = SPECS[dataset]
        return spec.num_classes, 3, spec.resolution
    data = data or load_dataset(dataset)
    return data.num_classes, data.image_shape[2], data.default_resolution


def load_checkpoint_teacher(name: str, entry: CheckpointTeacher, data: DatasetSplits | None = None,
                            log=print) -> Teacher:
    """Build the teacher's model and load its `.npz` (head included, all tensors checked); evaluates nothing."""
    from ablate.data import DataError
    from ablate.models.checkpoints import CheckpointError, load_bit_npz

    cfg = entry.cfg
    classes, channels, default_res = _num_classes(cfg.dataset, data)
    res = cfg.resolution or default_res
    file = entry.file
    if not file.is_file():
        raise DataError(f"teacher {name}: checkpoint {file} does not exist. Put the file there (the paper's "
                        f"teachers: gsutil cp gs://bit_models/distill/{file.name} {file.parent}/), set "
                        f"${BIT_DIR_ENV} to the folder that holds it, or give an absolute path.")
    model = build_model(cfg.model, classes)
    x = jax.ShapeDtypeStruct((1, res, res, channels), np.float32)
    template = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    log(f"loading teacher {name} ({cfg.model}, {classes} classes, {res} px) from {file}")
    try:
        params = load_bit_npz(file, template, skip_head=False, strict=True)
    except CheckpointError as e:
        raise DataError(f"teacher {name}: {e}") from None
    summary = {"config": cfg.to_dict(), "checkpoint": str(file), "source": "checkpoint"}
    return Teacher(model=model, params=params, resolution=res, name=name,
                   fingerprint=params_fingerprint(params), summary=summary)


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
    """Load the named teacher from the cache, training it first if it is not there.

    A checkpoint teacher (`register_checkpoint_teacher`, or an npz:... name) is
    read from its `.npz` instead: never trained, never evaluated, and `data` may
    be None when the dataset's class count is known without the data.
    """
    entry = TEACHERS.get(name)
    if isinstance(entry, CheckpointTeacher):
        return load_checkpoint_teacher(name, entry, data, log=log)
    cfg = teacher_config(name)
    folder = teacher_dir(name)
    data = data or load_dataset(cfg.dataset)
    model = build_model(cfg.model, data.num_classes)
    res = cfg.resolution or data.default_resolution
    summary_file = folder / "summary.json"
    if not parallel.agree(summary_file.exists()):  # on several hosts: all train it, process 0 writes the summary
        log(f"training teacher {name} ({cfg.model}, {cfg.epochs:g} epochs) into {folder}")
        result = train(cfg, data, ckpt_dir=folder / "checkpoints", progress=progress, desc=f"teacher {name}")
        save_params(folder / "params", result.params)
        if parallel.is_leader():
            _write_json(summary_file, {"config": cfg.to_dict(), **result.summary})
        parallel.barrier(f"ablate: teacher {name} saved")
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
    fn = _ens_fn(teacher.model, teacher.resolution)
    out = []
    for start in range(0, len(source), 500):
        chunk = stack_images(source, start, min(start + 500, len(source)))
        probs = 0.0
        for j in range(k):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), start), j)
            crops = _draw_inception(key, len(chunk), min_area)  # for the whole chunk: the same crops in any lanes
            probs = probs + map_rows(fn, chunk, np.asarray(crops.boxes), np.asarray(crops.flips),
                                     const=(teacher.params,)).astype(np.float64)
        # a float32 softmax can underflow to 0 for a very confident teacher: log(0) = -inf would make kl NaN
        out.append(np.log(np.maximum(probs / k, np.finfo(np.float32).tiny)).astype(np.float32))
    return np.concatenate(out)


_ENS_CACHE: dict = {}


def _ens_fn(model, resolution):
    key = (model, resolution)
    if key not in _ENS_CACHE:
        @jax.jit
        def fn(params, images, boxes, flips):
            return jax.nn.softmax(model.apply({"params": params},
                                              views.render(images, views.Crops(boxes, flips), resolution)))
        _ENS_CACHE[key] = fn
    return _ENS_CACHE[key]


_draw_inception = jax.jit(views.inception_crop, static_argnums=(1, 2))


def targets_key(teacher: Teacher, source_id: dict, view: str, **view_args) -> str:
    """Cache key from the teacher's parameters, the exact examples and the view: never stale."""
    return content_hash({"teacher": teacher.fingerprint, "source": source_id, "view": view,
                         "resolution": teacher.resolution, **view_args})[:24]


def source_id(source) -> dict:
    """Identify a split's content: count and a hash of its labels and images.

    A source read on demand (TFDS) has no images in memory: it is identified by
    what it reads (its `identity`); a subset of another source by that source
    and the indices it takes.
    """
    h = hashlib.sha256(np.asarray(source.labels).tobytes())
    if hasattr(source, "images"):
        h.update(np.ascontiguousarray(source.images).tobytes())
    elif hasattr(source, "parent"):  # train._Subset
        h.update(np.asarray(source.indices, np.int64).tobytes())
        h.update(content_hash(source_id(source.parent)).encode())
    elif hasattr(source, "identity"):
        h.update(content_hash(source.identity).encode())
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
    cached, problem = None, None
    if path.exists():
        cached, problem = load_targets(path)
        if cached is not None and (cached.ndim != 2 or cached.shape[0] != len(source)):
            cached, problem = None, f"shape {cached.shape}, expected ({len(source)}, classes)"
    if parallel.agree(cached is not None):  # process 0's verdict: on several hosts, all read the cache or none
        if cached is None:
            raise RuntimeError(f"process {jax.process_index()} cannot read the teacher-target cache {path} that "
                               f"process 0 read ({problem}); a multi-host run needs ABLATE_CACHE on a file system "
                               "every host sees")
        return cached
    if problem:
        log(f"teacher-target cache {path} is damaged ({problem}); recomputing it")
    if view == "ic_ens":
        logits = ensemble_logits(teacher, source, ens_crops, min_area)
    else:
        logits = predict(teacher.model, teacher.params, source, view, teacher.resolution)
    if parallel.is_leader():
        save_targets(path, logits)
    return logits


def _checksum_file(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def save_targets(path: pathlib.Path, logits: np.ndarray) -> None:
    """Write a target cache file and its SHA-256 sidecar, each atomically (array first: a crash between the
    two renames leaves a mismatch, which reads as damaged and recomputes, never as valid)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(logits), allow_pickle=False)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{os.urandom(4).hex()}"
    tmp, tmp_sum = path.with_name(f".{path.name}.{tag}.tmp"), path.with_name(f".{path.name}.sha256.{tag}.tmp")
    try:
        tmp.write_bytes(data)
        tmp_sum.write_text(hashlib.sha256(data).hexdigest() + "\n")
        tmp.replace(path)
        tmp_sum.replace(_checksum_file(path))
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)


def load_targets(path: pathlib.Path) -> tuple[np.ndarray | None, str | None]:
    """(array, None) when `path` matches its SHA-256 sidecar and parses; (None, what is wrong) otherwise."""
    import io

    try:
        data = path.read_bytes()
        expected = _checksum_file(path).read_text().strip()
    except FileNotFoundError as e:
        return None, f"{e.filename} is missing"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable: {e}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        return None, f"SHA-256 {digest[:16]}... does not match the recorded {expected[:16]}..."
    try:
        return np.load(io.BytesIO(data), allow_pickle=False), None
    except (OSError, ValueError, EOFError) as e:
        return None, f"unreadable: {e}"


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
