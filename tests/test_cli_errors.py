"""The `ablate` command in-process: bad names and values exit 2 with helpful messages and write nothing."""

import pytest

from ablate.cli import main
from ablate.data import DATASETS
from ablate.losses import LOSSES
from ablate.models import MODELS
from ablate.policies import POLICIES
from ablate.teachers import TEACHERS

STUDY = '''
from ablate.study import Study
STUDY = Study(name="tiny_probe", question="Does the CLI list studies it finds?",
              base={"teacher": "fmnist_xs", "model": "resnet_xs", "epochs": 1},
              axes={"policy": ["funmatch", "fix/rs"]})
'''


def distill(store, *flags):
    """`ablate distill` with a store folder, no W&B and no progress bars."""
    return main(["distill", "--store", str(store), "--wandb", "disabled", "--no-progress", *flags])


def assert_nothing_written(store):
    assert not store.exists() or not any(store.iterdir()), f"store {store} was written to"


@pytest.mark.parametrize("flag,value,registry", [
    ("--policy", "funmatchh", POLICIES),
    ("--loss", "kl + 0.1*label_cee", LOSSES),
    ("--model", "resnet_xxl", MODELS),
    ("--dataset", "no_such_dataset", DATASETS),
    ("--teacher", "no_such_teacher", TEACHERS),
])
def test_unknown_names_exit_2_and_list_valid_names(tmp_path, capsys, flag, value, registry):
    """An unknown policy/loss/model/dataset/teacher exits with code 2, names every valid entry, writes nothing."""
    store = tmp_path / "store"
    assert distill(store, flag, value) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: unknown ")
    assert "Traceback" not in err
    for name in registry.names():
        assert name in err, f"{name!r} missing from: {err}"
    assert_nothing_written(store)


@pytest.mark.parametrize("flags,message", [
    (["--epochs", "-3"], "epochs must be > 0, got -3.0"),
    (["--epochs", "0"], "epochs must be > 0, got 0.0"),
    (["--temperature", "0"], "temperature must be > 0, got 0.0"),
    (["--temperature", "-1.5"], "temperature must be > 0, got -1.5"),
    (["--batch-size", "2.5"], "batch_size must be an int"),
    (["--epochs", "many"], "epochs must be a float"),
    (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
    (["--optimizer", "sgd"], "valid optimizers: adam, lion, sgdm"),
    (["--init-seed", "1.5"], "init_seed must be an int or None, got '1.5'"),
    (["--epochs", "inf"], "epochs must be a finite number, got inf"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--temperature", "nan"], "temperature must be a finite number, got nan"),
    (["--seed", "-1"], "seed must be >= 0, got -1"),
    (["--subset-seed", "-5"], "subset_seed must be >= 0, got -5"),
    (["--init-seed", "-2"], "init_seed must be >= 0 or None, got -2"),
    (["--init-seed", "2", "--init", "0123456789ab"], "init_seed 2 has no effect: the student starts from run "
                                                     "0123456789ab (set init_seed or init, not both)"),
])
def test_bad_values_exit_2_with_a_specific_message(tmp_path, capsys, flags, message):
    """Out-of-range or mistyped values exit 2 with a message naming the field, the value and what is valid."""
    store = tmp_path / "store"
    assert distill(store, *flags) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert_nothing_written(store)


@pytest.mark.parametrize("flags,message", [
    (["--policy", "funmatch", "--teacher", "none"], "needs a teacher"),
    (["--policy", "funmatch", "--loss", "label_ce"], "ignores the teacher"),
    (["--policy", "supervised", "--teacher", "none", "--loss", "kl"], "has no teacher"),
])
def test_inconsistent_policy_loss_teacher_exit_2(tmp_path, capsys, flags, message):
    """A policy/loss/teacher combination that cannot work is rejected before anything runs."""
    store = tmp_path / "store"
    assert distill(store, *flags) == 2
    assert message in capsys.readouterr().err
    assert_nothing_written(store)


INIT_STUDY = '''
from ablate.study import Study
STUDY = Study(name="init_probe", question="Does a missing init run stop the study before it starts?",
              base={"teacher": "fmnist_xs", "model": "resnet_xs", "epochs": 1},
              axes={"init": [None, "0123456789ab"]})
'''


def test_init_from_a_run_that_is_not_finished_exits_2(tmp_path, capsys, monkeypatch):
    """`init` naming a run the store has not finished fails before any cell runs, and says what to run first."""
    store = tmp_path / "store"
    assert distill(store, "--init", "0123456789ab") == 2
    err = capsys.readouterr().err
    assert "init run 0123456789ab is not a finished run in" in err and "Traceback" not in err
    assert_nothing_written(store)
    monkeypatch.setenv("ABLATE_STUDIES", str(tmp_path))
    (tmp_path / "init_probe.py").write_text(INIT_STUDY)
    assert main(["run", "init_probe", "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cell (seed=0 init=0123456789ab): init run 0123456789ab is not a finished run" in err
    assert "ablate run init_source" in err
    assert_nothing_written(store)


def test_unknown_teacher_for_teacher_command_exits_2(capsys):
    """`ablate teacher train NAME` with an unknown name exits 2 and lists the teachers."""
    assert main(["teacher", "train", "nope", "--no-progress"]) == 2
    err = capsys.readouterr().err
    for name in TEACHERS.names():
        assert name in err


def test_unknown_study_exits_2(tmp_path, capsys, monkeypatch):
    """`ablate run` with an unknown study exits 2 and names the studies it knows."""
    monkeypatch.setenv("ABLATE_STUDIES", str(tmp_path))
    (tmp_path / "tiny_probe.py").write_text(STUDY)
    assert main(["run", "no_such_study", "--store", str(tmp_path / "store"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'no_such_study'" in err and "tiny_probe" in err
    assert_nothing_written(tmp_path / "store")


def test_list_prints_every_registry(tmp_path, capsys, monkeypatch):
    """`ablate list` prints every policy, loss, model, dataset, teacher and study with its one-line summary."""
    monkeypatch.setenv("ABLATE_STUDIES", str(tmp_path))
    (tmp_path / "tiny_probe.py").write_text(STUDY)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for title, reg in [("policies", POLICIES), ("losses", LOSSES), ("models", MODELS), ("datasets", DATASETS),
                       ("teachers", TEACHERS)]:
        assert f"{title}:" in lines
        start = lines.index(f"{title}:")
        listed = []
        for line in lines[start + 1:]:
            if not line.startswith("  "):
                break
            listed.append(line.split()[0])
        assert listed == reg.names(), title
    assert "studies:" in lines
    assert any(line.split()[:1] == ["tiny_probe"] and "Does the CLI list studies" in line for line in lines)
    # every entry has a summary line after its name
    assert "funmatch" in out and "Function matching" in out
    assert "T^2 KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al., 2015; Beyer et al., CVPR 2022)" in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    """An unknown subcommand is an argparse usage error (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        main(["distil"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_config_field_is_described_in_help(capsys):
    """`ablate distill --help` describes each config field and names its default."""
    import dataclasses

    from ablate.config import RunConfig

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(RunConfig):
        assert f.metadata.get("help"), f"config field {f.name} has no description"
        assert f"{f.metadata['help']} (default: {f.default})" in out, f.name
