"""The trainer's loop: one run, or a cohort of runs that share their inputs, to the end of its schedule.

The trainer knows nothing of studies, stores or W&B: it takes a config, the
data, an optional teacher (or its precomputed targets) and checkpoint folders,
and reports each evaluation through a callback. The step is in `ablate.step`,
the data stream in `ablate.stream`, evaluation in `ablate.evaluate` and
checkpoints in `ablate.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ablate import checkpoint, optim, parallel
from ablate import lanes as lanes_lib
from ablate.config import ConfigError, RunConfig, num_steps
from ablate.data import ArraySource, DatasetSplits
from ablate.evaluate import Frozen, all_finite, eval_metrics, evaluation_steps, predict, predict_at_start
from ablate.losses import LossSpec
from ablate.models import build_model
from ablate.policies import POLICIES
from ablate.step import (SEED_FIELDS, Resident, TrainState, accumulate, compile_cohort_step, compile_multi_step,
                         loss_width, no_losses, seed_key, several, shared_inputs)
from ablate.stream import batches, order_key, student_source

accumulate_step = jax.jit(accumulate)  # the per-step loop's bookkeeping, as the multi-step program does it


@functools.cache
def init_fn(model):
    """The model's `init`, jitted once per model for the process: one compiled program instead of one per eager op
    and shape (the same values, bit for bit), traced once however many runs start from it."""
    return jax.jit(model.init)


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or parameters; carries the step."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"non-finite {reason} at step {step}")
        self.step, self.reason = step, reason



def teacher_side(teacher, attr: str):
    """One teacher's `attr` (model, params, resolution), or a tuple of several teachers' (one per teacher)."""
    return tuple(getattr(t, attr) for t in teacher) if several(teacher) else getattr(teacher, attr)


def teacher_labels(teacher) -> tuple[str, ...]:
    """The names several teachers' losses are logged under (train/loss/<name>): each one's name, else teacher<k>."""
    return tuple(getattr(t, "name", "") or f"teacher{k}" for k, t in enumerate(teacher))


def add_losses(tracker: dict, sums, steps: int) -> None:
    """Add a block's summed losses of one member (its objective, or a row: objective, then each teacher's)."""
    sums = np.atleast_1d(sums)
    tracker["loss_sum"] += float(sums[0])
    tracker["loss_count"] += steps
    if len(sums) > 1:
        tracker["teacher_loss_sums"] = [a + float(b) for a, b in zip(tracker["teacher_loss_sums"], sums[1:])]


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


def train(cfg: RunConfig, data: DatasetSplits, *, teacher: Frozen | tuple[Frozen, ...] | None = None,
          targets: np.ndarray | tuple[np.ndarray, ...] | None = None, eval_teacher: dict | None = None,
          init_params: Any = None, ckpt_dir: pathlib.Path | None = None,
          on_eval: Callable[[dict], None] | None = None, on_resume: Callable[[int], None] | None = None,
          progress: bool = True, desc: str = "", use_multi_step: bool | None = None) -> RunResult:
    """Train one run to the end of its schedule, evaluating `cfg.num_evals` times (and at step 0).

    `targets` are the fixed teacher's logits for every training example (fixed
    policies), `eval_teacher` the teacher's logits on the clean val/test views.
    Several teachers: `teacher` and `targets` are tuples, one per teacher, and
    `eval_teacher` maps each split to {teacher name: logits} (`ablate.teachers.run_inputs`).
    With `ckpt_dir`, state is saved at every evaluation and restored on start.
    Raises NonFiniteError when the loss or the parameters stop being finite.
    `use_multi_step`: the steps between evaluations in one program (True), one
    dispatch a step (False), or whichever `multi_step_ok` picks (None).
    """
    (result,) = train_cohort([Member(cfg, init_params, ckpt_dir, on_eval, on_resume)], data, teacher=teacher,
                             targets=targets, eval_teacher=eval_teacher, progress=progress, desc=desc,
                             use_multi_step=use_multi_step)
    if isinstance(result, NonFiniteError):
        raise result
    return result


def multi_step_ok(source, dp: parallel.DataParallel, lanes: int) -> bool:
    """Whether a run trains its blocks of steps in one program (`ablate.step.make_multi_step`): on an accelerator,
    where its training set fits on its one device (an in-memory source) and a step is one program. Not on CPU:
    there a block is as fast as one program a step (1.08x), but the per-step loop in lanes, which splits each
    step's rows over threads, takes 0.73x a block's time (benchmarks/bench_loop.py, 2026-12-07). TFDS sources
    keep their host pipeline."""
    return (isinstance(source, ArraySource) and dp.size == 1 and lanes == 1
            and jax.default_backend() != "cpu")


def train_cohort(members: list[Member], data: DatasetSplits, *, teacher: Frozen | tuple[Frozen, ...] | None = None,
                 targets: np.ndarray | tuple[np.ndarray, ...] | None = None, eval_teacher: dict | None = None,
                 progress: bool = True, desc: str = "",
                 use_multi_step: bool | None = None) -> list[RunResult | NonFiniteError]:
    """Train runs that share their inputs (one `shared_inputs`) together: one data stream and one teacher forward;
    or, on an accelerator, runs that differ only in their seeds (one `seed_key`), vmapped in one program of
    blocks of steps (one after another where the training set is not in memory on one device).

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
    t_res = s_res if teacher is None else teacher_side(teacher, "resolution")
    width = loss_width(policy, teacher)  # a row of losses per member where several teachers distil
    names = teacher_labels(teacher) if width else ()
    students = [build_model(c.model, data.num_classes) for c in cfgs]
    dummy = jnp.zeros((1, s_res, s_res, data.image_shape[2]))
    # a caller's init_params are copied: the step donates its states' buffers, which would delete the caller's arrays
    params = [jax.tree.map(jnp.array, m.init_params) if m.init_params is not None
              else init_fn(student)(jax.random.key(m.cfg.student_seed), dummy)["params"]
              for m, student in zip(members, students)]
    optimizers = [optim.paper_optimizer(c.lr, c.wd, total, round(c.warmup_frac * total), c.clip, name=c.optimizer)
                  for c in cfgs]
    dp = parallel.DataParallel()
    if cfg.batch_size % dp.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {dp.size} devices")
    # the optimiser's state eagerly (zeros and the schedule's length): a jitted init would bake the length in
    states = dp.replicate(tuple(TrainState(p, o.init(p), jnp.int32(0)) for p, o in zip(params, optimizers)))
    # a loss that couples a batch's rows (DIST) must see all of them: no lanes, whose rows' gradients are summed
    whole_batch = any(LossSpec.parse(c.loss).batch_level for c in cfgs)
    lanes = 1 if whole_batch else lanes_lib.count(cfg.batch_size)
    t_model = None if teacher is None else teacher_side(teacher, "model")
    base_key = jax.random.key(cfg.seed)  # of the views and mixup, folded with the step
    resident, multi_step, step_fn = None, None, None
    seeds = len({shared_inputs(c) for c in cfgs}) > 1  # a seed cohort (accelerators: `ablate.step.cohort_key`)
    if seeds:
        if len({seed_key(c) for c in cfgs}) > 1:
            raise ValueError("a cohort's runs share their inputs or differ only in their seeds "
                             f"({', '.join(SEED_FIELDS)}); these differ in more")
        if use_multi_step is False:
            raise ValueError("runs of different seeds train together only in blocks of steps (use_multi_step)")
        if not isinstance(source, ArraySource) or dp.size > 1:  # no resident training set: one after another
            return [train_cohort([m], data, teacher=teacher, targets=targets, eval_teacher=eval_teacher,
                                 progress=progress, desc=desc)[0] for m in members]
        images, labels = jnp.asarray(source.images), jnp.asarray(source.labels)
        resident = Resident(images, labels, jnp.stack([order_key(c.seed) for c in cfgs]),
                            jnp.stack([jax.random.key(c.seed) for c in cfgs]))
        multi_step = compile_multi_step(cfgs, students, t_model, optimizers, data.num_classes, s_res, t_res,
                                        cfg.batch_size, width, seeds=True)
    elif multi_step_ok(source, dp, lanes) if use_multi_step is None else use_multi_step:
        resident = Resident(jnp.asarray(source.images), jnp.asarray(source.labels), order_key(cfg.seed), base_key)
        multi_step = compile_multi_step(cfgs, students, t_model, optimizers, data.num_classes, s_res, t_res,
                                        cfg.batch_size, width)
    else:
        step_fn = compile_cohort_step(cfgs, students, t_model, optimizers, data.num_classes, s_res, t_res, lanes)
        ds = batches(source, cfg, total, dp.local_rows(cfg.batch_size))
    t_params = dp.replicate(teacher_side(teacher, "params")) if (teacher is not None and policy.runs_teacher) else None
    targets = None if targets is None else dp.replicate(jax.tree.map(jnp.asarray, targets))
    if policy.fixed_view is not None and targets is None:
        raise ValueError(f"policy {cfg.policy} needs the fixed teacher's targets")
    eval_steps = evaluation_steps(total, cfg.num_evals, cfg.eval_spacing)

    trackers = [{"best_val": -1.0, "best": {}, "last": {}, "loss_sum": 0.0, "loss_count": 0,
                 **({"teacher_loss_sums": [0.0] * len(names)} if names else {})} for _ in members]
    histories: list[list[dict]] = [[] for _ in members]
    errors: list[NonFiniteError | None] = [None for _ in members]
    managers = [None if m.ckpt_dir is None else checkpoint.open_manager(m.ckpt_dir) for m in members]
    states, starts = checkpoint.restore_all(members, managers, states, trackers)
    start = starts[0]

    def evaluate(j: int, step: int, params) -> None:
        tracker = trackers[j]
        row = {"step": step, "epoch": step * cfg.batch_size / len(source), "time/train_s": tracker["train_s"]}
        if tracker["loss_count"]:
            row["train/loss"] = tracker["loss_sum"] / tracker["loss_count"]
            row.update({f"train/loss/{name}": total / tracker["loss_count"]
                        for name, total in zip(names, tracker.get("teacher_loss_sums", ()))})
        tracker["loss_sum"], tracker["loss_count"] = 0.0, 0
        if names:
            tracker["teacher_loss_sums"] = [0.0] * len(names)
        for split in ("val", "test"):
            src = getattr(data, split)
            at = predict_at_start if step == 0 else predict  # cells of one seed and model start alike
            logits = at(students[j], params, src, data.eval_view, s_res)
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
            if step and not bool(all_finite(states[j].params)):
                errors[j] = NonFiniteError(step, "parameters")
                continue
            evaluate(j, step, states[j].params)
            if managers[j] is not None and step:
                checkpoint.save(managers[j], step, states[j], trackers[j])
        if alive():
            bar.set_postfix(val=",".join(f"{trackers[j]['last']['val/acc']:.3f}" for j in alive()))

    def alive() -> list[int]:
        return [j for j, e in enumerate(errors) if e is None]

    bar = tqdm(total=total, initial=start, desc=desc or cfg.policy, disable=not progress,
               unit="step", dynamic_ncols=True, leave=False)
    clock = [time.perf_counter()]

    def run_block(step: int, stop: int):
        """Steps [step, stop): in one program where the training set is resident, else one dispatch a step."""
        nonlocal states
        if resident is not None:
            states, sums, first_bad = multi_step(states, t_params, targets, resident, step, stop - step)
            bar.update(stop - step)
            return sums, first_bad
        sums, first_bad = no_losses(len(members), width)
        for s in range(step, stop):
            states, losses = step_fn(states, t_params, targets, dp.shard(ds[s]), jax.random.fold_in(base_key, s))
            sums, first_bad = accumulate_step(sums, first_bad, losses, s)
            bar.update()
        return sums, first_bad

    try:
        if start == 0 and 0 in eval_steps:
            evaluate_all(0)
        step = start
        while step < total and alive():
            stop = min(s for s in eval_steps if s > step)  # a block ends at an evaluation (and checkpoint)
            sums, first_bad = jax.device_get(run_block(step, stop))
            for j in alive():
                if first_bad[j] >= 0:
                    errors[j] = NonFiniteError(int(first_bad[j]), "loss")
                else:
                    add_losses(trackers[j], sums[j], stop - step)
            evaluate_all(stop)
            step = stop
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


