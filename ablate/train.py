"""The shared trainer: one jitted step (views -> teacher -> student -> loss -> update) and the loop.

The trainer knows nothing of studies, stores or W&B: it takes a config, the
data, an optional teacher (or its precomputed targets) and a checkpoint folder,
and reports each evaluation through a callback.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import pathlib
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from ablate import lanes as lanes_lib
from ablate import optim, parallel, views
from ablate.config import ConfigError, RunConfig, content_hash
from ablate.data import ArraySource, DatasetSplits, balanced_subset
from ablate.losses import LossSpec
from ablate.models import build_model
from ablate.policies import POLICIES, Policy

EVAL_CHUNK = 1000


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or parameters; carries the step."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"non-finite {reason} at step {step}")
        self.step, self.reason = step, reason


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class Frozen:
    """A frozen model: module, parameters and input resolution (a teacher, or any evaluated model)."""

    model: nn.Module
    params: Any
    resolution: int

    def apply(self, x):
        return self.model.apply({"params": self.params}, x)


# ----------------------------------------------------------------------------- data

def student_source(cfg: RunConfig, data: DatasetSplits):
    """The examples a run trains on: the full train split, or a balanced per-class subset of it."""
    if cfg.subset_per_class is None:
        return data.train
    idx = balanced_subset(data.train.labels, cfg.subset_per_class, cfg.subset_seed)
    return data.train.take(idx) if isinstance(data.train, ArraySource) else _Subset(data.train, idx)


@dataclasses.dataclass(frozen=True)
class _Subset:
    parent: Any
    indices: np.ndarray

    @property
    def labels(self):
        return self.parent.labels[self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return {**self.parent[int(self.indices[i])], "index": np.int32(i)}


def num_steps(cfg: RunConfig, n_examples: int) -> int:
    return max(1, int(cfg.epochs * n_examples) // cfg.batch_size)


class EpochOrder:
    """Which example sits at each position of a run's data stream: epoch e is a seeded permutation of the source.

    Positions run across epoch boundaries, so every example is seen equally often.
    Permutations come from numpy (seeded by `(seed, epoch)`) and are cached, so a
    batch of indices is one slice: grain's per-element index shuffle was the
    slowest part of the input pipeline on small subsets (benchmarks/bench_input.py).
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            if len(self._cache) > 4:  # a run reads epochs in order: keep only the recent ones
                self._cache.pop(min(self._cache))
            self._cache[e] = np.random.default_rng([self.seed, e]).permutation(self.size)
        return self._cache[e]

    def take(self, start: int, count: int) -> np.ndarray:
        """Indices at positions [start, start + count)."""
        out, pos = [], start
        while pos < start + count:
            e, i = divmod(pos, self.size)
            part = self.epoch(e)[i:i + start + count - pos]
            out.append(part)
            pos += len(part)
        return np.concatenate(out) if len(out) > 1 else out[0]


def batches(source, cfg: RunConfig, total_steps: int, rows: slice = slice(None)) -> grain.MapDataset:
    """Random-access batches: batch k is the same for a given seed however the run got to step k.

    Each epoch is a fresh seeded shuffle of the source (`EpochOrder`); `rows`
    selects the part of every global batch this process loads (data
    parallelism over hosts).
    """
    if cfg.batch_size > len(source):
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {len(source)} training examples")
    order = EpochOrder(len(source), cfg.seed)
    indices = grain.MapDataset.range(total_steps).map(
        lambda k: order.take(k * cfg.batch_size, cfg.batch_size)[rows])
    if hasattr(source, "gather"):  # in-memory arrays: gather whole batches by index
        return indices.map(source.gather)
    return indices.map(lambda idx: {k: np.stack([source[int(i)][k] for i in idx]) for k in ("image", "label", "index")})


# ----------------------------------------------------------------------------- the step

def make_inputs(policy: Policy, cfg: RunConfig, images, labels, key, s_res: int, t_res: int):
    """Render one batch for both models: (student input, teacher input or None, soft labels, mixup coef)."""
    kv, km = jax.random.split(key)
    s_crops, t_crops = policy.draw(kv, images.shape[0], cfg)
    xs = views.render(images, s_crops, s_res)
    xt = None
    if t_crops is not None:
        same = t_crops is s_crops and t_res == s_res
        xt = xs if same else views.render(images, t_crops, t_res)
    coef = jnp.float32(1.0)
    if policy.mixup:
        coef = views.mixup_coefficient(km, cfg.mixup_p)
        xs, labels = views.mix(xs, coef), views.mix(labels, coef)
        xt = None if xt is None else views.mix(xt, coef)
    return xs, xt, labels, coef


MEMBER_FIELDS = ("model", "loss", "temperature", "label_smoothing", "lr", "wd", "warmup_frac", "optimizer", "clip",
                 "init", "init_seed")
"""Config fields only the student side reads. Runs that differ in nothing else see identical inputs at every step."""


def shared_inputs(cfg: RunConfig) -> str:
    """Equal for runs that can train as one cohort: same data order, views, mixup and teacher outputs at every step."""
    canonical = RunConfig.from_dict(cfg.to_dict()).to_dict()  # ints given for float fields become floats
    return content_hash({k: v for k, v in canonical.items() if k not in MEMBER_FIELDS})


def cohort_key(cfg: RunConfig) -> str | None:
    """Equal for runs worth training as one cohort; None for a run that trains alone.

    Only policies that run the teacher during training form cohorts: sharing its
    forward pass is what pays (benchmarks/bench_seeds.py: 1.4-1.8x for 4 funmatch
    students, ~1.0x for fixed-teacher ones).
    """
    return shared_inputs(cfg) if POLICIES.get(cfg.policy).runs_teacher else None


def _cohort_parts(cfgs: list[RunConfig], students: list[nn.Module], teacher: nn.Module | None,
                  optimizers: list[optax.GradientTransformation], num_classes: int, s_res: int, t_res: int):
    """A cohort's step in three pure parts: `inputs` (views, mixup, fixed targets) of a whole batch; `grads`,
    each member's loss and gradient on some of its rows (after the teacher's forward on them), the loss a
    batch mean times `scale`; `update`, each member's update from the sum of its rows' gradients."""
    if len({shared_inputs(c) for c in cfgs}) != 1:
        raise ValueError(f"a cohort's runs may differ only in {', '.join(MEMBER_FIELDS)}")
    policy = POLICIES.get(cfgs[0].policy)
    members = [(student, LossSpec.parse(c.loss), dict(temperature=c.temperature, label_smoothing=c.label_smoothing),
                optimizer) for c, student, optimizer in zip(cfgs, students, optimizers, strict=True)]

    def inputs(targets, batch, key):
        labels = jax.nn.one_hot(batch["label"], num_classes)
        xs, xt, labels, _ = make_inputs(policy, cfgs[0], batch["image"], labels, key, s_res, t_res)
        zt = targets[batch["index"]] if policy.fixed_view is not None else None
        return xs, xt, labels, zt

    def grads(params, teacher_params, xs, xt, labels, zt, scale: float = 1.0):
        if policy.runs_teacher:
            zt = jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, xt))
        elif zt is None:
            zt = jnp.zeros_like(labels)  # label-only losses never read it
        out = []
        for p, (student, spec, hp, _) in zip(params, members):
            def loss_fn(p, student=student, spec=spec, hp=hp):
                loss = jnp.mean(spec(student.apply({"params": p}, xs), zt, labels, **hp))
                return loss if scale == 1.0 else loss * scale
            out.append(jax.value_and_grad(loss_fn)(p))
        return tuple(out)

    def update(states, parts):  # parts: per lane (rows), per member, (loss, grads)
        new_states, losses = [], []
        for j, (state, (_, _, _, optimizer)) in enumerate(zip(states, members)):
            loss = functools.reduce(operator.add, [lane[j][0] for lane in parts])
            g = jax.tree.map(lambda *a: functools.reduce(operator.add, a), *[lane[j][1] for lane in parts])
            updates, opt_state = optimizer.update(g, state.opt_state, state.params)
            new_states.append(TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1))
            losses.append(loss)
        return tuple(new_states), jnp.stack(losses)

    return inputs, grads, update


def make_cohort_step(cfgs: list[RunConfig], students: list[nn.Module], teacher: nn.Module | None,
                     optimizers: list[optax.GradientTransformation], num_classes: int, s_res: int, t_res: int):
    """The pure step of a cohort, `(states, teacher_params, targets, batch, key) -> (states, losses)`.

    The views, mixup and the teacher's forward pass are computed once and serve
    every member (runs with one `shared_inputs`); each member then takes its own
    loss, gradient and update. Members are unrolled, not vmapped: they may be
    different models, and on CPU a vmapped convolution becomes a slow grouped
    one (benchmarks/bench_seeds.py).
    """
    inputs, grads, update = _cohort_parts(cfgs, students, teacher, optimizers, num_classes, s_res, t_res)

    def step(states, teacher_params, targets, batch, key):
        xs, xt, labels, zt = inputs(targets, batch, key)
        return update(states, [grads(tuple(s.params for s in states), teacher_params, xs, xt, labels, zt)])

    return step


def make_lane_step(cfgs: list[RunConfig], students: list[nn.Module], teacher: nn.Module | None,
                   optimizers: list[optax.GradientTransformation], num_classes: int, s_res: int, t_res: int,
                   lanes: int):
    """`make_cohort_step`'s step, compiled, with each batch's rows split over `lanes` threads (ablate/lanes.py).

    Three programs: the inputs of the whole batch (views and mixup need all of
    it), each lane's teacher forward, loss and gradient on its rows (one program,
    run by every lane at once), and the update from the lanes' summed gradients,
    which takes over (donates) the states.
    """
    inputs, grads, update = _cohort_parts(cfgs, students, teacher, optimizers, num_classes, s_res, t_res)
    split = jax.jit(lambda *a: tuple(None if x is None else tuple(jnp.split(x, lanes)) for x in inputs(*a)))
    lane_grads = jax.jit(functools.partial(grads, scale=1.0 / lanes))
    apply = jax.jit(update, donate_argnums=(0,))

    def step(states, teacher_params, targets, batch, key):
        xs, xt, labels, zt = split(targets, batch, key)
        params = tuple(s.params for s in states)
        rows = [(xs[k], None if xt is None else xt[k], labels[k], None if zt is None else zt[k]) for k in range(lanes)]
        parts = lanes_lib.run(lane_grads, [(params, teacher_params, *r) for r in rows])
        return apply(states, parts)

    return step


def compile_cohort_step(cfgs, students, teacher, optimizers, num_classes: int, s_res: int, t_res: int, lanes: int):
    """The cohort's step ready to call: in lanes where `lanes` > 1, else one jitted program donating the states."""
    if lanes > 1:
        return make_lane_step(cfgs, students, teacher, optimizers, num_classes, s_res, t_res, lanes)
    return jax.jit(make_cohort_step(cfgs, students, teacher, optimizers, num_classes, s_res, t_res),
                   donate_argnums=(0,))


def make_train_step(cfg: RunConfig, student: nn.Module, teacher: nn.Module | None,
                    optimizer: optax.GradientTransformation, num_classes: int, s_res: int, t_res: int):
    """The pure training step of one run, `(state, teacher_params, targets, batch, key) -> (state, loss)`."""
    return one_run(make_cohort_step([cfg], [student], teacher, [optimizer], num_classes, s_res, t_res))


def one_run(cohort_step):
    """A one-member cohort's step with one run's signature, `(state, ...) -> (state, loss)`."""
    def step(state: TrainState, teacher_params, targets, batch, key):
        (state,), losses = cohort_step((state,), teacher_params, targets, batch, key)
        return state, losses[0]

    return step


# ----------------------------------------------------------------------------- evaluation

def predict(model: nn.Module, params, source, view: str, resolution: int) -> np.ndarray:
    """Logits of a model on every record of `source`, rendered through a deterministic view.

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


_PREDICT_CACHE: dict = {}


def _predict_fn(model, view, resolution):
    key = (model, view, resolution)
    if key not in _PREDICT_CACHE:
        draw = views.VIEWS[view]

        @jax.jit
        def fn(params, images):
            crops = draw(jax.random.key(0), images.shape[0])
            return model.apply({"params": params}, views.render(images, crops, resolution))

        _PREDICT_CACHE[key] = fn
    return _PREDICT_CACHE[key]


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
def _all_finite(tree) -> jax.Array:
    """Whether every parameter is finite: one compiled program per parameter structure, run where they live."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def eval_metrics(student_logits: np.ndarray, teacher_logits: np.ndarray | None,
                 labels: np.ndarray, prefix: str) -> dict[str, float]:
    """Student top-1, and teacher-student top-1/top-5 agreement and KL (T=1) on a clean view."""
    m = {f"{prefix}/acc": float(np.mean(student_logits.argmax(-1) == labels))}
    if teacher_logits is not None:
        t_top = teacher_logits.argmax(-1)
        top5 = np.argsort(-student_logits, axis=-1)[:, :5]
        log_pt, log_ps = _log_softmax(teacher_logits), _log_softmax(student_logits)
        m[f"{prefix}/agree_top1"] = float(np.mean(student_logits.argmax(-1) == t_top))
        m[f"{prefix}/agree_top5"] = float(np.mean((top5 == t_top[:, None]).any(-1)))
        m[f"{prefix}/kl"] = float(np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), -1)))
    return m


# ----------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class RunResult:
    history: list[dict]
    summary: dict
    params: Any


@dataclasses.dataclass
class Member:
    """One run of a cohort: its config, its starting parameters, its checkpoint folder and whom it reports to."""

    cfg: RunConfig
    init_params: Any = None
    ckpt_dir: pathlib.Path | None = None
    on_eval: Callable[[dict], None] | None = None
    on_resume: Callable[[int], None] | None = None


def train(cfg: RunConfig, data: DatasetSplits, *, teacher: Frozen | None = None,
          targets: np.ndarray | None = None, eval_teacher: dict[str, np.ndarray] | None = None,
          init_params: Any = None, ckpt_dir: pathlib.Path | None = None,
          on_eval: Callable[[dict], None] | None = None, on_resume: Callable[[int], None] | None = None,
          progress: bool = True, desc: str = "") -> RunResult:
    """Train one run to the end of its schedule, evaluating `cfg.num_evals` times (and at step 0).

    `targets` are the fixed teacher's logits for every training example (fixed
    policies), `eval_teacher` the teacher's logits on the clean val/test views.
    With `ckpt_dir`, state is saved at every evaluation and restored on start.
    Raises NonFiniteError when the loss or the parameters stop being finite.
    """
    (result,) = train_cohort([Member(cfg, init_params, ckpt_dir, on_eval, on_resume)], data, teacher=teacher,
                             targets=targets, eval_teacher=eval_teacher, progress=progress, desc=desc)
    if isinstance(result, NonFiniteError):
        raise result
    return result


def train_cohort(members: list[Member], data: DatasetSplits, *, teacher: Frozen | None = None,
                 targets: np.ndarray | None = None, eval_teacher: dict[str, np.ndarray] | None = None,
                 progress: bool = True, desc: str = "") -> list[RunResult | NonFiniteError]:
    """Train runs that share their inputs (one `shared_inputs`) together: one data stream and one teacher forward.

    Each member evaluates, checkpoints and reports exactly as it would alone
    (`train`). A member whose loss or parameters stop being finite gets its
    NonFiniteError in the returned list and the others go on (the one program
    still computes its update; nothing of it is logged). Members resume from
    their checkpoints only together, from one step (ValueError otherwise).
    """
    cfgs = [m.cfg for m in members]
    cfg = cfgs[0]
    policy = POLICIES.get(cfg.policy)
    source = student_source(cfg, data)
    total = num_steps(cfg, len(source))
    s_res = cfg.resolution or data.default_resolution
    t_res = teacher.resolution if teacher is not None else s_res
    students = [build_model(c.model, data.num_classes) for c in cfgs]
    dummy = jnp.zeros((1, s_res, s_res, data.image_shape[2]))
    # jitted: one compiled program per model instead of one per eager op and shape (same values, bit for bit)
    inits = {c.model: jax.jit(s.init) for c, s in zip(cfgs, students)}
    params = [m.init_params if m.init_params is not None
              else inits[m.cfg.model](jax.random.key(m.cfg.student_seed), dummy)["params"] for m in members]
    optimizers = [optim.paper_optimizer(c.lr, c.wd, total, round(c.warmup_frac * total), c.clip, name=c.optimizer)
                  for c in cfgs]
    dp = parallel.DataParallel()
    if cfg.batch_size % dp.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {dp.size} devices")
    ds = batches(source, cfg, total, dp.local_rows(cfg.batch_size))
    states = dp.replicate(tuple(TrainState(p, jax.jit(o.init)(p), jnp.int32(0)) for p, o in zip(params, optimizers)))
    step_fn = compile_cohort_step(cfgs, students, teacher.model if teacher else None, optimizers, data.num_classes,
                                  s_res, t_res, lanes_lib.count(cfg.batch_size))
    t_params = dp.replicate(teacher.params) if (teacher is not None and policy.runs_teacher) else None
    targets = None if targets is None else dp.replicate(jnp.asarray(targets))
    if policy.fixed_view is not None and targets is None:
        raise ValueError(f"policy {cfg.policy} needs the fixed teacher's targets")
    base_key = jax.random.key(cfg.seed)
    eval_steps = sorted({0, *(round(total * (i + 1) / cfg.num_evals) for i in range(cfg.num_evals))})

    trackers = [{"best_val": -1.0, "best": {}, "last": {}, "loss_sum": 0.0, "loss_count": 0} for _ in members]
    histories: list[list[dict]] = [[] for _ in members]
    errors: list[NonFiniteError | None] = [None for _ in members]
    managers = [None if m.ckpt_dir is None else _checkpoint_manager(m.ckpt_dir) for m in members]
    states, starts = _restore_all(members, managers, states, trackers)
    start = starts[0]

    def evaluate(j: int, step: int, params) -> None:
        tracker = trackers[j]
        row = {"step": step, "epoch": step * cfg.batch_size / len(source), "time/train_s": tracker["train_s"]}
        if tracker["loss_count"]:
            row["train/loss"] = tracker["loss_sum"] / tracker["loss_count"]
        tracker["loss_sum"], tracker["loss_count"] = 0.0, 0
        for split in ("val", "test"):
            src = getattr(data, split)
            logits = predict(students[j], params, src, data.eval_view, s_res)
            zt = None if eval_teacher is None else eval_teacher[split]
            row.update(eval_metrics(logits, zt, np.asarray(src.labels), split))
        tracker["last"] = dict(row)
        if row["val/acc"] > tracker["best_val"]:
            tracker["best_val"] = row["val/acc"]
            tracker["best"] = dict(row)
        histories[j].append(row)
        members[j].on_eval and members[j].on_eval(row)

    def evaluate_all(step: int) -> None:
        now = time.perf_counter()
        for tracker in trackers:  # wall time counted into tracker["train_s"] (survives resumes)
            tracker["train_s"] = tracker.get("train_s", 0.0) + now - clock[0]
        clock[0] = now
        for j in alive():
            if step and not bool(_all_finite(states[j].params)):
                errors[j] = NonFiniteError(step, "parameters")
                continue
            evaluate(j, step, states[j].params)
            if managers[j] is not None and step:
                _save(managers[j], step, states[j], trackers[j])
        if alive():
            bar.set_postfix(val=",".join(f"{trackers[j]['last']['val/acc']:.3f}" for j in alive()))

    def alive() -> list[int]:
        return [j for j, e in enumerate(errors) if e is None]

    bar = tqdm(total=total, initial=start, desc=desc or cfg.policy, disable=not progress,
               unit="step", dynamic_ncols=True, leave=False)
    pending: list[tuple[int, jax.Array]] = []
    clock = [time.perf_counter()]

    def drain():
        if not pending:
            return
        losses = np.stack(jax.device_get([l for _, l in pending]))  # (steps, members)
        for j in alive():
            bad = ~np.isfinite(losses[:, j])
            if bad.any():
                errors[j] = NonFiniteError(pending[int(np.argmax(bad))][0], "loss")
            else:
                trackers[j]["loss_sum"] += float(losses[:, j].sum())
                trackers[j]["loss_count"] += len(losses)
        pending.clear()

    try:
        if start == 0 and 0 in eval_steps:
            evaluate_all(0)
        for step in range(start, total):
            batch = dp.shard(ds[step])
            states, losses = step_fn(states, t_params, targets, batch, jax.random.fold_in(base_key, step))
            pending.append((step, losses))
            if len(pending) >= 25 or step + 1 in eval_steps:
                drain()
                bar.update(step + 1 - bar.n)
            if step + 1 in eval_steps:
                evaluate_all(step + 1)
            if not alive():
                break
    finally:
        bar.close()
        for manager in managers:
            if manager is not None:
                manager.wait_until_finished()
                manager.close()

    results: list[RunResult | NonFiniteError] = []
    for j, tracker in enumerate(trackers):
        summary = {**{f"best/{k}": v for k, v in tracker["best"].items()},
                   **{f"last/{k}": v for k, v in tracker["last"].items()},
                   "total_steps": total, "train_examples": len(source)}
        results.append(errors[j] or RunResult(histories[j], summary, states[j].params))
    return results


def _restore_all(members, managers, states, trackers):
    """Each member's state and tracker from its checkpoint (a damaged one is reported and discarded); one start step."""
    states, starts = list(states), []
    for j, (member, manager) in enumerate(zip(members, managers)):
        start = 0
        if manager is not None and manager.latest_step() is not None:
            try:
                states[j], trackers[j] = _restore(manager, states[j], trackers[j])
            except Exception as e:  # noqa: BLE001 - a truncated or corrupted checkpoint: report, discard, start afresh
                managers[j] = _discard_checkpoint(manager, member.ckpt_dir, e)
            else:
                start = int(states[j].step)
            member.on_resume and member.on_resume(start)
        starts.append(start)
    if len(set(starts)) > 1:
        for manager in managers:
            if manager is not None:
                manager.close()
        raise ValueError(f"a cohort's runs must resume from one step, but their checkpoints are at steps {starts}; "
                         "resume them one by one")
    return tuple(states), starts


def _checkpoint_manager(ckpt_dir: pathlib.Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(pathlib.Path(ckpt_dir).absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def _save(manager, step, state, tracker):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               tracker=ocp.args.JsonSave(tracker)))


def _restore(manager, state, tracker):
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), tracker=ocp.args.JsonRestore()))
    return restored["state"], restored["tracker"]


def _discard_checkpoint(manager, ckpt_dir, error):
    """Report a checkpoint that cannot be restored (with its path), delete it, and return a fresh manager."""
    import shutil
    import sys

    step = manager.latest_step()
    reason = " ".join(str(error).split())[:300]
    if parallel.is_leader():
        print(f"warning: checkpoint {pathlib.Path(ckpt_dir) / str(step)} is damaged ({type(error).__name__}: "
              f"{reason}); discarding it and restarting the run from scratch", file=sys.stderr)
    try:
        manager.close()
    except Exception:  # noqa: BLE001
        pass
    if parallel.is_leader():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    parallel.barrier("ablate: damaged checkpoint discarded")
    return _checkpoint_manager(ckpt_dir)


def save_params(path: pathlib.Path, params) -> None:
    """Save a parameter tree with orbax, waiting until it is committed."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(pathlib.Path(path).absolute(), params, force=True)


def load_params(path: pathlib.Path, template):
    """Restore a parameter tree saved by `save_params`, shaped like `template`, replicated over every device."""
    replicated = parallel.DataParallel().replicated  # on several hosts: each restores its own devices' copies
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(pathlib.Path(path).absolute(), template)
