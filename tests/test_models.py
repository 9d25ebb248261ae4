"""The model building blocks compute what their reference implementations compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate.models import build_model
from ablate.models.resnet import NHWC, GroupNorm, conv2d, conv_as_matmul, conv_impl


@pytest.mark.parametrize("fast_variance", [True, False])
@pytest.mark.parametrize("shape, groups", [((4, 7, 7, 24), 4), ((3, 14, 14, 12), 12), ((2, 5, 5, 32), 32)])
def test_group_norm_matches_flax(shape, groups, fast_variance):
    x = jax.random.normal(jax.random.key(0), shape) * 3 + 1
    variables = nn.GroupNorm(num_groups=groups).init(jax.random.key(1), x)
    # non-trivial scale and bias, so a swapped or ignored parameter would show
    variables = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), variables)
    ref = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=fast_variance).apply(variables, x)
    out = GroupNorm(groups, fast_variance=fast_variance).apply(variables, x)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_group_norm_normalises_each_group():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8)) * 5 + 3
    out = GroupNorm(2).init_with_output(jax.random.key(1), x)[0]
    groups = out.reshape(2, 6, 6, 2, 4)
    np.testing.assert_allclose(groups.mean(axis=(1, 2, 4)), 0, atol=1e-5)
    np.testing.assert_allclose(groups.var(axis=(1, 2, 4)), 1, atol=1e-3)


@pytest.mark.parametrize("kernel, stride, pad", [((3, 3), 1, 1), ((3, 3), 2, 1), ((1, 1), 2, 0), ((7, 7), 2, 3)])
def test_conv_as_matmul_matches_xla_conv(kernel, stride, pad):
    x = jax.random.normal(jax.random.key(0), (2, 13, 13, 5))
    w = jax.random.normal(jax.random.key(1), (*kernel, 5, 6))
    padding = ((pad, pad), (pad, pad))
    ref = jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv_as_matmul(x, w, stride, padding), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("size, kernel, stride, pad", [(28, 3, 1, 1), (14, 3, 2, 1), (14, 1, 2, 0), (13, 7, 2, 3),
                                                       (8, 3, 2, 1), (7, 1, 1, 0)])
def test_conv2d_gradients_are_jaxs_own(size, kernel, stride, pad):
    """conv2d's written-out gradients (input and kernel) equal those jax derives for lax.conv_general_dilated,
    for the strides and paddings of ablate's models and odd sizes whose last window is cut short."""
    x = jax.random.normal(jax.random.key(0), (3, size, size, 5))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 6))
    padding = ((pad, pad), (pad, pad))
    probe = jax.random.normal(jax.random.key(2), conv2d(x, w, (stride, stride), padding).shape)

    def ref(x, w):
        return jnp.sum(probe * jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC))

    def mine(x, w):
        return jnp.sum(probe * conv2d(x, w, (stride, stride), padding))

    np.testing.assert_array_equal(mine(x, w), ref(x, w))
    for a, b in zip(jax.grad(mine, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_a_loop_of_training_steps_keeps_every_convolution_in_nhwc():
    """Inside a loop's body XLA's CPU backend leaves jax's permuted gradient convolutions as they are, about 3x
    slower (jax-ml/jax#12868). With conv2d every convolution of a compiled loop of gradient steps is NHWC x HWIO;
    with jax's own gradients ("lax") some are not, which is what this test would catch coming back."""
    model = build_model("resnet_xs", 10)
    x = jnp.zeros((8, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]

    def layouts(impl):
        def steps(params):
            def body(k, p):
                g = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x + k)))(p)
                return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g)
            return jax.lax.fori_loop(0, 2, body, params)

        with conv_impl(impl):
            hlo = jax.jit(steps).lower(params).compile().as_text()
        return {line.split("dim_labels=")[1].split(",")[0] for line in hlo.splitlines() if " convolution(" in line}

    assert layouts("xla") == {"b01f_01io->b01f"}
    if jax.default_backend() == "cpu":
        assert layouts("lax") != {"b01f_01io->b01f"}


def test_conv_impls_give_the_same_model():
    """The student and its gradients are the same whichever convolution lowering StdConv uses."""
    model = build_model("resnet_xs", 10)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda a: a + 0.01 * jax.random.normal(jax.random.key(3), a.shape), params)

    results = {}
    for impl in ("xla", "lax", "matmul"):
        def loss(p):  # a new function per impl: jax caches traces by function
            return jnp.sum(jnp.square(model.apply({"params": p}, x)))

        with conv_impl(impl):
            jaxpr = str(jax.make_jaxpr(loss)(params))
            results[impl] = jax.value_and_grad(loss)(params)
        assert ("conv_general_dilated" in jaxpr) == (impl != "matmul")
    la, ga = results["xla"]
    for other in ("lax", "matmul"):
        lb, gb = results[other]
        np.testing.assert_allclose(la, lb, rtol=1e-4)
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["resnet_xs", "resnet_s"])
def test_jitted_init_gives_the_eager_init_bit_for_bit(name):
    """The trainer initialises students under jax.jit (one compiled program, not one per op): the same numbers."""
    model, x = build_model(name, 10), jnp.zeros((1, 28, 28, 1))
    for seed in (0, 3):
        eager = model.init(jax.random.key(seed), x)
        jitted = jax.jit(model.init)(jax.random.key(seed), x)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
