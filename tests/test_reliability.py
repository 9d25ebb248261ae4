"""Reliability: studies survive kills, concurrency, bad input and numerical faults, and lose nothing.

The expensive work is done once per module by two fixtures, and the tests check
properties of their results: `reference` runs the study uninterrupted with W&B
failing; `killed` kills `ablate run` three times with SIGKILL, then finishes the
study with two `ablate run` processes at once. Every run is a tiny study:
teacher fmnist_xs, resnet_xs, 5 images per class, 8 steps, evaluations (and
checkpoints) at steps 4 and 8.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import random
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ablate.cli import main
from ablate.store import RunStore
from ablate.study import cells, load_study
from benchmarks.kill_loop import kill9
from tests.helpers import no_time

# a checkpoint that fails to restore leaves orbax read coroutines that are never awaited: expected, not a problem
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ABLATE = pathlib.Path(sys.executable).with_name("ablate")
SECRET = "rel" + secrets.token_hex(24)  # a W&B API key that must never show up anywhere
TIMEOUT_S = 900

STUDY = textwrap.dedent("""
    from ablate.study import Study, variant

    STUDY = Study(
        name="rel",
        question="Does a study survive kills, concurrency and faults?",
        base=dict(teacher="fmnist_xs", model="resnet_xs", subset_per_class=5, batch_size=25, epochs=4,
                  num_evals=2, lr=1e-2),
        axes=dict(policy=["fix/rs", variant("supervised", policy="supervised", loss="label_ce", teacher=None)]),
        presets=dict(seed1=dict(seeds=2)),
    )
""")

DIVERGING = textwrap.dedent("""
    from ablate.study import Study

    STUDY = Study(
        name="diverge",
        question="Does a diverging run stop, fail cleanly and leave the rest of the study alone?",
        base=dict(teacher=None, policy="supervised", loss="label_ce", model="resnet_xs", subset_per_class=5,
                  batch_size=25, epochs=2, num_evals=2, warmup_frac=0.0),
        axes=dict(lr=[1e38, 1e-2]),  # lr=1e38: the first update overflows float32, the loss is NaN at step 1
    )
""")


def write(folder, name, text):
    path = pathlib.Path(folder) / f"{name}.py"
    path.write_text(text)
    return str(path)


def ids_of(study_file, preset=None):
    return [c.run_id for c in cells(load_study(study_file), preset)]


def launch(study, store, log, *flags):
    """`ablate run STUDY` as a child process (its own process group), output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen([str(ABLATE), "run", study, "--store", str(store), "--no-progress", *flags],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc):
    try:
        return proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise


@contextlib.contextmanager
def capture_all(path):
    """Send this process's output, Python-level and file descriptors 1 and 2 (child processes, C code), to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "w", buffering=1) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            f.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def tree_digest(folder):
    """path -> SHA-256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def checkpoint_steps(store):
    return [p for p in pathlib.Path(store).glob("*/checkpoints/*") if p.name.isdigit()]


def assert_store_complete(store, ids, steps=(0, 4, 8)):
    """Every cell once, done, with parseable files, a history without duplicate steps and a consistent summary."""
    store = pathlib.Path(store)
    for path in store.rglob("*.json"):
        if "wandb" not in path.relative_to(store).parts:
            json.loads(path.read_text())  # no half-written file anywhere
    rs = RunStore(store)
    assert rs.run_ids() == sorted(ids)
    assert not list(store.glob("*/lock")), "a lock outlived its process"
    for run_id in ids:
        assert rs.is_done(run_id), rs.status(run_id)
        hist = rs.history(run_id)
        assert [r["step"] for r in hist] == list(steps)
        summary = json.loads((store / run_id / "summary.json").read_text())
        assert summary["last/val/acc"] == hist[-1]["val/acc"]
        assert summary["best/val/acc"] == max(r["val/acc"] for r in hist)
        assert summary["total_steps"] == steps[-1]


def wandb_ids(store):
    """The run ids of the offline W&B runs (folders offline-run-DATE-ID) under a store."""
    return [d.name.rsplit("-", 1)[1] for d in (pathlib.Path(store) / "wandb" / "wandb").glob("offline-run-*")]


# ----------------------------------------------------------------------------- the shared runs

@pytest.fixture(scope="module")
def work(teacher, tmp_path_factory):
    """A folder with the study file; `teacher` makes sure the child processes find the trained teacher."""
    tmp = tmp_path_factory.mktemp("reliability")
    return tmp, write(tmp, "rel", STUDY)


@pytest.fixture(scope="module")
def reference(work):
    """The study run once, uninterrupted, in this process, with W&B failing: online, a bad key, and a server
    nobody listens on. Its output (every byte, child processes included) is kept."""
    import wandb

    from ablate.tracking import WandbSink

    tmp, study = work
    wandb.teardown()  # a fresh W&B setup that reads the environment below
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        mp.setenv("WANDB_API_KEY", SECRET)
        mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
        mp.setenv("ABLATE_WANDB_INIT_TIMEOUT", "5")
        mp.setattr(WandbSink, "_warned", False)
        mp.setattr(WandbSink, "_fallback", None)
        try:
            with capture_all(tmp / "ref.log"):
                rc = main(["run", study, "--store", str(tmp / "ref"), "--wandb", "online", "--no-progress"])
        finally:
            wandb.teardown()
    return {"store": tmp / "ref", "rc": rc, "log": (tmp / "ref.log").read_text(), "ids": ids_of(study)}


@pytest.fixture(scope="module")
def killed(work, reference):
    """The study killed with SIGKILL three times (right after its first checkpoint is committed, then after
    random delays, or as soon as only one cell is left), then finished by two `ablate run` processes started at
    once."""
    tmp, study = work
    store = tmp / "killed"
    rs = RunStore(store)

    def one_cell_left():  # the two final processes must have work to share
        return sum(rs.is_done(r) for r in reference["ids"]) >= len(reference["ids"]) - 1

    seed = int(os.environ.get("ABLATE_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    logs = []
    for attempt in range(3):
        log = tmp / f"killed-{attempt}.log"
        proc = launch(study, store, log, "--wandb", "offline")
        t0 = time.monotonic()
        delay = rng.uniform(1.0, 20.0)
        while proc.poll() is None and time.monotonic() - t0 < TIMEOUT_S:
            if attempt == 0 and checkpoint_steps(store):
                break  # the first checkpoint is committed: kill now, mid-run
            if attempt > 0 and (time.monotonic() - t0 > delay or one_cell_left()):
                break
            time.sleep(0.05)
        kill9(proc)
        logs.append(log.read_text())
    before = {r: (rs.is_done(r), (rs.status(r) or {}).get("attempts", 0)) for r in reference["ids"]}
    procs = [launch(study, store, tmp / f"final-{i}.log", "--wandb", "offline") for i in range(2)]
    rcs = [finish(p) for p in procs]
    finals = [(tmp / f"final-{i}.log").read_text() for i in range(2)]
    return {"store": store, "rcs": rcs, "logs": logs + finals, "finals": finals, "before": before, "seed": seed}


# ----------------------------------------------------------------------------- kills

def test_kill9_then_rerun_completes_the_study_and_loses_nothing(killed, reference):
    """After three SIGKILLs, rerunning finishes the study: each cell once in the store, whole files only,
    and one W&B id per cell (resumed under its id, never a second id)."""
    assert killed["rcs"] == [0, 0], f"kill seed {killed['seed']}:\n" + "\n".join(killed["finals"])
    ids = reference["ids"]
    assert_store_complete(killed["store"], ids)
    found = wandb_ids(killed["store"])
    assert set(found) == set(ids), f"W&B run ids {sorted(set(found))}, cells {sorted(ids)}"
    assert "ablate: error" not in "".join(killed["logs"])


def test_resume_through_the_cli_is_exact(killed, reference):
    """A run killed after its first checkpoint resumes from it, and every cell ends exactly like the
    uninterrupted reference run (all metrics and history rows equal; only timings differ)."""
    logs = "".join(killed["logs"][1:])
    assert "resuming run" in logs and "from its checkpoint at step 4" in logs, f"kill seed {killed['seed']}"
    ref, got = RunStore(reference["store"]), RunStore(killed["store"])
    for run_id in reference["ids"]:
        assert no_time(got.record(run_id)) == no_time(ref.record(run_id))
        assert [no_time(r) for r in got.history(run_id)] == [no_time(r) for r in ref.history(run_id)]


# ----------------------------------------------------------------------------- concurrency

def test_two_processes_on_one_study_never_run_a_cell_twice(killed, reference):
    """The two processes that finished the killed study ran at once: together they finished the grid, and
    each cell that was not done was started exactly once (one more attempt, no repeated history steps)."""
    assert killed["rcs"] == [0, 0], killed["finals"]
    ids = reference["ids"]
    assert_store_complete(killed["store"], ids)
    store = RunStore(killed["store"])
    todo = [r for r in ids if not killed["before"][r][0]]
    assert todo, "every cell was done before the two processes started"
    for run_id in ids:
        started = store.status(run_id)["attempts"] - killed["before"][run_id][1]
        assert started == (1 if run_id in todo else 0), (run_id, killed["before"], killed["finals"])
    ran = [int(log.split(" ran,")[0].rsplit(" ", 1)[1]) for log in killed["finals"]]
    assert sum(ran) == len(todo), killed["finals"]


def test_claim_then_recheck_closes_the_race(work, reference, tmp_path):
    """A cell finished by another process between the is_done check and the claim is skipped, not rerun."""
    from ablate.runner import Runner

    _, study = work
    store = tmp_path / "store"
    shutil.copytree(reference["store"], store, ignore=shutil.ignore_patterns("wandb"))
    cell = cells(load_study(study))[0]
    runner = Runner(RunStore(store), "disabled", progress=False)
    before = tree_digest(store)
    assert runner.run(cell, group="rel") == "skipped"
    assert tree_digest(store) == before
    assert not (store / cell.run_id / "lock").exists()


def test_a_dead_lock_on_a_done_run_is_cleared_by_the_next_study_run(work, reference, tmp_path, capsys):
    """A process killed between marking its run done and dropping the lock leaves a dead lock: rerunning the study
    clears it, reruns nothing, and a live process's lock is left alone."""
    _, study = work
    store = tmp_path / "store"
    shutil.copytree(reference["store"], store, ignore=shutil.ignore_patterns("wandb"))
    dead, alive = reference["ids"]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that has exited
    (store / dead / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": child.pid, "start": 1}))
    live = {"host": socket.gethostname(), "pid": os.getppid()}
    (store / alive / "lock").write_text(json.dumps(live))
    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0
    assert "0 ran, 2 already done" in capsys.readouterr().out
    assert not (store / dead / "lock").exists()
    assert json.loads((store / alive / "lock").read_text()) == live


# ----------------------------------------------------------------------------- numerical faults

def test_non_finite_loss_fails_the_run_and_the_study_goes_on(tmp_path, capsys):
    """lr=1e38 overflows: that run stops, is marked failed with step and reason, the next cell still runs,
    and `ablate report` / `ablate compare` show the failure."""
    study = write(tmp_path, "diverge", DIVERGING)
    store = tmp_path / "store"
    bad, good = ids_of(study)
    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "1 ran, 0 already done, 1 failed" in captured.out
    assert f"run {bad}" in captured.err and "non-finite loss at step 1" in captured.err
    rs = RunStore(store)
    assert rs.status(bad)["state"] == "failed"
    assert rs.status(bad)["failed_step"] == 1 and rs.status(bad)["reason"] == "non-finite loss at step 1"
    assert rs.is_done(good)

    out = tmp_path / "report"
    assert main(["report", study, "--store", str(store), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "1 of 2 runs finished" in text
    section = text.split("## Runs that did not finish", 1)[1]
    assert f"| {bad} | failed | 1 | non-finite loss at step 1 |" in section
    assert good not in section

    csv = tmp_path / "cmp.csv"
    assert main(["compare", "meta/study=diverge", "--store", str(store), "--csv", str(csv)]) == 0
    assert "failed" in capsys.readouterr().out
    import pandas as pd

    table = pd.read_csv(csv)
    assert dict(zip(table.lr, table.failed)) == {1e38: 1, 1e-2: 0}
    assert dict(zip(table.lr, table.n)) == {1e38: 0, 1e-2: 1}


# ----------------------------------------------------------------------------- bad input

def test_batch_larger_than_the_training_set_exits_2_before_any_work(tmp_path, capsys):
    """A cell whose batch exceeds its subset is refused up front (exit 2), naming the cell and the sizes."""
    bad = write(tmp_path, "big_batch", STUDY.replace("batch_size=25", "batch_size=100"))
    store = tmp_path / "store"
    assert main(["run", bad, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "batch_size 100 is larger than its 50 training examples (subset_per_class=5 x 10 classes)" in err
    assert "policy=fix/rs" in err
    assert not store.exists()


def test_missing_dataset_files_exit_2_with_the_ways_to_get_them(tmp_path, monkeypatch, capsys):
    """$ABLATE_DATA_DIR pointing at an empty folder (and no other copy): exit 2 naming the three ways."""
    from ablate.data import fashion_mnist

    study = write(tmp_path, "rel", STUDY)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ABLATE_DATA_DIR", str(empty))
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-copy")
    store = tmp_path / "store"
    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"$ABLATE_DATA_DIR={empty} lacks" in err
    assert "(1) point $ABLATE_DATA_DIR" in err and "(2) on Debian/Ubuntu" in err and "(3) let ablate download" in err
    assert "Traceback" not in err
    assert not store.exists()


# ----------------------------------------------------------------------------- corrupted artefacts

def test_damaged_target_cache_is_detected_by_checksum_and_recomputed(teacher, fmnist):
    """A single flipped byte in a cached target array (or a lost checksum) is reported with the path and recomputed."""
    from ablate import paths
    from ablate.teachers import source_id, targets_key, teacher_logits

    source = fmnist.train.take(np.arange(700, 760))
    good = teacher_logits(teacher, source, "rs", log=pytest.fail)
    path = paths.targets_dir() / f"{targets_key(teacher, source_id(source), 'rs')}.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # one bit of one logit: still a valid .npy of the right shape
    path.write_bytes(bytes(raw))
    assert np.load(path).shape == good.shape and not np.array_equal(np.load(path), good)
    messages = []
    np.testing.assert_array_equal(teacher_logits(teacher, source, "rs", log=messages.append), good)
    assert len(messages) == 1 and str(path) in messages[0] and "SHA-256" in messages[0]
    np.testing.assert_array_equal(np.load(path), good)  # rewritten
    path.with_name(path.name + ".sha256").unlink()
    np.testing.assert_array_equal(teacher_logits(teacher, source, "rs", log=messages.append), good)
    assert len(messages) == 2 and "missing" in messages[1]
    assert teacher_logits(teacher, source, "rs", log=pytest.fail) is not None  # whole again


def test_damaged_run_folder_and_checkpoint(work, reference, tmp_path, capsys):
    """Garbage status.json: report/compare/frame show the run as damaged with its path, the other run is
    unaffected. A truncated checkpoint of an interrupted run is reported, discarded and the run restarted.
    `ablate run` then rewrites both, ending exactly like the reference."""
    _, study = work
    store = tmp_path / "store"
    shutil.copytree(reference["store"], store, ignore=shutil.ignore_patterns("wandb"))
    a, b = reference["ids"]
    # a: interrupted after its last checkpoint, which is then truncated
    (store / a / "summary.json").unlink()
    status = json.loads((store / a / "status.json").read_text())
    (store / a / "status.json").write_text(json.dumps({**status, "state": "running"}))
    ckpt = next((store / a / "checkpoints").iterdir())
    biggest = max((p for p in ckpt.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    # b: status.json overwritten with garbage
    (store / b / "status.json").write_text("{\"state\": \"do")

    frame = RunStore(store).frame().set_index("run_id")
    assert frame.loc[b, "status"] == "damaged" and str(store / b / "status.json") in frame.loc[b, "reason"]
    assert frame.loc[a, "status"] == "running" and frame.loc[a, "policy"] in ("fix/rs", "supervised")
    out = tmp_path / "report"
    assert main(["report", study, "--store", str(store), "--out", str(out)]) == 0
    assert f"warning: run {b} is damaged: {store / b / 'status.json'}" in capsys.readouterr().err
    section = (out / "report.md").read_text().split("## Runs that did not finish", 1)[1]
    assert f"| {b} | damaged | - | {store / b / 'status.json'} is damaged" in section
    assert f"| {a} | running |" in section
    assert main(["compare", "--store", str(store)]) == 0
    printed = capsys.readouterr().out
    assert f"warning: run {b} is damaged: {store / b / 'status.json'}" in printed

    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} is damaged" in err and "restarting the run from scratch" in err
    (warning,) = [line for line in err.splitlines() if f"checkpoint {ckpt} is damaged" in line]
    assert len(warning) < len(str(ckpt)) + 300, warning  # the reason in one short line, no TensorStore spec or repr
    assert not any(noise in warning for noise in ("tensorstore_spec", "source locations", "object at 0x"))
    assert f"{store / b / 'status.json'} was damaged" in err
    assert_store_complete(store, reference["ids"])
    ref = RunStore(reference["store"])
    for run_id in (a, b):
        assert no_time(RunStore(store).record(run_id)) == no_time(ref.record(run_id))


# ----------------------------------------------------------------------------- W&B, output folders, secrets

def test_wandb_failing_never_costs_a_run(reference):
    """Online W&B with a bad key and no server: the study completes, the local store is complete, the runs
    fall back to offline W&B files, and the user is told once, in one line (W&B's own output included)."""
    assert reference["rc"] == 0, reference["log"]
    assert_store_complete(reference["store"], reference["ids"])
    assert set(wandb_ids(reference["store"])) == set(reference["ids"])
    lines = [line for line in reference["log"].splitlines() if "W&B" in line or "wandb" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("warning: W&B online logging failed"), lines
    assert "offline" in lines[0] and "wandb sync" in lines[0]


def test_wandb_init_is_bounded_and_falls_back_to_offline_once(tmp_path, monkeypatch, capsys):
    """An unreachable W&B server costs at most the init timeout, once: later runs go straight to offline files,
    and the one warning names no credential."""
    import wandb

    from ablate.tracking import WandbSink

    monkeypatch.setattr(WandbSink, "_warned", False)
    monkeypatch.setattr(WandbSink, "_fallback", None)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ABLATE_WANDB_INIT_TIMEOUT", "2")
    try:
        t0 = time.perf_counter()
        for run_id in ("relsink1", "relsink2"):
            sink = WandbSink("online", "ablate", None, tmp_path / "wandb")
            sink.start(run_id, {"lr": 0.1}, group="g", job_type="distill", tags=[])
            assert sink.run is not None  # the offline fallback
            sink.log({"step": 0, "val/acc": 0.5})
            sink.finish({"best/val/acc": 0.5})
        assert time.perf_counter() - t0 < 60
    finally:
        wandb.teardown()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "W&B online logging failed" in err and SECRET not in err
    assert sorted(wandb_ids(tmp_path)) == ["relsink1", "relsink2"]


def test_a_killed_wandb_run_leaves_its_temporary_folders_in_the_store_not_the_system_temp(tmp_path):
    """wandb makes tmp*wandb-media and tmp*wandb-artifacts folders on import that only a clean exit removes: a
    process killed mid-run leaves them in the store's W&B folder, and none in the system's temporary folder."""
    temp = tmp_path / "system-temp"
    temp.mkdir()
    code = ("import os, pathlib, signal\n"
            "from ablate.tracking import WandbSink\n"
            "sink = WandbSink('offline', 'ablate', None, pathlib.Path(os.environ['W']))\n"
            "sink.start('killed1', {'lr': 0.1}, group='g', job_type='distill', tags=[])\n"
            "sink.log({'step': 0, 'val/acc': 0.5})\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "TMPDIR": str(temp),
           "W": str(tmp_path / "store" / "wandb")}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=300).returncode == -9
    # (the W&B service's own socket folder, wandb-PID-..., goes when that service sees its parent gone)
    assert not [p.name for p in temp.iterdir() if p.name.startswith("tmp") and "wandb-" in p.name]
    assert {p.name[-len("wandb-media"):] for p in (tmp_path / "store" / "wandb" / "tmp").iterdir()} >= {
        "wandb-media"}


def test_unusable_store_is_a_clear_error_and_loses_nothing(work, reference, tmp_path, capsys):
    """A store that is a file, lies under one, or is read-only: exit 2 naming the path and what to do, before any
    run, for every command; a report path under a file: exit 1 naming it; other stores untouched."""
    _, study = work
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = tree_digest(reference["store"])
    hint = "choose another folder with --store or $ABLATE_STORE"
    for store, problem in ((blocker, f"{blocker} is a file, not a folder, so it cannot be the run store"),
                           (blocker / "store", f"{blocker} is a file, not a folder, so the run store "
                                               f"{blocker / 'store'} cannot be made inside it")):
        for command in (["run", study, "--wandb", "disabled", "--no-progress"],
                        ["distill", "--wandb", "disabled", "--no-progress"],
                        ["report", study, "--out", str(tmp_path / "report")], ["compare"], ["findings"]):
            assert main([*command, "--store", str(store)]) == 2, command
            err = capsys.readouterr().err
            assert f"ablate: error: {problem}; {hint}" in err, (command, err)
    assert not (tmp_path / "report").exists()
    assert main(["report", study, "--store", str(tmp_path / "nowhere")]) == 2
    assert f"run store {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["run", study, "--store", str(locked), "--wandb", "disabled", "--no-progress"]) == 2
        assert f"cannot write run store {locked}: Permission denied; {hint}" in capsys.readouterr().err
    assert main(["report", study, "--store", str(reference["store"]), "--out", str(blocker / "report")]) == 1
    err += capsys.readouterr().err
    assert f"ablate: error: cannot write output (Not a directory): {blocker / 'report'}" in err
    assert "Traceback" not in err
    assert tree_digest(reference["store"]) == before


def test_full_disk_mid_study_is_a_clear_error_and_loses_nothing(work, reference, tmp_path, monkeypatch, capsys):
    """No space left when a run starts writing: exit 1 naming the file; finished runs and the lock are intact."""
    import errno

    _, study = work
    store = tmp_path / "store"
    shutil.copytree(reference["store"], store, ignore=shutil.ignore_patterns("wandb"))
    before = tree_digest(store)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(["run", study, "--preset", "seed1", "--store", str(store), "--wandb", "disabled",
                 "--no-progress"]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    new = [r for r in ids_of(study, "seed1") if r not in reference["ids"]][0]
    assert f"ablate: error: cannot write {store / new / 'config.json'}: No space left on device" in err
    after = tree_digest(store)
    assert {k: v for k, v in after.items() if not k.startswith(new)} == before
    assert not list(store.rglob("*.tmp")) and not (store / new / "lock").exists()


def test_wandb_credentials_never_leak(reference, work, tmp_path, monkeypatch, capsys):
    """The API key is nowhere: not in the run's output, the store (W&B files included), the report, or an
    error message."""
    _, study = work
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    out = tmp_path / "report"
    assert main(["report", study, "--store", str(reference["store"]), "--out", str(out)]) == 0
    assert main(["run", study, "--store", str(tmp_path / "f" / "x"), "--wandb", "online", "--preset", "nope"]) == 2
    (tmp_path / "f").write_text("")
    assert main(["run", study, "--store", str(tmp_path / "f" / "x"), "--wandb", "online", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert SECRET not in reference["log"] + captured.out + captured.err
    for folder in (reference["store"], out):
        for path in pathlib.Path(folder).rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
