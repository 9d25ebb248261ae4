"""`ablate run --workers N`: cells shared among pinned worker processes, outcomes summed, bad input refused."""

import dataclasses
import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from ablate import workers
from ablate.cli import main
from ablate.config import ConfigError, RunConfig
from ablate.store import RunStore
from ablate.study import Cell, cells, load_study
from tests.helpers import tiny_study

TWO_CORES = pytest.mark.skipif(len(workers.usable_cpus()) < 2, reason="needs two CPU cores")
ABLATE = pathlib.Path(sys.executable).parent / "ablate"


def write(tmp_path, text, name="study"):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return str(path)


def test_cpu_slices_are_disjoint_contiguous_and_balanced():
    assert workers.cpu_slices([0, 1], 2) == [[0], [1]]
    assert workers.cpu_slices([0, 1, 2, 3, 4], 3) == [[0, 1], [2, 3], [4]]
    assert workers.cpu_slices([4, 6, 7], 1) == [[4, 6, 7]]
    with pytest.raises(ValueError):
        workers.cpu_slices([0, 1], 3)


def test_workers_start_from_the_users_xla_flags_and_their_share_of_cores(monkeypatch):
    """A worker gets XLA_FLAGS as the user set it (not this process's multi-core defaults) and its share of cores,
    from which its ablate picks its own defaults (lanes too, but none on one core)."""
    from ablate import xla_flags

    monkeypatch.setattr(xla_flags, "given", "--a=1")
    env = {"XLA_FLAGS": "--a=1 --xla_cpu_experimental_ynn_fusion_type=", "B": "2"}
    assert workers.worker_env(1, env) == {"XLA_FLAGS": "--a=1", "B": "2", "ABLATE_XLA_CORES": "1",
                                          "ABLATE_LANES": "1"}  # one core: no lanes, whatever the user set
    monkeypatch.setattr(xla_flags, "given", None)
    assert workers.worker_env(3, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}) == \
        {"ABLATE_XLA_CORES": "3"}


def test_only_workers_with_several_cores_are_pinned():
    one, several = workers.worker_command([1], ["run", "s"]), workers.worker_command([2, 3], ["run", "s"])
    assert one[0] == several[0] == sys.executable and one[-2:] == several[-2:] == ["run", "s"]
    assert "sched_setaffinity(0, set())" in one[2] and "sched_setaffinity(0, {2, 3})" in several[2]


def test_more_workers_than_cores_is_refused_before_any_work(tmp_path, capsys):
    study = write(tmp_path, tiny_study(name="w", question="?", axes=dict(lr=[1e-3, 1e-2])))
    cores = len(workers.usable_cpus())
    store = tmp_path / "store"
    assert main(["run", study, "--store", str(store), "--workers", str(cores + 1), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--workers {cores + 1}: this process may use {cores} CPU core(s)" in err
    assert f"use --workers 1 to {cores}" in err
    assert not store.exists()


def test_a_cell_initialised_from_another_pending_cell_is_refused():
    source = Cell(RunConfig(epochs=2), {"epochs": 2})
    follower = Cell(dataclasses.replace(RunConfig(epochs=2), init=source.run_id, lr=0.01), {"lr": 0.01})
    with pytest.raises(ConfigError, match=f"cell {follower.run_id} initialises from run {source.run_id}"):
        workers.check_cells([source, follower])
    workers.check_cells([follower])  # its source is done (not pending): fine


MIXED = dict(name="workers", question="Do workers share a grid?",
             axes=dict(lr=[1e38, 1e-3, 3e-3]))  # lr=1e38 diverges at step 1: a failed run among finished ones


@TWO_CORES
def test_workers_run_each_cell_once_pinned_and_sum_their_outcomes(tmp_path, capsys, teacher):
    study = write(tmp_path, tiny_study(base=dict(warmup_frac=0.0), **MIXED))
    bad, *good = [c.run_id for c in cells(load_study(study))]
    store = tmp_path / "store"
    argv = ["run", study, "--store", str(store), "--wandb", "offline", "--no-progress", "--cohort-size", "1"]
    assert main([*argv, "--workers", "2"]) == 1  # one run failed
    out, err = capsys.readouterr()
    assert "2 ran, 0 already done, 1 failed, 0 being run elsewhere" in out
    assert f"run {bad}" in err and "non-finite loss at step 1" in err
    assert "[worker 0] " in err or "[worker 1] " in err  # the workers' messages, prefixed
    rs = RunStore(store)
    assert rs.status(bad)["state"] == "failed"
    for run_id in good:
        assert rs.is_done(run_id) and rs.status(run_id)["attempts"] == 1
    for run_id in (bad, *good):
        meta = json.loads((store / run_id / "config.json").read_text())["meta"]
        assert meta["cpus"] == 1 and meta["xla_flags"].split()[-1] == "--xla_cpu_multi_thread_eigen=false"
        assert meta["lanes"] == 1
        assert "ynn_fusion_type" not in meta["xla_flags"]  # one core: jax's YNNPACK path (ablate/xla_flags.py)
        assert not (store / run_id / "lock").exists()
    assert len(list((store / "wandb").glob("wandb/offline-run-*"))) == 3

    # rerun: the finished cells are not touched, the failed one is tried again (in this process: one cohort left)
    assert main([*argv, "--workers", "2"]) == 1
    assert "0 ran, 2 already done, 1 failed" in capsys.readouterr().out
    assert rs.status(bad)["attempts"] == 2 and all(rs.status(r)["attempts"] == 1 for r in good)


@TWO_CORES
def test_a_worker_that_dies_is_reported_and_its_cells_are_not_counted(tmp_path, capsys):
    study = write(tmp_path, tiny_study(name="w", question="?", axes=dict(lr=[1e-3, 1e-2])))
    grid = cells(load_study(study))
    store = RunStore(tmp_path / "store")
    outcome = workers.run_workers(2, ["run", str(tmp_path / "missing.py")], grid, store, progress=False)
    assert (outcome.stopped, outcome.ran, outcome.failed, outcome.busy) == (2, 0, 0, 2)
    err = capsys.readouterr().err
    for k in (0, 1):
        assert f"[worker {k}] ablate: error: " in err and "missing.py" in err
        assert f"ablate: error: worker {k} stopped with exit code 2 before it finished" in err


@TWO_CORES
def test_interrupting_the_workers_stops_them_and_the_rerun_finishes_the_grid(tmp_path, teacher):
    study = write(tmp_path, tiny_study(base=dict(epochs=400, num_evals=4), name="slow", question="?",
                                       axes=dict(lr=[1e-3, 3e-3])))
    ids = [c.run_id for c in cells(load_study(study))]
    store = tmp_path / "store"
    argv = [str(ABLATE), "run", study, "--store", str(store), "--wandb", "disabled", "--no-progress",
            "--cohort-size", "1", "--workers", "2"]
    # SIGINT handled as at a terminal, whatever this test process's disposition (a library may ignore it here)
    as_at_a_terminal = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execv(sys.argv[1], sys.argv[1:])"]
    proc = subprocess.Popen([*as_at_a_terminal, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not all((store / r / "history.json").exists() for r in ids):  # both workers are training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("interrupted; rerun the same command to resume") == 3  # two workers and the parent
    assert not any((store / r / "lock").exists() for r in ids)
    done = sum(RunStore(store).is_done(r) for r in ids)  # 0 unless a worker had just finished its cell

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{2 - done} ran, {done} already done, 0 failed" in rerun.stdout
    assert all(RunStore(store).is_done(r) for r in ids)


def test_workers_need_no_idle_cores_for_a_single_cell(tmp_path, capsys, teacher):
    """One cell to run: it runs in this process on every core, not in a one-core worker."""
    study = write(tmp_path, tiny_study(name="one", question="?"))
    store = tmp_path / "store"
    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress", "--workers",
                 str(len(workers.usable_cpus()))]) == 0
    assert "1 ran" in capsys.readouterr().out
    (run_id,) = [c.run_id for c in cells(load_study(study))]
    meta = json.loads((store / run_id / "config.json").read_text())["meta"]
    from ablate import lanes, xla_flags

    assert meta["cpus"] == len(workers.usable_cpus())
    assert meta["xla_flags"] == xla_flags.in_effect  # this process's flags, not a one-core worker's
    assert meta["lanes"] == lanes.count(50)  # tiny_study's batches of 50 split over this process's lanes
