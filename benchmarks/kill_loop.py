"""Kill loop: `ablate run` killed with SIGKILL at random moments, N times in a row, then run to the end.

Each round starts `ablate run STUDY` on one store and kills it (kill -9, no
chance to clean up) after a delay drawn uniformly from [--min-delay,
--max-delay] seconds; after every kill the store is checked: every JSON file
must parse (no half-written file) and no run folder may read as damaged. Then
one last run, not killed, must complete the study, and the store is checked
for what matters:

* lost: cells of the grid that are not done;
* duplicated: run folders that are not cells of the grid, cells with repeated
  history steps, W&B run ids that are not cells (each cell has one W&B id;
  several offline folders of the same id are resumes of that one run);
* damaged: files that did not parse after a kill or at the end.

All three must be 0. It prints a one-line summary and writes JSON (default
benchmarks/results/kill_loop-DATE.json).

    .venv/bin/python -m benchmarks.kill_loop                      # consistency --preset quick, 20 kills
    .venv/bin/python benchmarks/kill_loop.py STUDY.py --no-preset -n 3 --max-delay 30 --out kill.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ablate` importable from the checkout
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", nargs="?", default="consistency", help="study name or file (default: consistency)")
    p.add_argument("--preset", default=None, help="preset (default: quick for the consistency study)")
    p.add_argument("--no-preset", action="store_true", help="run the study without a preset")
    p.add_argument("-n", "--kills", type=int, default=20, help="kill/rerun rounds before the final run (default 20)")
    p.add_argument("--min-delay", type=float, default=1.0, help="shortest delay before a kill, seconds (default 1)")
    p.add_argument("--max-delay", type=float, default=60.0, help="longest delay before a kill, seconds (default 60)")
    p.add_argument("--seed", type=int, default=None, help="seed of the delays (default: random, recorded)")
    p.add_argument("--store", default=None, help="run store (default: a new temporary folder)")
    p.add_argument("--wandb", default="offline", choices=["offline", "disabled"],
                   help="W&B mode of the runs (default offline: W&B ids are checked too)")
    p.add_argument("--final-timeout", type=float, default=24 * 3600, help="limit of the final run, seconds")
    p.add_argument("--out", default=None, help="JSON file to write (default benchmarks/results/kill_loop-DATE.json)")
    args = p.parse_args(argv)
    if args.no_preset:
        args.preset = None
    elif args.preset is None and args.study == "consistency":
        args.preset = "quick"
    if args.kills < 0 or not 0 <= args.min_delay <= args.max_delay:
        p.error("need -n >= 0 and 0 <= --min-delay <= --max-delay")
    return args


def ablate_cmd(args, store: pathlib.Path) -> list[str]:
    exe = pathlib.Path(sys.executable).with_name("ablate")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ablate.cli"]
    cmd += ["run", args.study, "--store", str(store), "--wandb", args.wandb, "--no-progress"]
    return cmd + (["--preset", args.preset] if args.preset else [])


def start(cmd: list[str], log: pathlib.Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill9(proc: subprocess.Popen) -> bool:
    """SIGKILL the run (True if it was still running), then what it left in its process group (W&B service)."""
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return alive


def damaged_files(store: pathlib.Path) -> list[str]:
    """JSON files of the store (W&B's own folder aside) that do not parse."""
    bad = []
    for path in store.rglob("*.json"):
        if "wandb" in path.relative_to(store).parts:
            continue
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            bad.append(str(path.relative_to(store)))
    return bad


def check(store: pathlib.Path, expected: list[str]) -> dict:
    """What was lost, duplicated or damaged in the store, against the grid's run ids."""
    from ablate.store import RunStore

    rs = RunStore(store)
    present = rs.run_ids()
    done = [r for r in expected if rs.is_done(r)]
    dup_steps = {}
    for r in done:
        steps = [h["step"] for h in rs.history(r)]
        if len(steps) != len(set(steps)):
            dup_steps[r] = steps
    wandb_root = store / "wandb" / "wandb"
    wandb_ids = sorted({d.name.rsplit("-", 1)[1] for d in wandb_root.glob("offline-run-*")})
    attempts = {r: (rs.status(r) or {}).get("attempts") for r in done}
    out = {
        "cells": len(expected),
        "done": len(done),
        "lost": sorted(set(expected) - set(done)),
        "extra_run_folders": sorted(set(present) - set(expected)),
        "duplicate_steps": dup_steps,
        "damaged": damaged_files(store) + [r for r in present if rs.record(r)["status"] == "damaged"],
        "attempts": attempts,
        "leftover_locks": sorted(p.parent.name for p in store.glob("*/lock")),
    }
    if (store / "wandb").exists():
        out["wandb_extra_ids"] = sorted(set(wandb_ids) - set(expected))
        out["wandb_missing_ids"] = sorted(set(done) - set(wandb_ids))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from ablate.study import cells, load_study

    expected = [c.run_id for c in cells(load_study(args.study), args.preset)]
    store = pathlib.Path(args.store or tempfile.mkdtemp(prefix="kill_loop-")).absolute()
    logs = store.parent / f"{store.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    cmd = ablate_cmd(args, store)
    print(f"kill_loop: {' '.join(cmd)}; {args.kills} kills after {args.min_delay:g}-{args.max_delay:g} s "
          f"(seed {seed}); {len(expected)} cells; logs in {logs}", flush=True)

    rounds, damaged_after_kill = [], []
    t_start = time.time()
    for i in range(args.kills):
        delay = rng.uniform(args.min_delay, args.max_delay)
        proc = start(cmd, logs / f"round-{i:03d}.log")
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < delay:
            time.sleep(0.05)
        killed = kill9(proc)
        bad = damaged_files(store)
        damaged_after_kill += bad
        done = check(store, expected)["done"] if store.exists() else 0
        rounds.append({"round": i, "delay_s": round(delay, 2), "killed": killed,
                       "rc": None if killed else proc.returncode, "done_after": done, "damaged": bad})
        print(f"  round {i + 1}/{args.kills}: {'killed' if killed else 'exited (rc %s)' % proc.returncode} "
              f"after {delay:.1f} s; {done}/{len(expected)} cells done" + (f"; DAMAGED {bad}" if bad else ""),
              flush=True)

    t0 = time.monotonic()
    final = start(cmd, logs / "final.log")
    try:
        rc = final.wait(timeout=args.final_timeout)
    except subprocess.TimeoutExpired:
        kill9(final)
        rc = "timeout"
    final_s = time.monotonic() - t0
    result = check(store, expected)
    text = "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))
    resumes = text.count("resuming run")
    duplicated = (len(result["extra_run_folders"]) + len(result["duplicate_steps"])
                  + len(result.get("wandb_extra_ids", [])) + len(result.get("wandb_missing_ids", [])))
    damaged = len(result["damaged"]) + len(damaged_after_kill)
    ok = rc == 0 and not result["lost"] and not duplicated and not damaged and not result["leftover_locks"]
    summary = (f"kill_loop {'OK' if ok else 'FAILED'}: {args.study}"
               + (f" --preset {args.preset}" if args.preset else "")
               + f", {sum(r['killed'] for r in rounds)}/{args.kills} rounds killed (seed {seed}), "
               f"final run rc={rc} in {final_s:.0f} s: {result['done']}/{len(expected)} cells done, "
               f"{len(result['lost'])} lost, {duplicated} duplicated, {damaged} damaged, {resumes} resumes "
               f"from a checkpoint; store {store.name}")
    # the JSON names no path of this machine: the store and the executable by their last component only
    shown_cmd = [pathlib.Path(c).name if os.sep in c else c for c in cmd]
    payload = {"study": args.study, "preset": args.preset, "kills": args.kills, "seed": seed,
               "delays_s": [args.min_delay, args.max_delay], "wandb": args.wandb, "store": store.name,
               "command": shown_cmd, "ok": ok, "final_rc": rc, "final_s": final_s, "total_s": time.time() - t_start,
               "lost": len(result["lost"]), "duplicated": duplicated, "damaged": damaged, "resumes": resumes,
               "rounds": rounds, "check": result, "summary": summary}
    print(summary)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"wrote {out}")
    else:
        from benchmarks import common

        common.save("kill_loop", payload)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
