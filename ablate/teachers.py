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
from ablate.checkpoint import load_params, save_params
from ablate.config import RunConfig, content_hash
from ablate.data import DatasetSplits, load_dataset
from ablate.evaluate import Frozen, predict, stack_images
from ablate.lanes import map_rows
from ablate.models import build_model, params_fingerprint  # noqa: F401  (re-exported)
from ablate.stream import student_source
from ablate.teacher_registry import (BIT_DIR_ENV, NPZ_FORMAT, NPZ_PREFIX, PAPER_TEACHERS,  # noqa: F401
                                     TEACHERS, CheckpointTeacher, NamedTeacher, bit_dir, parse_npz_name,
                                     register_checkpoint_teacher, register_teacher, teacher_config,
                                     teacher_dir)
from ablate.train import train


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


@dataclasses.dataclass(frozen=True)
class Teacher(Frozen):
    name: str = ""
    fingerprint: str = ""  # SHA-256 of the parameters: keys every cache derived from this teacher
    summary: dict = dataclasses.field(default_factory=dict)


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
            crops = _draw_inception(key, chunk.shape, min_area)  # for the whole chunk: the same crops in any lanes
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
    """Cache key from the teacher's definition and parameters, the exact examples and the view: never stale.

    The definition (the module's class and attributes, e.g. GroupNorm groups) is part of the key because the same
    parameter tree can fit several architectures that compute different logits from it.
    """
    return content_hash({"teacher": teacher.fingerprint, "model": model_identity(teacher.model),
                         "source": source_id, "view": view,
                         "resolution": teacher.resolution, **view_args})[:24]


def model_identity(model) -> str:
    """A model's definition as text: its class and every attribute (flax modules print them in a fixed order)."""
    return f"{type(model).__module__}.{type(model).__qualname__}:{model!r}"


def source_id(source) -> dict:
    """Identify a split's content: count and a hash of its labels and images.

    A source read on demand (TFDS) has no images in memory: it is identified by
    what it reads (its `identity`); a subset of another source by that source
    and the indices it takes.
    """
    h = hashlib.sha256(np.asarray(source.labels).tobytes())
    if hasattr(source, "images"):
        h.update(np.ascontiguousarray(source.images).tobytes())
    elif hasattr(source, "parent"):  # stream._Subset
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
    extra = {"k": ens_crops, "min_area": min_area, "sampler": views.IC_SAMPLER} if view == "ic_ens" else {}
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


def run_inputs(cfg: RunConfig, data: DatasetSplits, teacher: Teacher | tuple[Teacher, ...] | None, log=print):
    """What a run needs from its teacher: fixed targets for its policy and logits on the clean val/test views.

    Several teachers (a tuple): the targets are a tuple, one per teacher, each cached under its own teacher's
    key (so a run with several teachers reuses each one's cache entries, and they combine after the lookup),
    and each split's logits are {teacher name: logits}.
    """
    if teacher is None:
        return None, None
    if isinstance(teacher, (tuple, list)):
        each = [run_inputs(cfg, data, t, log=log) for t in teacher]
        targets = None if each[0][0] is None else tuple(t for t, _ in each)
        return targets, {s: {t.name: ev[s] for t, (_, ev) in zip(teacher, each)} for s in ("val", "test")}
    from ablate.policies import POLICIES

    policy = POLICIES.get(cfg.policy)
    targets = None
    if policy.fixed_view is not None:
        targets = teacher_logits(teacher, student_source(cfg, data), policy.fixed_view,
                                 ens_crops=cfg.ens_crops, min_area=cfg.ic_min_area, log=log)
    eval_teacher = {s: teacher_logits(teacher, getattr(data, s), data.eval_view, log=log) for s in ("val", "test")}
    return targets, eval_teacher


def teacher_summary(teacher: Teacher | tuple[Teacher, ...], eval_teacher: dict, data: DatasetSplits) -> dict:
    """A run's record of its teacher(s): `teacher/{val,test}/acc` of the teacher, or of several teachers'
    ensemble (mean probabilities, on the clean view), besides `teacher/<name>/{val,test}/acc` of each."""
    from ablate.evaluate import ensemble_logits

    if not isinstance(teacher, (tuple, list)):
        return {f"teacher/{s}/acc": teacher.summary.get(f"last/{s}/acc") for s in ("test", "val")}
    out = {f"teacher/{t.name}/{s}/acc": t.summary.get(f"last/{s}/acc") for t in teacher for s in ("test", "val")}
    for s in ("test", "val"):
        ensemble = ensemble_logits(list(eval_teacher[s].values()))
        out[f"teacher/{s}/acc"] = float(np.mean(ensemble.argmax(-1) == np.asarray(getattr(data, s).labels)))
    return out
