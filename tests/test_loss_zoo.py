"""The KD benchmarks' losses (DKD, DIST, logit standardisation, AT) against NumPy references written from the papers'
definitions, their parameters in the loss spec, and their numerics at the zero-initialised student head."""

import functools
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate.losses import LOSSES, LossSpec, at, dist, dkd, kl, valid_params

RNG = np.random.default_rng(0)
B, C = 6, 10
S = (RNG.normal(size=(B, C)) * 2.0).astype(np.float32)
T = (RNG.normal(size=(B, C)) * 3.0).astype(np.float32)
CLS = np.array([0, 3, 7, 7, 1, 9])
Y = np.eye(C, dtype=np.float32)[CLS]


@functools.partial(jax.jit, static_argnums=0)
def call(name, s, t, y, kw):
    """LOSSES[name](s, t, y, **kw), jitted with kw's numbers traced: one compilation serves every parameter value."""
    return LOSSES.get(name)(s, t, y, **kw)


@functools.partial(jax.jit, static_argnums=0)
def value_and_grad(name, s, t, y, kw):
    """The summed loss and its gradient with respect to the student's logits, jitted as `call`."""
    return jax.value_and_grad(lambda z: jnp.sum(LOSSES.get(name)(z, t, y, **kw)))(s)


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_logsumexp(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


def np_kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), -1)


def np_dkd(s, t, target, temp, alpha=1.0, beta=8.0):
    """Zhao et al.: T^2 (alpha KL(b_t||b_s) + beta KL(q_t||q_s)); b = (p_gt, 1 - p_gt), q = softmax over non-targets.
    Binary probabilities come from log-sum-exps and q from the non-target logits alone, in float64."""
    out = []
    for zs, zt, g in zip(np.asarray(s, np.float64) / temp, np.asarray(t, np.float64) / temp, target):
        rest = np.arange(zs.size) != g
        lb_s, lb_t = (np.array([z[g], np_logsumexp(z[rest])]) - np_logsumexp(z) for z in (zs, zt))
        tckd = np.sum(np.exp(lb_t) * (lb_t - lb_s))
        nckd = np_kl(np_softmax(zt[rest]), np_softmax(zs[rest]))
        out.append(temp ** 2 * (alpha * tckd + beta * nckd))
    return np.array(out)


def np_pearson(a, b):
    return np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1]


def np_dist(s, t, temp, beta=1.0, gamma=1.0):
    """Huang et al.: per-example inter term and the batch's intra term (both times T^2), and the batch loss."""
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    inter = np.array([1 - np_pearson(ps[i], pt[i]) for i in range(len(ps))])
    intra = 1 - np.mean([np_pearson(ps[:, c], pt[:, c]) for c in range(ps.shape[1])])
    return temp ** 2 * beta * inter, temp ** 2 * gamma * intra


def np_zscore(z):
    z = np.asarray(z, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


def np_at(fs, ft, beta=1000.0, p=2.0):
    def q(f):
        a = (np.abs(np.asarray(f, np.float64)) ** p).mean(-1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)
    return beta * sum(((q(a) - q(b)) ** 2).mean(-1) for a, b in zip(fs, ft))


def features(channels, hw=((8, 8), (4, 4), (2, 2)), scale=1.0, seed=1):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray((rng.normal(size=(B, h, w, c)) * scale).astype(np.float32))
                 for (h, w), c in zip(hw, channels))


# DKD

@pytest.mark.parametrize("temp,alpha,beta", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_dkd_matches_numpy(temp, alpha, beta):
    """dkd = T^2 (alpha TCKD + beta NCKD) per example, target = the label's class."""
    got = np.asarray(call("dkd", S, T, Y, dict(temperature=temp, alpha=alpha, beta=beta)))
    np.testing.assert_allclose(got, np_dkd(S, T, CLS, temp, alpha, beta), rtol=1e-5)
    tckd_only = np.asarray(call("dkd", S, T, Y, dict(temperature=temp, alpha=1.0, beta=0.0)))
    assert not np.allclose(got, tckd_only, rtol=1e-3)


def test_dkd_defaults_are_mdistillers():
    """alpha = 1, beta = 8, no warm-up unless asked; the spec lists exactly these parameters (and ls)."""
    assert (dkd.params["alpha"], dkd.params["beta"], dkd.params["warmup"]) == (1.0, 8.0, 0.0)
    assert valid_params("dkd") == ["alpha", "beta", "temperature", "warmup", "ls"]
    np.testing.assert_allclose(np.asarray(call("dkd", S, T, Y, dict(temperature=4.0))), np_dkd(S, T, CLS, 4.0),
                               rtol=1e-5)


def test_dkd_takes_the_dominant_class_of_mixed_labels():
    """Under mixup (0.7 / 0.3), the target class is the 0.7 one; the 0.3 one would give another value."""
    other = (CLS + 5) % C
    mixed = 0.7 * Y + 0.3 * np.eye(C, dtype=np.float32)[other]
    got = np.asarray(dkd(S, T, mixed, temperature=2.0))
    np.testing.assert_allclose(got, np_dkd(S, T, CLS, 2.0), rtol=1e-5)
    assert not np.allclose(got, np_dkd(S, T, other, 2.0), rtol=1e-3)


def test_dkd_is_exact_where_the_target_has_probability_one():
    """With target logits far above the rest (p_target = 1 in float32), the non-target distribution is still the
    softmax over the other logits: values match the reference, and values and gradients are finite."""
    for big in (60.0, 1e4):
        s, t = S.copy(), T.copy()
        s[np.arange(B), CLS] += big
        t[np.arange(B), CLS] += big
        for temp in (1.0, 4.0):
            val, grad = value_and_grad("dkd", s, t, Y, dict(temperature=temp))
            np.testing.assert_allclose(np.asarray(call("dkd", s, t, Y, dict(temperature=temp))),
                                       np_dkd(s, t, CLS, temp), rtol=1e-5, atol=1e-6)
            assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
            assert np.abs(np.asarray(grad)).max() > 1e-3  # the non-target term still teaches


@pytest.mark.parametrize("warmup", [0.1, 0.5])
def test_dkd_warmup_ramps_the_weight(warmup):
    """The loss is scaled by min(progress / warmup, 1): 0 at the start, 1/2 halfway through warm-up, full after;
    without progress (or warmup = 0) it is the full loss."""
    full = np.asarray(dkd(S, T, Y, temperature=2.0))
    at_p = lambda p: np.asarray(dkd(S, T, Y, temperature=2.0, warmup=warmup, progress=jnp.float32(p)))
    np.testing.assert_array_equal(at_p(0.0), 0.0)
    np.testing.assert_allclose(at_p(warmup / 2), 0.5 * full, rtol=1e-6)
    np.testing.assert_allclose(at_p(1.0), full, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dkd(S, T, Y, temperature=2.0, warmup=warmup)), full, rtol=1e-6)
    spec = LossSpec.parse(f"dkd(warmup={warmup})")
    np.testing.assert_allclose(np.asarray(spec(S, T, Y, temperature=2.0, progress=jnp.float32(warmup / 2))),
                               0.5 * full, rtol=1e-6)


# DIST

@pytest.mark.parametrize("temp,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (2.0, 2.0, 0.5)])
def test_dist_matches_numpy(temp, beta, gamma):
    """Row i is T^2 (beta inter_i + gamma intra); its mean over the batch is DIST's batch loss."""
    inter, intra = np_dist(S, T, temp, beta, gamma)
    got = np.asarray(call("dist", S, T, Y, dict(temperature=temp, beta=beta, gamma=gamma)))
    np.testing.assert_allclose(got, inter + intra, rtol=1e-5)
    np.testing.assert_allclose(got.mean(), inter.mean() + intra, rtol=1e-5)
    assert dist.batch_level and not kl.batch_level


def test_dist_intra_term_couples_the_rows():
    """Changing row 0 of the student changes every other row's value (the intra term) while their inter terms stay;
    the mean still equals the reference batch loss."""
    s2 = S.copy()
    s2[0] = RNG.normal(size=C) * 4
    run = lambda s, gamma=1.0: np.asarray(call("dist", s, T, Y, dict(temperature=1.0, beta=1.0, gamma=gamma)))
    before, after = run(S), run(s2)
    assert np.all(np.abs(after[1:] - before[1:]) > 1e-4)
    inter1, _ = np_dist(S, T, 1.0)
    inter2, intra2 = np_dist(s2, T, 1.0)
    np.testing.assert_allclose(inter1[1:], inter2[1:], rtol=1e-12)  # only the coupling moved rows 1..
    np.testing.assert_allclose(after.mean(), inter2.mean() + intra2, rtol=1e-5)
    np.testing.assert_allclose(run(s2, gamma=0.0)[1:], run(S, gamma=0.0)[1:], rtol=1e-6)


# logit standardisation

@pytest.mark.parametrize("base", [1.0, 2.0, 3.0])
def test_ls_is_kl_on_zscored_logits_at_the_base_temperature(base):
    """kl(ls=b) = kl on per-example z-scored logits at temperature b, whatever the run's temperature; the same holds
    for reverse_kl and dkd."""
    zs, zt = np_zscore(S), np_zscore(T)
    ref = base ** 2 * np_kl(np_softmax(zt / base), np_softmax(zs / base))
    got = np.asarray(LossSpec.parse(f"kl(ls={base})")(S, T, Y, temperature=7.0))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert not np.allclose(got, np.asarray(kl(S, T, Y, temperature=base)), rtol=1e-3)
    rev = base ** 2 * np_kl(np_softmax(zs / base), np_softmax(zt / base))
    np.testing.assert_allclose(np.asarray(LossSpec.parse(f"reverse_kl(ls={base})")(S, T, Y)), rev, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(LossSpec.parse(f"dkd(ls={base})")(S, T, Y, temperature=7.0)),
                               np_dkd(zs, zt, CLS, base), rtol=1e-5)


def test_ls_ignores_the_students_logit_scale_and_shift():
    """Standardised logits match relations, not magnitudes: 3 s + 5 gives the value of s."""
    spec = LossSpec.parse("kl(ls=2)")
    np.testing.assert_allclose(np.asarray(spec(3 * S + 5, T, Y)), np.asarray(spec(S, T, Y)), rtol=1e-5)
    assert not np.allclose(np.asarray(kl(3 * S + 5, T, Y)), np.asarray(kl(S, T, Y)), rtol=1e-3)


# AT

@pytest.mark.parametrize("beta,p", [(1000.0, 2.0), (500.0, 2.0), (1.0, 4.0)])
def test_at_matches_numpy(beta, p):
    """at = beta * sum over stages of mean over positions of (Q_s - Q_t)^2; channels may differ."""
    fs, ft = features((4, 8, 16), seed=1), features((6, 12, 24), seed=2)
    got = np.asarray(call("at", S, T, Y, dict(beta=beta, p=p, student_features=fs, teacher_features=ft)))
    np.testing.assert_allclose(got, np_at(fs, ft, beta, p), rtol=1e-5)
    same = np.asarray(at(S, T, Y, student_features=fs, teacher_features=fs))
    np.testing.assert_allclose(same, 0.0, atol=1e-7)
    assert at.features and LossSpec.parse("at + 0.1*label_ce").needs_features
    assert not LossSpec.parse("kl + dkd").needs_features


def test_at_shape_mismatch_is_a_clear_error():
    """Different stage counts, or a stage whose H, W differ, raise ValueError naming the stage and the shapes."""
    fs, ft = features((4, 8, 16)), features((4, 8, 16))
    with pytest.raises(ValueError, match="3 feature stages, the teacher 2"):
        at(S, T, Y, student_features=fs, teacher_features=ft[:2])
    odd = features((4, 8, 16), hw=((8, 8), (4, 4), (4, 4)))
    with pytest.raises(ValueError, match=r"stage 2 .*\(6, 2, 2, 16\).*\(6, 4, 4, 16\)"):
        at(S, T, Y, student_features=fs, teacher_features=odd)
    with pytest.raises(ValueError, match="needs student_features"):
        at(S, T, Y)


# the spec

def test_spec_parses_per_term_parameters():
    """Terms are (weight, name, sorted params); the spec is hashable; term params override the run's temperature."""
    spec = LossSpec.parse("dkd(alpha=1, beta=8, temperature=4) + 0.5*kl")
    assert spec.terms == ((1.0, "dkd", (("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0))), (0.5, "kl", ()))
    assert hash(spec) == hash(LossSpec.parse("dkd(temperature=4,beta=8,alpha=1)+0.5*kl"))
    got = np.asarray(spec(S, T, Y, temperature=2.0, label_smoothing=0.0))
    expect = np_dkd(S, T, CLS, 4.0) + 0.5 * 4.0 * np_kl(np_softmax(T / 2), np_softmax(S / 2))
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert LossSpec.parse("1e+3*kl(temperature=2.5e0)").terms == ((1000.0, "kl", (("temperature", 2.5),)),)
    assert LossSpec.parse("kl()").terms == ((1.0, "kl", ()),)
    assert LossSpec.parse("hard(label_smoothing=0.1)").terms == ((1.0, "hard", (("label_smoothing", 0.1),)),)
    assert LossSpec.parse("kl + dist").batch_level and not LossSpec.parse("kl + dkd").batch_level


@pytest.mark.parametrize("bad,what", [("dkd(gamma=1)", "no parameter 'gamma'"),
                                      ("dkd(beta=abc)", "must be a finite number, got 'abc'"),
                                      ("dkd(beta=inf)", "must be a finite number"),
                                      ("dkd(beta)", "cannot parse parameter 'beta'"),
                                      ("dkd(beta=1, beta=2)", "given twice")])
def test_spec_parameter_errors_list_the_valid_names(bad, what):
    """A wrong parameter raises ValueError saying what is wrong and listing dkd's valid parameters."""
    with pytest.raises(ValueError) as e:
        LossSpec.parse("kl + " + bad)
    msg = str(e.value)
    assert what in msg
    assert "valid parameters of 'dkd': alpha, beta, temperature, warmup, ls" in msg


def test_spec_ls_is_only_for_softmax_losses_and_excludes_temperature():
    """ls applies to kl, reverse_kl and dkd only; with temperature in the same term, or <= 0, it is an error."""
    with pytest.raises(ValueError, match=r"no parameter 'ls' \(ls applies to .*dkd, kl, reverse_kl\).*beta, gamma"):
        LossSpec.parse("dist(ls=2)")
    with pytest.raises(ValueError, match="give ls or temperature, not both"):
        LossSpec.parse("kl(ls=2, temperature=4)")
    with pytest.raises(ValueError, match="must be > 0"):
        LossSpec.parse("kl(ls=0)")
    with pytest.raises(ValueError, match="valid parameters of 'mse_logits': \\(none\\)"):
        LossSpec.parse("mse_logits(ls=2)")
    with pytest.raises(ValueError, match="cannot parse loss term"):
        LossSpec.parse("kl(ls=2")


# numerics at the zero-initialised head

ZERO_CASES = {"random": T, "constant over classes": np.full((B, C), 2.5, np.float32),
              "constant over the batch": np.tile(T[:1], (B, 1))}


@pytest.mark.parametrize("spec", sorted(LOSSES.names()) + ["kl(ls=2)", "reverse_kl(ls=2)", "dkd(ls=2)",
                                                           "dkd(warmup=0.1)"])
def test_finite_values_and_gradients_at_zero_student_logits(spec):
    """All-zero student logits (and all-zero student features) give finite values and gradients, for teachers that
    vary, are constant over classes, or are constant over the batch; a teacher that varies gives a nonzero gradient."""
    loss_fn, tf = LossSpec.parse(spec), features((4, 8), hw=((4, 4), (2, 2)), seed=3)
    hp = dict(temperature=4.0, label_smoothing=0.1, progress=jnp.float32(0.05), teacher_features=tf)
    value_and_grad = jax.jit(jax.value_and_grad(  # one compilation serves the three teachers
        lambda z, f, t: jnp.mean(loss_fn(z, t, Y, student_features=f, **hp)), argnums=(0, 1)))
    for case, teacher in ZERO_CASES.items():
        val, (g_logits, g_feats) = value_and_grad(jnp.zeros((B, C), jnp.float32),
                                                  features((4, 8), hw=((4, 4), (2, 2)), scale=0.0), teacher)
        grads = [np.asarray(g_logits)] + [np.asarray(g) for g in g_feats]
        assert np.isfinite(float(val)) and all(np.all(np.isfinite(g)) for g in grads), case
        if case == "random" and spec != "at":  # at reads features, and |F|^2 has zero gradient at F = 0
            assert max(np.abs(g).max() for g in grads) > 0


# ablate list

CITES = {"kl": "Hinton et al., 2015", "dkd": "Zhao et al., CVPR 2022", "dist": "Huang et al., NeurIPS 2022",
         "at": "Zagoruyko & Komodakis, ICLR 2017"}


def test_ablate_list_names_each_losss_paper():
    """`python -m ablate list` shows every loss on one line that cites its source (author and year)."""
    out = subprocess.run([sys.executable, "-m", "ablate", "list"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    section = out.split("losses:\n", 1)[1].split("models:", 1)[0]
    lines = {line.split()[0]: line for line in section.splitlines() if line.strip()}
    assert sorted(lines) == sorted(LOSSES.names())
    for line in lines.values():
        assert re.search(r"\(.*[A-Z][a-z]+ (et al\.|& [A-Z][a-z]+).*\d{4}.*\)", line), line
    for name, cite in CITES.items():
        assert cite in lines[name], lines[name]
