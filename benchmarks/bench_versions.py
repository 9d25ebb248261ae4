"""Benchmark: one study's cells end to end under two versions of ablate, side by side on one machine.

The base version (a commit, written into a temporary folder with `git archive`) and this checkout each run the
same study file in a fresh process, `python -m ablate run STUDY --store FRESH --wandb disabled --no-progress`,
one after the other, the order alternating from one repetition to the next; both use ablate's persistent XLA
cache and cached teachers, as a user's second study would. Recorded: each process's wall time and each cell's
(its store status, started to finished), matched across versions by policy, epochs and seed.

The default study is one seed of `patience --preset full` without its 300-epoch cells: the five policies at 10,
30 and 100 epochs (15 cells), where start-up, compilation and evaluation weigh most. A least-squares line
time = a + b x steps through each policy's cells projects the whole `patience --preset full` (epochs 10, 30, 100,
300; 3 seeds) per version: a projection, not a measurement, of its 300-epoch cells and other seeds. It counts
each policy's first cell's compilation 3 times where the full study pays it once per policy (the base version
compiles, or reads from its cache, every cell anyway), so it leans against this checkout.

The default base, c30fb52, is ablate as the issue "Long schedules made cheap" measured it (2026-11-27).

    .venv/bin/python -m benchmarks.bench_versions [--base c30fb52] [--reps 1] [--epochs 10,30,100] [--seeds 1]
                                                  [--study FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import common

ROOT = pathlib.Path(__file__).resolve().parent.parent
FULL_EPOCHS, FULL_SEEDS = (10, 30, 100, 300), 3

STUDY_FILE = '''"""Benchmark study (written by benchmarks/bench_versions.py): patience's shorter cells."""
from ablate.study import LABEL_ONLY, Study

STUDY = Study(name="bench_versions", question="How long do patience's short cells take?",
              axes=dict(policy=["fix/rs", "fix/ic_ens", "same/ic", "funmatch", LABEL_ONLY], epochs={epochs!r}),
              seeds={seeds})
'''


def checkout(commit: str, into: pathlib.Path) -> pathlib.Path:
    """The tree of `commit` written into `into` (no git metadata: it runs as a clean clone would)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_study(code: pathlib.Path, study: pathlib.Path, store: pathlib.Path, log) -> float:
    """Wall seconds of one `ablate run` of `study` with the package at `code`, into the fresh `store`."""
    env = {**os.environ, "PYTHONPATH": str(code), "WANDB_MODE": "disabled"}
    env.pop("ABLATE_STORE", None)
    cmd = [sys.executable, "-m", "ablate", "run", str(study), "--store", str(store), "--wandb", "disabled",
           "--no-progress"]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"`ablate run` of {code} failed (exit {proc.returncode}); its output: {log}")
    return wall


def cell_times(store: pathlib.Path) -> list[dict]:
    """Each finished cell of a store: policy, epochs, seed, steps and seconds from start to finish."""
    cells = []
    for run in sorted(p for p in store.iterdir() if (p / "status.json").exists()):
        cfg = json.loads((run / "config.json").read_text())["config"]
        status = json.loads((run / "status.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        cells.append({"policy": cfg["policy"], "epochs": cfg["epochs"], "seed": cfg["seed"],
                      "steps": int(summary.get("total_steps", summary.get("last/step"))),
                      "seconds": status["finished"] - status["started"]})
    return cells


def project(cells: list[dict], outside_s: float) -> dict:
    """`patience --preset full`'s seconds: per policy, the least-squares line time = a + b x steps through its
    cells (every schedule and seed; the first pays compilation), times FULL_SEEDS at every FULL_EPOCHS, plus the
    process's time outside cells."""
    total, lines = outside_s, {}
    for policy in sorted({c["policy"] for c in cells}):
        mine = [c for c in cells if c["policy"] == policy]
        xs, ys = [c["steps"] for c in mine], [c["seconds"] for c in mine]
        b, a = statistics.linear_regression(xs, ys)
        per_epoch = statistics.mean(c["steps"] / c["epochs"] for c in mine)
        lines[policy] = {"start_s": a, "step_s": b}
        total += FULL_SEEDS * sum(a + b * math.floor(e * per_epoch + 1e-9) for e in FULL_EPOCHS)
    return {"seconds": total, "lines": lines}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="c30fb52", help="the commit to compare this checkout with (default c30fb52)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions, each version once per repetition (default 1)")
    ap.add_argument("--epochs", default="10,30,100", help="the schedules of the default study (default 10,30,100)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds of the default study (default 1)")
    ap.add_argument("--study", default=None, help="run this study file instead (no projection)")
    args = ap.parse_args(argv)

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ablate-bench-versions-"))
    study = pathlib.Path(args.study).resolve() if args.study else tmp / "bench_versions_study.py"
    if not args.study:
        study.write_text(STUDY_FILE.format(epochs=[int(e) for e in args.epochs.split(",")], seeds=args.seeds))
    base_rev, head_rev = (subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True,
                                         text=True, check=True).stdout.strip() for rev in (args.base, "HEAD"))
    codes = {"base": checkout(args.base, tmp / "base"), "head": ROOT}
    print(f"base {base_rev} in {codes['base']}; head: this checkout (HEAD {head_rev}); study {study}", flush=True)

    reps = []
    for r in range(args.reps):
        rep = {}
        for name in (("base", "head") if r % 2 == 0 else ("head", "base")):
            store = tmp / f"store-{name}-{r}"
            wall = run_study(codes[name], study, store, tmp / f"log-{name}-{r}.txt")
            cells = cell_times(store)
            rep[name] = {"wall_s": wall, "cells": cells, "outside_cells_s": wall - sum(c["seconds"] for c in cells)}
            print(f"rep {r + 1}/{args.reps} {name}: {wall:.1f} s for {len(cells)} cells", flush=True)
        reps.append(rep)

    result = {"base": base_rev, "head": head_rev, "study": study.read_text(), "reps": reps,
              "wall_ratio_base_over_head": common.ratio([r["base"]["wall_s"] for r in reps],
                                                        [r["head"]["wall_s"] for r in reps])}
    print(f"\nwall time base / head: {common.fmt(result['wall_ratio_base_over_head'])}")
    print(f"\n{'policy':<12}{'epochs':>7}{'seed':>5}{'base s':>9}{'head s':>9}{'base/head':>11}")
    for cell in reps[-1]["head"]["cells"]:
        key = (cell["policy"], cell["epochs"], cell["seed"])
        ratios = []
        for rep in reps:
            base = next(c for c in rep["base"]["cells"] if (c["policy"], c["epochs"], c["seed"]) == key)
            head = next(c for c in rep["head"]["cells"] if (c["policy"], c["epochs"], c["seed"]) == key)
            ratios.append(base["seconds"] / head["seconds"])
        print(f"{key[0]:<12}{key[1]:>7g}{key[2]:>5}{base['seconds']:>9.1f}{head['seconds']:>9.1f}"
              f"{statistics.median(ratios):>10.2f}x")
    if not args.study:
        result["projection"] = {name: [project(rep[name]["cells"], rep[name]["outside_cells_s"]) for rep in reps]
                                for name in codes}
        base_s = [p["seconds"] for p in result["projection"]["base"]]
        head_s = [p["seconds"] for p in result["projection"]["head"]]
        result["projected_full_ratio_base_over_head"] = common.ratio(base_s, head_s)
        print(f"\npatience --preset full, projected from these cells: base "
              f"{statistics.median(base_s) / 60:.1f} min, head {statistics.median(head_s) / 60:.1f} min, "
              f"base / head {common.fmt(result['projected_full_ratio_base_over_head'])}")
    common.save("versions", result)
    return result


if __name__ == "__main__":
    main()
