"""BiT checkpoint loading/saving and the BiT-specific ResNetV2 behaviours (weight standardisation, root pool padding)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate.models import build_model
from ablate.models.checkpoints import (CheckpointError, big_vision_to_bit, bit_to_big_vision, export_arrays,
                                       flatten, load_bit_npz, save_bit_npz)
from ablate.models.resnet import ResNetV2

X = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)


def small_bit(num_classes=10, **kw):
    """A BiT-style model (bit root, bottleneck units) small enough to run in milliseconds."""
    return ResNetV2(num_classes, depths=(1, 2), widths=(8, 16), unit="bottleneck", root="bit",
                    root_width=16, groups=4, **kw)


def shapes(model):
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), X[:1])["params"]


def random_params(model, seed=0):
    """Noise in every leaf (so the zero-init head gives non-zero logits); numpy, as running `init` costs seconds on CPU."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes(model))


@functools.cache
def _jitted(model):
    return jax.jit(model.apply)


def apply(model, params, x=X):
    return np.asarray(_jitted(model)({"params": params}, x))


def test_r50x1_param_count():
    model = build_model("bit_r50x1", 1000)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
    assert sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(abstract)) == 25_549_352
    names = flatten(abstract)
    assert "root_block/conv_root/kernel" in names and "block4/unit03/gn3/scale" in names
    assert all(bit_to_big_vision(big_vision_to_bit(n)) == n for n in names)


@pytest.mark.parametrize("fmt", ["bit", "big_vision"])
def test_round_trip(tmp_path, fmt):
    model = small_bit()
    params = random_params(model)
    path = tmp_path / "ckpt.npz"
    save_bit_npz(path, params, fmt=fmt)
    with np.load(path) as f:
        keys = {k: f[k].shape for k in f.files}
    if fmt == "bit":
        assert keys["resnet/root_block/standardized_conv2d/kernel"] == (7, 7, 3, 16)
        assert keys["resnet/block1/unit01/a/proj/standardized_conv2d/kernel"] == (1, 1, 16, 32)
        assert keys["resnet/head/conv2d/kernel"] == (1, 1, 64, 10)
    else:
        assert keys["block1/unit01/gn1/scale"] == (1, 1, 1, 16)
    loaded = load_bit_npz(path, shapes(model))  # an abstract target is enough
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    np.testing.assert_array_equal(apply(model, loaded), apply(model, params))
    assert np.abs(apply(model, params)).max() > 0


def test_head_skipped_for_other_class_count(tmp_path):
    upstream = small_bit(21843)
    up_params = random_params(upstream)
    save_bit_npz(tmp_path / "up.npz", up_params)
    model = small_bit(10)
    init = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes(model))
    loaded = load_bit_npz(tmp_path / "up.npz", init)
    assert not np.any(np.asarray(loaded["head"]["kernel"])) and loaded["head"]["kernel"].shape == (64, 10)
    np.testing.assert_array_equal(loaded["block2/unit02"]["conv2"]["kernel"], up_params["block2/unit02"]["conv2"]["kernel"])
    with pytest.raises(CheckpointError, match=r"head/kernel: expected \(64, 10\), got \(1, 1, 64, 21843\)"):
        load_bit_npz(tmp_path / "up.npz", init, skip_head=False)
    same = load_bit_npz(tmp_path / "up.npz", up_params, skip_head=True)  # forced skip keeps the target's head
    np.testing.assert_array_equal(same["head"]["kernel"], up_params["head"]["kernel"])


def test_missing_and_misshaped_reported_together(tmp_path):
    model = small_bit()
    params = random_params(model)
    arrays = export_arrays(params, "bit")
    del arrays["resnet/block1/unit01/b/group_norm/gamma"]
    arrays["resnet/block2/unit02/c/standardized_conv2d/kernel"] = np.zeros((1, 1, 16, 32), np.float32)
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError) as e:
        load_bit_npz(path, params)
    msg = str(e.value)
    assert str(path) in msg and "block1/unit01/gn2/scale" in msg
    assert "block2/unit02/conv3/kernel: expected (1, 1, 16, 64), got (1, 1, 16, 32)" in msg


def test_unexpected_tensors(tmp_path):
    model = small_bit()
    params = random_params(model)
    arrays = export_arrays(params, "big_vision")
    arrays["block2/unit03/conv1/kernel"] = np.zeros((1, 1, 64, 16), np.float32)  # a deeper model's unit
    np.savez(tmp_path / "deeper.npz", **arrays)
    with pytest.raises(CheckpointError, match="unexpected 1 tensor.*block2/unit03/conv1/kernel"):
        load_bit_npz(tmp_path / "deeper.npz", params)
    with pytest.warns(UserWarning, match="block2/unit03/conv1/kernel"):
        load_bit_npz(tmp_path / "deeper.npz", params, strict=False)


def test_non_parameter_keys_and_variants_only_warn(tmp_path):
    model = small_bit()
    params = random_params(model)
    bit = export_arrays(params, "bit")
    k = "resnet/block1/unit01/b/standardized_conv2d/kernel"
    bit[k.replace("conv2d/", "conv2d_3/")] = bit.pop(k)  # a numbered scope, seen in some BiT files
    bit["global_step"] = np.array(5)
    np.savez(tmp_path / "bit.npz", **bit)
    bv = {f"params/{n}": v for n, v in export_arrays(params, "big_vision").items()} | {"opt/mu": np.zeros(3)}
    np.savez(tmp_path / "state.npz", **bv)
    for name, extra in (("bit.npz", "global_step"), ("state.npz", "opt/mu")):
        with pytest.warns(UserWarning, match=f"ignored 1 non-parameter key.*{extra}"):
            loaded = load_bit_npz(tmp_path / name, params)
        np.testing.assert_array_equal(apply(model, loaded), apply(model, params))


def test_weight_standardisation_makes_kernel_scale_irrelevant():
    model = small_bit()
    params = random_params(model)
    base = apply(model, params)
    for module in ("root_block/conv_root", "block1/unit01", "block2/unit01"):
        scaled = jax.tree_util.tree_map(np.copy, params)
        leaf = scaled[module] if module.startswith("root") else scaled[module]["conv2"]
        leaf["kernel"] = 7.3 * leaf["kernel"] + 0.0
        np.testing.assert_allclose(apply(model, scaled), base, rtol=1e-4, atol=1e-4)
    changed = jax.tree_util.tree_map(np.copy, params)
    changed["block1/unit01"]["conv2"]["kernel"] = changed["block1/unit01"]["conv2"]["kernel"][::-1]
    assert np.abs(apply(model, changed) - base).max() > 1e-3  # the invariance test is not vacuous


def test_pool_padding_matters_for_negative_inputs():
    zeros, neg_inf = small_bit(pool_padding="zeros"), small_bit(pool_padding="-inf")
    params = random_params(zeros)
    x = -np.abs(X) - 1.0
    a, b = apply(zeros, params, x), apply(neg_inf, params, x)
    assert np.abs(a - b).max() > 1e-4
    with pytest.raises(ValueError, match="pool_padding"):
        shapes(small_bit(pool_padding="edge"))
