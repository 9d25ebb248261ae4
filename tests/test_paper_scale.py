"""Paper scale without the paper's data: the paper's study files, dry-run costs, BiT checkpoint teachers, W&B sweeps, --cell."""

import logging
import shlex
import textwrap

import jax
import numpy as np
import pytest
import yaml

from ablate.cli import build_parser, main
from ablate.config import ConfigError, RunConfig, validate
from ablate.data import DataError
from ablate.data.tfds import SPECS, split_size
from ablate.models import MODELS
from ablate.models.checkpoints import save_bit_npz
from ablate.models.resnet import ResNetV2
from ablate.study import cells, load_study
from ablate.sweep import agent_command_line
from ablate.teachers import TEACHERS, get_teacher, register_checkpoint_teacher, teacher_config
from ablate.config import num_steps

PAPER = ["paper/flowers", "paper/pets", "paper/food", "paper/sun", "paper/imagenet"]


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """Empty TFDS and BiT folders: nothing of the paper's data or teachers is present."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("ABLATE_BIT_DIR", str(tmp_path / "bit"))
    return tmp_path


def test_known_split_sizes_follow_tfds_slicing():
    """Train sizes the estimates use: the paper's train splits, sliced by TFDS's own rules."""
    assert {n: s.sizes[0] for n, s in SPECS.items()} == {
        "oxford_flowers102": 1020, "oxford_iiit_pet": 3312, "food101": 68175, "sun397": 76127,
        "imagenet2012": 1255544, "cifar10": 45000, "cifar100": 45000}
    assert SPECS["oxford_iiit_pet"].sizes == (3312, 368, 3669)
    assert split_size("train[:10%]+test", {"train": 100, "test": 7}) == 17
    assert split_size("validation", {"train": 100}) is None


@pytest.mark.parametrize("split", ["train", "test", "train[:90%]", "train[90%:]", "train[:98%]", "train[99%:]",
                                   "train[10:20]", "train[-500:]", "train[:-5%]", "train[10%:20]", "train[12.5%:87.5%]",
                                   "train[33.3%:66.6%]", "train[:10%]+test", "train + test[-1:]", "train[:200%]",
                                   "train[1.5:]", "train[:]", "train[5]", "validation"])
def test_split_sizes_agree_with_tfds(split):
    """split_size reads TFDS split strings without TFDS (`ablate list` loads the paper's studies), as TFDS does."""
    import types

    import tensorflow_datasets as tfds

    for counts in ({"train": 3680, "test": 3669}, {"train": 1281167, "test": 50000}, {"train": 13, "test": 7}):
        try:
            expected = sum((counts[i.splitname] if i.to is None else i.to) - (i.from_ or 0)
                           for i in tfds.core.ReadInstruction.from_spec(split).to_absolute(
                               {k: types.SimpleNamespace(num_examples=n) for k, n in counts.items()}))
        except (ValueError, KeyError):
            expected = None
        assert split_size(split, counts) == expected, counts


@pytest.mark.parametrize("name", PAPER)
def test_paper_studies_expand_under_every_preset(name):
    """Every preset expands to valid cells with the paper's recipe, and warmup is exactly 1500 (5000) steps."""
    study = load_study(name)
    assert len(study.presets) >= 2
    imagenet = name == "paper/imagenet"
    full = cells(study)
    for preset in study.presets:
        grid = cells(study, preset)
        assert grid and {c.run_id for c in grid} <= {c.run_id for c in full}
        assert len({c.config.epochs for c in grid}) == 1
    policies = {c.point["policy"] for c in full}
    assert {"funmatch", "same/ic"} <= policies and ("fix/rs" if imagenet else "fix/ic_ens") in policies
    for c in full:
        cfg = c.config
        assert cfg.model == "bit_r50x1" and cfg.subset_per_class is None and cfg.mixup_p == 1.0
        assert cfg.ic_min_area == 0.05 and cfg.optimizer == "adam" and cfg.clip == 1.0
        assert cfg.batch_size == (4096 if imagenet else 512) and cfg.resolution == (224 if imagenet else 128)
        if cfg.teacher is not None:
            assert teacher_config(cfg.teacher).model == "bit_r152x2"
            assert teacher_config(cfg.teacher).dataset == cfg.dataset
        steps = num_steps(cfg, SPECS[cfg.dataset].sizes[0])
        assert round(cfg.warmup_frac * steps) == (5000 if imagenet else 1500)


def test_flowers_presets_match_the_papers_table():
    """fast / medium / long of flowers102: epochs, T, lr, wd as in the paper."""
    study = load_study("paper/flowers")
    got = {p: {(c.config.epochs, c.config.temperature, c.config.lr, c.config.wd) for c in cells(study, p)}
           for p in study.presets}
    assert got == {"fast": {(1e4, 10.0, 3e-3, 3e-4)}, "medium": {(1e5, 1.0, 1e-3, 1e-4)},
                   "long": {(1e6, 1.0, 3e-4, 1e-5)}}
    assert {c.point["policy"] for c in cells(study, "long")} >= {"fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic",
                                                                 "same/rc", "same/ic", "funmatch", "supervised"}


def test_dry_run_needs_no_data_or_teacher_files(no_data, capsys, caplog):
    """`ablate run paper/flowers --preset long --dry-run` prints the grid, total steps and costs per machine, and
    no warning about the data folders it finds empty."""
    store = no_data / "store"
    assert main(["run", "paper/flowers", "--preset", "long", "--dry-run", "--store", str(store)]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    out = capsys.readouterr().out
    steps = num_steps(RunConfig(epochs=1e6, batch_size=512), 1020)
    assert steps == 1_992_187
    assert "9 runs" in out and out.count(f"steps={steps:,}") == 9
    assert f"total: {9 * steps:,} steps" in out
    assert "train 1,020" in out and "known TFDS split sizes" in out
    for machine in ("cpu-2core", "nvidia-a100", "nvidia-h100"):
        assert f"estimated on {machine}" in out
    assert not store.exists()


# ----------------------------------------------------------------------------- checkpoint teachers

def tiny_bit(num_classes):
    """A BiT-style ResNetV2 (bit root, bottleneck units) small enough to run in milliseconds."""
    return ResNetV2(num_classes, depths=(1, 1), widths=(8, 16), unit="bottleneck", root="bit", root_width=16, groups=4)


@pytest.fixture
def tiny_bit_model(monkeypatch):
    monkeypatch.setitem(MODELS._entries, "test_bit_tiny", tiny_bit)
    return "test_bit_tiny"


def random_params(model, res=32, seed=0):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, res, res, 3), np.float32))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes["params"])


@pytest.mark.parametrize("fmt", ["bit", "big_vision"])
def test_checkpoint_teacher_gives_the_logits_of_the_saved_params(no_data, tiny_bit_model, fmt):
    """A registered checkpoint teacher loads its .npz (head kept) without data, training or evaluation."""
    model = tiny_bit(102)  # oxford_flowers102's class count: known without the data
    params = random_params(model)
    (no_data / "bit").mkdir()
    save_bit_npz(no_data / "bit" / "tiny_flowers32.npz", params, fmt=fmt)
    name = f"test_ckpt_{fmt}"
    register_checkpoint_teacher(name, model=tiny_bit_model, dataset="oxford_flowers102", path="tiny_flowers32.npz",
                                resolution=32)
    try:
        validate(RunConfig(dataset="oxford_flowers102", teacher=name, model="bit_r50x1"))
        t = get_teacher(name, log=lambda *a: None)
        x = np.random.default_rng(1).uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
        want = np.asarray(model.apply({"params": params}, x))
        assert np.abs(want).max() > 0.1  # the head is loaded, not zero-initialised
        np.testing.assert_allclose(np.asarray(t.apply(x)), want, rtol=1e-5, atol=1e-5)
        assert t.resolution == 32 and t.summary["source"] == "checkpoint" and "last/test/acc" not in t.summary
        # the same file as an on-the-fly name (relative to $ABLATE_BIT_DIR) is the same teacher
        path = str(no_data / "bit" / "tiny_flowers32.npz")
        for npz in (f"npz:{tiny_bit_model}:oxford_flowers102:32:tiny_flowers32.npz",
                    f"npz:{tiny_bit_model}:oxford_flowers102:32:{path}"):
            validate(RunConfig(dataset="oxford_flowers102", teacher=npz, model="bit_r50x1"))
            assert get_teacher(npz, log=lambda *a: None).fingerprint == t.fingerprint
    finally:
        TEACHERS._entries.pop(name, None)


def test_checkpoint_teacher_errors(no_data, tiny_bit_model):
    """A missing file says where to get it; a head of another class count is an error, not a silent re-init."""
    with pytest.raises(DataError, match="gs://bit_models/distill/R152x2_T_flowers128.npz"):
        get_teacher("bit_flowers_t", log=lambda *a: None)
    (no_data / "bit").mkdir()
    save_bit_npz(no_data / "bit" / "five.npz", random_params(tiny_bit(5)))
    with pytest.raises(DataError, match="head/kernel"):
        get_teacher(f"npz:{tiny_bit_model}:oxford_flowers102:32:five.npz", log=lambda *a: None)
    for bad, msg in [("npz:bit_r50x1:oxford_flowers102:x.npz", "npz:MODEL:DATASET:RESOLUTION:PATH"),
                     ("npz:bit_r50x1:no_such_set:128:x.npz", "unknown dataset 'no_such_set'"),
                     ("npz:bit_r50x1:food101:big:x.npz", "RESOLUTION must be an int")]:
        with pytest.raises(ConfigError, match=msg):
            validate(RunConfig(dataset="food101", teacher=bad, model="bit_r50x1"))


def test_paper_teachers_are_registered_checkpoints():
    for name, (dataset, res) in {"bit_flowers_t": ("oxford_flowers102", 128), "bit_pets_t": ("oxford_iiit_pet", 128),
                                 "bit_food_t": ("food101", 128), "bit_sun_t": ("sun397", 128),
                                 "bit_imagenet_t224": ("imagenet2012", 224),
                                 "bit_imagenet_t384": ("imagenet2012", 384)}.items():
        entry = TEACHERS.get(name)
        assert (entry.cfg.model, entry.cfg.dataset, entry.cfg.resolution) == ("bit_r152x2", dataset, res)
        assert entry.path.startswith("R152x2_T_") and entry.path.endswith(".npz")


# ----------------------------------------------------------------------------- W&B sweeps and --cell

@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_sweep_config_covers_every_cell_with_the_right_command(tmp_path, capsys, fmt):
    out = tmp_path / f"sweep.{fmt}"
    assert main(["sweep", "paper/flowers", "--preset", "fast", "--format", fmt, "--out", str(out)]) == 0
    config = yaml.safe_load(out.read_text())  # JSON is YAML too
    ids = [c.run_id for c in cells(load_study("paper/flowers"), "fast")]
    assert config["method"] == "grid" and config["program"] == "ablate"
    assert config["parameters"] == {"cell": {"values": ids}}
    assert config["command"][:2] == ["${env}", "${program}"] and config["command"][-1] == "${args}"
    line = agent_command_line(config, ids[3])
    assert line == f"/usr/bin/env ablate run paper/flowers --preset fast --no-progress --cell={ids[3]}"
    args = build_parser().parse_args(shlex.split(line)[2:])
    assert (args.command, args.study, args.preset, args.cell) == ("run", "paper/flowers", "fast", ids[3])


TINY = textwrap.dedent("""
    from ablate.study import Study, variant

    STUDY = Study(
        name="tiny_cell",
        question="Does --cell run one cell only?",
        base=dict(teacher="fmnist_xs", model="resnet_xs", subset_per_class=5, epochs=2, batch_size=25,
                  num_evals=1, lr=1e-2),
        axes=dict(policy=["funmatch", variant("supervised", policy="supervised", loss="label_ce", teacher=None)]),
    )
""")


def test_cell_runs_only_that_cell(teacher, tmp_path, capsys):
    """--cell runs that one cell (the funmatch one, with the session's fmnist_xs teacher) and nothing else."""
    from ablate.store import RunStore

    study = tmp_path / "tiny_cell.py"
    study.write_text(TINY)
    store = tmp_path / "store"
    ids = [c.run_id for c in cells(load_study(str(study)))]
    common = ["--store", str(store), "--wandb", "disabled", "--no-progress"]
    assert main(["run", str(study), "--cell", "0123456789ab", *common]) == 2
    err = capsys.readouterr().err
    assert "no cell '0123456789ab'" in err and all(i in err for i in ids)
    assert main(["run", str(study), "--cell", ids[0], *common]) == 0
    s = RunStore(store)
    assert s.is_done(ids[0]) and not (store / ids[1]).exists()
    assert s.record(ids[0])["policy"] == "funmatch"
