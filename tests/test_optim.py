"""The paper's optimiser: clip -> Adam -> lr, decoupled kernel-only weight decay, warmup + cosine schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ablate.optim import kernel_mask, paper_optimizer, warmup_cosine


def test_warmup_cosine_values():
    """s(t) is 0 at the start, linear through warmup, 1 at its end, cosine through the middle, 0 at the end."""
    s = warmup_cosine(total_steps=110, warmup_steps=10)
    expect = {0: 0.0, 5: 0.5, 9: 0.9, 10: 1.0, 60: 0.5, 35: 0.5 * (1 + math.cos(math.pi * 0.25)),
              110: 0.0, 200: 0.0}
    for step, value in expect.items():
        assert float(s(step)) == pytest.approx(value, abs=1e-6), step
    values = np.array([float(s(t)) for t in range(10, 111)])
    assert np.all(np.diff(values) <= 1e-7)  # monotone decay after warmup


def test_warmup_cosine_without_warmup_starts_at_one():
    """With no warmup the schedule starts at 1 and decays by cosine to 0."""
    s = warmup_cosine(total_steps=100, warmup_steps=0)
    assert float(s(0)) == pytest.approx(1.0)
    assert float(s(50)) == pytest.approx(0.5, abs=1e-6)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-7)


def test_kernel_mask_selects_kernels_only():
    """Weight decay applies to conv/dense kernels, never to biases or norm scales."""
    params = {"conv": {"kernel": 1.0}, "gn": {"scale": 1.0, "bias": 1.0}, "head": {"kernel": 1.0, "bias": 1.0}}
    assert kernel_mask(params) == {"conv": {"kernel": True}, "gn": {"scale": False, "bias": False},
                                   "head": {"kernel": True, "bias": False}}


def reference_updates(params, grads_seq, lr, wd, total, warmup, clip=1.0, b1=0.9, b2=0.999, eps=1e-8):
    """The paper's update in float64 numpy: delta = -s(t) * (lr * adam(clip(g)) + wd * theta * is_kernel)."""
    theta = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    history = []
    for t, g in enumerate(grads_seq):
        g = {k: np.asarray(x, np.float64) for k, x in g.items()}
        norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in g.values()))
        factor = min(1.0, clip / norm)
        s = t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (total - warmup))))
        for k in theta:
            gc = g[k] * factor
            m[k] = b1 * m[k] + (1 - b1) * gc
            v[k] = b2 * v[k] + (1 - b2) * gc ** 2
            adam = (m[k] / (1 - b1 ** (t + 1))) / (np.sqrt(v[k] / (1 - b2 ** (t + 1))) + eps)
            decay = wd * theta[k] if k.endswith("kernel") else 0.0
            theta[k] = theta[k] - s * (lr * adam + decay)
        history.append({k: x.copy() for k, x in theta.items()})
    return history, norm


def flat(tree):
    return {f"{a}/{b}": np.asarray(x) for a, sub in tree.items() for b, x in sub.items()}


def test_paper_optimizer_matches_the_update_formula():
    """Over 6 steps (some with gradient norm > 1), optax's chain equals the hand-computed paper update."""
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
                        "bias": rng.normal(size=(2,)).astype(np.float32)},
              "norm": {"scale": (1 + rng.normal(size=(2,))).astype(np.float32)}}
    scales = [0.1, 5.0, 0.3, 20.0, 0.05, 3.0]  # gradient global norms straddle the clip at 1
    grads_seq = [{k: {n: (sc * rng.normal(size=x.shape) / 2).astype(np.float32) for n, x in sub.items()}
                  for k, sub in params.items()} for sc in scales]
    lr, wd, total, warmup = 0.01, 0.05, 8, 2

    opt = paper_optimizer(lr, wd, total, warmup, clip=1.0)
    p = jax.tree.map(jnp.asarray, params)
    state = opt.init(p)
    got = []
    for g in grads_seq:
        updates, state = opt.update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)
        got.append(flat(p))

    expect, _ = reference_updates(flat(params), [flat(g) for g in grads_seq], lr, wd, total, warmup)
    norms = [math.sqrt(sum(float(np.sum(x ** 2)) for x in flat(g).values())) for g in grads_seq]
    assert max(norms) > 1 and min(norms) < 1  # clipping is active on some steps only
    for step, (a, b) in enumerate(zip(got, expect)):
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=f"step {step} {k}")
    # s(0) = 0: the first update leaves the parameters unchanged
    for k, x in flat(params).items():
        np.testing.assert_array_equal(got[0][k], x)


def test_weight_decay_is_decoupled_from_lr_and_kernel_only():
    """With zero gradients, only kernels move, by exactly -s(t) * wd * theta (no lr factor)."""
    params = {"dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)},
              "norm": {"scale": jnp.full((2,), 2.0)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt = paper_optimizer(lr=1e-6, wd=0.1, total_steps=10, warmup_steps=0)
    state = opt.init(params)
    updates, _ = opt.update(zeros, state, params)
    np.testing.assert_allclose(np.asarray(updates["dense"]["kernel"]), -0.1 * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(updates["dense"]["bias"]), 0.0)
    np.testing.assert_array_equal(np.asarray(updates["norm"]["scale"]), 0.0)


def test_clipping_bounds_the_global_norm_before_adam():
    """A huge gradient and the same gradient rescaled to norm 1 give identical updates (clip at 1 before Adam)."""
    params = {"dense": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}}
    g = jax.tree.map(lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) + 1, params)
    norm = float(optax.tree.norm(g))
    assert norm > 1
    unit = jax.tree.map(lambda x: x / norm, g)
    big = jax.tree.map(lambda x: x * 1000.0, g)
    opt = paper_optimizer(lr=0.1, wd=0.0, total_steps=10, warmup_steps=0, clip=1.0)
    state = opt.init(params)
    u_unit, s1 = opt.update(unit, state, params)
    u_big, s2 = opt.update(big, state, params)
    for a, b in zip(jax.tree.leaves(u_unit), jax.tree.leaves(u_big)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    # Adam's first moment saw the clipped gradient, not the raw one
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_lion_is_optaxs_lion_with_its_own_momentum_decay():
    """`optimizer="lion"`: the chain's direction is optax's Lion with b1 0.9 and Lion's b2 0.99 (not Adam's 0.999)."""
    from ablate.optim import direction

    params = {"w": jnp.ones((3,))}
    grads = [{"w": jnp.array([0.3, -0.2, 0.01]) * (k + 1) * (-1) ** k} for k in range(5)]

    def momentum(opt):
        state = opt.init(params)
        updates = []
        for g in grads:
            u, state = opt.update(g, state, params)
            updates.append(np.asarray(u["w"]))
        return np.asarray(state.mu["w"]), updates

    ours, lion, adams_b2 = (momentum(direction("lion", 0.9, 0.999, 1e-8)), momentum(optax.scale_by_lion(0.9, 0.99)),
                            momentum(optax.scale_by_lion(0.9, 0.999)))
    np.testing.assert_array_equal(ours[0], lion[0])
    for a, b in zip(ours[1], lion[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(ours[0], adams_b2[0])
