"""`ablate run --workers N`: one study's cells shared among N local processes, each with its share of the CPU cores.

XLA's CPU convolutions at ablate's model sizes use a second core poorly (a
funmatch step on two cores is about 1.5x one core), and a single-threaded
process can take jax's YNNPACK path, the faster one on one core
(ablate/xla_flags.py), so two one-core processes train more cells per hour
than one two-core process (benchmarks/bench_workers.py, benchmarks/README.md).
Each worker is a plain `ablate run` of the same study on the same store: the
store's lock files decide which worker trains which cell, exactly as for two
runners started by hand (docs/reliability.md). This process shows one bar
over the grid, passes the workers' messages on, prefixed, and adds up their
outcomes.

Float rounding depends on the XLA path and the number of threads, so a
worker's runs are deterministic but not bit-identical to the same runs
trained by a process on several cores; each run's `meta/cpus` and
`meta/xla_flags` say how it was trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

from ablate import xla_flags
from ablate.config import ConfigError
from ablate.store import StoreError
from ablate.study import Cell, Outcome
from ablate.xla_flags import usable_cpus


def check_count(workers: int) -> None:
    """`--workers` must not exceed the cores: two workers on one core only slow each other down."""
    cpus = usable_cpus()
    if workers > len(cpus):
        raise ConfigError(f"--workers {workers}: this process may use {len(cpus)} CPU core(s) "
                          f"({', '.join(map(str, cpus))}), and each worker needs one of its own; "
                          f"use --workers 1 to {len(cpus)}")


def check_cells(pending: Sequence[Cell]) -> None:
    """Workers train cells in any order, so no pending cell may initialise from another pending one."""
    ids = {c.run_id for c in pending}
    for cell in pending:
        if cell.config.init in ids:
            raise ConfigError(f"--workers: cell {cell.run_id} initialises from run {cell.config.init}, which is "
                              "also still to run, and workers cannot wait for each other; run the grid once "
                              "without --workers (or train that run first)")


def cpu_slices(cpus: Sequence[int], n: int) -> list[list[int]]:
    """`cpus` cut into n contiguous slices whose sizes differ by at most one."""
    if not 1 <= n <= len(cpus):
        raise ValueError(f"cannot cut {len(cpus)} cores into {n} slices")
    size, extra = divmod(len(cpus), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (k < extra)
        out.append(list(cpus[start:end]))
        start = end
    return out


def run_workers(n: int, command: Sequence[str], cells_: Sequence[Cell], store, progress: bool = True,
                desc: str = "grid") -> Outcome:
    """Run `ablate COMMAND...` (a `run` command line, which gets --worker-outcome) as n processes sharing the cores.

    Returns the outcome summed over `cells_`; `stopped` counts workers that
    did not end normally (crashed or killed: their unfinished cells run again
    when the same command is rerun), each also reported on stderr.
    """
    from tqdm.auto import tqdm

    before = {c.run_id: _status(store, c.run_id) for c in cells_}
    total = Outcome(skipped=sum(store.is_done(c.run_id) for c in cells_))
    bar = tqdm(total=len(cells_), initial=total.skipped, desc=f"{desc}, {n} workers", unit="run",
               disable=not progress, dynamic_ncols=True)
    say = lambda line: bar.write(line, file=sys.stderr)  # noqa: E731  (keeps the bar below the messages)
    procs, readers, slices = [], [], cpu_slices(usable_cpus(), n)
    with tempfile.TemporaryDirectory(prefix="ablate-workers-") as tmp:
        outcome_files = [pathlib.Path(tmp) / f"worker{k}.json" for k in range(n)]
        try:
            for k, cpus in enumerate(slices):
                procs.append(subprocess.Popen(
                    worker_command(cpus, [*command, "--worker-outcome", str(outcome_files[k])]),
                    env=worker_env(len(cpus)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, text=True))
                readers.append(threading.Thread(target=_forward, args=(procs[-1].stderr, f"[worker {k}] ", say),
                                                daemon=True))
                readers[-1].start()
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                bar.n = _finished(store, cells_, before)
                bar.refresh()
            bar.n = _finished(store, cells_, before)
        except BaseException:  # Ctrl-C (or an error here): the workers stop too, as `ablate run` does, resumable
            _stop(procs)
            raise
        finally:
            for t in readers:
                t.join(timeout=5)
            bar.close()
        for k, (proc, path) in enumerate(zip(procs, outcome_files)):
            try:
                got = json.loads(path.read_text())
            except (OSError, ValueError):
                total.stopped += 1
                print(f"ablate: error: worker {k} stopped with exit code {proc.returncode} before it finished; its "
                      "messages are above, and the cells it held run again when you rerun the same command",
                      file=sys.stderr)
                continue
            total.ran += got["ran"]
            total.failed += got["failed"]
    total.busy = max(0, len(cells_) - total.skipped - total.ran - total.failed)
    return total


def _status(store, run_id: str) -> tuple[str | None, int]:
    """A cell's state and attempts so far, from one read of its status file (damaged or missing: none)."""
    try:
        status = store.status(run_id) or {}
    except StoreError:
        status = {}
    return status.get("state"), int(status.get("attempts", 0))


def _finished(store, cells_: Sequence[Cell], before: dict) -> int:
    """Cells done, or failed in an attempt made since `before`: what the bar counts."""
    n = 0
    for c in cells_:
        state, attempts = _status(store, c.run_id)
        n += state == "done" or (state == "failed" and attempts > before[c.run_id][1])
    return n


_BOOT = """\
import os, runpy, sys
if {cpus!r} and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cpus!r})
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the parent's SIGINT is ignored (nohup, &)
try:  # SIGINT when the parent dies (Linux: prctl PR_SET_PDEATHSIG)
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGINT)
except Exception:
    pass
if os.getppid() != {parent}:  # the parent died before prctl took effect
    sys.exit(130)
sys.argv = ["ablate", *sys.argv[1:]]
runpy.run_module("ablate", run_name="__main__")
"""


def worker_command(cpus: Sequence[int], argv: Sequence[str]) -> list[str]:
    """A command line running `python -m ablate argv...` as a worker with the share `cpus`, interrupted if this
    process dies.

    A share of several cores is pinned (the interpreter pins itself before
    importing anything, so every thread it starts later inherits the mask),
    which bounds the threads of its XLA. A one-core worker is single-threaded,
    and left unpinned: the scheduler spreads such processes over the cores by
    itself and can move one off a core that something else is using. On Linux
    the worker also asks for SIGINT when its parent dies, so killing
    `ablate run --workers` stops its workers as Ctrl-C does (resumable),
    instead of leaving them running.
    """
    pin = set(cpus) if len(cpus) > 1 else set()
    return [sys.executable, "-c", _BOOT.format(cpus=pin, parent=os.getpid()), *argv]


def worker_env(cores: int, environ: dict | None = None) -> dict:
    """A worker's environment: XLA_FLAGS as the user gave it, and its share of cores, from which its ablate picks
    its own XLA defaults (ablate.xla_flags: one core, single-threaded on jax's YNNPACK path, in no lanes)."""
    env = {**xla_flags.as_given(os.environ if environ is None else environ), xla_flags.CORES: str(cores)}
    if cores == 1:
        env[xla_flags.LANES] = "1"
    return env


def _forward(stream, prefix: str, say: Callable[[str], None]) -> None:
    for line in stream:
        say(prefix + line.rstrip("\n"))


def _stop(procs: list[subprocess.Popen], grace_s: float = 90.0, every_s: float = 10.0) -> None:
    """Interrupt the workers still alive (each then ends like an interrupted `ablate run`), kill any that linger.

    A Ctrl-C at a terminal reaches the workers too, so they get `every_s`
    seconds to end by themselves before they are sent SIGINT (a second signal
    could cut short a worker's clean-up). SIGINT is repeated every `every_s`
    seconds: Python drops a KeyboardInterrupt raised inside a garbage-collection
    callback (jax has one), so one signal does not always stop a worker.
    """
    deadline = time.monotonic() + grace_s
    while True:
        step_end = min(time.monotonic() + every_s, deadline)
        for p in procs:
            try:
                p.wait(timeout=max(0.0, step_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        alive = [p for p in procs if p.poll() is None]
        if not alive or time.monotonic() >= deadline:
            break
        for p in alive:
            p.send_signal(signal.SIGINT)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def write_outcome(path: str, outcome: Outcome) -> None:
    """What a worker tells the process that started it (see `run_workers`)."""
    pathlib.Path(path).write_text(json.dumps(dataclasses.asdict(outcome)))
