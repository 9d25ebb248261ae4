"""CRD's / mdistiller's CIFAR-100 models (resnet8x4, resnet32x4, wrn_16_2, wrn_40_2) and the CIFAR datasets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ablate.data import tfds as T
from ablate.data.base import load_dataset
from ablate.models import MODELS, apply_with_features, build_model

# name: (parameters with 100 classes here, as in the published table of CRD (Tian et al., ICLR 2020) and
# mdistiller, stage output shapes at 32 px: (H, W, C) per stage)
CIFAR_MODELS = {
    "resnet8x4": (1_233_540, 1.23e6, ((32, 32, 64), (16, 16, 128), (8, 8, 256))),
    "resnet32x4": (7_433_860, 7.43e6, ((32, 32, 64), (16, 16, 128), (8, 8, 256))),
    "wrn_16_2": (703_284, 0.70e6, ((32, 32, 32), (16, 16, 64), (8, 8, 128))),
    "wrn_40_2": (2_255_156, 2.26e6, ((32, 32, 32), (16, 16, 64), (8, 8, 128))),
}
X = jnp.zeros((2, 32, 32, 3))


def count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_parameter_counts_are_the_published_ones(name):
    """GroupNorm has BatchNorm's parameters (a scale and a bias per channel): the counts are the published models'."""
    exact, published, _ = CIFAR_MODELS[name]
    assert name in MODELS
    params = jax.eval_shape(build_model(name, 100).init, jax.random.key(0), X)["params"]
    assert count(params) == exact
    assert abs(exact - published) <= 0.01 * published


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_stages_are_sown_at_32_16_8_px(name):
    model, (_, _, stages) = build_model(name, 100), CIFAR_MODELS[name]
    params = jax.eval_shape(model.init, jax.random.key(0), X)["params"]
    logits, feats = jax.eval_shape(lambda p, x: apply_with_features(model, p, x), params, X)
    assert logits.shape == (2, 100)
    assert [f.shape for f in feats] == [(2, *s) for s in stages]


def test_structure_follows_mdistiller():
    """Shortcut convs exactly where mdistiller has them; the WRN's is 1x1 and reads the activated input."""
    resnet = jax.eval_shape(build_model("resnet8x4", 100).init, jax.random.key(0), X)["params"]
    assert resnet["conv1"]["kernel"].shape == (3, 3, 3, 32)
    assert [resnet[f"layer{i}/0"]["downsample_conv"]["kernel"].shape for i in (1, 2, 3)] == [
        (1, 1, 32, 64), (1, 1, 64, 128), (1, 1, 128, 256)]  # 32 -> 64 at stride 1 too
    deep = jax.eval_shape(build_model("resnet32x4", 100).init, jax.random.key(0), X)["params"]
    assert sorted(k for k in deep if k.startswith("layer3/")) == [f"layer3/{j}" for j in range(5)]
    assert "downsample_conv" not in deep["layer1/1"] and "downsample_conv" in deep["layer2/0"]
    wrn = jax.eval_shape(build_model("wrn_40_2", 100).init, jax.random.key(0), X)["params"]
    assert sorted(k for k in wrn if k.startswith("block1/")) == [f"block1/{j}" for j in range(6)]
    assert wrn["block1/0"]["shortcut"]["kernel"].shape == (1, 1, 16, 32)
    assert "shortcut" not in wrn["block1/1"] and wrn["norm"]["scale"].shape == (128,)
    assert wrn["head"]["kernel"].shape == (128, 100)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2"])
def test_forward_logits_are_zero_at_init_and_depend_on_the_input(name):
    model = build_model(name, 100)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    assert not np.asarray(params["head"]["kernel"]).any() and not np.asarray(params["head"]["bias"]).any()
    forward = jax.jit(lambda p, x: apply_with_features(model, p, x))
    logits, feats = forward(params, x)
    assert logits.shape == (2, 100) and not np.asarray(logits).any()
    assert all(np.isfinite(np.asarray(f)).all() and np.asarray(f).std() > 0 for f in feats)
    params = {**params, "head": {"kernel": jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape),
                                 "bias": params["head"]["bias"]}}
    logits = np.asarray(forward(params, x)[0])
    assert np.isfinite(logits).all() and np.abs(logits[0] - logits[1]).max() > 1e-3


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_datasets_with_mock_data(name, num_classes, monkeypatch):
    """32 px images in 40 px records, padded by 4 px of zeros: the 'cc' eval view is the image, pixel for pixel."""
    from ablate import views

    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with tfds.testing.mock_data(num_examples=6):
        d = load_dataset(name)
        assert (d.num_classes, d.resolution, d.default_resolution, d.image_shape) == (num_classes, 32, 32, (40, 40, 3))
        assert [s.split for s in (d.train, d.val, d.test)] == ["train[:90%]", "train[90%:]", "test"]
        assert T.SPECS[name].sizes == (45000, 5000, 10000)
        for src in (d.train, d.val, d.test):
            assert len(src) == 6 and src.labels.min() >= 0 and src.labels.max() < num_classes
        raw = np.stack([np.asarray(d.test.source[i]["image"]) for i in range(6)])
        assert raw.shape == (6, 32, 32, 3) and raw.dtype == np.uint8
        records = np.stack([d.test[i]["image"] for i in range(6)])
        np.testing.assert_array_equal(records[:, 4:36, 4:36], raw)
        border = np.ones((40, 40), bool)
        border[4:36, 4:36] = False
        assert not records[:, border].any()
        cc = views.render(jnp.asarray(records), views.central_crop(None, 6), 32)
        np.testing.assert_allclose(cc, raw.astype(np.float32) * (2 / 255) - 1, atol=1e-5)


def test_zeropad_fit():
    wide = np.full((20, 30, 3), 9, np.uint8)
    out = T.fit_image(wide, 40, "zeropad")  # central 20 x 20 square, resized to 32, zero-padded by 4
    assert out.shape == (40, 40, 3) and (out[4:36, 4:36] == 9).all() and out[:4].max() == 0 and out[:, 36:].max() == 0
    assert (T.fit_image(np.full((32, 32), 5, np.uint8), 40, "zeropad")[4:36, 4:36] == 5).all()


def test_cifar100_teachers_are_registered_with_mdistillers_recipe():
    """`ablate teacher train cifar100_resnet32x4` (and wrn_40_2) trains by mdistiller's recipe, on labels only."""
    from ablate.config import validate
    from ablate.policies import POLICIES
    from ablate.teacher_registry import teacher_config

    for model in ("resnet32x4", "wrn_40_2"):
        cfg = teacher_config(f"cifar100_{model}")
        validate(cfg)
        assert (cfg.dataset, cfg.model, cfg.teacher, cfg.loss, cfg.subset_per_class) == (
            "cifar100", model, None, "label_ce", None)
        assert (cfg.optimizer, cfg.lr, cfg.wd, cfg.batch_size, cfg.epochs) == ("sgdm", 0.05, 5e-4, 64, 240)
        assert cfg.policy == "supervised/rc" and not POLICIES.get(cfg.policy).teacher


def test_cifar100_pairs_study_expands_and_estimates_its_cost(capsys):
    """Each pair's student learns from its own teacher; the student alone has none; the dry run needs no data."""
    from ablate.cli import main
    from ablate.study import cells, load_study

    grid = cells(load_study("cifar100/pairs"), "full")
    assert len(grid) == 2 * 5 * 3
    pairs = {("cifar100_resnet32x4", "resnet8x4"), ("cifar100_wrn_40_2", "wrn_16_2"), (None, "resnet8x4"),
             (None, "wrn_16_2")}
    assert {(c.config.teacher, c.config.model) for c in grid} == pairs
    assert all((c.config.teacher is None) == (c.point["policy"] == "student alone") for c in grid)
    assert main(["run", "cifar100/pairs", "--preset", "full", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dataset cifar100: train 45,000, val 5,000, test 10,000" in out and "estimated on nvidia-h100" in out
