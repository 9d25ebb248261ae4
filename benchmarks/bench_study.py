"""Benchmark 5: where a whole (small) study's wall time goes, its memory, and the persistent compilation cache.

Part A runs a study through `ablate run` in this process, instrumented from
outside (ablate's functions wrapped, jax.monitoring listeners), and splits its
wall time into: compile (jaxpr trace + MLIR lowering + XLA backend compile,
from the '/jax/core/compile/*' duration events), data (`ds[step]` and
`DataParallel.shard`), train steps (the rest of `ablate.train.train_cohort`: the
loop dispatching steps and waiting on them), evaluation (`predict`,
`eval_metrics`), checkpoints (orbax saves), logging (run store and W&B sink),
set-up (dataset, teacher, teacher targets) and other (the CLI, study
expansion). Nested intervals go to the innermost one (a compile inside an
evaluation counts as compile). RSS is sampled every --rss-every steps; the
slope of RSS over steps after the first 20% of them measures growth.
The default study is a tiny one written to a temp folder (funmatch and fix/rs,
20 epochs on the 500-image subset, 2 evaluations) using ablate's own XLA
cache (warm after the first time); --cold gives it a fresh, empty cache (a
new machine), --study/--preset run a real study instead, --epochs makes the
runs longer.

Part C trains one longer funmatch run (--long-steps, default 200; a teacher
with random weights, 1 evaluation) and samples RSS every --rss-every steps:
its slope after the first 20% of the steps is the memory growth per step.

Part B (run first, in fresh processes) measures the persistent compilation cache: two fresh processes in turn
compile the same funmatch step with ABLATE_CACHE pointing at one new folder;
the second should hit the cache ('/jax/compilation_cache/cache_hits').

    .venv/bin/python -m benchmarks.bench_study [--epochs 20] [--policies funmatch,fix/rs] [--cold]
                                               [--study NAME --preset P] [--no-cache-test] [--no-study] [--long-steps 200]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks import common

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec")
COUNT_EVENTS = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses",
                "/jax/compilation_cache/compile_requests_use_cache")

STUDY_FILE = '''"""Benchmark study (written by benchmarks/bench_study.py)."""
from ablate.study import Study

STUDY = Study(name="bench_study", question="How long does a tiny study take, and where does the time go?",
              base=dict(epochs={epochs}, num_evals={num_evals}, teacher={teacher!r}),
              axes=dict(policy={policies!r}), seeds=1)
'''


# ----------------------------------------------------------------------------- instrumentation

class Timeline:
    """Intervals (category, start, end) and RSS samples, collected while a study runs."""

    def __init__(self, rss_every: int):
        self.intervals: list[tuple[str, float, float]] = []
        self.counts: dict[str, int] = {}
        self.rss: list[tuple[int, float, int]] = []  # (global step, time, bytes)
        self.compiles: dict[str, list] = {}  # function name -> [backend compiles, seconds]
        self.rss_every = rss_every
        self.steps = 0
        self.page = os.sysconf("SC_PAGE_SIZE")

    def wrap(self, owner, name: str, category: str):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.intervals.append((category, t0, time.perf_counter()))

        setattr(owner, name, timed)
        return original

    def on_duration(self, event: str, secs: float, fun_name: str = "?", **_):
        if event == "/jax/core/compile/backend_compile_duration":
            entry = self.compiles.setdefault(fun_name, [0, 0.0])
            entry[0] += 1
            entry[1] += secs
        if event in COMPILE_EVENTS:
            now = time.perf_counter()
            self.intervals.append(("compile", now - secs, now))
            self.counts[event + " (s)"] = self.counts.get(event + " (s)", 0.0) + secs

    def on_event(self, event: str, **_):
        if event in COUNT_EVENTS:
            self.counts[event] = self.counts.get(event, 0) + 1

    def sample_rss(self):
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * self.page
        self.rss.append((self.steps, time.perf_counter(), rss))

    def exclusive(self, start: float, end: float) -> dict[str, float]:
        """Seconds per category, each instant given to the innermost (latest-starting) interval covering it."""
        points = sorted({start, end, *(t for _, a, b in self.intervals for t in (a, b) if start <= t <= end)})
        totals: dict[str, float] = {}
        ivs = sorted(self.intervals, key=lambda iv: iv[1])
        for lo, hi in zip(points, points[1:]):
            mid = (lo + hi) / 2
            cat = "other"
            for c, a, b in ivs:
                if a <= mid < b:
                    cat = c  # later starts come later in ivs: the innermost wins
            totals[cat] = totals.get(cat, 0.0) + hi - lo
        return totals


class _CountingBatches:
    """Wraps the trainer's `ds` so every `ds[step]` is timed and counted."""

    def __init__(self, ds, tl: Timeline):
        self.ds, self.tl = ds, tl

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        t0 = time.perf_counter()
        try:
            return self.ds[i]
        finally:
            self.tl.intervals.append(("data", t0, time.perf_counter()))
            if self.tl.steps % self.tl.rss_every == 0:
                self.tl.sample_rss()
            self.tl.steps += 1


def instrument(tl: Timeline):
    import jax

    from ablate import checkpoint, parallel, runner, store, tracking, train

    jax.monitoring.register_event_duration_secs_listener(tl.on_duration)
    jax.monitoring.register_event_listener(tl.on_event)
    for owner, name, cat in [(runner, "load_dataset", "setup"), (runner, "get_teacher", "setup"),
                             (runner, "run_inputs", "setup"), (train, "predict", "evaluation"),
                             (train, "eval_metrics", "evaluation"), (checkpoint, "save", "checkpoints"),
                             (checkpoint, "_restore", "checkpoints"), (checkpoint, "open_manager", "checkpoints"),
                             (runner, "save_params", "checkpoints"), (parallel.DataParallel, "shard", "data"),
                             (store.RunStore, "log", "logging"), (store.RunStore, "start", "logging"),
                             (store.RunStore, "finish", "logging"), (store.RunStore, "claim", "logging"),
                             (store.RunStore, "release", "logging"), (tracking.WandbSink, "start", "logging"),
                             (tracking.WandbSink, "log", "logging"), (tracking.WandbSink, "finish", "logging"),
                             (runner, "train_cohort", "train steps")]:
        tl.wrap(owner, name, cat)
    original_batches = train.batches
    train.batches = lambda *a, **k: _CountingBatches(original_batches(*a, **k), tl)


def slope(samples: list[tuple[int, float, int]], skip: float = 0.2) -> dict:
    """Least-squares RSS growth in MB per 1000 steps over the samples after the first `skip` of the steps."""
    import numpy as np

    if len(samples) < 3:
        return {"mb_per_1000_steps": None, "samples": len(samples)}
    steps = np.array([s for s, _, _ in samples], float)
    rss = np.array([r for _, _, r in samples], float) / 2**20
    keep = steps >= skip * steps.max()
    if keep.sum() < 3:
        keep[:] = True
    a, _ = np.polyfit(steps[keep], rss[keep], 1)
    return {"mb_per_1000_steps": float(a * 1000), "samples": int(keep.sum()), "steps": int(steps.max()),
            "rss_mb_first": float(rss[0]), "rss_mb_last": float(rss[-1]), "rss_mb_max": float(rss.max())}


def study_part(args, tl: Timeline) -> dict:
    import jax

    import ablate  # noqa: F401  (sets the persistent cache from $ABLATE_CACHE)
    from ablate import cli, teachers

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ablate-bench-study-"))
    if args.cold:
        jax.config.update("jax_compilation_cache_dir", str(tmp / "xla"))
    if args.study:
        study, extra = args.study, (["--preset", args.preset] if args.preset else [])
    else:
        teacher = args.teacher
        if teacher is None:  # the default teacher if it is trained already, else the tiny one (trains in ~1 min)
            teacher = "fmnist_t" if (teachers.teacher_dir("fmnist_t") / "summary.json").exists() else "fmnist_xs"
        path = tmp / "bench_study.py"
        path.write_text(STUDY_FILE.format(epochs=args.epochs, num_evals=args.num_evals, teacher=teacher,
                                          policies=args.policies.split(",")))
        study, extra = str(path), []
    cmd = ["run", study, *extra, "--store", str(tmp / "store"), "--wandb", "disabled", "--no-progress"]
    print(f"ablate {' '.join(cmd)}  (XLA cache: {'fresh, empty' if args.cold else jax.config.jax_compilation_cache_dir})")
    tl.sample_rss()
    t0 = time.perf_counter()
    rc = cli.main(cmd)
    t1 = time.perf_counter()
    tl.sample_rss()
    split = tl.exclusive(t0, t1)
    wall = t1 - t0
    order = ["compile", "data", "train steps", "evaluation", "checkpoints", "logging", "setup", "other"]
    print(f"\nwall {wall:.1f} s over {tl.steps} steps (exit code {rc}):")
    for k in order:
        if k in split:
            print(f"  {k:<12} {split[k]:7.1f} s  {100 * split[k] / wall:5.1f}%")
    for k, v in tl.counts.items():
        print(f"  {k}: {v:.1f}" if isinstance(v, float) else f"  {k}: {v}")
    top = sorted(tl.compiles.items(), key=lambda kv: -kv[1][1])
    small = [v for v in tl.compiles.values() if v[1] / v[0] < 0.5]  # below ablate's persistent-cache threshold
    print(f"  backend compiles (or cache loads): {sum(v[0] for v in tl.compiles.values())} of {len(tl.compiles)} "
          f"functions; {sum(v[0] for v in small)} took < 0.5 s on average ({sum(v[1] for v in small):.1f} s in all; "
          f"a compile that short is not written to the persistent cache, so every process pays it again); "
          f"the costliest:")
    for name, (n, secs) in top[:6]:
        print(f"    {name:<28} {n:3d} x  {secs:6.1f} s")
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS (ru_maxrss) {maxrss_mb:.0f} MB")
    return {"exit_code": rc, "wall_s": wall, "steps": tl.steps, "split_s": split,
            "split_fraction": {k: v / wall for k, v in split.items()}, "jax_events": dict(tl.counts),
            "backend_compiles": {k: {"count": v[0], "s": v[1]} for k, v in top},
            "peak_rss_mb": maxrss_mb, "rss_samples": list(tl.rss)}


def long_run(args, tl: Timeline) -> dict:
    """One longer funmatch run through `ablate.train.train`; RSS sampled every few steps."""
    import jax
    import jax.numpy as jnp

    from ablate import train
    from ablate.config import RunConfig
    from ablate.data import load_dataset
    from ablate.models import build_model

    data = load_dataset("fashion_mnist")
    cfg = RunConfig(policy="funmatch", epochs=args.long_steps * 128 / 500, num_evals=1)
    model = build_model("resnet_t", data.num_classes)
    t_params = common.randomise_head(model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"], 2)
    teacher = train.Frozen(model, t_params, 28)
    tl.rss.clear()
    tl.steps = 0
    print(f"\nmemory: one funmatch run of {train.num_steps(cfg, 500)} steps, RSS every {tl.rss_every} steps")
    t0 = time.perf_counter()
    train.train(cfg, data, teacher=teacher, progress=False)
    wall = time.perf_counter() - t0
    tl.sample_rss()
    mem = slope(tl.rss)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {tl.steps} steps in {wall:.0f} s; RSS {mem.get('rss_mb_first', 0):.0f} -> {mem.get('rss_mb_last', 0):.0f} MB, "
          f"growth {mem['mb_per_1000_steps'] or 0:.2f} MB per 1000 steps after the first 20% of the steps "
          f"({mem['samples']} samples); peak RSS (ru_maxrss) {maxrss_mb:.0f} MB")
    return {"wall_s": wall, "steps": tl.steps, "rss_growth": mem, "peak_rss_mb": maxrss_mb, "rss_samples": list(tl.rss)}


# ----------------------------------------------------------------------------- compilation cache

def compile_probe() -> None:
    """(In a fresh process) compile the funmatch step once; print what it took as JSON."""
    import jax

    counts: dict = {}

    def on_duration(event, secs, **_):
        counts[event] = counts.get(event, 0.0) + secs

    def on_event(event, **_):
        counts[event] = counts.get(event, 0) + 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    js = common.make_jax_step("funmatch", 128)
    t0 = time.perf_counter()
    js.run(1)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    js.run(1)
    print(json.dumps({"first_step_s": first, "second_step_s": time.perf_counter() - t0,
                      "cache_enabled": bool(jax.config.jax_compilation_cache_dir),
                      "events": {k: v for k, v in counts.items() if "compil" in k}}))


def cache_part() -> dict:
    cache = tempfile.mkdtemp(prefix="ablate-bench-cache-")
    env = {**os.environ, "ABLATE_CACHE": cache}
    env.pop("ABLATE_NO_COMPILATION_CACHE", None)
    out = {}
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_study", "--compile-probe"], env=env,
                              capture_output=True, text=True, cwd=pathlib.Path(__file__).resolve().parent.parent)
        if proc.returncode:
            raise RuntimeError(f"compile probe failed:\n{proc.stderr[-2000:]}")
        out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[label]["process_wall_s"] = time.perf_counter() - t0
        ev = out[label]["events"]
        print(f"  {label}: first step {out[label]['first_step_s']:.1f} s (backend compile "
              f"{ev.get('/jax/core/compile/backend_compile_duration', 0):.1f} s, cache hits "
              f"{ev.get('/jax/compilation_cache/cache_hits', 0)}, misses {ev.get('/jax/compilation_cache/cache_misses', 0)}), "
              f"process {out[label]['process_wall_s']:.1f} s")
    out["cache_works"] = out["warm"]["events"].get("/jax/compilation_cache/cache_hits", 0) > 0
    out["first_step_warm_over_cold"] = out["warm"]["first_step_s"] / out["cold"]["first_step_s"]
    files = list(pathlib.Path(cache, "xla").glob("*"))
    out["cache_entries"] = len(files)
    out["cache_mb"] = sum(f.stat().st_size for f in files if f.is_file()) / 2**20
    print(f"  warm/cold first step: {out['first_step_warm_over_cold']:.2f}x; cache works: {out['cache_works']} "
          f"({out['cache_entries']} entries, {out['cache_mb']:.1f} MB)")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=20, help="epochs per run of the tiny study (default 20)")
    ap.add_argument("--policies", default="funmatch,fix/rs")
    ap.add_argument("--num-evals", type=int, default=2)
    ap.add_argument("--teacher", default=None, help="default: fmnist_t if already trained, else fmnist_xs")
    ap.add_argument("--study", default=None, help="run this study instead of the tiny one")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--cold", action="store_true", help="a fresh, empty XLA cache for the study (default: ablate's)")
    ap.add_argument("--long-steps", type=int, default=200, help="steps of the memory-growth run (0: skip it)")
    ap.add_argument("--rss-every", type=int, default=5, help="sample RSS every N steps (default 5)")
    ap.add_argument("--no-cache-test", action="store_true")
    ap.add_argument("--no-study", action="store_true", help="skip part A (the study)")
    ap.add_argument("--compile-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compile_probe:
        compile_probe()
        return {}
    os.environ.setdefault("WANDB_MODE", "disabled")
    result = {"config": vars(args)}
    if not args.no_cache_test:  # first, in fresh processes, before this one has compiled anything
        print("persistent compilation cache: two fresh processes compile the same step")
        result["compilation_cache"] = cache_part()
    tl = Timeline(args.rss_every)
    instrument(tl)
    if not args.no_study:
        result["study"] = study_part(args, tl)
    if args.long_steps:
        result["long_run"] = long_run(args, tl)
    common.save("study", result)
    return result


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
