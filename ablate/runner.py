"""Runs cells: gathers a run's inputs (data, teacher, fixed targets, init), trains, and logs to store and W&B."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time

import jax
import numpy as np

from ablate import lanes, parallel, xla_flags
from ablate.checkpoint import load_params, save_params
from ablate.config import ConfigError, RunConfig
from ablate.data import load_dataset
from ablate.models import build_model
from ablate.step import cohort_key
from ablate.store import RunStore, StoreError
from ablate.stream import student_source
from ablate.study import SEED_FIELDS, Cell
from ablate.teachers import get_teacher, run_inputs, teacher_summary
from ablate.tracking import WandbSink
from ablate.train import Member, NonFiniteError, train_cohort


@dataclasses.dataclass
class Runner:
    store: RunStore
    wandb_mode: str = "auto"
    wandb_project: str = "ablate"
    wandb_entity: str | None = None
    progress: bool = True
    log: callable = None  # default: print to the current sys.stderr

    def __post_init__(self):
        self._data, self._teachers = {}, {}
        if self.log is None:
            self.log = _to_stderr
        if jax.process_count() > 1:  # one run over several hosts: process 0 decides, writes and speaks for it
            self.store = parallel.SharedStore(self.store)
            if not parallel.is_leader():
                self.progress, self.log = False, _quiet

    def data(self, name: str):
        if name not in self._data:
            self._data[name] = load_dataset(name)
        return self._data[name]

    def teacher(self, name: str | None):
        """The named teacher, loaded (or trained) once for the process; None for None."""
        if name is None:
            return None
        if name not in self._teachers:
            cfg_data = self.data(get_teacher_dataset(name))
            self._teachers[name] = get_teacher(name, cfg_data, progress=self.progress, log=self.log)
        return self._teachers[name]

    def teachers(self, cfg: RunConfig):
        """The run's teacher, a tuple of its teachers where it names several (`RunConfig.teachers`), or None."""
        names = cfg.teachers
        if len(names) > 1:
            return tuple(self.teacher(name) for name in names)
        return self.teacher(cfg.teacher)

    def teacher_classes(self, name: str) -> int:
        """The class count of a teacher's dataset: its classifier's outputs."""
        from ablate.data.tfds import SPECS

        dataset = get_teacher_dataset(name)
        if dataset in SPECS and dataset not in self._data:
            return SPECS[dataset].num_classes
        return self.data(dataset).num_classes

    def init_params(self, cfg: RunConfig, data):
        """The student parameters of the finished run `cfg.init`, for initialisation."""
        if cfg.init is None:
            return None
        if not self.store.is_done(cfg.init):
            raise ConfigError(f"init run {cfg.init} is not a finished run in {self.store.root}")
        model = build_model(cfg.model, data.num_classes)
        res = cfg.resolution or data.default_resolution
        template = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, res, res, data.image_shape[2]))))
        return load_params(self.store.run_dir(cfg.init) / "params", template["params"])

    def cohort_key(self, cell: Cell) -> str | None:
        """`ablate.step.cohort_key`, except that a cell resuming from its checkpoint runs alone, from its own step."""
        return None if self.store.has_checkpoint(cell.run_id) else cohort_key(cell.config)

    def preflight(self, cells_: list[Cell]) -> None:
        """Check, before any run starts, what would otherwise fail mid-study.

        Every cell's dataset must be present (DataError names the ways to get
        it), each of its several teachers must have the dataset's class count,
        its batch must fit its training set, the run it initialises from
        (`init`) must be finished in the store or among these cells, and the
        store must be writable (StoreError names the folder).
        """
        pending = {cell.run_id for cell in cells_}
        for cell in cells_:
            cfg = cell.config
            if cfg.init is not None and cfg.init not in pending and not self.store.is_done(cfg.init):
                raise ConfigError(f"cell ({_describe(cell)}): init run {cfg.init} is not a finished run in "
                                  f"{self.store.root}; train that run into this store first (the study that "
                                  "defines it, e.g. `ablate run init_source` before `ablate run init`)")
            data = self.data(cfg.dataset)
            if len(cfg.teachers) > 1:
                self.check_classes(cell, data.num_classes)
            try:
                n = len(student_source(cfg, data))
            except ValueError as e:  # a class with fewer examples than subset_per_class
                raise ConfigError(f"cell ({_describe(cell)}): {e}") from None
            if cfg.batch_size > n:
                what = (f"subset_per_class={cfg.subset_per_class} x {len(np.unique(data.train.labels))} classes"
                        if cfg.subset_per_class is not None else f"the full {cfg.dataset} train split")
                raise ConfigError(f"cell ({_describe(cell)}): batch_size {cfg.batch_size} is larger than its "
                                  f"{n} training examples ({what}); lower batch_size or raise subset_per_class")
        self.store.check_writable()

    def check_classes(self, cell: Cell, num_classes: int) -> None:
        """ConfigError unless each of the cell's teachers outputs the dataset's `num_classes` classes."""
        cfg = cell.config
        counts = {name: self.teacher_classes(name) for name in cfg.teachers}
        wrong = {name: n for name, n in counts.items() if n != num_classes}
        if wrong:
            found = ", ".join(f"{name} has {n} ({get_teacher_dataset(name)})" for name, n in wrong.items())
            raise ConfigError(f"cell ({_describe(cell)}): the teachers of a run must each have its dataset's "
                              f"{num_classes} classes ({cfg.dataset}); {found}")

    def run(self, cell: Cell, *, group: str, job_type: str = "distill") -> str:
        """Run one cell to the end (or resume it).

        Returns "done", "failed", "busy" (claimed by another process) or
        "skipped" (finished by another process between the caller's check and
        our claim).
        """
        return self.run_cohort([cell], group=group, job_type=job_type)[0]

    def run_cohort(self, cells_: list[Cell], *, group: str, job_type: str = "distill") -> list[str]:
        """Run cells that share their inputs (one `cohort_key`) together, each logged as its own run; one status each."""
        status, claimed = {}, []
        for cell in cells_:
            if self.store.claim(cell.run_id):
                claimed.append(cell)
            else:
                status[cell.run_id] = "busy"
        try:
            todo = []
            for cell in claimed:
                if self.store.is_done(cell.run_id):
                    status[cell.run_id] = "skipped"
                else:
                    todo.append(cell)
            if todo:
                status.update(self._train(todo, group, job_type))
        finally:
            for cell in claimed:
                self.store.release(cell.run_id)
        return [status[c.run_id] for c in cells_]

    def _train(self, cells_: list[Cell], group: str, job_type: str) -> dict[str, str]:
        cfg = cells_[0].config
        data = self.data(cfg.dataset)
        teacher = self.teachers(cfg)
        targets, eval_teacher = run_inputs(cfg, data, teacher, log=self.log)
        inits = [self.init_params(c.config, data) for c in cells_]
        backend = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
                   "processes": jax.process_count(), "cpus": xla_flags.cores_in_effect,
                   "lanes": lanes.count(cfg.batch_size), "xla_flags": xla_flags.in_effect}
        started, sinks = [], []
        try:
            members = []
            for cell, init in zip(cells_, inits):
                sinks.append(WandbSink(self.wandb_mode if parallel.is_leader() else "disabled", self.wandb_project,
                                       self.wandb_entity, self.store.root / "wandb"))
                members.append(self._start(cell, init, sinks[-1], group, job_type, backend, len(cells_)))
                started.append(cell)
            parallel.barrier("ablate: runs started")  # process 0 may have discarded a checkpoint in _start
            t0 = time.perf_counter()
            results = train_cohort(members, data, teacher=teacher, targets=targets, eval_teacher=eval_teacher,
                                   progress=self.progress, desc=_describe_cohort(cells_))
            wall = time.perf_counter() - t0
            status = {}
            for cell, sink, result in zip(cells_, sinks, results):
                run_id = cell.run_id
                started.remove(cell)
                if isinstance(result, NonFiniteError):
                    self.store.fail(run_id, str(result), result.step)
                    sink.finish({"status": "failed", "reason": str(result)}, failed=True)
                    self.log(f"run {run_id} ({_describe(cell)}) failed: {result}; the study goes on with the other "
                             "cells")
                    status[run_id] = "failed"
                    continue
                summary = {**result.summary, "wall_s": wall, "cohort_size": len(cells_)}
                if teacher is not None:
                    summary.update(teacher_summary(teacher, eval_teacher, data))
                save_params(self.store.run_dir(run_id) / "params", result.params)
                self.store.finish(run_id, summary)
                sink.finish(summary)
                status[run_id] = "done"
            return status
        except Exception as e:
            # An error that is not the runs' own (a bug, a full disk): record it where possible, then stop.
            for cell in started:  # the runs still open
                if not isinstance(e, StoreError):
                    try:
                        self.store.fail(cell.run_id, f"{type(e).__name__}: {e}")
                    except StoreError:
                        pass
            for sink in sinks:
                sink.finish({}, failed=True)
            raise

    def _start(self, cell: Cell, init, sink: WandbSink, group: str, job_type: str, backend: dict,
               cohort_size: int) -> Member:
        """Open a cell's run in the store and W&B; the cohort member that trains it."""
        cfg, run_id = cell.config, cell.run_id
        meta = {"study": group, "point": cell.point, **backend, "cohort_size": cohort_size}
        damaged = self.store.start(run_id, cfg.to_dict(), meta)
        for path in damaged:
            self.log(f"warning: {path} was damaged; it is rewritten as run {run_id} runs again")
        ckpt = self.store.ckpt_dir(run_id)
        if self.store.run_dir(run_id) / "history.json" in damaged and ckpt.exists():  # `damaged`: process 0's
            self.log(f"warning: discarding checkpoint {ckpt}: its run's history was damaged, so run {run_id} "
                     "restarts from scratch to log a complete history")
            shutil.rmtree(ckpt, ignore_errors=True)
        tags = [f"{k}={v}" for k, v in cell.point.items() if k not in SEED_FIELDS]
        sink.start(run_id, {**cfg.to_dict(), "study": group, **{f"axis/{k}": v for k, v in cell.point.items()},
                            **{f"env/{k}": v for k, v in backend.items()}},
                   group=group, job_type=job_type, tags=tags)

        def on_eval(row):
            self.store.log(run_id, row)
            sink.log(row)

        def on_resume(step):
            if step:
                self.log(f"resuming run {run_id} ({_describe(cell)}) from its checkpoint at step {step}")
            self.store.truncate(run_id, step)

        return Member(cfg, init, ckpt, on_eval, on_resume)


def _to_stderr(*args, **kwargs) -> None:
    print(*args, file=sys.stderr, **kwargs)  # looked up per call: captured output and redirections see it


def _quiet(*args, **kwargs) -> None:
    """The log of processes other than 0 in a multi-host run: process 0 speaks for the run."""


def get_teacher_dataset(name: str) -> str:
    from ablate.teachers import teacher_config

    return teacher_config(name).dataset


def _describe(cell: Cell) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.point.items()) or cell.config.policy


def _describe_cohort(cells_: list[Cell]) -> str:
    """E.g. "seed=0 policy=funmatch, lr=0.001 | lr=0.003": what the members share, then what each sets."""
    if len(cells_) == 1:
        return _describe(cells_[0])
    points = [c.point for c in cells_]
    shared = {k: v for k, v in points[0].items() if all(p.get(k, object()) == v for p in points)}
    own = [" ".join(f"{k}={v}" for k, v in p.items() if k not in shared) for p in points]
    if not any(own):
        return _describe(cells_[0])
    return ", ".join(x for x in (" ".join(f"{k}={v}" for k, v in shared.items()), " | ".join(own)) if x)
