"""Distillation losses against hand-computed numpy values, their gradients, stability and the loss-spec parser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate.losses import LOSSES, LossSpec, hard, kl, label_ce, mse_logits, reverse_kl
from ablate.registry import UnknownNameError

S = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-3.0, 1.0, 4.0, 1.5]], np.float32)
T = np.array([[1.0, 1.0, 0.0, -2.0], [0.4, 0.1, 0.2, 0.3], [0.0, 0.0, 5.0, 0.0]], np.float32)
Y = np.eye(4, dtype=np.float32)[[0, 3, 2]]


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), -1)


@pytest.mark.parametrize("temp", [1.0, 2.0, 5.0])
def test_kl_matches_numpy(temp):
    """kl = T^2 * KL(softmax(t/T) || softmax(s/T)) per example, teacher-to-student direction."""
    expect = temp ** 2 * np_kl(np_softmax(T / temp), np_softmax(S / temp))
    np.testing.assert_allclose(np.asarray(kl(S, T, Y, temperature=temp)), expect, rtol=1e-5)


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_reverse_kl_matches_numpy(temp):
    """reverse_kl = T^2 * KL(softmax(s/T) || softmax(t/T)), and differs from kl on asymmetric inputs."""
    expect = temp ** 2 * np_kl(np_softmax(S / temp), np_softmax(T / temp))
    got = np.asarray(reverse_kl(S, T, Y, temperature=temp))
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert not np.allclose(got, np.asarray(kl(S, T, Y, temperature=temp)), rtol=1e-3)


def test_mse_logits_matches_numpy():
    """mse_logits is the mean over classes of the squared logit difference."""
    np.testing.assert_allclose(np.asarray(mse_logits(S, T, Y)), ((S - T) ** 2).mean(-1), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_hard_matches_numpy(eps):
    """hard is the cross-entropy to the teacher's (optionally smoothed) one-hot argmax."""
    onehot = np.eye(4)[T.argmax(-1)]
    target = onehot * (1 - eps) + eps / 4
    expect = -np.sum(target * np.log(np_softmax(S)), -1)
    np.testing.assert_allclose(np.asarray(hard(S, T, Y, label_smoothing=eps)), expect, rtol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_label_ce_matches_numpy_and_ignores_the_teacher(eps):
    """label_ce is the cross-entropy to the (smoothed) labels, independent of the teacher logits."""
    target = Y * (1 - eps) + eps / 4
    expect = -np.sum(target * np.log(np_softmax(S)), -1)
    np.testing.assert_allclose(np.asarray(label_ce(S, T, Y, label_smoothing=eps)), expect, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(label_ce(S, T, Y, label_smoothing=eps)),
                                  np.asarray(label_ce(S, 0 * T, Y, label_smoothing=eps)))
    assert not label_ce.needs_teacher and kl.needs_teacher and hard.needs_teacher


def test_label_ce_with_mixed_labels():
    """With mixup's soft labels, label_ce is the cross-entropy to the mixture."""
    soft = 0.7 * Y + 0.3 * np.roll(Y, 1, 0)
    expect = -np.sum(soft * np.log(np_softmax(S)), -1)
    np.testing.assert_allclose(np.asarray(label_ce(S, T, soft)), expect, rtol=1e-5)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kl_is_zero_exactly_for_equal_distributions(temp):
    """kl is 0 when student and teacher give the same distribution (also with shifted logits), > 0 otherwise."""
    assert np.all(np.asarray(kl(T, T, Y, temperature=temp)) == 0.0)
    shifted = np.asarray(kl(T + 7.0, T, Y, temperature=temp))
    np.testing.assert_allclose(shifted, 0.0, atol=1e-5)
    assert np.all(np.asarray(kl(S, T, Y, temperature=temp)) > 0)
    assert np.all(np.asarray(reverse_kl(S, T, Y, temperature=temp)) > 0)


@pytest.mark.parametrize("temp", [1.0, 2.0, 10.0])
def test_kl_gradient_has_the_t_squared_factor(temp):
    """d kl / d student = T^2 * (1/T) * (softmax(s/T) - softmax(t/T)) = T * (p_s - p_t)."""
    grad = jax.grad(lambda s: jnp.sum(kl(s, T, Y, temperature=temp)))(jnp.asarray(S))
    expect = temp * (np_softmax(S / temp) - np_softmax(T / temp))
    np.testing.assert_allclose(np.asarray(grad), expect, rtol=1e-4, atol=1e-7)


def test_kl_takes_logits_not_probabilities():
    """kl treats its inputs as logits: passing softmax probabilities gives a different (wrong) value."""
    right = np.asarray(kl(S, T, Y))
    wrong = np.asarray(kl(jax.nn.softmax(S), jax.nn.softmax(T), Y))
    assert not np.allclose(right, wrong, rtol=1e-2)


@pytest.mark.parametrize("name", sorted(LOSSES.names()))
def test_losses_are_finite_with_huge_logits(name):
    """Every loss and its gradient stay finite with logits (and stage features) of magnitude 1e4."""
    s = jnp.asarray(1e4 * np.array([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.2]], np.float32))
    t = jnp.asarray(1e4 * np.array([[-1.0, 1.0, 0.0, 0.3], [1.0, -1.0, 0.5, 0.0]], np.float32))
    y = jnp.asarray(np.eye(4, dtype=np.float32)[[0, 2]])
    fn = LOSSES.get(name)
    feats = {}
    if fn.features:
        rng = np.random.default_rng(0)
        feats = {k: (jnp.asarray(1e4 * rng.normal(size=(2, 4, 4, 3)).astype(np.float32)),)
                 for k in ("student_features", "teacher_features")}
    for temp in (1.0, 10.0):
        val, grad = jax.value_and_grad(
            lambda z: jnp.sum(fn(z, t, y, temperature=temp, label_smoothing=0.1, **feats)))(s)
        assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
    if name == "kl":
        assert float(kl(s, t, y)[0]) > 1e3  # opposite confident predictions give a large, finite loss
        assert float(kl(t, t, y)[0]) == 0.0


def test_loss_spec_weights_terms():
    """'kl + 0.1*label_ce' parses to weighted terms and evaluates to kl + 0.1 * label_ce per example."""
    spec = LossSpec.parse("kl + 0.1*label_ce")
    assert spec.terms == ((1.0, "kl", ()), (0.1, "label_ce", ()))
    assert spec.needs_teacher
    got = np.asarray(spec(S, T, Y, temperature=2.0, label_smoothing=0.0))
    expect = np.asarray(kl(S, T, Y, temperature=2.0)) + 0.1 * np.asarray(label_ce(S, T, Y))
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert LossSpec.parse("2.5*mse_logits").terms == ((2.5, "mse_logits", ()),)
    assert LossSpec.parse("1e-3*hard+kl").terms == ((1e-3, "hard", ()), (1.0, "kl", ()))
    assert not LossSpec.parse("label_ce").needs_teacher


def test_loss_spec_unknown_name_lists_valid_losses():
    """An unknown loss name raises an error that lists every registered loss."""
    with pytest.raises(UnknownNameError) as e:
        LossSpec.parse("kl + 0.1*kll")
    msg = str(e.value)
    assert "'kll'" in msg
    for name in LOSSES.names():
        assert name in msg


@pytest.mark.parametrize("bad", ["kl +", "0.1 * * kl", "kl - label_ce", "2kl"])
def test_loss_spec_syntax_error_says_how_to_write_it(bad):
    """A malformed spec raises ValueError naming the bad term and showing the syntax."""
    with pytest.raises(ValueError, match="cannot parse loss term"):
        LossSpec.parse(bad)


def test_evaluation_metrics_match_the_losses_at_t1():
    """The KL logged at evaluation (computed on the host, in numpy) is the distillation loss at T=1; the agreements
    count matching top-1 / top-5 predictions."""
    from ablate.evaluate import eval_metrics

    rng = np.random.default_rng(3)
    s, t = (rng.normal(size=(256, 10)).astype(np.float32) * 8 for _ in range(2))
    labels = rng.integers(0, 10, 256)
    m = eval_metrics(s, t, labels, "val")
    np.testing.assert_allclose(m["val/kl"], float(jnp.mean(kl(s, t, labels))), rtol=1e-5)
    assert m["val/acc"] == np.mean(s.argmax(-1) == labels)
    assert m["val/agree_top1"] == np.mean(s.argmax(-1) == t.argmax(-1))
    top5 = np.argsort(-s, -1)[:, :5]
    assert m["val/agree_top5"] == np.mean([t.argmax(-1)[i] in top5[i] for i in range(256)])
