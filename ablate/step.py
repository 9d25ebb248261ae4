"""The training step, as pure functions: views -> teacher -> student -> loss -> update.

`make_cohort_step` is the step's mathematics, for one run or a cohort of runs
that share their inputs; the other functions only choose how it is executed
(one jitted program, or each batch's rows split over lanes on CPU).
"""

from __future__ import annotations

import collections
import functools
import operator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ablate import lanes as lanes_lib
from ablate import optim, views
from ablate.config import RunConfig, content_hash
from ablate.losses import LOSSES, LossSpec
from ablate.models import apply_with_features
from ablate.policies import POLICIES, Policy
from ablate.stream import batch_indices


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array



def several(teacher) -> bool:
    """Whether a teacher-side argument (models, parameters, resolutions, targets) is a tuple, one per teacher."""
    return isinstance(teacher, (tuple, list))


def per_teacher(x, teachers: bool) -> tuple:
    """A teacher-side argument as a tuple, one per teacher: as given for several teachers, else wrapped."""
    return tuple(x) if teachers else (x,)


def make_inputs(policy: Policy, cfg: RunConfig, images, labels, key, s_res: int, t_res):
    """Render one batch for both models: (student input, teacher input or None, soft labels, mixup coef).

    `t_res` is the teacher's resolution, or a tuple of several teachers' (then the teacher input is a tuple, one
    per teacher): every teacher sees the same crop and mixup, each rendered at its own resolution (once per size).
    """
    kv, km = jax.random.split(key)
    s_crops, t_crops = policy.draw(kv, images.shape, cfg)  # the shape: inception boxes are whole source pixels
    xs = views.render(images, s_crops, s_res)
    xt = None
    if t_crops is not None:
        rendered = {}
        for res in per_teacher(t_res, several(t_res)):
            if res not in rendered:
                same = t_crops is s_crops and res == s_res
                rendered[res] = xs if same else views.render(images, t_crops, res)
        xt = tuple(rendered[r] for r in t_res) if several(t_res) else rendered[t_res]
    coef = jnp.float32(1.0)
    if policy.mixup:
        coef = views.mixup_coefficient(km, cfg.mixup_p)
        xs, labels = views.mix(xs, coef), views.mix(labels, coef)
        xt = None if xt is None else jax.tree.map(lambda x: views.mix(x, coef), xt)
    return xs, xt, labels, coef


MEMBER_FIELDS = ("model", "loss", "temperature", "label_smoothing", "lr", "wd", "warmup_frac", "optimizer", "clip",
                 "init", "init_seed", "teacher_mix")
"""Config fields only the student side reads. Runs that differ in nothing else see identical inputs at every step."""


def shared_inputs(cfg: RunConfig) -> str:
    """Equal for runs that can train as one cohort: same data order, views, mixup and teacher outputs at every step."""
    canonical = RunConfig.from_dict(cfg.to_dict()).to_dict()  # ints given for float fields become floats
    return content_hash({k: v for k, v in canonical.items() if k not in MEMBER_FIELDS})


SEED_FIELDS = ("seed", "init_seed")
"""What the runs of a seed cohort differ in: data order, views, mixup and initialisation."""


def seed_key(cfg: RunConfig) -> str:
    """Equal for runs that differ only in their seeds: on an accelerator they train vmapped, as one program."""
    canonical = RunConfig.from_dict(cfg.to_dict()).to_dict()
    return content_hash({k: v for k, v in canonical.items() if k not in SEED_FIELDS})


def cohort_key(cfg: RunConfig, backend: str | None = None) -> str | None:
    """Equal for runs worth training as one cohort on `backend` (default: jax's); None for a run that trains alone.

    On CPU, runs that share their inputs (`shared_inputs`), for policies that
    run the teacher during training: sharing its forward pass is what pays
    there (benchmarks/bench_seeds.py: 1.4-1.8x for 4 funmatch students, ~1.0x
    for fixed-teacher ones), while vmapping runs over seeds is 0.42x (vmapped
    convolutions become grouped ones). On an accelerator, whose steps of these
    models wait on launches, runs that differ only in their seeds (`seed_key`),
    any policy: one program trains them all (`make_seed_multi_step`).
    """
    if (backend or jax.default_backend()) != "cpu":
        return "seeds:" + seed_key(cfg)
    return shared_inputs(cfg) if POLICIES.get(cfg.policy).runs_teacher else None


def members_of(states) -> tuple[tuple, tuple]:
    """Each member's parameters, and how far through its schedule it is (step / steps: a loss's warm-up reads it)."""
    return tuple(s.params for s in states), tuple(optim.schedule_progress(s.opt_state) for s in states)


def ensemble_logits(teacher_logits) -> jax.Array:
    """The teacher logits of an ensemble: log of the mean of the teachers' softmax probabilities (T = 1).

    Computed as logsumexp of their log-softmaxes less log K: finite even where a teacher's probability underflows.
    A loss at temperature T then sees softmax(ensemble / T), the mean probabilities raised to 1/T and renormalised.
    """
    log_p = jnp.stack([jax.nn.log_softmax(z) for z in teacher_logits])
    return jax.nn.logsumexp(log_p, axis=0) - jnp.log(len(teacher_logits))


def split_spec(spec: LossSpec) -> tuple[LossSpec, LossSpec | None]:
    """A spec's terms that read the teacher, and the others (label terms, e.g. 0.1*label_ce) or None if none."""
    reads = [term for term in spec.terms if LOSSES.get(term[1]).needs_teacher]
    rest = tuple(term for term in spec.terms if term not in reads)
    return LossSpec(tuple(reads)), (LossSpec(rest) if rest else None)


def distill_loss(spec: LossSpec, student_logits, teacher_logits: tuple, labels, *, mix: str, teachers: bool,
                 student_features=None, teacher_features: tuple = (None,), **hp):
    """A member's batch loss and the per-teacher losses: `(loss, per_teacher)`, the mathematics of every step.

    One teacher (`teachers` False): the spec's loss to its logits, and `per_teacher` is (). Several:
    `per_teacher[k]` is the batch loss of the spec's teacher terms to teacher k alone; `loss` is their sum
    (`mix` "sum", as big_vision's distill trainer sums its teachers' losses) or the teacher terms' loss to
    `ensemble_logits` of the teachers ("ensemble", which has no stage outputs), plus the spec's label terms
    once. `hp`: the loss's run-level arguments (temperature, label_smoothing, progress).
    """
    def batch_loss(terms, zt, t_features):
        return jnp.mean(terms(student_logits, zt, labels, **hp, student_features=student_features,
                              teacher_features=t_features))

    if not teachers:
        return batch_loss(spec, teacher_logits[0], teacher_features[0]), ()
    reads, rest = split_spec(spec)
    per = jnp.stack([batch_loss(reads, z, f) for z, f in zip(teacher_logits, teacher_features)])
    loss = jnp.sum(per) if mix == "sum" else batch_loss(reads, ensemble_logits(teacher_logits), None)
    return (loss if rest is None else loss + batch_loss(rest, teacher_logits[0], None)), per


def loss_width(policy: Policy, teacher) -> int | None:
    """A member's loss per step: a row of 1 + K values where K > 1 teachers distil (the objective, then each
    teacher's loss), else None: one scalar (one teacher, or a label-only policy, which reads no teacher)."""
    return 1 + len(teacher) if several(teacher) and policy.teacher else None


def _cohort_parts(cfgs: list[RunConfig], students: list[nn.Module], teacher,
                  optimizers: list[optax.GradientTransformation], num_classes: int, s_res: int, t_res):
    """A cohort's step in three pure parts: `inputs` (views, mixup, fixed targets) of a whole batch; `grads`,
    each member's loss and gradient on some of its rows (after the teachers' forward on them), the loss a
    batch mean times `scale`; `update`, each member's update from the sum of its rows' gradients. The loss
    (`distill_loss`) also gets the member's `progress` through its schedule and, where a loss reads them, both
    models' stage outputs (`student_features`, `teacher_features`).

    Several teachers: `teacher` and `t_res`, and later the teacher parameters and fixed targets, are tuples, one
    per teacher; each member's loss is then a row (its objective, then its loss to each teacher alone)."""
    if len({shared_inputs(c) for c in cfgs}) != 1:
        raise ValueError(f"a cohort's runs may differ only in {', '.join(MEMBER_FIELDS)}")
    policy = POLICIES.get(cfgs[0].policy)
    multi = loss_width(policy, teacher) is not None
    members = [(student, LossSpec.parse(c.loss), dict(temperature=c.temperature, label_smoothing=c.label_smoothing),
                optimizer, c.teacher_mix) for c, student, optimizer in zip(cfgs, students, optimizers, strict=True)]

    def inputs(targets, batch, key):
        labels = jax.nn.one_hot(batch["label"], num_classes)
        xs, xt, labels, _ = make_inputs(policy, cfgs[0], batch["image"], labels, key, s_res, t_res)
        zt = jax.tree.map(lambda t: t[batch["index"]], targets) if policy.fixed_view is not None else None
        return xs, xt, labels, zt

    features = any(spec.needs_features for _, spec, _, _, _ in members)

    def forward(model, params, x):
        """(logits, stage outputs or None): the stages only where a member's loss reads them."""
        return apply_with_features(model, params, x) if features else (model.apply({"params": params}, x), None)

    def teacher_outputs(teacher_params, xt, zt, labels):
        """Each teacher's logits and stage outputs (or None) on these rows, as tuples, one per teacher."""
        if policy.runs_teacher:
            outs = [jax.lax.stop_gradient(forward(m, p, x)) for m, p, x in
                    zip(per_teacher(teacher, multi), per_teacher(teacher_params, multi), per_teacher(xt, multi))]
            return tuple(z for z, _ in outs), tuple(f for _, f in outs)
        if zt is None:
            return (jnp.zeros_like(labels),), (None,)  # label-only losses never read it
        zt = per_teacher(zt, multi)
        return zt, (None,) * len(zt)

    def grads(params, progress, teacher_params, xs, xt, labels, zt, scale: float = 1.0):
        zts, t_features = teacher_outputs(teacher_params, xt, zt, labels)
        out = []
        for p, prog, (student, spec, hp, _, mix) in zip(params, progress, members):
            def loss_fn(p, student=student, spec=spec, hp=hp, prog=prog, mix=mix):
                zs, s_features = forward(student, p, xs)
                loss, per = distill_loss(spec, zs, zts, labels, mix=mix, teachers=multi, progress=prog,
                                         student_features=s_features, teacher_features=t_features, **hp)
                return (loss, per) if scale == 1.0 else (loss * scale, jax.tree.map(lambda x: x * scale, per))
            (loss, per), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
            out.append((jnp.concatenate([loss[None], per]) if multi else loss, g))
        return tuple(out)

    def update(states, parts):  # parts: per lane (rows), per member, (loss or loss row, grads)
        new_states, losses = [], []
        for j, (state, (_, _, _, optimizer, _)) in enumerate(zip(states, members)):
            loss = functools.reduce(operator.add, [lane[j][0] for lane in parts])
            g = jax.tree.map(lambda *a: functools.reduce(operator.add, a), *[lane[j][1] for lane in parts])
            updates, opt_state = optimizer.update(g, state.opt_state, state.params)
            new_states.append(TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1))
            losses.append(loss)
        return tuple(new_states), jnp.stack(losses)

    return inputs, grads, update


def make_cohort_step(cfgs: list[RunConfig], students: list[nn.Module], teacher,
                     optimizers: list[optax.GradientTransformation], num_classes: int, s_res: int, t_res):
    """The pure step of a cohort, `(states, teacher_params, targets, batch, key) -> (states, losses)`.

    The views, mixup and the teacher's forward pass are computed once and serve
    every member (runs with one `shared_inputs`); each member then takes its own
    loss, gradient and update. Members are unrolled, not vmapped: they may be
    different models, and on CPU a vmapped convolution becomes a slow grouped
    one (benchmarks/bench_seeds.py). Several teachers: `teacher`, `t_res`, the
    teacher parameters and fixed targets are tuples, one per teacher, and
    `losses` has a row per member (`loss_width`).
    """
    inputs, grads, update = _cohort_parts(cfgs, students, teacher, optimizers, num_classes, s_res, t_res)

    def step(states, teacher_params, targets, batch, key):
        xs, xt, labels, zt = inputs(targets, batch, key)
        params, progress = members_of(states)
        return update(states, [grads(params, progress, teacher_params, xs, xt, labels, zt)])

    return step


def lane_rows(x, lanes: int):
    """A batch input (an array, or a tuple of arrays, one per teacher) cut into `lanes` equal blocks of rows."""
    if x is None:
        return None
    leaves, tree = jax.tree.flatten(x)
    blocks = [jnp.split(leaf, lanes) for leaf in leaves]
    return tuple(tree.unflatten([b[k] for b in blocks]) for k in range(lanes))


def make_lane_step(cfgs: list[RunConfig], students: list[nn.Module], teacher,
                   optimizers: list[optax.GradientTransformation], num_classes: int, s_res: int, t_res,
                   lanes: int):
    """`make_cohort_step`'s step, compiled, with each batch's rows split over `lanes` threads (ablate/lanes.py).

    Three programs: the inputs of the whole batch (views and mixup need all of
    it), each lane's teacher forward, loss and gradient on its rows (one program,
    run by every lane at once), and the update from the lanes' summed gradients,
    which takes over (donates) the states.
    """
    inputs, grads, update = _cohort_parts(cfgs, students, teacher, optimizers, num_classes, s_res, t_res)
    split = jax.jit(lambda *a: tuple(lane_rows(x, lanes) for x in inputs(*a)))
    lane_grads = jax.jit(functools.partial(grads, scale=1.0 / lanes))
    apply = jax.jit(update, donate_argnums=(0,))

    def step(states, teacher_params, targets, batch, key):
        xs, xt, labels, zt = split(targets, batch, key)
        params, progress = members_of(states)
        rows = [(xs[k], None if xt is None else xt[k], labels[k], None if zt is None else zt[k]) for k in range(lanes)]
        parts = lanes_lib.run(lane_grads, [(params, progress, teacher_params, *r) for r in rows])
        return apply(states, parts)

    return step


NOT_IN_STEP = ("epochs", "seed", "num_evals", "eval_spacing", "subset_seed", "init", "init_seed")
"""Config fields the step's program never reads: the schedule's length is optimiser state, seeds and the data order
arrive as inputs (keys, batches), initial parameters as the state. Runs that differ only in these share one program."""

PROGRAMS_KEPT = 8
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


def program_key(cfg: RunConfig) -> str:
    """Equal for runs whose steps are one program (`NOT_IN_STEP`): a patience study's cells of one policy."""
    canonical = RunConfig.from_dict(cfg.to_dict()).to_dict()
    return content_hash({k: v for k, v in canonical.items() if k not in NOT_IN_STEP})


def compile_cohort_step(cfgs, students, teacher, optimizers, num_classes: int, s_res: int, t_res, lanes: int):
    """The cohort's step ready to call: in lanes where `lanes` > 1, else one jitted program donating the states.

    Kept for the process (`_kept`): a later run with the same `program_key`s reuses the traced and compiled
    step instead of tracing, lowering and loading it again (2-4 s a run on a 2-core CPU).
    """
    def build():
        if lanes > 1:
            return make_lane_step(cfgs, students, teacher, optimizers, num_classes, s_res, t_res, lanes)
        return jax.jit(make_cohort_step(cfgs, students, teacher, optimizers, num_classes, s_res, t_res),
                       donate_argnums=(0,))

    return _kept((*_program_id(cfgs, students, teacher, num_classes, s_res, t_res), "step", lanes), build)


def compile_multi_step(cfgs, students, teacher, optimizers, num_classes: int, s_res: int, t_res,
                       batch_size: int, width: int | None, seeds: bool = False):
    """The cohort's blocks of steps (`make_multi_step`) as one jitted program donating the states, kept like
    `compile_cohort_step`'s step. `seeds`: the runs differ only in their seeds (`make_seed_multi_step` of the
    first run's step, which stands for them all)."""
    if seeds:
        cfgs, students, optimizers = cfgs[:1], students[:1], optimizers[:1]

    def build():
        step = make_cohort_step(cfgs, students, teacher, optimizers, num_classes, s_res, t_res)
        make = make_seed_multi_step if seeds else make_multi_step
        return jax.jit(make(step, batch_size, width), donate_argnums=(0,))

    key = (*_program_id(cfgs, students, teacher, num_classes, s_res, t_res), "seeds" if seeds else "blocks",
           batch_size, width)
    return _kept(key, build)


def _program_id(cfgs, students, teacher, num_classes, s_res, t_res) -> tuple:
    """What a cohort's step program depends on: its runs' `program_key`s, with the registered functions themselves
    (a loss or policy registered anew under its name gets a new program), its models and shapes."""
    registered = tuple((POLICIES.get(c.policy), *(LOSSES.get(term[1]) for term in LossSpec.parse(c.loss).terms))
                       for c in cfgs)
    return tuple(program_key(c) for c in cfgs), registered, tuple(students), teacher, num_classes, s_res, t_res


def _kept(key, build):
    """The program under `key`, built (`build()`) at its first use and kept for the process: the last
    `PROGRAMS_KEPT` used."""
    if key not in _PROGRAMS:
        _PROGRAMS[key] = build()
        while len(_PROGRAMS) > PROGRAMS_KEPT:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]


class Resident(NamedTuple):
    """A run's training set on the device, with what a multi-step program needs to draw its batches there."""

    images: jax.Array
    labels: jax.Array
    order: jax.Array  # the run's data-order key (`ablate.stream.order_key`)
    views: jax.Array  # the base key of its views and mixup, folded with the step (as the per-step loop does)


def make_seed_multi_step(run_step, batch_size: int, width: int | None = None):
    """`make_multi_step` of one run's step, vmapped over runs that differ only in their seeds: `(states,
    teacher_params, targets, resident, start, count) -> (states, loss_sums, first_bad)` as there, with `states`
    the runs' TrainStates and `resident.order` and `.views` stacked, one key per run; `width` as there.

    Each run draws its own batches, views and mixup from its keys inside the program; the training set, the
    teacher and the fixed targets are shared. The runs' states are stacked and unstacked inside the program.
    """
    multi = jax.vmap(make_multi_step(run_step, batch_size, width),
                     in_axes=(0, None, None, Resident(None, None, 0, 0), None, None))

    def seeds_multi_step(states, teacher_params, targets, resident: Resident, start, count):
        stacked = (jax.tree.map(lambda *leaves: jnp.stack(leaves), *states),)
        (out,), sums, first_bad = multi(stacked, teacher_params, targets, resident, start, count)
        runs = tuple(jax.tree.map(lambda leaf, j=j: leaf[j], out) for j in range(len(states)))
        return runs, sums[:, 0], first_bad[:, 0]

    return seeds_multi_step


def make_multi_step(cohort_step, batch_size: int, width: int | None = None):
    """`cohort_step` run for `count` steps from step `start` in one program: `(states, teacher_params, targets,
    resident, start, count) -> (states, loss_sums, first_bad)`.

    Each step's batch indices, key and so views and mixup are computed in the program from the step number
    (`ablate.stream.batch_indices`), so the data order stays a pure function of the step: the same steps as the
    per-step loop, which draws them on the host, and a resume can start anywhere. Per member, the program
    returns the sum of its losses and the first step whose loss was not finite (-1: none). `start` and `count`
    are inputs, so one compiled program serves every block of every run of the same shapes. `width`: the
    length of each member's loss row where several teachers distil (`loss_width`), None for a scalar loss.
    """
    def multi_step(states, teacher_params, targets, resident: Resident, start, count):
        size = resident.labels.shape[0]

        def body(k, carry):
            states, loss_sums, first_bad = carry
            step = start + k
            idx = batch_indices(resident.order, step, size, batch_size)
            batch = {"image": resident.images[idx], "label": resident.labels[idx], "index": idx}
            states, losses = cohort_step(states, teacher_params, targets, batch,
                                         jax.random.fold_in(resident.views, step))
            return (states, *accumulate(loss_sums, first_bad, losses, step))

        return jax.lax.fori_loop(0, count, body, (states, *no_losses(len(states), width)))

    return multi_step


def no_losses(members: int, width: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`accumulate`'s start: no loss summed (a scalar per member, or a row of `width`), no step found non-finite
    (-1), per member."""
    shape = (members,) if width is None else (members, width)
    return jnp.zeros(shape, jnp.float32), jnp.full((members,), -1, jnp.int32)


def accumulate(loss_sums, first_bad, losses, step):
    """Add one step's losses (one per member, or a row per member whose first value is the objective) to their
    sums, and note the first step whose objective is not finite."""
    objective = losses if losses.ndim == 1 else losses[:, 0]
    bad = (~jnp.isfinite(objective)) & (first_bad < 0)
    return loss_sums + losses, jnp.where(bad, step, first_bad).astype(jnp.int32)


def make_train_step(cfg: RunConfig, student: nn.Module, teacher,
                    optimizer: optax.GradientTransformation, num_classes: int, s_res: int, t_res):
    """The pure training step of one run, `(state, teacher_params, targets, batch, key) -> (state, loss)`."""
    return one_run(make_cohort_step([cfg], [student], teacher, [optimizer], num_classes, s_res, t_res))


def one_run(cohort_step):
    """A one-member cohort's step with one run's signature, `(state, ...) -> (state, loss)`."""
    def step(state: TrainState, teacher_params, targets, batch, key):
        (state,), losses = cohort_step((state,), teacher_params, targets, batch, key)
        return state, losses[0]

    return step


