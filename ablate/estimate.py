"""Cost estimates for a grid: steps, FLOPs from XLA's cost analysis, and time per kind of machine.

Nothing here needs the data or the teacher files: a dataset that cannot be
opened falls back to its known split sizes and image shapes (the TFDS table in
`ablate.data.tfds`), and FLOPs come from lowering the models on abstract inputs
(`jax.jit(...).lower(...).cost_analysis()`: no compilation, no parameters in memory).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp

from ablate.config import num_steps
from ablate.data import load_dataset
from ablate.policies import POLICIES


@dataclasses.dataclass(frozen=True)
class Machine:
    """A kind of machine: `devices` accelerators of `peak` FLOP/s each, of which `utilisation` is sustained.

    `step_s` is the least time a training step takes however few its FLOPs (a GPU
    launching a step's kernels one by one): small models are bound by it, not by the peak.
    `run_s` is each run's fixed cost (start, compiled programs, W&B, checkpoints).
    """

    devices: int
    peak: float  # FLOP/s per device at the precision a float32 model runs in (see `note`)
    utilisation: float
    note: str
    step_s: float = 0.0
    run_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.devices * self.peak * self.utilisation

    def seconds(self, flops: float, steps: int, runs: int = 0) -> float:
        """Time for `flops` of work done in `steps` training steps of `runs` runs: each run's fixed cost, then
        compute-bound or step-bound, whichever is slower."""
        return runs * self.run_s + max(flops / self.rate, steps * self.step_s)


# A step of the embedded models (resnet_t -> resnet_s) took 2.3-3.2 ms on an NVIDIA H200 at batch 128 and 1024
# alike (benchmarks/README.md, GPU): that floor is taken for every NVIDIA row; none is known for TPUs.
GPU_STEP_S = 2.5e-3
# A run's fixed cost, measured on CPU (see `CPU` below); taken for GPUs too, where none has been measured, as
# starting a run, loading its programs and logging it are host work.
RUN_S = 22.0


# Our models are float32. JAX runs float32 matmuls/convolutions as TF32 on NVIDIA GPUs by default, so that is
# the peak used (dense, no sparsity). Multi-device rows assume data-parallel training scales linearly (see the
# README's Performance section). TPUs are not listed: no step time of ablate's has been measured on one.
MACHINES = {
    "nvidia-a100": Machine(1, 156e12, 0.4, "A100: 156 TFLOP/s TF32 peak x 40%, >= 2.5 ms a step, 22 s a run",
                           GPU_STEP_S, RUN_S),
    "nvidia-h100": Machine(1, 495e12, 0.4, "H100 SXM: 495 TFLOP/s TF32 peak x 40%, >= 2.5 ms a step, 22 s a run",
                           GPU_STEP_S, RUN_S),
    "nvidia-h100x8": Machine(8, 495e12, 0.4, "8 x H100 SXM, data-parallel, >= 2.5 ms a step, 22 s a run",
                             GPU_STEP_S, RUN_S),
}


@dataclasses.dataclass(frozen=True)
class CpuModel:
    """Time of a grid on a 2-core CPU, from measured runs rather than a peak: the teacher's forward and the
    student's work run at different rates there (the student's narrow convolutions at about 40% of the teacher's),
    and each run pays a fixed cost (its start, compiled programs loaded, W&B, checkpoints)."""

    run_s: float  # fixed cost of one run in a study
    teacher_rate: float  # FLOP/s of the teacher's forward passes (training steps, fixed targets)
    student_rate: float  # FLOP/s of the student's forward and backward passes, and of its evaluations
    note: str

    def seconds(self, runs: int, teacher_flops: float, student_flops: float) -> float:
        return runs * self.run_s + teacher_flops / self.teacher_rate + student_flops / self.student_rate


# The rates: a default funmatch step (batch 128, resnet_t -> resnet_s) takes 51 ms on a 2-core AMD EPYC (AVX2)
# in lanes, 48% of it the teacher's forward (benchmarks/bench_breakdown.py, 2026-11-27), so 99 GFLOP/s for the
# teacher's forward and 40 GFLOP/s for the student's passes. The fixed cost per run: the median of each committed
# full study's measured run times less the time those rates give (reports/*/full/runs.csv, 2-core EPYC and Xeon,
# 2026-11), 22 s. Against the measured studies: consistency full 36 min (measured 45), patience full 49 min
# (measured 43), mixup full 19 min (23).
CPU = CpuModel(RUN_S, 99e9, 40e9, "2 CPU cores: measured step parts and whole studies, 2026-11 (+-25%)")

# Other student families' FLOPs run at other rates than resnet_s's on a 2-core CPU: per FLOP of the student's part of
# a funmatch step (the step less the teacher's 48% of resnet_s's), against resnet_s's, in one run of
# benchmarks/bench_families.py (AVX2 EPYC, 2026-12-07): mobilenet_s's memory-bound 64-channel layers at 0.30x,
# vit_s at 0.78x. Models not listed run at resnet_s's rate.
CPU_STUDENT_RATE = {"mobilenet_s": 0.30, "vit_s": 0.78}


@functools.lru_cache(maxsize=None)
def forward_flops(model_name: str, num_classes: int, resolution: int, channels: int) -> float:
    """FLOPs of one forward pass on one image, from XLA's cost analysis (lowered only, never compiled)."""
    from ablate.models import build_model

    model = build_model(model_name, num_classes)
    x = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    cost = jax.jit(model.apply).lower(params, x).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


@dataclasses.dataclass(frozen=True)
class Facts:
    """What costing a run needs to know of its dataset."""

    num_classes: int
    resolution: int  # default model resolution
    channels: int
    train: int
    val: int
    test: int
    source: str  # "data" (opened) or "known sizes" (the data is not here)


@functools.lru_cache(maxsize=None)
def dataset_facts(name: str) -> Facts | None:
    """The dataset's facts from its data if it can be opened, else from the known TFDS table, else None."""
    try:
        d = load_dataset(name)
        return Facts(d.num_classes, d.default_resolution, d.image_shape[2], len(d.train), len(d.val), len(d.test),
                     "data")
    except Exception:  # noqa: BLE001 - dry runs must work without the data
        pass
    from ablate.data.tfds import known_facts

    k = known_facts(name)
    if k is None or k["train"] is None:
        return None
    return Facts(k["num_classes"], k["resolution"], k["image_shape"][2], k["train"], k["val"] or 0, k["test"] or 0,
                 "known sizes")


def cell_cost(cfg) -> dict:
    """Steps and FLOPs of one run: training, its evaluations, and one-off teacher work (shared between runs).

    Training counts 3 forward passes of the student per image (forward + backward)
    plus one of the teacher when it runs inside the step. `once` maps a key to
    the FLOPs of work that is cached and shared by every run with that key: the
    fixed teacher's targets (x `ens_crops` for fix/ic_ens), the teacher's logits
    on val/test, and training a named teacher that is not cached yet.
    """
    from ablate.teachers import CheckpointTeacher, TEACHERS, teacher_dir

    facts = dataset_facts(cfg.dataset)
    if facts is None:
        return {"steps": None, "flops": None, "train_flops": None, "eval_flops": None, "teacher_train_flops": 0.0,
                "once": {}}
    n = facts.num_classes * cfg.subset_per_class if cfg.subset_per_class else facts.train
    steps = num_steps(cfg, n)
    images = steps * cfg.batch_size
    res = cfg.resolution or facts.resolution
    student = forward_flops(cfg.model, facts.num_classes, res, facts.channels)
    train_flops = 3 * student * images
    eval_flops = (cfg.num_evals + 1) * (facts.val + facts.test) * student
    once, teacher_train = {}, 0.0
    policy = POLICIES.get(cfg.policy)
    for name in cfg.teachers if policy.teacher else ():  # several teachers: each one's forward and caches
        entry = TEACHERS.get(name)
        t = entry.cfg
        t_facts = dataset_facts(t.dataset) or facts
        teacher = forward_flops(t.model, t_facts.num_classes, t.resolution or t_facts.resolution, facts.channels)
        if policy.runs_teacher:
            teacher_train += teacher * images
            train_flops += teacher * images
        else:
            k = cfg.ens_crops if policy.fixed_view == "ic_ens" else 1
            key = ("targets", name, cfg.dataset, cfg.subset_per_class, cfg.subset_seed, policy.fixed_view,
                   k if k > 1 else None, cfg.ic_min_area if k > 1 else None)
            once[key] = k * n * teacher
        once[("teacher-eval", name, cfg.dataset)] = (facts.val + facts.test) * teacher
        if not isinstance(entry, CheckpointTeacher) and not (teacher_dir(name) / "summary.json").exists():
            t_cost = cell_cost(t)
            once[("teacher-train", name)] = (t_cost["flops"] or 0.0) + sum(t_cost["once"].values())
    return {"steps": steps, "flops": train_flops + eval_flops, "train_flops": train_flops,
            "eval_flops": eval_flops, "teacher_train_flops": teacher_train, "once": once}


def study_cohorts(grid, cohort_size: int) -> list:
    """The grid's cells in the cohorts `ablate run --cohort-size` trains them in."""
    from ablate.study import cohorts
    from ablate.step import cohort_key

    return cohorts(grid, lambda c: cohort_key(c.config), cohort_size)


def shared_teacher_flops(groups: list, costs: Mapping[str, dict]) -> tuple[float, int]:
    """Training FLOPs of the teacher's forward that cohorts save (each cohort runs it once), and the cohort count;
    `costs`: each cell's `cell_cost` by run id."""
    shared = [co for co in groups if len(co) > 1]
    return sum(costs[c.run_id]["teacher_train_flops"] for co in shared for c in co[1:]), len(shared)


def program_steps(groups: list, costs: Mapping[str, dict]) -> int:
    """Steps the grid's training runs as programs: a cohort's runs step together, so it counts its longest run."""
    return sum(max(costs[c.run_id]["steps"] or 0 for c in co) for co in groups)


def describe_grid(study, grid, preset, cohort_size: int = 1, done: frozenset = frozenset()) -> str:
    """The grid, one line a run, and what the runs not yet `done` (run ids in the store) will cost."""
    todo = [cell for cell in grid if cell.run_id not in done]
    head = f"study {study.name} (preset {preset or 'default'}): {len(grid)} runs"
    if len(todo) < len(grid):  # e.g. a longer preset that reuses another study's runs: only the rest is estimated
        head += (f", {len(grid) - len(todo)} already done in the run store; the totals below are for the "
                 f"{len(todo)} to run")
    lines = [head, f"  {study.question}", ""]
    total_steps, train_flops, eval_flops, once, unknown = 0, 0.0, 0.0, {}, 0
    student_cpu = 0.0  # the student's FLOPs, each model's at resnet_s's CPU rate (CPU_STUDENT_RATE)
    costs = {cell.run_id: cell_cost(cell.config) for cell in todo}
    for cell in grid:  # in grid order, done or not
        point = " ".join(f"{k}={v}" for k, v in cell.point.items())
        c = costs.get(cell.run_id)
        if c is None:
            lines.append(f"  {cell.run_id}  {point:<60} done")
            continue
        if c["steps"] is None:
            unknown += 1
            cost = "steps=?"
        else:
            cost = f"steps={c['steps']:,}  {_flops(c['flops'])}"
        lines.append(f"  {cell.run_id}  {point:<60} {cost}")
        total_steps += c["steps"] or 0
        train_flops += c["train_flops"] or 0.0
        eval_flops += c["eval_flops"] or 0.0
        student = (c["train_flops"] or 0.0) - c["teacher_train_flops"] + (c["eval_flops"] or 0.0)
        student_cpu += student / CPU_STUDENT_RATE.get(cell.config.model, 1.0)
        once.update(c["once"])
    once_flops = sum(once.values())
    total = train_flops + eval_flops + once_flops
    lines.append("")
    lines.append(f"total: {total_steps:,} steps, {_flops(total)}: {_flops(train_flops)} training, "
                 f"{_flops(eval_flops)} evaluation, {_flops(once_flops)} one-off teacher work "
                 "(fixed targets, teacher logits, training uncached teachers)")
    groups = study_cohorts(todo, cohort_size)
    shared, n_cohorts = shared_teacher_flops(groups, costs)
    if n_cohorts:  # not taken off the estimate: the student's FLOPs run slower than the teacher's on CPU
        lines.append(f"  {n_cohorts} cohort(s) of up to {cohort_size} runs share the teacher's forward pass: "
                     f"{_flops(shared)} of the training above is not computed (not taken off the times below)")
    datasets = sorted({c.config.dataset for c in todo})
    for name in datasets:
        f = dataset_facts(name)
        if f is None:
            lines.append(f"  dataset {name}: size unknown (cannot open it and no known split sizes)")
        else:
            where = "from the data" if f.source == "data" else "known TFDS split sizes; the data is not needed"
            lines.append(f"  dataset {name}: train {f.train:,}, val {f.val:,}, test {f.test:,} ({where})")
    if unknown:
        lines.append(f"  {unknown} run(s) could not be costed and count as 0")
    steps = program_steps(groups, costs)
    in_steps = sum(c["teacher_train_flops"] for c in costs.values())  # the teacher's forward in training steps
    cpu = CPU.seconds(len(todo), in_steps - shared + once_flops, student_cpu)
    lines.append(f"  estimated on {'cpu-2core':<14} {_duration(cpu):>11}   ({CPU.note})")
    for machine, m in MACHINES.items():
        lines.append(f"  estimated on {machine:<14} {_duration(m.seconds(total, steps, len(todo))):>11}   ({m.note})")
    lines.append("  (TPUs: not estimated, no step time of ablate's measured on one)")
    return "\n".join(lines)


def _flops(x: float) -> str:
    for unit, scale in (("ZFLOP", 1e21), ("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOP"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "< 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365 * 86400):.1f} years"
