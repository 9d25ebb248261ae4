"""The model building blocks compute what their reference implementations compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate.models import build_model
from ablate.models.resnet import GroupNorm, conv_as_matmul, conv_impl


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


def test_conv_impls_give_the_same_model():
    """The student and its gradients are the same whichever convolution lowering StdConv uses."""
    model = build_model("resnet_xs", 10)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda a: a + 0.01 * jax.random.normal(jax.random.key(3), a.shape), params)

    results = {}
    for impl in ("xla", "matmul"):
        def loss(p):  # a new function per impl: jax caches traces by function
            return jnp.sum(jnp.square(model.apply({"params": p}, x)))

        with conv_impl(impl):
            jaxpr = str(jax.make_jaxpr(loss)(params))
            results[impl] = jax.value_and_grad(loss)(params)
        assert ("conv_general_dilated" in jaxpr) == (impl == "xla")
    (la, ga), (lb, gb) = results["xla"], results["matmul"]
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
