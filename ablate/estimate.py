"""Cost estimates for a grid: steps, FLOPs from XLA's cost analysis, and time per kind of machine."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ablate.data import load_dataset
from ablate.policies import POLICIES

# Sustained float32/bfloat16 throughput assumed for a whole training step (FLOP/s).
# "cpu-2core" was measured here (see README); the accelerators are ~40% of their peak.
MACHINES = {"cpu-2core": 65e9, "nvidia-a100": 0.4 * 312e12, "nvidia-h100": 0.4 * 990e12, "tpu-v3-8": 0.4 * 420e12}


@functools.lru_cache(maxsize=None)
def forward_flops(model_name: str, num_classes: int, resolution: int, channels: int) -> float:
    """FLOPs of one forward pass on one image, from XLA's cost analysis (no compilation to run)."""
    from ablate.models import build_model

    model = build_model(model_name, num_classes)
    x = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    cost = jax.jit(model.apply).lower(params, x).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


@functools.lru_cache(maxsize=None)
def _dataset_facts(name: str):
    try:
        d = load_dataset(name)
    except Exception:  # noqa: BLE001 - dry runs must work without the data
        return None
    return d.num_classes, d.default_resolution, d.image_shape[2], len(d.train)


def cell_cost(cfg) -> dict:
    """Steps, images and FLOPs of one run (training only; evaluation is small in comparison)."""
    from ablate.teachers import teacher_config

    facts = _dataset_facts(cfg.dataset)
    if facts is None:
        return {"steps": None, "flops": None}
    classes, default_res, channels, n_train = facts
    n = classes * cfg.subset_per_class if cfg.subset_per_class else n_train
    steps = max(1, int(cfg.epochs * n) // cfg.batch_size)
    images = steps * cfg.batch_size
    res = cfg.resolution or default_res
    flops = 3 * forward_flops(cfg.model, classes, res, channels)
    if cfg.teacher is not None and POLICIES.get(cfg.policy).runs_teacher:
        t = teacher_config(cfg.teacher)
        flops += forward_flops(t.model, classes, t.resolution or default_res, channels)
    return {"steps": steps, "flops": flops * images}


def describe_grid(study, grid, preset) -> str:
    lines = [f"study {study.name} (preset {preset or 'default'}): {len(grid)} runs", f"  {study.question}", ""]
    total_steps, total_flops = 0, 0.0
    for cell in grid:
        c = cell_cost(cell.config)
        point = " ".join(f"{k}={v}" for k, v in cell.point.items())
        steps = "?" if c["steps"] is None else f"{c['steps']:,}"
        lines.append(f"  {cell.run_id}  {point:<60} steps={steps}")
        total_steps += c["steps"] or 0
        total_flops += c["flops"] or 0.0
    lines.append("")
    lines.append(f"total: {total_steps:,} steps, {total_flops / 1e15:.3g} PFLOP of training")
    for machine, rate in MACHINES.items():
        lines.append(f"  estimated on {machine:<12} {_duration(total_flops / rate)}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
