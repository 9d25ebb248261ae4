"""Data parallelism: the same run on 4 simulated CPU devices gives the metrics of the 1-device run, and 2 processes
joined by jax.distributed (1 CPU device each) run a study exactly as 1 process with 2 devices does."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ablate import paths
from ablate.store import RunStore
from benchmarks.kill_loop import kill9
from tests.helpers import no_time, tiny_study

SCRIPT = """
import json, dataclasses, sys, numpy as np, jax, jax.numpy as jnp
from ablate.config import RunConfig
from ablate.data import load_dataset
from ablate.models import build_model
from ablate.teachers import get_teacher, run_inputs
from ablate.train import train
d = load_dataset("fashion_mnist")
d = dataclasses.replace(d, val=d.val.take(np.arange(1000)), test=d.test.take(np.arange(1000)))
cfg = RunConfig(teacher="fmnist_xs", model="resnet_xs", policy="funmatch", subset_per_class=20, batch_size=40,
                epochs=6, optimizer="sgdm", lr=0.03, num_evals=1, loss=sys.argv[2])
t = get_teacher("fmnist_xs", load_dataset("fashion_mnist"), progress=False, log=lambda *a, **k: None)
targets, ev = run_inputs(cfg, d, t, log=lambda *a, **k: None)
init = jax.jit(build_model("resnet_xs", 10).init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
if cfg.loss != "kl":  # a random head: the student's logits differ from the first step on
    init["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), init["head"]["kernel"].shape)
r = train(cfg, d, teacher=t, targets=targets, eval_teacher=ev, init_params=init, progress=False)
np.savez(sys.argv[1], *[np.asarray(b) - np.asarray(a) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(r.params))])
print("RESULT", json.dumps({"devices": jax.device_count(), **r.history[-1]}))
"""


def run_on(tmp_path, devices: int, loss: str = "kl") -> tuple[dict, list]:
    """The last evaluation of SCRIPT's run with `loss` on `devices` simulated CPU devices, and its update of each
    parameter."""
    # no lanes on one device either (ablate/lanes.py): this compares sharding over devices with one program
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "ABLATE_LANES": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"{devices}.npz"), loss], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    with np.load(tmp_path / f"{devices}.npz") as z:
        updates = [z[f"arr_{i}"] for i in range(len(z.files))]
    return json.loads(line[len("RESULT "):]), updates


@pytest.mark.parametrize("loss", ["kl", "dist"])
def test_four_devices_match_one(teacher, tmp_path, loss):
    """Batch sharded over 4 devices (SPMD) trains as the single-device run does: the same 30 steps, the same
    update of every parameter up to float32 rounding, the same metrics.

    What is invariant is the gradient: the same sum, taken in another order. So the run uses SGD (Nesterov
    momentum) at a small learning rate, whose updates are linear in the gradients and whose rounding
    differences stay at rounding size. Measured over 30 steps, the largest difference between the two runs'
    updates of a tensor, relative to that update's largest entry: 2.5e-4 with XLA's AVX2 kernels, 3.4e-5 with
    its AVX ones and 3.7e-4 with SSE4.2 (--xla_cpu_max_isa on an AVX2 AMD EPYC, 2026-12-07); 1e-2 leaves 27x room,
    and a batch sharded wrongly changes the updates by order 1. Adam (the paper's optimiser) and large learning rates are not
    compared: Adam divides each gradient entry by its own running size, so rounding noise in entries near zero
    becomes a full step, and runs on 1 and 4 devices drift apart as runs on two machines do (train/loss
    differed by 3e-3 on an AVX2 EPYC and under 1e-3 on an AVX-512 one; SGD at lr 0.3 drifted 0.12 in parameters).
    DIST (a loss whose intra-class term correlates each class's probabilities across the batch's rows) trains
    the same: sharded or not, its loss is taken over the whole batch. It starts from a random head: from the
    zero-initialised one, all logits start equal and DIST's Pearson correlations of nearly constant vectors
    amplify any rounding difference (measured: entries of the first conv's update 5-10% apart after 30 steps),
    whereas a loss computed on each device's 10 rows would change the intra-class term itself.
    """
    (one, u1), (four, u4) = run_on(tmp_path, 1, loss), run_on(tmp_path, 4, loss)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert one["step"] == four["step"] == 30
    assert len(u1) == len(u4)
    for a, b in zip(u1, u4):
        assert np.abs(a).max() > 0  # every parameter was updated
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-2 * np.abs(a).max())
    assert four["train/loss"] == pytest.approx(one["train/loss"], rel=1e-5)
    for key in ("val/acc", "test/acc", "test/agree_top1", "test/kl"):  # 1,000 examples: 0.002 is 2 predictions
        assert four[key] == pytest.approx(one[key], abs=0.002), key


TEACHER = """
import dataclasses
from ablate.teachers import TEACHERS, register_teacher
register_teacher("two_hosts_t", dataclasses.replace(TEACHERS.get("fmnist_xs").cfg, subset_per_class=20, batch_size=50,
                                                    epochs=2), "8 steps: trained by each test run")
"""
STUDY = TEACHER + tiny_study(name="two_hosts", question="Do two processes run a study as one?",
                             base=dict(teacher="two_hosts_t", epochs=40),
                             axes=dict(lr=[1e-2, 3e-2]))  # two funmatch cells (one cohort) of 80 steps, checkpointed at 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(tmp, args: list[str], processes: int, devices: int, **env) -> list[subprocess.Popen]:
    """`ablate ARGS` in `processes` processes joined by jax.distributed, each with `devices` CPU devices and its
    output in tmp/p{i}.out and .err."""
    # each process starts a W&B service of its own, as on separate hosts: one inherited from this test process
    # (WANDB_SERVICE) would outlive the killed runs and keep their ids in use
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, **env,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}", JAX_NUM_PROCESSES=str(processes))
    return [subprocess.Popen([sys.executable, "-m", "ablate.cli", *args], env={**env, "JAX_PROCESS_ID": str(i)},
                             stdout=(tmp / f"p{i}.out").open("w"), stderr=(tmp / f"p{i}.err").open("w"),
                             start_new_session=True) for i in range(processes)]


def finish(tmp, procs: list[subprocess.Popen]) -> list[str]:
    """Each process's stdout, process 0 first, once all have exited 0."""
    try:
        for i, proc in enumerate(procs):
            assert proc.wait(timeout=600) == 0, (tmp / f"p{i}.err").read_text()[-3000:]
    finally:
        for proc in procs:  # a failed process leaves the others waiting for it
            kill9(proc)
    return [(tmp / f"p{i}.out").read_text() for i in range(len(procs))]


def test_two_processes_run_and_resume_a_study_as_one_process_on_two_devices(tmp_path):
    """Two processes, killed once both runs have checkpointed and then rerun, train the study's teacher and log
    every run's history and summary equal, bit for bit, to those of 1 process with 2 devices (the same SPMD
    program); process 0 alone writes the store, the teacher's summary, the teacher-target cache and W&B, and
    reports; a rerun finds every cell done."""
    study = tmp_path / "two_hosts.py"
    study.write_text(STUDY)
    ref, got = tmp_path / "ref", tmp_path / "got"
    ref_cache, cache = fresh_cache(tmp_path / "ref_cache"), fresh_cache(tmp_path / "cache")
    finish(tmp_path, start(tmp_path, ["run", str(study), "--store", str(ref), "--wandb", "disabled", "--no-progress"],
                           1, 2, ABLATE_CACHE=str(ref_cache)))
    ref_store, got_store = RunStore(ref), RunStore(got)
    run_ids = sorted(ref_store.run_ids())
    assert len(run_ids) == 2
    args = ["run", str(study), "--store", str(got), "--wandb", "offline", "--no-progress"]

    procs = start(tmp_path, args, 2, 1, ABLATE_CACHE=str(cache))
    deadline = time.monotonic() + 600
    try:
        while not all((got_store.ckpt_dir(r) / "40").exists() for r in run_ids):
            assert all(p.poll() is None for p in procs), "a process ended before both runs checkpointed at step 40"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        alive = [kill9(p) for p in procs]
    assert all(alive), "the runs finished before they could be interrupted"
    assert len(list((cache / "targets").glob("*.npy"))) == 2  # the teacher's val and test logits, written once
    assert len(wandb_runs(got)) == 2  # one W&B run per cell, none from process 1
    (teacher_summary,) = cache.glob("teachers/two_hosts_t-*/summary.json")
    (ref_teacher_summary,) = ref_cache.glob("teachers/two_hosts_t-*/summary.json")
    assert no_time(json.loads(teacher_summary.read_text())) == no_time(json.loads(ref_teacher_summary.read_text()))

    out0, out1 = finish(tmp_path, start(tmp_path, args, 2, 1, ABLATE_CACHE=str(cache)))
    assert "study two_hosts: 2 ran, 0 already done, 0 failed" in out0
    assert "two_hosts" not in out1 and "render" not in out1  # process 0 speaks for the run
    assert (tmp_path / "p0.err").read_text().count("from its checkpoint at step 40") == 2
    for run_id in run_ids:
        assert got_store.is_done(run_id)
        assert [no_time(r) for r in got_store.history(run_id)] == [no_time(r) for r in ref_store.history(run_id)]
        got_record, ref_record = got_store.record(run_id), ref_store.record(run_id)
        assert (got_record["meta/processes"], ref_record["meta/processes"]) == (2, 1)
        assert got_record["meta/devices"] == ref_record["meta/devices"] == 2
        setup = ("meta/processes", "meta/xla_flags", "meta/cohort_size", "cohort_size")  # resumed runs train alone
        assert no_time(got_record, *setup) == no_time(ref_record, *setup)
    assert wandb_runs(got) == sorted(run_ids * 2)  # one W&B run per cell and attempt, none from process 1

    out0, _ = finish(tmp_path, start(tmp_path, ["run", str(study), "--store", str(got), "--no-progress"], 2, 1))
    assert "study two_hosts: 0 ran, 2 already done" in out0


def fresh_cache(folder):
    """An ABLATE_CACHE with the session's compiled programs but no teachers or teacher targets."""
    folder.mkdir()
    (paths.cache_dir() / "xla").mkdir(parents=True, exist_ok=True)
    (folder / "xla").symlink_to(paths.cache_dir() / "xla")
    return folder


def wandb_runs(store) -> list[str]:
    """The run id of each offline W&B run logged into a store (one per attempt)."""
    return sorted(p.parent.name.rsplit("-", 1)[1] for p in store.glob("wandb/wandb/offline-run-*/run-*.wandb"))


def test_two_processes_stop_together_on_an_unwritable_store(tmp_path):
    """Process 0 finds the store unwritable before any run: both processes exit 2 with a clear message, none hangs."""
    study = tmp_path / "two_hosts.py"
    study.write_text(STUDY)
    (tmp_path / "file").write_text("")
    procs = start(tmp_path, ["run", str(study), "--store", str(tmp_path / "file" / "store"), "--no-progress"], 2, 1)
    try:
        assert [p.wait(timeout=300) for p in procs] == [2, 2]
    finally:
        for p in procs:
            kill9(p)
    err0, err1 = ((tmp_path / f"p{i}.err").read_text() for i in (0, 1))
    assert f"ablate: error: {tmp_path / 'file'} is a file, not a folder" in err0
    assert "ablate: error: process 0 cannot write the run store" in err1
