"""Cohorts: runs that differ only in student-side fields train together, sharing the views and the teacher's forward.

The promise tested here is that a cohort changes nothing but speed: each member
ends bit-identical to the same run trained alone, fails alone, resumes alone,
and is logged as its own run in the store and in W&B.
"""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ablate.cli import main
from ablate.config import RunConfig
from ablate.runner import Runner
from ablate.store import RunStore
from ablate.study import Cell, cells, cohorts, load_study
from ablate.teachers import run_inputs
from ablate.step import cohort_key, make_cohort_step
from ablate.train import Member, NonFiniteError, train, train_cohort
from tests.helpers import no_time, tiny_study

QUIET = dict(progress=False)


def cfg(**kw):
    """A tiny funmatch config: resnet_xs student, fmnist_xs teacher, 500 images, 40 steps."""
    base = dict(dataset="fashion_mnist", teacher="fmnist_xs", model="resnet_xs", policy="funmatch", loss="kl",
                subset_per_class=50, batch_size=50, epochs=4, lr=1e-2, warmup_frac=0.1, num_evals=2)
    return RunConfig(**{**base, **kw})


A = cfg()
B = cfg(lr=3e-2, temperature=2.0, loss="kl + 0.5*label_ce", model="resnet_s")  # another model, loss, lr, T


def assert_same_run(a, b):
    """Bit-identical parameters, and equal histories and summaries (wall-clock times aside)."""
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [no_time(r) for r in a.history] == [no_time(r) for r in b.history]
    assert no_time(a.summary) == no_time(b.summary)


@pytest.fixture(scope="module")
def inputs(teacher, fmnist_small):
    _, eval_teacher = run_inputs(A, fmnist_small, teacher)
    return dict(teacher=teacher, eval_teacher=eval_teacher, **QUIET)


@pytest.fixture(scope="module")
def alone(inputs, fmnist_small):
    """A and B each trained alone."""
    return {c: train(c, fmnist_small, **inputs) for c in (A, B)}


def test_cohort_key_ignores_student_side_fields_only():
    """lr, wd, loss, temperature, model, ... may differ within a cohort; the policy, seed or data may not."""
    assert cohort_key(A) == cohort_key(B) == cohort_key(A.replace(wd=1e-3, clip=0.5, optimizer="lion"))
    for change in (dict(policy="same/ic"), dict(seed=1), dict(subset_per_class=20), dict(epochs=5),
                   dict(batch_size=25), dict(mixup_p=0.5), dict(teacher="fmnist_t")):
        assert cohort_key(A.replace(**change)) != cohort_key(A), change
    with pytest.raises(ValueError, match="may differ only in model, loss, temperature"):
        make_cohort_step([A, A.replace(seed=1)], [None, None], None, [None, None], 10, 28, 28)


def test_members_end_bit_identical_to_runs_alone(alone, inputs, fmnist_small):
    """Two runs with different students, losses, lrs and temperatures trained as one cohort each end exactly
    where they end alone: same parameters, same metrics at every evaluation."""
    together = train_cohort([Member(A), Member(B)], fmnist_small, **inputs)
    assert [r["step"] for r in together[1].history] == [0, 20, 40]
    for c, result in zip((A, B), together):
        assert_same_run(result, alone[c])


def test_init_seed_sets_the_students_initialisation_only(alone, inputs, fmnist_small):
    """Seeds of the student's initialisation alone form a cohort: init_seed equal to seed is that run exactly, another
    init_seed trains elsewhere. With lr=1e-30 the parameters stay at their initialisation (to 1e-20): init_seed 0 on
    seed 1's data starts where seed 0 starts, and seed 1 alone does not."""
    assert cohort_key(A.replace(init_seed=1)) == cohort_key(A) != cohort_key(A.replace(seed=1, init_seed=0))
    same, other = train_cohort([Member(A.replace(init_seed=0)), Member(A.replace(init_seed=1))], fmnist_small,
                               **inputs)
    assert_same_run(same, alone[A])
    assert not np.array_equal(other.params["head"]["kernel"], alone[A].params["head"]["kernel"])

    frozen = A.replace(lr=1e-30)
    flat = lambda result: np.concatenate([np.ravel(x) for x in jax.tree.leaves(result.params)])  # noqa: E731
    start = flat(train(frozen, fmnist_small, **inputs))
    init_0, init_1 = train_cohort([Member(frozen.replace(seed=1, init_seed=0)), Member(frozen.replace(seed=1))],
                                  fmnist_small, **inputs)
    np.testing.assert_allclose(flat(init_0), start, rtol=0, atol=1e-20)
    assert not np.allclose(flat(init_1), start, rtol=0, atol=1e-3)


def test_run_ids_ignore_an_unset_init_seed_and_follow_the_numerics(monkeypatch):
    """init_seed came after runs were stored: a config that leaves it unset keeps its id (values from before). The
    ids of numerics version 1 (before TF's crop sampler) are those runs were stored under then; version 2 changes
    every id."""
    from ablate import config

    assert len({RunConfig(init_seed=k).run_id for k in (None, 0, 1)}) == 3
    assert (RunConfig().run_id, RunConfig(seed=3, lr=0.1).run_id) == ("30a41f336b85", "ac00b53cc7ea")
    monkeypatch.setattr(config, "NUMERICS", 1)
    assert (RunConfig().run_id, RunConfig(seed=3, lr=0.1).run_id) == ("8f94f01ca66c", "2e54d65f2f4f")


def test_a_diverging_member_fails_alone(alone, inputs, fmnist_small):
    """lr=1e38 overflows at the first update: that member gets its NonFiniteError, the other trains to the end
    exactly as it would alone."""
    bad = A.replace(lr=1e38, warmup_frac=0.0)
    failed, good = train_cohort([Member(bad), Member(A)], fmnist_small, **inputs)
    assert isinstance(failed, NonFiniteError) and (failed.step, failed.reason) == (1, "loss")
    assert_same_run(good, alone[A])


def test_an_interrupted_cohort_resumes_run_by_run(alone, inputs, fmnist_small, tmp_path):
    """A cohort killed after its first checkpoint leaves each member a checkpoint; each resumes alone from it and
    ends bit-identical to an uninterrupted run."""
    seen = []

    def interrupt(row):
        seen.append(row["step"])
        if row["step"] == 40:
            raise KeyboardInterrupt

    members = [Member(A, ckpt_dir=tmp_path / "a", on_eval=interrupt), Member(B, ckpt_dir=tmp_path / "b")]
    with pytest.raises(KeyboardInterrupt):
        train_cohort(members, fmnist_small, **inputs)
    assert seen == [0, 20, 40]
    for c, folder in ((A, "a"), (B, "b")):
        resumed_at = []
        rest = train(c, fmnist_small, ckpt_dir=tmp_path / folder, on_resume=resumed_at.append, **inputs)
        assert resumed_at == [20] and [r["step"] for r in rest.history] == [40]
        assert_same_run(rest, dataclasses.replace(alone[c], history=alone[c].history[-1:]))


def test_members_resume_together_only_from_one_step(inputs, fmnist_small, tmp_path):
    """Members whose checkpoints sit at different steps cannot step together: a clear ValueError."""
    def stop_at(step):
        def on_eval(row):
            if row["step"] == step:
                raise KeyboardInterrupt
        return on_eval

    for folder, step in (("a", 40), ("b", 20)):  # a: checkpoint at 20; b: none (it stops at its first eval)
        with pytest.raises(KeyboardInterrupt):
            train(A, fmnist_small, ckpt_dir=tmp_path / folder, on_eval=stop_at(step), **inputs)
    members = [Member(A, ckpt_dir=tmp_path / "a"), Member(A.replace(lr=3e-2), ckpt_dir=tmp_path / "b")]
    with pytest.raises(ValueError, match=r"resume from one step, but their checkpoints are at steps \[20, 0\]"):
        train_cohort(members, fmnist_small, **inputs)


def test_cohorts_keep_grid_order_and_size():
    """Each cohort starts at the first cell not yet taken and gathers later cells with its key, up to the size;
    cells without a key train alone."""
    grid = [Cell(A.replace(seed=s, lr=lr), {"seed": s, "lr": lr}) for s in (0, 1) for lr in (1e-3, 1e-2, 1e-1)]
    grid.append(Cell(A.replace(policy="fix/rs"), {"policy": "fix/rs"}))
    key = lambda c: None if c.config.policy == "fix/rs" else c.config.seed  # noqa: E731
    points = [[c.point for c in co] for co in cohorts(grid, key, 2)]
    assert points == [[{"seed": 0, "lr": 1e-3}, {"seed": 0, "lr": 1e-2}], [{"seed": 0, "lr": 1e-1}],
                      [{"seed": 1, "lr": 1e-3}, {"seed": 1, "lr": 1e-2}], [{"seed": 1, "lr": 1e-1}],
                      [{"policy": "fix/rs"}]]
    assert [len(co) for co in cohorts(grid, key, 1)] == [1] * 7


def test_only_on_the_fly_cells_without_checkpoints_form_cohorts(tmp_path):
    """Fixed-teacher and label-only cells gain nothing from a cohort (no teacher forward to share), and a cell
    with a checkpoint resumes alone."""
    runner = Runner(RunStore(tmp_path / "store"), "disabled", progress=False)
    on_the_fly, fixed = Cell(A, {}), Cell(A.replace(policy="fix/rs"), {})
    label_only = Cell(A.replace(policy="supervised", loss="label_ce", teacher=None), {})
    assert runner.cohort_key(on_the_fly) == cohort_key(A)
    assert runner.cohort_key(fixed) is None and runner.cohort_key(label_only) is None
    runner.store.ckpt_dir(on_the_fly.run_id).mkdir(parents=True)
    assert runner.cohort_key(on_the_fly) is None


STUDY = tiny_study(name="cohort", question="Do cohorts log each run as its own?",
                   axes=dict(policy=["funmatch", "fix/rs"], lr=[1e-2, 3e-2]))


def summary(store, run_id):
    """A run's summary without wall-clock figures and its cohort size."""
    s = json.loads((store / run_id / "summary.json").read_text())
    return no_time(s, "cohort_size")


@pytest.fixture(scope="module")
def study_runs(teacher, tmp_path_factory):
    """The cohort study run with --cohort-size 4 (W&B offline) and with --cohort-size 1, into two stores."""
    tmp = tmp_path_factory.mktemp("cohort_study")
    study = tmp / "cohort.py"
    study.write_text(STUDY)
    stores = {n: tmp / f"store{n}" for n in (1, 4)}
    for n, store in stores.items():
        flags = ["--wandb", "offline" if n == 4 else "disabled", "--no-progress", "--cohort-size", str(n)]
        assert main(["run", str(study), "--store", str(store), *flags]) == 0
    return study, stores


def test_a_study_runs_cohorts_into_store_and_wandb(study_runs):
    """`ablate run` trains the two funmatch cells as one cohort and the fix/rs cells alone; every run has its
    own store folder (meta/cohort_size) and its own offline W&B run, and every summary equals the one of the
    same study run with --cohort-size 1."""
    study, stores = study_runs
    grid = cells(load_study(str(study)))
    sizes = {}
    for c in grid:
        config = json.loads((stores[4] / c.run_id / "config.json").read_text())
        sizes[c.point["policy"], c.point["lr"]] = config["meta"]["cohort_size"]
        assert summary(stores[4], c.run_id) == summary(stores[1], c.run_id), c.point
    assert sizes == {("funmatch", 1e-2): 2, ("funmatch", 3e-2): 2, ("fix/rs", 1e-2): 1, ("fix/rs", 3e-2): 1}
    run_dirs = sorted((stores[4] / "wandb" / "wandb").glob("offline-run-*"))
    assert sorted(d.name.rsplit("-", 1)[1] for d in run_dirs) == sorted(c.run_id for c in grid)
    wandb = pathlib.Path(sys.executable).with_name("wandb")
    for c in grid:
        if c.point["policy"] == "funmatch":  # the cohort's two W&B runs were open at once
            run_dir = next(d for d in run_dirs if d.name.endswith(c.run_id))
            out = subprocess.run([str(wandb), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                                 text=True, timeout=120, check=True).stdout
            records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            history = [r["history"]["item"] for r in records if r.get("type") == "history"]
            local = json.loads((stores[4] / c.run_id / "history.json").read_text())
            assert [h["test/acc"] for h in history] == [r["test/acc"] for r in local]


def test_a_killed_cohort_resumes_run_by_run(study_runs, tmp_path, monkeypatch, capsys):
    """A cohort interrupted after its members' first checkpoints (as by a kill: their runs stay `running`) is
    resumed by the next `ablate run` member by member, each from its checkpoint, to the same summaries as
    runs never interrupted."""
    import ablate.checkpoint

    study, stores = study_runs
    saves, original = [], ablate.checkpoint.save

    def save_then_stop(manager, step, state, tracker):
        if len(saves) == 2:  # both funmatch members saved step 4; stop before the third save
            raise KeyboardInterrupt
        saves.append(step)
        original(manager, step, state, tracker)

    store = tmp_path / "store"
    monkeypatch.setattr(ablate.checkpoint, "save", save_then_stop)
    assert main(["run", str(study), "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 130
    assert "ablate: interrupted; rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(ablate.checkpoint, "save", original)
    assert saves == [4, 4]
    grid = cells(load_study(str(study)))
    funmatch = [c.run_id for c in grid if c.point["policy"] == "funmatch"]
    assert [RunStore(store).status(r)["state"] for r in funmatch] == ["running", "running"]
    assert main(["run", str(study), "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "4 ran, 0 already done" in captured.out
    for run_id in funmatch:
        assert f"resuming run {run_id}" in captured.err and "from its checkpoint at step 4" in captured.err
        assert json.loads((store / run_id / "config.json").read_text())["meta"]["cohort_size"] == 1
    for c in grid:
        assert summary(store, c.run_id) == summary(stores[1], c.run_id), c.point


def test_bad_cohort_size_exits_2(tmp_path, capsys):
    """--cohort-size must be a whole number >= 1."""
    study = tmp_path / "cohort.py"
    study.write_text(STUDY)
    for value in ("0", "two"):
        with pytest.raises(SystemExit) as e:
            main(["run", str(study), "--store", str(tmp_path / "store"), "--cohort-size", value])
        assert e.value.code == 2
        assert f"--cohort-size: must be a whole number >= 1, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_dry_run_names_the_cohorts(tmp_path, capsys):
    """--dry-run says which cells share the teacher's forward pass, and how much training that leaves out."""
    from ablate.estimate import _flops, cell_cost

    study = tmp_path / "cohort.py"
    study.write_text(STUDY)
    funmatch = next(c for c in cells(load_study(str(study))) if c.point["policy"] == "funmatch")
    saved = cell_cost(funmatch.config)["teacher_train_flops"]
    assert saved > 0
    assert main(["run", str(study), "--dry-run", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "1 cohort(s) of up to 4 runs share the teacher's forward pass" in out
    assert f": {_flops(saved)} of the training above is not computed" in out
    assert main(["run", str(study), "--dry-run", "--cohort-size", "1", "--store", str(tmp_path / "store")]) == 0
    assert "share the teacher" not in capsys.readouterr().out
    assert not (tmp_path / "store").exists()


def test_a_cohorts_progress_bar_names_what_its_members_share_and_set():
    """The bar of a cohort reads "seed=0 policy=funmatch, lr=0.001 | lr=0.003", short enough for a terminal."""
    from ablate.runner import _describe_cohort

    members = [Cell(A.replace(lr=lr), {"seed": 0, "policy": "funmatch", "lr": lr}) for lr in (1e-3, 3e-3)]
    assert _describe_cohort(members) == "seed=0 policy=funmatch, lr=0.001 | lr=0.003"
    assert _describe_cohort(members[:1]) == "seed=0 policy=funmatch lr=0.001"


INIT_SEEDS = dict(name="init_seeds", question="How much do seeds of the student's initialisation alone move it?",
                  axes=dict(temperature=[1.0]), seeds=3, seed_field="init_seed")

def test_a_study_of_init_seeds_trains_them_as_one_cohort_and_reports_over_them(teacher, tmp_path):
    """seed_field="init_seed": the seeds keep seed 0's data, train as one cohort of 3, and the report's table
    aggregates over them (n=3), naming what they varied, and counts the cohort's wall time once; runs.csv lists
    each run's init_seed."""
    path = tmp_path / "init_seeds.py"
    path.write_text(tiny_study(**INIT_SEEDS))
    grid = cells(load_study(str(path)))
    assert [(c.point, c.config.seed, c.config.init_seed) for c in grid] == [
        ({"init_seed": i, "temperature": 1.0}, 0, i) for i in range(3)]
    store, out = tmp_path / "store", tmp_path / "report"
    assert main(["run", str(path), "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0
    assert [json.loads((store / c.run_id / "config.json").read_text())["meta"]["cohort_size"] for c in grid] == [3] * 3
    assert main(["report", str(path), "--store", str(store), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Values are mean ± std over the seeds of the student's initialisation (init_seed)" in report
    assert "| 1 | 3 |" in report  # temperature 1.0, n = 3
    walls = {json.loads((store / c.run_id / "summary.json").read_text())["wall_s"] for c in grid}
    assert len(walls) == 1  # each member records its cohort's wall time; the report counts it once
    assert f"Total training wall time: {walls.pop() / 60:.1f} min over 3 runs." in report
    assert (out / "runs.csv").read_text().splitlines()[0].startswith("run_id,temperature,seed,init_seed,status")


def test_a_bad_seed_field_is_a_clear_study_error(tmp_path, capsys):
    """A seed_field that is not a seed exits 2 naming the valid ones, before anything runs."""
    path = tmp_path / "bad.py"
    path.write_text(tiny_study(**{**INIT_SEEDS, "seed_field": "data_seed"}))
    assert main(["run", str(path), "--store", str(tmp_path / "store"), "--dry-run"]) == 2
    assert "seed_field must be one of seed, init_seed, got 'data_seed'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- seed cohorts (accelerators)

SEEDS = [cfg(seed=s, optimizer="sgdm", lr=0.03) for s in (0, 1, 2)]  # 3 runs of 40 steps, only their seeds differ


def test_on_an_accelerator_runs_that_differ_in_their_seeds_form_a_cohort():
    """On a GPU or TPU the cohort key ignores the seeds (data order, views, mixup, initialisation) and nothing else,
    for every policy; on CPU seeds never share a cohort (vmapped convolutions are 0.42x there)."""
    for backend in ("gpu", "tpu"):
        assert len({cohort_key(c, backend) for c in [*SEEDS, SEEDS[0].replace(init_seed=4)]}) == 1
        assert cohort_key(A.replace(lr=3e-2), backend) != cohort_key(A, backend)
        assert cohort_key(A.replace(policy="fix/rs", seed=1), backend) == cohort_key(A.replace(policy="fix/rs"), backend)
    assert len({cohort_key(c, "cpu") for c in SEEDS}) == 3
    assert cohort_key(A.replace(policy="fix/rs"), "cpu") is None


@pytest.fixture(scope="module")
def seed_cohort(inputs, fmnist_small):
    """SEEDS trained each alone and as one vmapped cohort, both in blocks of steps (as on an accelerator)."""
    alone = [train(c, fmnist_small, use_multi_step=True, **inputs) for c in SEEDS]
    together = train_cohort([Member(c) for c in SEEDS], fmnist_small, use_multi_step=True, **inputs)
    return alone, together


def assert_close_run(a, b):
    """Parameters and metrics equal up to float32 rounding: a vmapped convolution sums in another order than the
    same convolution alone. Hence SEEDS' SGD: its updates are linear in the gradients, so rounding differences
    stay at rounding size, while Adam divides each gradient entry by its own running size and turns rounding
    noise in entries near zero into whole steps (measured: equal after one step, 1e-3 to 6e-3 apart after five)."""
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-4)
    assert [r["step"] for r in a.history] == [r["step"] for r in b.history]
    for ra, rb in zip(a.history, b.history):
        for k in ra:
            if "acc" in k or "agree" in k:  # 1,000 examples: 0.003 is 3 predictions
                assert ra[k] == pytest.approx(rb[k], abs=0.003), k
            elif "time/" not in k:
                assert ra[k] == pytest.approx(rb[k], rel=1e-3, abs=1e-6), k


def test_a_seed_cohort_member_trains_as_it_does_alone(seed_cohort):
    """Each member of a vmapped seed cohort draws its own batches, views, mixup and initialisation: it ends where
    the same run trained alone ends (up to rounding), and the members differ from each other by much more."""
    alone, together = seed_cohort
    for a, b in zip(alone, together, strict=True):
        assert_close_run(a, b)
    first, second = (np.asarray(jax.tree.leaves(r.params)[0]) for r in together[:2])
    assert np.abs(first - second).max() > 100 * 1e-4


def test_a_killed_seed_cohort_resumes_run_by_run(seed_cohort, inputs, fmnist_small, tmp_path):
    """A seed cohort killed at its first evaluation after step 0 leaves the members evaluated before the kill a
    checkpoint there; each run then resumes from its checkpoint or starts again (alone, as `ablate run` resumes
    cells with checkpoints) and ends as the uninterrupted member did."""
    _, together = seed_cohort

    def interrupt(row):
        if row["step"] == 20:
            raise KeyboardInterrupt

    members = [Member(c, ckpt_dir=tmp_path / str(c.seed), on_eval=interrupt if c.seed == 2 else None) for c in SEEDS]
    with pytest.raises(KeyboardInterrupt):
        train_cohort(members, fmnist_small, use_multi_step=True, **inputs)
    for c, whole in zip(SEEDS, together):
        resumed_at = []
        rest = train(c, fmnist_small, ckpt_dir=tmp_path / str(c.seed), on_resume=resumed_at.append,
                     use_multi_step=True, **inputs)
        assert resumed_at == ([] if c.seed == 2 else [20])  # the last member stopped before its checkpoint
        assert_close_run(rest, dataclasses.replace(whole, history=[r for r in whole.history
                                                                   if r["step"] > (resumed_at or [-1])[0]]))


def test_runs_of_other_fields_or_without_blocks_do_not_train_as_a_seed_cohort(inputs, fmnist_small):
    """A cohort mixing seeds with student-side changes, or seeds without blocks of steps: a clear ValueError."""
    with pytest.raises(ValueError, match="differ only in their seeds"):
        train_cohort([Member(A), Member(A.replace(seed=1, lr=3e-2))], fmnist_small, use_multi_step=True, **inputs)
    with pytest.raises(ValueError, match="only in blocks of steps"):
        train_cohort([Member(A), Member(A.replace(seed=1))], fmnist_small, use_multi_step=False, **inputs)
