"""Runs cells: gathers a run's inputs (data, teacher, fixed targets, init), trains, and logs to store and W&B."""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import jax
import numpy as np

from ablate.config import RunConfig
from ablate.data import load_dataset
from ablate.models import build_model
from ablate.store import RunStore
from ablate.study import Cell
from ablate.teachers import get_teacher, run_inputs
from ablate.tracking import WandbSink
from ablate.train import NonFiniteError, load_params, train


@dataclasses.dataclass
class Runner:
    store: RunStore
    wandb_mode: str = "auto"
    wandb_project: str = "ablate"
    wandb_entity: str | None = None
    progress: bool = True
    log: callable = functools.partial(print, file=sys.stderr)

    def __post_init__(self):
        self._data, self._teachers = {}, {}

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

    def run(self, cell: Cell, *, group: str, job_type: str = "distill") -> str:
        """Run one cell to the end (or resume it); returns "done", "failed" or "busy" (claimed elsewhere)."""
        cfg, run_id = cell.config, cell.run_id
        if not self.store.claim(run_id):
            return "busy"
        sink = WandbSink(self.wandb_mode, self.wandb_project, self.wandb_entity, self.store.root / "wandb")
        try:
            data = self.data(cfg.dataset)
            teacher = self.teacher(cfg.teacher)
            targets, eval_teacher = run_inputs(cfg, data, teacher, log=self.log)
            init = self.init_params(cfg, data)
            meta = {"study": group, "point": cell.point}
            self.store.start(run_id, cfg.to_dict(), meta)
            tags = [f"{k}={v}" for k, v in cell.point.items() if k != "seed"]
            sink.start(run_id, {**cfg.to_dict(), "study": group, **{f"axis/{k}": v for k, v in cell.point.items()}},
                       group=group, job_type=job_type, tags=tags)

            def on_eval(row):
                self.store.log(run_id, row)
                sink.log(row)

            t0 = time.perf_counter()
            try:
                result = train(cfg, data, teacher=teacher, targets=targets, eval_teacher=eval_teacher,
                               init_params=init, ckpt_dir=self.store.ckpt_dir(run_id), on_eval=on_eval,
                               on_resume=lambda step: self.store.truncate(run_id, step),
                               progress=self.progress, desc=_describe(cell))
            except NonFiniteError as e:
                self.store.fail(run_id, str(e), e.step)
                sink.finish({"status": "failed", "reason": str(e)}, failed=True)
                self.log(f"run {run_id} ({_describe(cell)}) failed: {e}")
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
        finally:
            self.store.release(run_id)


def get_teacher_dataset(name: str) -> str:
    from ablate.teachers import teacher_config

    return teacher_config(name).dataset


def _describe(cell: Cell) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.point.items()) or cell.config.policy
