"""Studies end to end: grid expansion, shards, the runner, the local store, W&B offline files, report, compare."""

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from ablate.cli import main
from ablate.study import StudyError, cells, load_study, shard
from tests.helpers import tiny_study

TINY = textwrap.dedent("""
    from ablate.study import Study, variant

    STUDY = Study(
        name="tiny",
        question="Does the runner work end to end?",
        base=dict(teacher="fmnist_xs", model="resnet_xs", subset_per_class=10, batch_size=50, epochs=4,
                  num_evals=2, lr=1e-2),
        axes=dict(policy=["funmatch", "fix/rs",
                          variant("supervised", policy="supervised", loss="label_ce", teacher=None)]),
        seeds=1,
        presets=dict(two_seeds=dict(seeds=2)),
        figures=("final", "loss_vs_acc", "curves"),
    )
""")


def write(tmp_path, name, text):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(teacher, tmp_path_factory):
    """Run the tiny study once into a fresh store with W&B offline; returns (study file, store, first stdout)."""
    tmp = tmp_path_factory.mktemp("tiny")
    study = write(tmp, "tiny", TINY)
    store = tmp / "store"
    rc = main(["run", study, "--store", str(store), "--wandb", "offline", "--no-progress"])
    assert rc == 0
    return study, store, tmp


def test_study_runs_every_cell_into_the_store(tiny_run):
    """Every cell has a finished run folder with config, history (step 0 and 2 evals) and a summary."""
    from ablate.store import RunStore

    study, store, _ = tiny_run
    ids = [c.run_id for c in cells(load_study(study))]
    frame = RunStore(store).frame()
    assert sorted(frame.run_id) == sorted(ids)
    assert set(frame.status) == {"done"}
    assert set(frame.policy) == {"funmatch", "fix/rs", "supervised"}
    for run_id in ids:
        hist = json.loads((store / run_id / "history.json").read_text())
        assert len(hist) == 3 and hist[0]["step"] == 0
        summary = json.loads((store / run_id / "summary.json").read_text())
        assert 0.0 <= summary["best/test/acc"] <= 1.0 and "last/test/acc" in summary
    assert frame.loc[frame.policy == "funmatch", "last/test/agree_top1"].notna().all()
    assert frame.loc[frame.policy == "supervised", "teacher"].isna().all()


def test_wandb_offline_files_hold_the_logged_metrics(tiny_run):
    """Each run has one offline W&B run under its id, whose records (read back with `wandb leet`) hold the metrics."""
    study, store, _ = tiny_run
    ids = [c.run_id for c in cells(load_study(study))]
    run_dirs = sorted((store / "wandb" / "wandb").glob("offline-run-*"))
    assert sorted(d.name.rsplit("-", 1)[1] for d in run_dirs) == sorted(ids)
    wandb = pathlib.Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb), "leet", "inspect", "--json", str(run_dirs[0])], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    history = [r for r in records if r.get("type") == "history"]
    run = next(r for r in records if r.get("type") == "run")["run"]
    assert run["run_group"] == "tiny" and run["run_id"] in ids
    assert len(history) == 3
    local = json.loads((store / run["run_id"] / "history.json").read_text())
    assert [h["history"]["step"].get("num", 0) for h in history] == [r["step"] for r in local]
    last = history[-1]["history"]["item"]
    assert {"val/acc", "test/acc", "train/loss"} <= set(last) and 0.0 <= last["test/acc"] <= 1.0


def test_rerun_runs_nothing_new(tiny_run, capsys):
    """Running a finished study again skips every cell."""
    study, store, _ = tiny_run
    before = {p: p.stat().st_mtime for p in store.glob("*/summary.json")}
    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0
    assert "0 ran, 3 already done" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime for p in store.glob("*/summary.json")}


def test_report_renders_figures_and_tables(tiny_run):
    """`ablate report` writes report.md with one row per policy, every declared figure as a PNG, and the commands
    that made it with the study as the user gave it (here a file)."""
    study, store, tmp = tiny_run
    out = tmp / "report"
    assert main(["report", study, "--store", str(store), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "3 of 3 runs finished" in text
    assert f"Made by `ablate run {study}` (the runs) and `ablate report {study}` (this page)" in text  # as typed
    for policy in ("funmatch", "fix/rs", "supervised"):
        assert f"| {policy} | 1 |" in text
    for fig in ("final", "loss_vs_acc", "curves"):
        assert (out / f"{fig}.png").stat().st_size > 5000


def test_selection_report_shows_only_validation_metrics(tiny_run):
    """A study that declares `metrics` (as the hparams studies do) gets those columns only, in report.md and
    runs.csv: a hyperparameter report never shows a test number; the `validation` figure plots validation accuracy."""
    study, store, tmp = tiny_run
    selection = write(tmp, "tiny_selection", TINY.replace('figures=("final", "loss_vs_acc", "curves"),',
                                                          'figures=("validation",), metrics=("last/val/acc",),'))
    out = tmp / "selection_report"
    assert main(["report", selection, "--store", str(store), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    body = text.split("![")[0].replace(selection, "STUDY").replace(str(store), "STORE")  # paths may contain "test"
    assert "| policy | n | last/val/acc (%) |" in text and "test" not in body
    assert "test" not in (out / "runs.csv").read_text().splitlines()[0]
    assert (out / "validation.png").stat().st_size > 5000


def test_each_run_records_the_backend_it_ran_on(tiny_run):
    """config.json's meta names jax's version, backend and XLA_FLAGS, which change a run's float rounding."""
    import jax

    from ablate import xla_flags
    from ablate.store import RunStore

    _, store, _ = tiny_run
    frame = RunStore(store).frame()
    assert len(frame) == 3
    assert set(frame["meta/jax"]) == {jax.__version__} and set(frame["meta/backend"]) == {"cpu"}
    assert set(frame["meta/xla_flags"]) == {xla_flags.in_effect}


def test_compare_prints_ranked_rows_with_deltas(tiny_run, capsys):
    """`ablate compare` shows one ranked row per policy and the delta to the chosen baseline; --csv exports it."""
    import pandas as pd

    _, store, tmp = tiny_run
    csv = tmp / "cmp.csv"
    assert main(["compare", "meta/study=tiny", "--store", str(store), "--baseline", "policy=supervised",
                 "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in ("funmatch", "fix/rs", "supervised"))
    table = pd.read_csv(csv)
    assert list(table["rank"]) == [1, 2, 3]
    assert table["last/test/acc"].is_monotonic_decreasing  # ranked by the end of training, as report.md ranks
    assert table.loc[table.policy == "supervised", "delta vs policy=supervised"].iloc[0] == 0.0


def test_compare_reads_a_studys_grid_and_matches_numbers_as_numbers(tiny_run, capsys):
    """--study picks the runs of a study's grid, even those another study ran first (stored under its name);
    numeric filters match whatever way the number is written."""
    import pandas as pd

    _, store, tmp = tiny_run
    again = write(tmp, "tiny_again", TINY.replace('name="tiny"', 'name="tiny_again"')
                  .replace('"funmatch", "fix/rs",\n', '"funmatch",\n'))
    assert main(["compare", "meta/study=tiny_again", "--store", str(store)]) == 2
    assert "no run with meta/study=tiny_again (values of meta/study: tiny)" in capsys.readouterr().err
    csv = tmp / "again.csv"
    assert main(["compare", "--study", again, "--store", str(store), "--csv", str(csv)]) == 0
    assert sorted(pd.read_csv(csv)["policy"]) == ["funmatch", "supervised"]
    for filters in (["epochs=4", "lr=1e-2"], ["epochs=4.0", "lr=0.010"]):
        assert main(["compare", *filters, "--store", str(store), "--csv", str(csv)]) == 0
        assert sorted(pd.read_csv(csv)["policy"]) == ["fix/rs", "funmatch", "supervised"]


@pytest.mark.parametrize("args,message", [
    (["--source", "foo"], "unknown source 'foo'; use 'local' or 'wandb:ENTITY/PROJECT'"),
    (["policy"], "filter 'policy' must look like FIELD=VALUE"),
    (["nosuch=1"], "unknown field 'nosuch' in filter 'nosuch=1'; fields: "),
    (["policy=nosuch"], "no run with policy=nosuch (values of policy: fix/rs, funmatch, supervised)"),
    (["--metric", "nosuch"], "unknown metric 'nosuch'; metrics: best/"),
    (["--by", "nosuch"], "cannot group by 'nosuch': no such field"),
    (["--baseline", "policy"], "baseline 'policy' must look like FIELD=VALUE"),
    (["--baseline", "lr=1"], "unknown field 'lr' in baseline 'lr=1'; grouping fields: "),
    (["--baseline", "policy=nosuch"], "baseline 'policy=nosuch' matches no group; groups: "),
    (["--by", "policy,loss", "--baseline", "loss=kl"], "baseline 'loss=kl' matches 2 groups: "),
    (["--preset", "two_seeds"], "give the study with --study"),
])
def test_compare_rejects_bad_input_with_exit_2(tiny_run, capsys, args, message):
    """Every bad source, filter, field, metric or baseline of `ablate compare` is an exit-2 error that says
    what is valid; no traceback."""
    _, store, _ = tiny_run
    rc = main(["compare", *args, "--store", str(store)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "Traceback" not in err, err


def test_compare_on_an_empty_store_names_it(tmp_path, capsys):
    """No runs at all: the error says which store was empty (or missing), not that filters matched nothing."""
    assert main(["compare", "--store", str(tmp_path / "none")]) == 2
    assert f"run store {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", "--store", str(tmp_path / "empty")]) == 2
    assert f"no runs in the run store {tmp_path / 'empty'}" in capsys.readouterr().err


def test_shards_partition_the_grid(tmp_path):
    """--shard K/N slices are disjoint and together cover every cell exactly once."""
    study = load_study(write(tmp_path, "tiny", TINY))
    grid = [c.run_id for c in cells(study, "two_seeds")]
    assert len(grid) == 6
    for n in (1, 2, 4, 7):
        parts = [[c.run_id for c in shard(cells(study, "two_seeds"), f"{k}/{n}")] for k in range(1, n + 1)]
        assert sorted(sum(parts, [])) == sorted(grid)
    with pytest.raises(StudyError, match="K/N"):
        shard(grid, "3/2")


def test_dry_run_prints_grid_and_cost(tmp_path, capsys):
    """--dry-run lists each cell with its steps and an estimated cost, and runs nothing."""
    study = write(tmp_path, "tiny", TINY)
    store = tmp_path / "store"
    assert main(["run", study, "--dry-run", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "3 runs" in out and "steps=" in out and "estimated on cpu-2core" in out
    assert not store.exists()


def test_dry_run_counts_only_what_is_left_to_run(tmp_path, capsys):
    """Cells already done in the store (a longer preset reusing a shorter one's runs) are listed as done and left out
    of the totals, so the estimate is what running the study now would cost."""
    from ablate.store import RunStore
    from tests.helpers import fake_runs

    study_file = write(tmp_path, "tiny", TINY)
    store = RunStore(tmp_path / "store")
    done = {c.run_id for c in fake_runs(store, load_study(study_file), None, lambda cell: {"test/acc": 0.5})}
    assert main(["run", study_file, "--preset", "two_seeds", "--dry-run", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "6 runs, 3 already done in the run store; the totals below are for the 3 to run" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "seed=" in line}
    assert len(rows) == 6 and {r for r, line in rows.items() if line.endswith(" done")} == done
    assert "total: 24 steps" in out  # three runs of 8 steps, not six


def test_dry_run_costs_small_models_by_their_steps_on_gpus(tmp_path):
    """A GPU steps the embedded models no faster than its per-step floor however few their FLOPs; a cohort's runs
    step together, so they count the steps once; paper-scale FLOPs are compute-bound as before."""
    from ablate.estimate import CPU, MACHINES, cell_cost, program_steps, study_cohorts

    study = load_study(write(tmp_path, "lrs", tiny_study(name="lrs", question="?", axes=dict(lr=[0.1, 0.03, 0.01]))))
    grid = cells(study, None)
    costs = {c.run_id: cell_cost(c.config) for c in grid}
    steps = costs[grid[0].run_id]["steps"]
    assert steps == 8 and program_steps(study_cohorts(grid, 1), costs) == 24
    assert program_steps(study_cohorts(grid, 4), costs) == 8
    gpu = MACHINES["nvidia-h100"]
    assert gpu.seconds(1e9, 24) == pytest.approx(24 * gpu.step_s) and gpu.step_s > 1e-3
    assert gpu.seconds(1e18, 24) == pytest.approx(1e18 / gpu.rate)
    # a CPU pays a fixed cost per run, and the student's FLOPs run slower than the teacher's
    assert CPU.seconds(3, 0.0, 0.0) == pytest.approx(3 * CPU.run_s) and CPU.run_s >= 10
    assert CPU.seconds(0, 0.0, 1e12) > CPU.seconds(0, 1e12, 0.0)


def test_dry_run_costs_each_student_family_at_its_cpu_rate(tmp_path, capsys, monkeypatch):
    """A student family whose FLOPs run slower on a CPU than resnet_s's (CPU_STUDENT_RATE, measured by
    bench_families) costs more CPU time than its FLOPs alone say; GPU rows, compute- or step-bound, do not change."""
    from ablate import estimate

    assert 0 < estimate.CPU_STUDENT_RATE["mobilenet_s"] < estimate.CPU_STUDENT_RATE["vit_s"] < 1
    study = write(tmp_path, "tiny", TINY)

    def rows():
        assert main(["run", study, "--dry-run"]) == 0
        return {line.split()[2]: line.split()[3:5] for line in capsys.readouterr().out.splitlines()
                if "estimated on" in line}

    before = rows()
    monkeypatch.setitem(estimate.CPU_STUDENT_RATE, "resnet_xs", 1e-4)  # the tiny study's student, 10,000x slower
    after = rows()
    assert after["cpu-2core"] != before["cpu-2core"] and after["cpu-2core"][1] in ("h", "days")
    assert {k: v for k, v in after.items() if k != "cpu-2core"} == {k: v for k, v in before.items() if k != "cpu-2core"}


def test_dry_run_rows_are_never_below_a_second_for_real_work(tmp_path, capsys):
    """No machine row claims a study of real runs takes under a second: each has a measured floor (a CPU's cost per
    run, a GPU's per step), and machines with none measured (TPUs) are not estimated."""
    study = write(tmp_path, "tiny", TINY)
    assert main(["run", study, "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "estimated on" in line]
    assert rows and not any("< 1 s" in row or "tpu" in row for row in rows)


@pytest.mark.parametrize("body, message", [
    ("STUDY = (", "failed to import"),
    ("raise RuntimeError('boom')", "RuntimeError: boom"),
    ("X = 1", "must define STUDY"),
    (TINY.replace('"fix/rs"', '"fix/nope"'), "unknown policy 'fix/nope'"),
    (TINY.replace("epochs=4", "epochs=-4"), "epochs must be > 0"),
    (TINY.replace("seeds=1", "seeds=0"), "seeds must be a positive int"),
    (TINY.replace('axes=dict(policy=[', 'axes=dict(polcy=['), "unknown config field(s) polcy"),
    (TINY.replace("seeds=1,", "seeds=1, zipped=dict(lr=[0.1, 0.03], wd=[0.0, 1e-4]),"),
     "zipped must be a tuple of dicts of field -> list of values"),
    (TINY.replace("seeds=1,", "seeds=1, zipped=(dict(lr=[], wd=[]),),"), "zipped axis 'lr' must be a non-empty list"),
    (TINY.replace('figures=("final", "loss_vs_acc", "curves")', 'figures="final"'),
     "figures must be a tuple of names, e.g. ('final',), got 'final'"),
    (TINY.replace("seeds=1,", "seeds=2, zipped=(dict(seed=[0, 1], lr=[0.1, 0.03]),),"),
     "'seed' is both an axis and what `seeds` varies"),
    (TINY.replace("seeds=1,", "seeds=1, exclude=(dict(polcy='fix/rs'),),"), "exclude names polcy, which are not axes"),
    (TINY.replace("seeds=1,", "seeds=1, exclude=dict(policy='fix/rs'),"), "exclude must be a tuple of non-empty dicts"),
])
def test_bad_study_fails_before_any_run(tmp_path, capsys, body, message):
    """A malformed study or an unknown axis value: exit 2 with a specific message, nothing written."""
    study = write(tmp_path, "bad", body)
    store = tmp_path / "store"
    assert main(["run", study, "--store", str(store), "--wandb", "disabled"]) == 2
    assert message in capsys.readouterr().err
    assert not store.exists()


USER_LOSS = textwrap.dedent('''
    from ablate.losses import loss
    from ablate.study import Study

    @loss("my_pearson")
    def my_pearson(student, teacher, labels, *, temperature=1.0, **_):
        """1 - Pearson correlation of student and teacher logits (a user's own loss)."""
        import jax.numpy as jnp

        s = (student - student.mean(-1, keepdims=True)) / temperature
        t = (teacher - teacher.mean(-1, keepdims=True)) / temperature
        return 1 - jnp.sum(s * t, -1) / jnp.sqrt(jnp.sum(s * s, -1) * jnp.sum(t * t, -1) + 1e-8)

    STUDY = Study(name="user_loss", question="Does a loss defined in a study file run?",
                  base=dict(teacher="fmnist_xs", model="resnet_xs", subset_per_class=10, batch_size=50, epochs=4,
                            num_evals=2),
                  axes=dict(loss=["my_pearson", "kl + 0.5*my_pearson(temperature=2)"]))
''')


def test_a_loss_defined_in_a_study_file_is_one_decorated_function(teacher, tmp_path, capsys):
    """A user's loss is one `@loss` function in their study file: found by name (with its parameters) in the
    grid and trained with finite losses from the zero-initialised head on; the file loads again in the same
    process (a rerun), while another file's loss under the same name is an error naming both files."""
    study, store = write(tmp_path, "user_loss", USER_LOSS), tmp_path / "store"
    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0
    assert "2 ran, 0 already done, 0 failed" in capsys.readouterr().out
    for run in (store).iterdir():
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
            assert summary["last/train/loss"] == summary["last/train/loss"]  # finite, not NaN
    assert main(["run", study, "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0  # loaded again
    assert "0 ran, 2 already done" in capsys.readouterr().out
    other = write(tmp_path, "other", USER_LOSS.replace("return 1 - ", "return 2 - "))  # another loss, the same name
    assert main(["run", other, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "loss 'my_pearson' is registered twice" in err and "user_loss.py" in err and "other.py" in err


def test_the_readme_example_brings_its_own_dataset_model_and_teacher(teacher, tmp_path, capsys):
    """docs/bring_your_own.py, shown whole in the README, registers a dataset, a model and a teacher from a study
    file; its quick preset trains the teacher and both cells, and the file loads again in the same process."""
    root = pathlib.Path(__file__).resolve().parent.parent
    example = root / "docs" / "bring_your_own.py"
    assert example.read_text() in (root / "README.md").read_text()
    store = tmp_path / "store"
    args = ["run", str(example), "--preset", "quick", "--store", str(store), "--wandb", "disabled", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "teacher tops_t: test acc" in out and "2 ran, 0 already done, 0 failed" in out
    configs = [json.loads(p.read_text())["config"] for p in store.glob("*/config.json")]
    assert {(c["dataset"], c["model"], c["teacher"]) for c in configs} == {("fmnist_tops", "plain_cnn", "tops_t")}
    for summary in (json.loads(p.read_text()) for p in store.glob("*/summary.json")):
        assert summary["last/test/acc"] > 0.2 and summary["teacher/test/acc"] > 0.3  # 5 classes: chance is 0.2
    assert main(args) == 0 and "0 ran, 2 already done" in capsys.readouterr().out


def test_excluded_cells_are_left_out_before_they_are_validated(tmp_path):
    """`exclude` drops the cells matching all of one dict's axis values (variant labels included), and only those:
    here an attention-transfer loss with a fixed teacher, a config that would fail validation."""
    from ablate.study import Study, variant

    study = Study(name="ex", question="?", base=dict(teacher="fmnist_xs", model="resnet_xs", epochs=1),
                  axes=dict(loss=["kl", variant("kl + at", loss="kl + at")], policy=["fix/rs", "funmatch"]),
                  exclude=(dict(loss="kl + at", policy="fix/rs"),))
    assert sorted((c.point["loss"], c.point["policy"]) for c in cells(study)) == [
        ("kl", "fix/rs"), ("kl", "funmatch"), ("kl + at", "funmatch")]
    with pytest.raises(StudyError, match="intermediate activations.*policy 'fix/rs'"):
        cells(Study(name="ex", question="?", base=study.base, axes=study.axes))


def test_unknown_study_and_preset_list_valid_names(tmp_path, capsys):
    """Unknown study names list the studies found; unknown presets list the study's presets."""
    assert main(["run", "no_such_study", "--dry-run"]) == 2
    assert "valid studies: " in capsys.readouterr().err
    study = write(tmp_path, "tiny", TINY)
    assert main(["run", study, "--preset", "nope", "--dry-run"]) == 2
    assert "valid presets: two_seeds" in capsys.readouterr().err


def test_shipped_studies_expand(tmp_path):
    """Every study shipped in studies/ loads and expands under each of its presets."""
    from ablate.study import available_studies

    names = available_studies()
    assert {"consistency", "patience", "loss", "mixup", "init", "ood", "optimizer", "resolution"} <= set(names)
    for name in names:
        study = load_study(name)
        for preset in [None, *study.presets]:
            assert cells(study, preset)
