"""Benchmark 3b: a study's cells shared among one-core worker processes (`ablate run --workers N`) vs one process.

* step: N single-threaded processes under ablate's one-core XLA flags (a
  worker's set-up: `ablate.xla_flags.defaults_for(1)`, not pinned), each
  running the funmatch step at once, vs one process on every core under
  ablate's defaults (in lanes on 2-4 cores, ablate/lanes.py); N = the cores
  this process may use. Also the same N processes pinned one per core, and
  one process without lanes (ABLATE_LANES=1). Figure: total throughput ratio
  N x time(one) / time(N workers). And one pinned worker stepping alone: the
  step on one core by itself, which gives what the other cores add to one
  process, time(one core alone) / time(one). (An unpinned one-core worker
  alone is no such baseline: XLA's intra-op pool has a thread per core the
  process may use, and a lone program's matmuls and convolutions spread over
  it even with `--xla_cpu_multi_thread_eigen=false`.)
* study (`--study NAME`, off by default: minutes per repetition): the wall
  time of `ablate run NAME --preset P --workers 1` vs `--workers N`, each in a
  fresh run store, alternated; the persistent compilation cache is warmed by
  one untimed run of each first. Figure: wall(1) / wall(N).

    .venv/bin/python -m benchmarks.bench_workers [--reps 5] [--block-s 2] [--study consistency --preset quick
                                                 --study-reps 2]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from benchmarks import common


def step_part(args) -> dict:
    from ablate import workers, xla_flags

    cpus = xla_flags.usable_cpus()
    n = len(cpus)
    if n < 2:
        print("step part skipped: this process may use one core only")
        return {}
    one_core = workers.worker_env(1, {})  # as `ablate run --workers` starts them: ablate picks one-core flags
    slices = workers.cpu_slices(cpus, n)
    procs, groups = [], {}
    try:
        print(f"starting one process on cores {cpus} (in lanes where ablate's defaults have them, and one without), "
              f"{n} one-core workers, and {n} pinned one per core")
        procs.append(common.ProcessContenders("benchmarks.bench_step:jax_worker", batch=args.batch, impls=("xla",)))
        procs.append(common.ProcessContenders("benchmarks.bench_step:jax_worker", env={xla_flags.LANES: "1"},
                                              batch=args.batch, impls=("xla",)))
        for name, pins in ((f"{n}_workers", [None] * n), (f"{n}_workers_pinned", slices)):
            groups[name] = [common.ProcessContenders("benchmarks.bench_step:jax_worker", env=one_core, cpus=pin,
                                                     batch=args.batch, impls=("xla",)) for pin in pins]
            procs += groups[name]

        def together(group):
            def run(steps):
                for p in group:
                    p.start("jax", steps)
                for p in group:
                    p.wait("jax")
            return run

        one_core = groups[f"{n}_workers_pinned"][0]
        contenders = {"one_process": lambda steps: procs[0].call("jax", steps),
                      "one_process_no_lanes": lambda steps: procs[1].call("jax", steps),
                      "one_core_alone": lambda steps: one_core.call("jax", steps),
                      **{name: together(group) for name, group in groups.items()}}
        times = common.alternate(contenders, reps=args.reps, block_s=args.block_s)
        procs_info = [p.info for p in procs]
    finally:
        for p in procs:
            p.close()
    summary = {}
    for name in ["one_process_no_lanes", *groups]:
        steps = 1 if name == "one_process_no_lanes" else n
        summary[name] = common.ratio([steps * t for t in times["one_process"]], times[name])
        print(f"  {name}: total throughput / one process on {n} cores (ablate's default) = {common.fmt(summary[name])}")
    scaling = common.ratio(times["one_core_alone"], times["one_process"])
    print(f"  one process on {n} cores / one pinned core alone = {common.fmt(scaling)}")
    return {"workers": n, "one_process_lanes": procs_info[0].get("lanes"), "times_s": times,
            "throughput_vs_one_process": summary, "one_process_vs_one_core": scaling}


def study_part(args) -> dict:
    from ablate import xla_flags

    n = len(xla_flags.usable_cpus())

    def wall(w: int) -> float:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as store:
            cmd = [sys.executable, "-m", "ablate", "run", args.study, "--store", store, "--wandb", "disabled",
                   "--no-progress", "--workers", str(w), *(["--preset", args.preset] if args.preset else [])]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

    print(f"warming the compilation cache: {args.study} once with --workers 1 and once with --workers {n}")
    warm = {"1": wall(1), str(n): wall(n)}
    times = {"1": [], str(n): []}
    for rep in range(args.study_reps):
        for w in ((1, n) if rep % 2 == 0 else (n, 1)):
            times[str(w)].append(wall(w))
        print(f"  rep {rep + 1}/{args.study_reps}: --workers 1 {times['1'][-1]:.0f} s, "
              f"--workers {n} {times[str(n)][-1]:.0f} s")
    r = common.ratio(times["1"], times[str(n)])
    print(f"  {args.study} ({args.preset or 'default'}): wall with --workers 1 / --workers {n} = {common.fmt(r)}")
    return {"study": args.study, "preset": args.preset, "workers": n, "warm_up_s": warm, "wall_s": times,
            "speedup": r}


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=2.0, impls=None)
    ap.add_argument("--study", default=None, help="also time this study end to end (e.g. consistency)")
    ap.add_argument("--preset", default="quick", help="the study's preset (default quick)")
    ap.add_argument("--study-reps", type=int, default=2, help="timed repetitions of the study part (default 2)")
    args = ap.parse_args(argv)
    result = {"config": vars(args), "step": step_part(args)}
    if args.study:
        result["study"] = study_part(args)
    common.save("workers", result)
    return result


if __name__ == "__main__":
    main()
