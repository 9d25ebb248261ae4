"""Lanes: one slice of each batch per CPU core, each computed on its own thread with XLA single-threaded.

XLA's CPU convolutions at the narrow channel counts of ablate's models spread
poorly over a few cores, while independent slices of a batch computed at once
on separate threads, each single-threaded on jax's YNNPACK path, do better:
on a 2-core machine a funmatch step in two lanes is 1.09x the one-program step
on XLA's threads (benchmarks/bench_step.py, `jax` vs `jax_no_lanes`). So
where ablate/xla_flags.py gives a process lanes (`lanes_in_effect`: one per
core on 2-4 cores, or $ABLATE_LANES) the trainer splits each step's work: the
views once (mixup needs the whole batch), then each lane's share of the
teacher's forward and the students' loss and gradient, at once, then one
update from the summed gradients (`ablate.step.make_lane_step`); evaluation
and the fixed teacher's targets split their chunks the same way (`map_rows`).
Results equal the one-program step's within float32 rounding (the gradient is
summed in another order) and are deterministic: lane k always takes rows
[k n/L, (k+1) n/L).

Lanes only run where they can pay: one CPU device in one process (a GPU, or
data parallelism over devices or hosts, keeps the one-program step).
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Callable, Sequence

import jax
import numpy as np

from ablate import xla_flags


@functools.cache
def _single_cpu_device() -> bool:
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def count(rows: int) -> int:
    """How many lanes split `rows` rows here: the largest divisor of `rows` up to `xla_flags.lanes_in_effect`
    (1 off a single CPU device)."""
    lanes = min(xla_flags.lanes_in_effect, rows)
    if lanes <= 1 or not _single_cpu_device():
        return 1
    while rows % lanes:
        lanes -= 1
    return lanes


@functools.cache
def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="ablate-lane")


def run(fn: Callable, args_per_lane: Sequence[tuple]) -> list:
    """`fn(*args)` for each lane's args, all at once (lane 0 on the calling thread), results in lane order.

    Each result is ready (blocked on) when this returns, so the lanes really ran
    side by side and an error in any lane is raised here.
    """
    if len(args_per_lane) == 1:
        return [fn(*args_per_lane[0])]
    others = [_pool(len(args_per_lane) - 1).submit(lambda a: jax.block_until_ready(fn(*a)), args)
              for args in args_per_lane[1:]]
    first = jax.block_until_ready(fn(*args_per_lane[0]))
    return [first, *(f.result() for f in others)]


def map_rows(fn: Callable, *arrays: np.ndarray, const: tuple = ()) -> np.ndarray:
    """`fn(*const, *slices)` over equal row slices of `arrays` in lanes, concatenated on the host as numpy.

    The rows are padded to a multiple of the lanes (the padding's outputs are
    dropped): inference of whole chunks at once, e.g. evaluation's logits.
    """
    n = len(arrays[0])
    lanes = count(n + -n % xla_flags.lanes_in_effect) if n else 1
    if lanes == 1:
        return np.asarray(fn(*const, *arrays))
    padded = [np.concatenate([a, np.zeros((-n % lanes, *a.shape[1:]), a.dtype)]) if n % lanes else a
              for a in arrays]
    per = len(padded[0]) // lanes
    outs = run(fn, [(*const, *(a[k * per:(k + 1) * per] for a in padded)) for k in range(lanes)])
    return np.concatenate([np.asarray(o) for o in outs])[:n]
