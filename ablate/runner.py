"""Runs cells: gathers a run's inputs (data, teacher, fixed targets, init), trains, and logs to store and W&B."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time

import jax
import numpy as np

from ablate import xla_flags
from ablate.config import ConfigError, RunConfig
from ablate.data import load_dataset
from ablate.models import build_model
from ablate.store import RunStore, StoreError
from ablate.study import Cell
from ablate.teachers import get_teacher, run_inputs
from ablate.tracking import WandbSink
from ablate.train import NonFiniteError, load_params, student_source, train


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

    def data(self, name: str):
        if name not in self._data:
            self._data[name] = load_dataset(name)
        return self._data[name]

    def teacher(self, name: str | None):
        if name is None:
            return None
        if name not in self._teachers:
            cfg_data = self.data(get_teacher_dataset(name))
            self._teachers[name] = get_teacher(name, cfg_data, progress=self.progress, log=self.log)
        return self._teachers[name]

    def init_params(self, cfg: RunConfig, data):
        """The student parameters of the finished run `cfg.init`, for initialisation."""
        if cfg.init is None:
            return None
        if not self.store.is_done(cfg.init):
            raise ValueError(f"init run {cfg.init} is not a finished run in {self.store.root}")
        model = build_model(cfg.model, data.num_classes)
        res = cfg.resolution or data.default_resolution
        template = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, res, res, data.image_shape[2]))))
        return load_params(self.store.run_dir(cfg.init) / "params", template["params"])

    def preflight(self, cells_: list[Cell]) -> None:
        """Check, before any run starts, what would otherwise fail mid-study.

        Every cell's dataset must be present (DataError names the ways to get
        it), its batch must fit its training set, and the store must be
        writable (StoreError names the folder).
        """
        for cell in cells_:
            cfg = cell.config
            data = self.data(cfg.dataset)
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

    def run(self, cell: Cell, *, group: str, job_type: str = "distill") -> str:
        """Run one cell to the end (or resume it).

        Returns "done", "failed", "busy" (claimed by another process) or
        "skipped" (finished by another process between the caller's check and
        our claim).
        """
        cfg, run_id = cell.config, cell.run_id
        if not self.store.claim(run_id):
            return "busy"
        started, sink = False, None
        try:
            if self.store.is_done(run_id):
                return "skipped"
            sink = WandbSink(self.wandb_mode, self.wandb_project, self.wandb_entity, self.store.root / "wandb")
            data = self.data(cfg.dataset)
            teacher = self.teacher(cfg.teacher)
            targets, eval_teacher = run_inputs(cfg, data, teacher, log=self.log)
            init = self.init_params(cfg, data)
            backend = {"jax": jax.__version__, "backend": jax.default_backend(), "xla_flags": xla_flags.in_effect}
            meta = {"study": group, "point": cell.point, **backend}
            damaged = self.store.start(run_id, cfg.to_dict(), meta)
            started = True
            for path in damaged:
                self.log(f"warning: {path} was damaged; it is rewritten as run {run_id} runs again")
            ckpt = self.store.ckpt_dir(run_id)
            if self.store.run_dir(run_id) / "history.json" in damaged and ckpt.exists():
                self.log(f"warning: discarding checkpoint {ckpt}: its run's history was damaged, so run {run_id} "
                         "restarts from scratch to log a complete history")
                shutil.rmtree(ckpt, ignore_errors=True)
            tags = [f"{k}={v}" for k, v in cell.point.items() if k != "seed"]
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

            t0 = time.perf_counter()
            try:
                result = train(cfg, data, teacher=teacher, targets=targets, eval_teacher=eval_teacher,
                               init_params=init, ckpt_dir=ckpt, on_eval=on_eval, on_resume=on_resume,
                               progress=self.progress, desc=_describe(cell))
            except NonFiniteError as e:
                self.store.fail(run_id, str(e), e.step)
                sink.finish({"status": "failed", "reason": str(e)}, failed=True)
                self.log(f"run {run_id} ({_describe(cell)}) failed: {e}; the study goes on with the other cells")
                return "failed"
            summary = {**result.summary, "wall_s": time.perf_counter() - t0}
            if teacher is not None:
                summary["teacher/test/acc"] = teacher.summary.get("last/test/acc")
                summary["teacher/val/acc"] = teacher.summary.get("last/val/acc")
            from ablate.train import save_params
            save_params(self.store.run_dir(run_id) / "params", result.params)
            self.store.finish(run_id, summary)
            sink.finish(summary)
            return "done"
        except Exception as e:
            # An error that is not the run's own (a bug, a full disk): record it where possible, then stop.
            if started and not isinstance(e, StoreError):
                try:
                    self.store.fail(run_id, f"{type(e).__name__}: {e}")
                except StoreError:
                    pass
            if sink is not None:
                sink.finish({}, failed=True)
            raise
        finally:
            self.store.release(run_id)


def _to_stderr(*args, **kwargs) -> None:
    print(*args, file=sys.stderr, **kwargs)  # looked up per call: captured output and redirections see it


def get_teacher_dataset(name: str) -> str:
    from ablate.teachers import teacher_config

    return teacher_config(name).dataset


def _describe(cell: Cell) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.point.items()) or cell.config.policy
