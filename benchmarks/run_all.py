"""Run the whole benchmark suite with its short default settings; each benchmark writes results/NAME-DATE.json.

    .venv/bin/python -m benchmarks.run_all [--only step,fixed,...] [--skip seeds] [--torch-compile] [--tag TAG]

The benchmarks run one after another, each in a fresh process (so one's
threads, caches and memory never touch the next one's figures). See
benchmarks/README.md for what each measures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# name -> (module, default arguments)
SUITE = {
    "step": ("benchmarks.bench_step", ["--omp-passive"]),
    "breakdown": ("benchmarks.bench_breakdown", []),
    "groupnorm": ("benchmarks.bench_groupnorm", []),
    "fixed": ("benchmarks.bench_fixed", []),
    "seeds": ("benchmarks.bench_seeds", []),
    "input": ("benchmarks.bench_input", []),
    "eval": ("benchmarks.bench_eval", []),
    "loop": ("benchmarks.bench_loop", []),
    "study": ("benchmarks.bench_study", []),
    "xla_options": ("benchmarks.bench_xla_options", []),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SUITE)}")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile in the step benchmark")
    ap.add_argument("--tag", default="", help="suffix for the result files (NAME-DATE-TAG.json), e.g. 'loaded'")
    args = ap.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else SUITE) if n and n not in args.skip.split(",")]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(SUITE)}")
    failed = []
    for name in names:
        module, extra = SUITE[name]
        if name == "step" and args.torch_compile:
            extra = [*extra, "--compile"]
        print(f"\n===== {name}: python -m {module} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "ABLATE_BENCH_TAG": args.tag} if args.tag else None
        rc = subprocess.call([sys.executable, "-m", module, *extra], cwd=ROOT, env=env)
        print(f"===== {name}: exit code {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
