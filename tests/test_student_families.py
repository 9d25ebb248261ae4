"""The non-ResNet student families: mobilenet_s (MobileNetV2-style) and vit_s (a small ViT)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate.losses import kl
from ablate.models import MODELS, apply_with_features, build_model
from ablate.models.small import DepthwiseConv, PointwiseConv, conv_init

X28 = jnp.zeros((2, 28, 28, 1))
X32 = jnp.zeros((2, 32, 32, 3))
# name: (parameters with 10 classes at 28x28x1, stage outputs (H, W, C) at 28 px, at 32 px)
FAMILIES = {
    "mobilenet_s": (44_602, ((28, 28, 16), (14, 14, 24), (7, 7, 32)), ((32, 32, 16), (16, 16, 24), (8, 8, 32))),
    "vit_s": (52_570, ((7, 7, 40),) * 3, ((8, 8, 40),) * 3),
}


def count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def shapes(name, x):
    model = build_model(name, 10)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    return params, jax.eval_shape(lambda p, x: apply_with_features(model, p, x), params, x)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_parameter_counts(name):
    """Both are sized like the default student resnet_s (43,870 parameters)."""
    assert name in MODELS
    params, _ = shapes(name, X28)
    assert count(params) == FAMILIES[name][0]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("x, i", [(X28, 1), (X32, 2)], ids=["28x28x1", "32x32x3"])
def test_logits_and_sown_stages(name, x, i):
    _, (logits, feats) = shapes(name, x)
    assert logits.shape == (2, 10)
    assert [f.shape for f in feats] == [(2, *s) for s in FAMILIES[name][i]]


@pytest.mark.parametrize("size, stride", [(8, 1), (8, 2), (7, 2), (6, 1)])
def test_depthwise_conv_is_the_grouped_convolution_with_jaxs_gradients(size, stride):
    """DepthwiseConv (shifted slices, written-out gradients) draws the parameters nn.Conv with one group per
    channel draws, and gives its output and jax's gradients of it, input and kernel, at MobileNetS's strides and
    at odd sizes whose last window is cut short."""
    x = jax.random.normal(jax.random.key(0), (3, size, size, 5))
    ours = DepthwiseConv(3, stride)
    ref = nn.Conv(5, (3, 3), (stride, stride), padding=((1, 1), (1, 1)), feature_group_count=5, use_bias=False,
                  kernel_init=conv_init)
    params = ours.init(jax.random.key(1), x)
    np.testing.assert_array_equal(params["params"]["kernel"], ref.init(jax.random.key(1), x)["params"]["kernel"])
    probe = jax.random.normal(jax.random.key(2), ref.apply(params, x).shape)
    loss = {name: (lambda p, x, m=m: jnp.sum(probe * m.apply(p, x))) for name, m in (("ours", ours), ("ref", ref))}
    np.testing.assert_allclose(loss["ours"](params, x), loss["ref"](params, x), rtol=1e-5)
    grads = {name: jax.grad(f, (0, 1))(params, x) for name, f in loss.items()}
    for a, b in zip(jax.tree.leaves(grads["ours"]), jax.tree.leaves(grads["ref"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_pointwise_conv_is_the_1x1_convolution():
    """PointwiseConv (one matmul over the channels) draws nn.Conv's 1x1 parameters and gives its output."""
    x = jax.random.normal(jax.random.key(0), (3, 5, 5, 6))
    ref = nn.Conv(4, (1, 1), use_bias=False, kernel_init=conv_init)
    params = PointwiseConv(4).init(jax.random.key(1), x)
    np.testing.assert_array_equal(params["params"]["kernel"], ref.init(jax.random.key(1), x)["params"]["kernel"])
    np.testing.assert_allclose(PointwiseConv(4).apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-6)


def test_mobilenet_structure():
    """Depthwise 3x3 convs (one input channel per group), 4x expansion, identity shortcuts only in shape-keeping
    blocks (no shortcut params anywhere), a final 1x1 conv to 128 channels."""
    params, _ = shapes("mobilenet_s", X28)
    assert params["stem"]["kernel"].shape == (3, 3, 1, 16)
    assert params["stage1/0"]["depthwise"]["kernel"].shape == (3, 3, 1, 64)
    assert params["stage2/0"]["expand"]["kernel"].shape == (1, 1, 16, 64)
    assert params["stage2/1"]["depthwise"]["kernel"].shape == (3, 3, 1, 96)
    assert params["stage3/2"]["project"]["kernel"].shape == (1, 1, 128, 32)
    assert sorted(k for k in params if k.startswith("stage3/")) == ["stage3/0", "stage3/1", "stage3/2"]
    assert params["last"]["kernel"].shape == (1, 1, 32, 128) and params["head"]["kernel"].shape == (128, 10)


def test_vit_structure():
    """Patch embedding by a 4x4 stride-4 conv; the position embedding follows the input's token grid."""
    params, _ = shapes("vit_s", X28)
    assert params["embedding"]["kernel"].shape == (4, 4, 1, 40)
    assert params["pos_embedding"].shape == (7, 7, 40)
    assert shapes("vit_s", X32)[0]["pos_embedding"].shape == (8, 8, 40)
    assert sorted(k for k in params if k.startswith("block")) == ["block1", "block2", "block3"]
    assert params["block1"]["mlp1"]["kernel"].shape == (40, 120)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_zero_logits_at_init_and_a_kd_step_learns(name):
    """Zero logits at init; the KD loss to a random teacher has finite gradients that reach the first layer (once
    the head is non-zero), and a gradient step lowers it. One jitted function: compiling is the cost on a CPU."""
    model = build_model(name, 10)
    first = "stem" if name == "mobilenet_s" else "embedding"

    @jax.jit
    def check(x, teacher):
        params = model.init(jax.random.key(0), x)["params"]
        logits0 = model.apply({"params": params}, x)
        head = params["head"]
        params = {**params, "head": {**head, "kernel": 0.1 * jax.random.normal(jax.random.key(3), head["kernel"].shape)}}

        def loss(p):
            return jnp.mean(kl(model.apply({"params": p}, x), teacher, None, temperature=2.0))

        before, grads = jax.value_and_grad(loss)(params)
        after = loss(jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
        finite = jnp.all(jnp.stack([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
        reach = jnp.abs(grads[first]["kernel"]).max()
        return head, logits0, finite, reach, before, after

    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    head, logits0, finite, reach, before, after = check(x, jax.random.normal(jax.random.key(2), (2, 10)))
    assert not np.asarray(head["kernel"]).any() and not np.asarray(head["bias"]).any()
    assert logits0.shape == (2, 10) and not np.asarray(logits0).any()
    assert bool(finite) and float(reach) > 0
    assert float(after) < float(before)
