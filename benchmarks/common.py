"""Shared helpers: alternating side-by-side timing, ratio statistics, machine facts, the JAX step set-up, results.

The machine these run on is shared and noisy, so absolute times mean little:
every comparison runs its contenders in one process (or at the same time),
alternating them block by block over several repetitions, and reports the
median of the per-repetition ratios with its spread.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import time
from typing import Callable

import ablate  # noqa: F401 - first, so that ablate's XLA defaults (ablate/xla_flags.py) hold before jax starts

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None  # the machine's load when this process began


# ----------------------------------------------------------------------------- timing

def calibrate(run: Callable[[int], None], target_s: float, max_n: int = 10_000) -> int:
    """How many steps make one timed block of about `target_s` seconds (after one warm-up call)."""
    run(1)
    n = 1
    while True:
        t0 = time.perf_counter()
        run(n)
        dt = time.perf_counter() - t0
        if dt >= target_s / 2 or n >= max_n:
            return max(1, min(max_n, round(n * target_s / max(dt, 1e-9))))
        n *= 4


def alternate(contenders: dict[str, Callable[[int], None]], reps: int = 5, block_s: float = 1.0,
              log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Seconds per step of each contender, `reps` blocks each, interleaved.

    `run(n)` must perform n steps and return once they are finished (blocking
    on the result). The order is reversed on every other repetition (A B, B A,
    ...) so slow drifts of the machine's load hit every contender alike.
    """
    names = list(contenders)
    sizes = {k: calibrate(contenders[k], block_s) for k in names}
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            n = sizes[k]
            t0 = time.perf_counter()
            contenders[k](n)
            times[k].append((time.perf_counter() - t0) / n)
        log(f"  rep {r + 1}/{reps}: " + ", ".join(f"{k} {1e3 * times[k][-1]:.1f} ms" for k in names))
    return times


def spread(values: list[float]) -> dict:
    """Median, quartiles and range of a list of numbers."""
    v = sorted(values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"median": statistics.median(v), "q1": q[0], "q3": q[2], "min": v[0], "max": v[-1], "n": len(v)}


def ratio(num: list[float], den: list[float]) -> dict:
    """Statistics of per-repetition ratios num[i] / den[i] (the two were timed side by side)."""
    return spread([a / b for a, b in zip(num, den)])


def fmt(s: dict, unit: str = "x", digits: int = 2) -> str:
    return (f"{s['median']:.{digits}f}{unit} (IQR {s['q1']:.{digits}f}-{s['q3']:.{digits}f}, "
            f"range {s['min']:.{digits}f}-{s['max']:.{digits}f}, n={s['n']})")


# ----------------------------------------------------------------------------- machine and results

def machine() -> dict:
    """What the figures were measured on, and how busy the machine was."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = list(LOAD_AT_START) if LOAD_AT_START else None
        info["loadavg_at_end"] = list(os.getloadavg())
    import jax

    info["jax"] = jax.__version__
    if jax.default_backend() in ("gpu", "cuda"):  # absent on CPU-only machines (and jax builds)
        info["gpu"] = gpu_info()
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        info["torch"] = metadata.version("torch")  # without importing it
    return info


def gpu_info() -> dict:
    """The GPU(s) JAX runs on (device kind, count), with nvidia-smi's name, driver and memory when it answers."""
    import jax

    devs = jax.devices()
    info = {"jax_device_kind": devs[0].device_kind, "count": len(devs)}
    with contextlib.suppress(Exception):
        info["platform_version"] = devs[0].client.platform_version
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=20).stdout
        info["nvidia_smi"] = [line.strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def save(name: str, payload: dict, tag: str = "") -> pathlib.Path:
    """Write results/NAME-YYYY-MM-DD[-TAG][-ENVTAG].json, ENVTAG from $ABLATE_BENCH_TAG (a rerun on the same day
    replaces it); `tag` is the benchmark's own (e.g. "gpu")."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    tags = "".join(f"-{t}" for t in (tag, os.environ.get("ABLATE_BENCH_TAG", "")) if t)
    path = RESULTS / f"{name}-{datetime.date.today().isoformat()}{tags}.json"
    payload = {"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=1, sort_keys=False, default=_jsonable) + "\n")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    return path


def _jsonable(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


# ----------------------------------------------------------------------------- the JAX step

def parser(doc: str, block_s: float, impls: str | None = "xla,matmul") -> argparse.ArgumentParser:
    """The flags every timing benchmark shares: --reps, --block-s, --batch and (unless impls is None) --impls."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions (default 5)")
    ap.add_argument("--block-s", type=float, default=block_s, help=f"seconds per timed block (default {block_s:g})")
    ap.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    if impls is not None:
        ap.add_argument("--impls", default=impls, help=f"StdConv impls to measure (default {impls})")
    return ap


@dataclasses.dataclass
class JaxStep:
    """ablate's jitted training step with its inputs, ready to run n steps."""

    step: Callable
    state: object
    teacher_params: object
    targets: object
    batches: list
    base_key: object
    cfg: object
    fn: Callable = None  # the step before jax.jit (traces under the chosen StdConv impl)
    i: int = 0

    def run(self, n: int) -> None:
        import jax

        loss = None
        for _ in range(n):
            self.state, loss = self.step(self.state, self.teacher_params, self.targets,
                                         self.batches[self.i % len(self.batches)],
                                         jax.random.fold_in(self.base_key, self.i))
            self.i += 1
        jax.block_until_ready((self.state, loss))

    def args(self):
        import jax

        return (self.state, self.teacher_params, self.targets, self.batches[0], jax.random.fold_in(self.base_key, 0))


def fashion_mnist_batches(batch_size: int, count: int, seed: int = 0):
    """`count` real Fashion-MNIST training batches (uint8 images, labels, indices) as numpy dicts."""
    import numpy as np

    data = _fashion_mnist()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        idx = rng.choice(500, batch_size, replace=batch_size > 500)  # indices into a 500-example subset
        out.append({"image": data.train.images[idx], "label": data.train.labels[idx].astype(np.int32),
                    "index": idx.astype(np.int32)})
    return out


@functools.lru_cache(maxsize=1)
def _fashion_mnist():
    from ablate.data import load_dataset

    return load_dataset("fashion_mnist")


def make_jax_step(policy: str = "funmatch", batch_size: int = 128, impl: str = "xla",
                  student: str = "resnet_s", teacher: str = "resnet_t", num_batches: int = 4,
                  total_steps: int = 10_000, seed: int = 0, groupnorm: str = "ablate", cohort: int = 1,
                  lanes: int | None = None) -> JaxStep:
    """ablate's own step as `ablate.train.train` compiles it (`make_lane_step`: in lanes where this process
    has them, `ablate.lanes.count`, else one jitted program donating the state) with `optim.paper_optimizer`, on
    real Fashion-MNIST batches already on the device. The teacher has random weights (its head too, so its
    logits are not all zero): throughput does not depend on what it learnt.
    `impl` picks StdConv's implementation and `groupnorm` a GroupNorm variant of `bench_groupnorm` ("ablate" is
    ablate's own), both swapped in while the models are traced; parameter trees are unchanged. With `cohort` > 1
    the step is `make_cohort_step` over that many students (init_seed seed, seed + 1, ...) sharing the views and
    the teacher's forward; its state is a tuple. `lanes` overrides the lanes (1: the one-program step).
    `.fn` is the one-program step before jax.jit (for vmap and XLA's cost analysis)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ablate import lanes as lanes_lib
    from ablate import optim
    from ablate.config import RunConfig
    from ablate.models import build_model
    from ablate.policies import POLICIES
    from ablate.step import TrainState, make_cohort_step, make_lane_step, make_train_step, one_run

    cfg = RunConfig(policy=policy, batch_size=batch_size, seed=seed)
    cfgs = [cfg.replace(init_seed=seed + k) for k in range(cohort)] if cohort > 1 else [cfg]
    pol = POLICIES.get(policy)
    lanes = lanes_lib.count(batch_size) if lanes is None else lanes
    x = jnp.zeros((1, 28, 28, 1))
    with _variants(impl, groupnorm):
        s_model, t_model = build_model(student, 10), build_model(teacher, 10)
        params = [s_model.init(jax.random.key(c.student_seed), x)["params"] for c in cfgs]
        t_params = None
        if pol.runs_teacher:
            t_params = t_model.init(jax.random.key(seed + 1), x)["params"]
            t_params = randomise_head(t_params, seed + 2)
        opts = [optim.paper_optimizer(c.lr, c.wd, total_steps, round(c.warmup_frac * total_steps), c.clip)
                for c in cfgs]
        teacher = t_model if pol.runs_teacher else None
        if cohort == 1:
            fn = make_train_step(cfg, s_model, teacher, opts[0], 10, 28, 28)
        else:
            fn = make_cohort_step(cfgs, [s_model] * cohort, teacher, opts, 10, 28, 28)
        fn = _traced_under(fn, impl, groupnorm)  # the variants only matter while jax traces the step
        if lanes == 1:
            step = jax.jit(fn, donate_argnums=(0,))
        else:
            # built afresh, not `compile_cohort_step`'s kept program: its key knows nothing of the variants
            step = make_lane_step(cfgs, [s_model] * cohort, teacher, opts, 10, 28, 28, lanes)
            if (impl, groupnorm) != ("xla", "ablate"):
                step = _traced_under(step, impl, groupnorm)
            if cohort == 1:
                step = one_run(step)
    states = tuple(TrainState(p, o.init(p), jnp.int32(0)) for p, o in zip(params, opts))
    state = states[0] if cohort == 1 else states
    targets = None
    if pol.fixed_view is not None:
        targets = jnp.asarray(np.random.default_rng(seed).normal(size=(500, 10)).astype(np.float32))
    batches = [jax.device_put(b) for b in fashion_mnist_batches(batch_size, num_batches, seed)]
    return JaxStep(step, state, t_params, targets, batches, jax.random.key(seed), cfg, fn)


@contextlib.contextmanager
def _variants(impl: str, groupnorm: str = "ablate"):
    from ablate.models.resnet import conv_impl

    with conv_impl(impl):
        if groupnorm == "ablate":
            yield
            return
        from benchmarks.bench_groupnorm import variant

        with variant(groupnorm):
            yield


def _traced_under(fn, impl, groupnorm: str = "ablate"):
    """`fn` that re-enters the model variants whenever jax traces it (tracing happens at the first call)."""
    return traced_under(lambda: _variants(impl, groupnorm), fn)


def traced_under(context: Callable, fn):
    """`fn` called inside `context()` (a context manager factory), so that a model variant swapped in by it is
    in place whenever jax traces `fn`."""

    @functools.wraps(fn)
    def wrapped(*a, **k):
        with context():
            return fn(*a, **k)

    return wrapped


def randomise_head(params, seed: int, scale: float = 0.05):
    """A copy of a parameter tree whose zero-initialised head kernel is small random numbers."""
    import jax

    p = jax.tree.map(lambda a: a, dict(params))  # a fresh tree of the same leaves
    p["head"] = dict(p["head"])
    k = p["head"]["kernel"]
    p["head"]["kernel"] = scale * jax.random.normal(jax.random.key(seed), k.shape, k.dtype)
    return p


def cost_flops(jitted, *args) -> dict:
    """FLOPs of one call from XLA's cost analysis: of the compiled program (what runs) and of the lowered
    (pre-optimisation) HLO."""
    lowered = jitted.lower(*args)
    pre, post = lowered.cost_analysis(), lowered.compile().cost_analysis()
    pre = (pre[0] if isinstance(pre, (list, tuple)) else pre) or {}  # None on GPU backends: no lowered count
    post = (post[0] if isinstance(post, (list, tuple)) else post) or {}
    return {"compiled_flops": float(post.get("flops", 0.0)), "lowered_flops": float(pre.get("flops", 0.0)),
            "compiled_bytes_accessed": float(post.get("bytes accessed", 0.0))}


# ----------------------------------------------------------------------------- contenders in their own processes

class ProcessContenders:
    """Contenders that live in a separate Python process (spawned, so nothing is shared with this one).

    `factory` is "module:function"; in the child, `function(**kwargs)` returns
    `(contenders, info)`: a dict name -> run(n) and a dict of facts to report.
    `env` is set in the child before the factory is imported (e.g. XLA_FLAGS), and the child
    is pinned to the cores `cpus` (where the OS has affinity masks) before that, so XLA's threads are.
    The child sits blocked on a pipe between commands, so it uses no CPU while
    another contender is being timed. Use `.runners()` with `alternate`.
    """

    def __init__(self, factory: str, env: dict | None = None, cpus: list[int] | None = None, **kwargs):
        import multiprocessing as mp

        from ablate import xla_flags

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, factory, kwargs, env or {}, cpus), daemon=True)
        # the child imports ablate (which reads ABLATE_* and XLA_FLAGS) before _serve runs: it must start with
        # `env` and XLA_FLAGS as the user gave it, not with this process's defaults
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update({**xla_flags.as_given(saved), **(env or {})})
        try:
            self.proc.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        child.close()  # so that a dead child shows as EOFError here instead of a wait for ever
        status, payload = self._recv()
        if status != "ready":
            self.proc.join(5)
            raise RuntimeError(f"{factory} failed in its process:\n{payload}")
        self.names, self.info = payload

    def _recv(self):
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            return "error", f"the process died (exit code {self.proc.exitcode})"

    def runners(self, prefix: str = "") -> dict:
        return {prefix + name: (lambda n, name=name: self.call(name, n)) for name in self.names}

    def call(self, name: str, n: int) -> None:
        self.start(name, n)
        self.wait(name)

    def start(self, name: str, n: int) -> None:
        """Start n steps of `name` without waiting (see `wait`): for running several processes at once."""
        self.conn.send(("run", name, n))

    def wait(self, name: str = "") -> None:
        status, payload = self._recv()
        if status != "ok":
            raise RuntimeError(f"contender {name} failed:\n{payload}")

    def close(self) -> None:
        try:
            self.conn.send(("stop", None, 0))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(30)


def _serve(conn, factory: str, kwargs: dict, env: dict, cpus: list[int] | None = None) -> None:
    import importlib
    import traceback

    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    os.environ.update(env)
    try:
        module, fn = factory.split(":")
        contenders, info = getattr(importlib.import_module(module), fn)(**kwargs)
    except BaseException:  # noqa: BLE001  (report any failure to the parent)
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", (list(contenders), info)))
    while True:
        cmd, name, n = conn.recv()
        if cmd == "stop":
            return
        try:
            contenders[name](n)
            conn.send(("ok", None))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))
