"""Evaluation: when a run evaluates, a model's logits on every record of a split through a deterministic view,
and the metrics."""

from __future__ import annotations

import collections
import dataclasses
import functools
import weakref
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ablate import lanes as lanes_lib
from ablate import parallel, step, views, xla_flags
from ablate.config import EVAL_SPACINGS
from ablate.data import ArraySource
from ablate.models import params_fingerprint

EVAL_CHUNK = 1000


@dataclasses.dataclass(frozen=True)
class Frozen:
    """A frozen model: module, parameters and input resolution (a teacher, or any evaluated model)."""

    model: nn.Module
    params: Any
    resolution: int

    def apply(self, x):
        return self.model.apply({"params": self.params}, x)


def evaluation_steps(total: int, num_evals: int, spacing: str = "linear") -> list[int]:
    """The steps a run of `total` steps evaluates at: step 0, then `num_evals` points ending at `total`.

    "linear" spaces them evenly (total * i / num_evals); "log" log-uniformly
    (total ** (i / num_evals), i = 1..num_evals: from a first step of
    total ** (1 / num_evals) to the last), so that a schedule's early steps,
    where a log axis spends most of its width, are sampled too. Rounded to
    whole steps and deduplicated: short schedules get fewer points.
    """
    if spacing not in EVAL_SPACINGS:
        raise ValueError(f"unknown eval spacing {spacing!r}; valid: {', '.join(EVAL_SPACINGS)}")
    fractions = [(i + 1) / num_evals for i in range(num_evals)]
    if spacing == "linear":
        points = [round(total * f) for f in fractions]
    else:
        points = [max(1, round(total ** f)) for f in fractions]
    return sorted({0, total, *points})


def predict(model: nn.Module, params, source, view: str, resolution: int) -> np.ndarray:
    """Logits of a model on every record of `source`, rendered through a deterministic view.

    An in-memory split on one device is evaluated by one compiled program,
    the split resident on the device (`predict_split`); a split read on
    demand, or several devices or hosts, go chunk by chunk (`predict_chunked`).
    """
    if isinstance(source, ArraySource) and len(source) and jax.device_count() == 1:
        return predict_split(model, params, source, view, resolution)
    return predict_chunked(model, params, source, view, resolution)


_AT_START: collections.OrderedDict = collections.OrderedDict()
STARTS_KEPT = 16


def predict_at_start(model: nn.Module, params, source, view: str, resolution: int) -> np.ndarray:
    """`predict` for a run's starting parameters, remembered for the process (the last `STARTS_KEPT`): a study's
    cells that start from the same parameters (one model, one initialisation seed) evaluate step 0 once. Keyed
    by the parameters' content, so what is reused is the same computation's result."""
    if jax.process_count() > 1:  # parameters spread over hosts: not fingerprinted here
        return predict(model, params, source, view, resolution)
    key = (model, params_fingerprint(params), id(source), view, resolution)
    if key not in _AT_START:
        _AT_START[key] = predict(model, params, source, view, resolution)
        weakref.finalize(source, _AT_START.pop, key, None)
        while len(_AT_START) > STARTS_KEPT:
            _AT_START.popitem(last=False)
    _AT_START.move_to_end(key)
    return _AT_START[key]


def predict_split(model: nn.Module, params, source: ArraySource, view: str, resolution: int) -> np.ndarray:
    """`predict` as one jitted call over the whole split (per lane on a few CPU cores, ablate/lanes.py).

    The split stays on the device between calls (`device_split`), so each
    evaluation sends only the parameters; the program maps the model over
    fixed-size chunks (`lax.map`), so memory stays bounded for big splits.
    """
    fn = _split_fn(model, view, resolution)
    outs = lanes_lib.run(fn, [(params, part) for part in device_split(source)])
    return np.concatenate([np.asarray(o).reshape(-1, o.shape[-1]) for o in outs])[:len(source)]


_DEVICE_SPLITS: dict = {}


def device_split(source: ArraySource) -> list[jax.Array]:
    """The split's images on the device, once per process: one (chunks, chunk, H, W, C) array per lane.

    The split, padded at its end with zero images, is cut into L equal blocks
    of rows, lane k taking the k-th, each a whole number of chunks of at most
    EVAL_CHUNK / L rows. Kept per source object (and lanes), and dropped with it.
    """
    n = len(source)
    lanes = lanes_lib.count(n + -n % xla_flags.lanes_in_effect)
    key = (id(source), lanes)
    if key not in _DEVICE_SPLITS:
        per_lane = -(-n // lanes)
        chunks = -(-per_lane // max(1, EVAL_CHUNK // lanes))
        chunk = -(-per_lane // chunks)  # as even as possible: little padding
        images = np.zeros((lanes * chunks * chunk, *source.images.shape[1:]), source.images.dtype)
        images[:n] = source.images
        parts = images.reshape(lanes, chunks, chunk, *images.shape[1:])
        _DEVICE_SPLITS[key] = [jax.device_put(part) for part in parts]
        weakref.finalize(source, _DEVICE_SPLITS.pop, key, None)
    return _DEVICE_SPLITS[key]


def predict_chunked(model: nn.Module, params, source, view: str, resolution: int) -> np.ndarray:
    """`predict` chunk by chunk from the host: for splits read on demand and for several devices or hosts.

    Each chunk of records is split over every device of every host (padded to
    a multiple of their number): each host loads only its rows, and the logits
    are gathered back on every host. On one CPU device it is split over lanes.
    """
    fn = _predict_fn(model, view, resolution)
    dp = parallel.DataParallel()
    out = []
    for start in range(0, len(source), EVAL_CHUNK):
        n = min(EVAL_CHUNK, len(source) - start)
        if dp.size == 1:  # one device: the chunk's rows split over lanes where there are several (ablate/lanes.py)
            out.append(lanes_lib.map_rows(fn, stack_images(source, start, start + n), const=(params,)))
            continue
        rows = dp.local_rows(n + -n % dp.size)
        images = stack_images(source, start + min(rows.start, n), start + min(rows.stop, n))
        images = np.pad(images, [(0, rows.stop - rows.start - len(images))] + [(0, 0)] * (images.ndim - 1))
        logits = fn(params, dp.shard({"image": images})["image"])
        out.append(dp.gather(logits)[:n])
    return np.concatenate(out)


def _logits_fn(model, view, resolution):
    """The model's logits on a batch of uint8 images through a deterministic view (not jitted)."""
    draw = views.VIEWS[view]

    def logits(params, images):
        crops = draw(jax.random.key(0), images.shape[0])
        return model.apply({"params": params}, views.render(images, crops, resolution))

    return logits


@functools.cache
def _predict_fn(model, view, resolution):
    return jax.jit(_logits_fn(model, view, resolution))


@functools.cache
def _split_fn(model, view, resolution):
    """One program per split shape: the logits of every chunk, one after another on the device."""
    logits = _logits_fn(model, view, resolution)
    return jax.jit(lambda params, chunks: jax.lax.map(lambda images: logits(params, images), chunks))


def stack_images(source, start, stop) -> np.ndarray:
    """Images of records [start, stop) of a source as one uint8 array (a slice for in-memory sources)."""
    if isinstance(source, ArraySource):
        return source.images[start:stop]
    if stop <= start:  # a host whose rows of a short last chunk are all padding
        return np.zeros((0, *np.shape(source[0]["image"])), np.uint8)
    return np.stack([source[i]["image"] for i in range(start, stop)])


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, in numpy: host-side metrics need no compiled program per shape."""
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every parameter is finite: one compiled program per parameter structure, run where they live."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def ensemble_logits(teacher_logits) -> np.ndarray:
    """The training step's ensemble of several teachers (`ablate.step.ensemble_logits`) on host logits, as numpy."""
    return np.asarray(step.ensemble_logits([jnp.asarray(z, jnp.float32) for z in teacher_logits]))


def eval_metrics(student_logits: np.ndarray, teacher_logits: np.ndarray | Mapping[str, np.ndarray] | None,
                 labels: np.ndarray, prefix: str) -> dict[str, float]:
    """Student top-1, and teacher-student top-1/top-5 agreement and KL (T=1) on a clean view.

    `teacher_logits` of several teachers ({name: logits}): the agreement and KL with each, named
    `<prefix>/agree_top1/<name>` and so on, and with their ensemble (`ensemble_logits`) under the one-teacher
    names (`<prefix>/agree_top1`, ...), which reports and findings read.
    """
    m = {f"{prefix}/acc": float(np.mean(student_logits.argmax(-1) == labels))}
    if isinstance(teacher_logits, Mapping):
        for name, z in teacher_logits.items():
            m.update({f"{k}/{name}": v for k, v in _agreement(student_logits, z, prefix).items()})
        teacher_logits = ensemble_logits(list(teacher_logits.values()))
    if teacher_logits is not None:
        m.update(_agreement(student_logits, teacher_logits, prefix))
    return m


def _agreement(student_logits: np.ndarray, teacher_logits: np.ndarray, prefix: str) -> dict[str, float]:
    """Teacher-student top-1/top-5 agreement and KL(teacher || student) at T = 1."""
    t_top = teacher_logits.argmax(-1)
    top5 = np.argsort(-student_logits, axis=-1)[:, :5]
    log_pt, log_ps = _log_softmax(teacher_logits), _log_softmax(student_logits)
    return {f"{prefix}/agree_top1": float(np.mean(student_logits.argmax(-1) == t_top)),
            f"{prefix}/agree_top5": float(np.mean((top5 == t_top[:, None]).any(-1))),
            f"{prefix}/kl": float(np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), -1)))}


