"""Distillation losses: one registered function each, combined by a spec such as "dkd(beta=8) + 0.1*label_ce".

Calling convention: `fn(student, teacher, labels, *, temperature=1.0, label_smoothing=0.0, <params>, **_)` maps
student and teacher logits (B, C) and soft labels (B, C) to a per-example loss of shape (B,). Labels are one-hot
ground truth, mixed like the inputs under mixup with the first image's share >= 0.5, so argmax(labels) is the
dominant class. A loss's keyword-only parameters with defaults are its parameters, settable per term in a spec.
Besides those, the trainer passes (and a loss ignores what it does not read, through `**_`):
  progress          scalar in [0, 1], step / total steps; absent means 1 (read by dkd's warm-up);
  student_features, teacher_features
                    tuples of (B, H, W, C) arrays, one per residual stage, same count and H, W (C may differ);
                    passed to losses registered `features=True` (at).
Registration flags (`@loss`):
  needs_teacher     reads teacher logits or features;
  batch_level       couples the rows of a batch (dist's intra-class term): its (B,) values are a per-example part
                    plus the batch's part broadcast to every row, so only their MEAN over the batch is the loss,
                    and only if computed on the whole batch at once (on a slice it couples that slice only);
  features          reads the stage features above;
  standardizable    takes logits to a softmax, so the `ls` modifier applies (kl, reverse_kl, dkd).

Spec grammar (whitespace ignored):
  spec  := term ('+' term)*
  term  := [number '*'] name ['(' [key '=' number (',' key '=' number)*] ')']
Term parameters override the run-level keyword arguments (temperature, label_smoothing) for that term. The generic
parameter `ls=<base temperature>` (logit standardisation, Sun et al., CVPR 2024) z-scores the student's and the
teacher's logits per example, (z - mean) / (std + 1e-7), and sets the term's temperature to the base temperature;
the authors' published setting for KD is base temperature 2 with loss weight 9 next to 0.1 cross-entropy, i.e.
"9*kl(ls=2) + 0.1*label_ce".

Numerics: every loss gives finite values and gradients with all-zero student logits (the zero-initialised head)
and with teacher logits constant over classes or over the batch; dist and `ls` are scale invariant in the student's
logits, so their gradient there is large (~1/eps) but finite, and the global gradient clipping bounds the step.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import TYPE_CHECKING, Callable

from ablate.registry import Registry

if TYPE_CHECKING:  # jax is imported where a loss is computed: `ablate list` and config validation need no jax
    import jax

LossFn = Callable[..., "jax.Array"]
LOSSES: Registry[LossFn] = Registry("loss", "losses")
TRAINER_KWARGS = ("progress", "student_features", "teacher_features")  # passed by the trainer, not spec parameters
LS_EPS = 1e-7  # added to the standard deviation by logit standardisation, as the authors' code does


def loss(name: str, *, needs_teacher: bool = True, batch_level: bool = False, features: bool = False,
         standardizable: bool = False):
    """Register a per-example loss `fn(student, teacher, labels, *, temperature, label_smoothing, **params)`."""

    def decorate(fn: LossFn) -> LossFn:
        fn.needs_teacher, fn.batch_level, fn.features, fn.standardizable = (
            needs_teacher, batch_level, features, standardizable)
        fn.params = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                     if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and p.name not in TRAINER_KWARGS}
        return LOSSES.register(name)(fn)

    return decorate


def valid_params(name: str) -> list[str]:
    """The parameters a spec term of loss `name` may set: its keyword-only defaults, plus `ls` if standardizable."""
    fn = LOSSES.get(name)
    return sorted(fn.params) + (["ls"] if fn.standardizable else [])


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) per example from log-probabilities; exactly 0 where p == q."""
    import jax.numpy as jnp

    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _smooth(targets: jax.Array, eps: float) -> jax.Array:
    return targets * (1.0 - eps) + eps / targets.shape[-1]


def _cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    import jax
    import jax.numpy as jnp

    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def _norm(x: jax.Array, axis: int, floor: float = 1e-15) -> jax.Array:
    """max(||x||_2, floor) along `axis`: the gradient is finite (0) where x == 0, unlike the plain norm's."""
    import jax.numpy as jnp

    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis), floor * floor))


def standardize(z: jax.Array, eps: float = LS_EPS) -> jax.Array:
    """Z-score logits per example over classes, (z - mean) / (std + eps), std with Bessel's correction (torch.std, as
    in the authors' code); equal logits give 0 with a finite gradient."""
    import jax.numpy as jnp

    c = z - jnp.mean(z, axis=-1, keepdims=True)
    return c / (_norm(c, -1)[..., None] / math.sqrt(z.shape[-1] - 1) + eps)


@loss("kl", standardizable=True)
def kl(student, teacher, labels, *, temperature=1.0, **_):
    """KD: T^2 KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al., 2015; Beyer et al., CVPR 2022).

    With `ls=<base T>`: KD with logit standardisation (Sun et al., CVPR 2024), e.g. "9*kl(ls=2) + 0.1*label_ce".
    """
    import jax

    t = temperature
    return t * t * _kl(jax.nn.log_softmax(teacher / t), jax.nn.log_softmax(student / t))


@loss("reverse_kl", standardizable=True)
def reverse_kl(student, teacher, labels, *, temperature=1.0, **_):
    """Reverse KD: T^2 KL(softmax(student/T) || softmax(teacher/T)), mode-seeking (MiniLLM, Gu et al., ICLR 2024)."""
    import jax

    t = temperature
    return t * t * _kl(jax.nn.log_softmax(student / t), jax.nn.log_softmax(teacher / t))


@loss("mse_logits")
def mse_logits(student, teacher, labels, **_):
    """Logit matching: mean squared logit difference (Ba & Caruana, NeurIPS 2014; Beyer et al., CVPR 2022)."""
    import jax.numpy as jnp

    return jnp.mean(jnp.square(student - teacher), axis=-1)


@loss("hard")
def hard(student, teacher, labels, *, label_smoothing=0.0, **_):
    """Hard KD: cross-entropy to the teacher's (smoothed) top-1 (Touvron et al., ICML 2021; Beyer et al., CVPR 2022)."""
    import jax
    import jax.numpy as jnp

    onehot = jax.nn.one_hot(jnp.argmax(teacher, -1), teacher.shape[-1])
    return _cross_entropy(student, _smooth(onehot, label_smoothing))


@loss("label_ce", needs_teacher=False)
def label_ce(student, teacher, labels, *, label_smoothing=0.0, **_):
    """Label-only baseline: cross-entropy to the (smoothed) labels, no teacher (Beyer et al., CVPR 2022)."""
    return _cross_entropy(student, _smooth(labels, label_smoothing))


@loss("dkd", standardizable=True)
def dkd(student, teacher, labels, *, temperature=1.0, alpha=1.0, beta=8.0, warmup=0.0, progress=1.0, **_):
    """DKD: target-class and non-target-class KL terms weighted alpha, beta (Zhao et al., CVPR 2022).

    T^2 * (alpha * KL(b_t || b_s) + beta * KL(q_t || q_s)), b = (p_target, 1 - p_target), q = softmax over the
    non-target classes, p = softmax(z/T) (mdistiller's T^2). The target is argmax(labels): under mixup, the dominant
    class. Computed in log space with the target masked to -inf, so exact where p_target ~ 1. `warmup` (a fraction of
    training; mdistiller's 20 of 240 epochs is 0.0833) scales the loss by min(progress / warmup, 1). Defaults
    alpha=1, beta=8 are mdistiller's CIFAR-100 defaults (its T is 4; here the run's or the term's temperature).
    """
    import jax
    import jax.numpy as jnp

    gt = jax.nn.one_hot(jnp.argmax(labels, -1), labels.shape[-1], dtype=bool)

    def logs(z):  # log (p_target, p_rest) and log q on non-target classes (0 at the target, which is masked out)
        z = z / temperature
        lse, lse_rest = jax.nn.logsumexp(z, -1), jax.nn.logsumexp(jnp.where(gt, -jnp.inf, z), -1)
        log_b = jnp.stack([jnp.sum(jnp.where(gt, z, 0.0), -1) - lse, lse_rest - lse], -1)
        return log_b, jnp.where(gt, 0.0, z - lse_rest[:, None])

    (lb_s, lq_s), (lb_t, lq_t) = logs(student), logs(teacher)
    nckd = jnp.sum(jnp.where(gt, 0.0, jnp.exp(lq_t) * (lq_t - lq_s)), -1)
    value = temperature ** 2 * (alpha * _kl(lb_t, lb_s) + beta * nckd)
    if warmup > 0:
        value = value * jnp.minimum(jnp.asarray(1.0 if progress is None else progress) / warmup, 1.0)
    return value


def _pearson(a: jax.Array, b: jax.Array, axis: int, eps: float = 1e-8) -> jax.Array:
    """Pearson correlation along `axis` as DIST computes it, centred cosine with eps added to the product of norms;
    0 (with a finite gradient) where either side is constant."""
    import jax.numpy as jnp

    a, b = a - jnp.mean(a, axis, keepdims=True), b - jnp.mean(b, axis, keepdims=True)
    return jnp.sum(a * b, axis) / (_norm(a, axis) * _norm(b, axis) + eps)


@loss("dist", batch_level=True)
def dist(student, teacher, labels, *, temperature=1.0, beta=1.0, gamma=1.0, **_):
    """DIST: 1 - Pearson r of probabilities, per example and per class over the batch (Huang et al., NeurIPS 2022).

    T^2 * (beta * (1 - r(p_s[i], p_t[i])) + gamma * (1 - mean_c r(p_s[:, c], p_t[:, c]))), p = softmax(z/T), both
    terms times T^2 as DIST's code does; defaults beta = gamma = 1 (and tau = 1) are DIST's. Batch-level: the intra
    (second) term is the batch's, broadcast to every row, so the mean over rows is DIST's batch loss.
    """
    import jax

    ps, pt = jax.nn.softmax(student / temperature), jax.nn.softmax(teacher / temperature)
    inter = 1.0 - _pearson(ps, pt, -1)
    intra = 1.0 - _pearson(ps, pt, 0).mean()
    return temperature ** 2 * (beta * inter + gamma * intra)


def _attention(f: jax.Array, p: float) -> jax.Array:
    """Spatial attention map of (B, H, W, C) features: mean over channels of |F|^p, flattened, L2-normalised
    (norm floored at 1e-12 as torch's F.normalize, so all-zero features give 0 with a finite gradient)."""
    import jax.numpy as jnp

    q = jnp.mean(jnp.abs(f) ** p, axis=-1).reshape(f.shape[0], -1)
    return q / _norm(q, -1, 1e-12)[:, None]


@loss("at", features=True)
def at(student, teacher, labels, *, beta=1000.0, p=2.0, student_features=None, teacher_features=None, **_):
    """AT: squared distance of L2-normalised spatial attention maps over stages (Zagoruyko & Komodakis, ICLR 2017).

    beta * sum over stages of mean over positions of (Q_s - Q_t)^2, Q = normalise(mean_c |F|^p). beta = 1000 and
    p = 2 are mdistiller's (its weight multiplies the loss as is; the original code's beta/2 with beta = 1000 is
    at(beta=500)). Stages must agree in count, batch and H, W; channels may differ.
    """
    import jax.numpy as jnp

    if student_features is None or teacher_features is None:
        raise ValueError("loss 'at' needs student_features and teacher_features (one (B, H, W, C) array per stage)")
    if len(student_features) != len(teacher_features):
        raise ValueError(f"loss 'at': the student has {len(student_features)} feature stages, the teacher "
                         f"{len(teacher_features)}; they must be equal")
    total = jnp.zeros(student.shape[0])
    for i, (fs, ft) in enumerate(zip(student_features, teacher_features, strict=True)):
        if fs.ndim != 4 or ft.ndim != 4 or fs.shape[:3] != ft.shape[:3]:
            raise ValueError(f"loss 'at': stage {i} has student features of shape {tuple(fs.shape)} and teacher "
                             f"features of shape {tuple(ft.shape)}; they must be (B, H, W, C) with equal B, H, W")
        total = total + jnp.mean(jnp.square(_attention(fs, p) - _attention(ft, p)), -1)
    return beta * total


_NUM = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_TERM = re.compile(rf"(?:({_NUM})\*)?([A-Za-z_][\w/]*)(?:\(([^()]*)\))?")
_SPLIT = re.compile(r"(?<![0-9][eE])\+(?![^()]*\))")  # a '+' outside parentheses and not an exponent's sign
_CHECKS = {"temperature": (lambda v: v > 0, "> 0"), "ls": (lambda v: v > 0, "> 0"),
           "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"), "warmup": (lambda v: v >= 0, ">= 0"),
           "p": (lambda v: v >= 1, ">= 1")}
_SYNTAX = "write e.g. 'kl', 'kl + 0.1*label_ce' or 'dkd(alpha=1, beta=8, temperature=4) + 0.1*label_ce'"


def _parse_params(name: str, args: str | None, part: str) -> tuple[tuple[str, float], ...]:
    """'alpha=1,beta=8' -> (('alpha', 1.0), ('beta', 8.0)), checked against the loss's parameters."""
    valid = valid_params(name)
    where = f"valid parameters of {name!r}: {', '.join(valid) or '(none)'}"
    params: dict[str, float] = {}
    for item in (args.split(",") if args else []):
        m = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", item)
        if not m:
            raise ValueError(f"cannot parse parameter {item!r} in loss term {part!r}; write key=number; {where}")
        key, text = m.groups()
        if key not in valid:
            hint = " (ls applies to losses that take logits to a softmax: " + ", ".join(
                n for n, f in LOSSES.items() if f.standardizable) + ")" if key == "ls" else ""
            raise ValueError(f"loss {name!r} has no parameter {key!r}{hint}; {where}")
        if key in params:
            raise ValueError(f"parameter {key!r} is given twice in loss term {part!r}; {where}")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"parameter {key!r} of loss {name!r} must be a finite number, got {text!r}; {where}")
        check, rule = _CHECKS.get(key, (lambda v: True, ""))
        if not check(value):
            raise ValueError(f"parameter {key!r} of loss {name!r} must be {rule}, got {text!r}")
        params[key] = value
    if "ls" in params and "temperature" in params:
        raise ValueError(f"loss term {part!r}: ls=<base temperature> sets the temperature; give ls or temperature, "
                         "not both")
    return tuple(sorted(params.items()))


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A weighted sum of registered losses with per-term parameters, parsed from e.g. "dkd(beta=8) + 0.1*label_ce"."""

    terms: tuple[tuple[float, str, tuple[tuple[str, float], ...]], ...]

    @classmethod
    def parse(cls, spec: str) -> "LossSpec":
        terms = []
        for part in _SPLIT.split(re.sub(r"\s+", "", spec)):
            m = _TERM.fullmatch(part)
            if not m:
                raise ValueError(f"cannot parse loss term {part!r} in {spec!r}; {_SYNTAX}")
            weight, name, args = m.groups()
            LOSSES.check(name)
            terms.append((float(weight) if weight else 1.0, name, _parse_params(name, args, part)))
        return cls(tuple(terms))

    def _any(self, flag: str) -> bool:
        return any(getattr(LOSSES.get(name), flag) for _, name, _ in self.terms)

    @property
    def needs_teacher(self) -> bool:
        return self._any("needs_teacher")

    @property
    def batch_level(self) -> bool:
        """Some term couples the batch's rows: only the mean over the whole batch is the loss."""
        return self._any("batch_level")

    @property
    def needs_features(self) -> bool:
        """Some term reads `student_features` and `teacher_features`."""
        return self._any("features")

    def __call__(self, student, teacher, labels, **hp) -> jax.Array:
        """Per-example weighted sum of the terms; a term's parameters override the run-level keyword args `hp`."""
        total = 0.0
        for weight, name, params in self.terms:
            own = dict(params)
            kw, s, t = {**hp, **own}, student, teacher
            if "ls" in own:
                s, t, kw["temperature"] = standardize(s), standardize(t), kw.pop("ls")
            total = total + weight * LOSSES.get(name)(s, t, labels, **kw)
        return total
