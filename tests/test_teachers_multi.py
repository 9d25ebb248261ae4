"""Several teachers per run: config and run ids, the step's sum and ensemble against NumPy, per-teacher target
caches, per-teacher evaluation, and a two-teacher study trained end to end through the CLI."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate import optim, paths, views
from ablate.cli import main
from ablate.config import ConfigError, RunConfig, validate
from ablate.evaluate import eval_metrics
from ablate.models import build_model, params_fingerprint
from ablate.policies import POLICIES
from ablate.step import (Resident, TrainState, compile_cohort_step, make_cohort_step, make_inputs, make_multi_step,
                         make_train_step)
from ablate.stream import order_key, student_source
from ablate.teachers import Teacher, run_inputs
from tests.helpers import tiny_study

PAIR = "fmnist_xs+fmnist_xs_s1"


@functools.cache
def jitted_apply(model):
    return jax.jit(model.apply)


def run(model, params, x):
    """A model's logits on rendered inputs, computed outside the trainer."""
    return np.asarray(jitted_apply(model)({"params": params}, x), np.float64)


def random_teacher(seed: int, resolution: int = 28, name: str | None = None) -> Teacher:
    """An untrained resnet_xs with a random head (so its logits depend on its input): a teacher for the mathematics."""
    model = build_model("resnet_xs", 10)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))["params"]
    params["head"]["kernel"] = 0.3 * jax.random.normal(jax.random.key(seed + 100), params["head"]["kernel"].shape)
    return Teacher(model=model, params=params, resolution=resolution, name=name or f"t{seed}",
                   fingerprint=params_fingerprint(params))


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(zs, zt, t=1.0):
    """T^2 KL(softmax(zt/T) || softmax(zs/T)) per example, in NumPy."""
    lt, ls = log_softmax(zt / t), log_softmax(zs / t)
    return t * t * np.sum(np.exp(lt) * (lt - ls), -1)


def np_ensemble(zts):
    """log of the mean of the teachers' softmax probabilities."""
    return np.log(np.mean([np.exp(log_softmax(z)) for z in zts], axis=0))


def cfg_of(**kw):
    base = dict(teacher=PAIR, model="resnet_xs", policy="funmatch", loss="kl", subset_per_class=10, batch_size=20,
                epochs=4, lr=1e-2, num_evals=2)
    return RunConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- config

def test_single_teacher_run_ids_are_unchanged():
    """Run ids of one-teacher and label-only configs computed before several teachers existed stay the same, and
    teacher_mix, irrelevant with one teacher, never enters them; the default teachers keep their cache folders."""
    from ablate.teachers import teacher_dir

    assert RunConfig().run_id == "30a41f336b85"
    assert RunConfig(teacher_mix="ensemble").run_id == "30a41f336b85"
    fixed = RunConfig(teacher="fmnist_xs", model="resnet_xs", policy="fix/rs", subset_per_class=10, epochs=4)
    assert fixed.run_id == "7a5bf57d28f6"
    label_only = RunConfig(teacher=None, policy="supervised", loss="label_ce")
    assert label_only.run_id == label_only.replace(teacher_mix="ensemble").run_id == "6f457d84d025"
    assert teacher_dir("fmnist_t").name == "fmnist_t-6484940a8d5a"
    two = RunConfig(teacher="fmnist_t+fmnist_t_s1")
    assert len({two.run_id, two.replace(teacher_mix="ensemble").run_id, RunConfig().run_id}) == 3
    assert two.teachers == ("fmnist_t", "fmnist_t_s1") and RunConfig().teachers == ("fmnist_t",)


def test_registered_teachers_validate():
    """The default teachers' second seed and deeper net are registered, and configs naming them validate."""
    for teacher in ("fmnist_t+fmnist_t_s1", "fmnist_t+fmnist_t_s1+fmnist_t_deep", PAIR):
        for mix in ("sum", "ensemble"):
            validate(RunConfig(teacher=teacher, teacher_mix=mix))


@pytest.mark.parametrize("fields,message", [
    (dict(teacher="fmnist_xs+nope"), "unknown teacher 'nope'"),
    (dict(teacher="fmnist_xs+fmnist_xs"), "names fmnist_xs more than once"),
    (dict(teacher="fmnist_xs+"), "has an empty name"),
    (dict(teacher="fmnist_xs + fmnist_xs_s1"), "as 'fmnist_xs+fmnist_xs_s1' (no spaces)"),
    (dict(teacher_mix="mean"), "unknown teacher_mix 'mean'; valid values: sum, ensemble"),
    (dict(teacher_mix="ensemble", loss="kl + at"), "use teacher_mix 'sum'"),
])
def test_bad_teacher_input_is_a_config_error(fields, message):
    """Unknown or repeated names, empty ones, an unknown mix and a feature loss on an ensemble: what is wrong and
    what is valid."""
    with pytest.raises(ConfigError) as e:
        validate(cfg_of(**fields))
    assert message in str(e.value)
    if "unknown teacher " in message:
        assert "fmnist_t_s1" in str(e.value) and "fmnist_t_deep" in str(e.value)  # the valid names


def test_bad_teacher_input_exits_2_through_the_cli(tmp_path, capsys):
    assert main(["distill", "--teacher", "fmnist_xs+nope", "--store", str(tmp_path / "s"), "--wandb", "disabled",
                 "--no-progress"]) == 2
    assert "unknown teacher 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def _five_classes():
    """Register (once) a 5-class dataset and a teacher trained on it: a teacher whose class count is not 10."""
    from ablate.data import DATASETS, ArraySource, load_dataset
    from ablate.teacher_registry import TEACHERS, register_teacher

    if "fmnist_five" in TEACHERS.names():
        return

    @DATASETS.register("fmnist_five")
    def fmnist_five():
        """Fashion-MNIST's first five classes (a test dataset)."""
        full = load_dataset("fashion_mnist")

        def keep(split):
            rows = np.flatnonzero(split.labels < 5)
            return ArraySource(split.images[rows], split.labels[rows])

        return dataclasses.replace(full, name="fmnist_five", num_classes=5, train=keep(full.train),
                                   val=keep(full.val), test=keep(full.test), class_names=full.class_names[:5])

    register_teacher("five_t", RunConfig(dataset="fmnist_five", teacher=None, model="resnet_xs",
                                         policy="supervised", loss="label_ce", epochs=1), "5-class test teacher.")


def test_teachers_with_another_class_count_are_rejected_before_any_work(tmp_path, capsys):
    """A teacher of a 5-class dataset next to a 10-class one: exit 2, naming the teacher and both counts."""
    _five_classes()
    assert main(["distill", "--teacher", "fmnist_xs+five_t", "--model", "resnet_xs", "--store", str(tmp_path / "s"),
                 "--wandb", "disabled", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "10 classes" in err and "five_t has 5 (fmnist_five)" in err


# ----------------------------------------------------------------------------- the step

def test_every_teacher_sees_the_students_crop_at_its_own_resolution(fmnist):
    """Several teachers' inputs: the student's very crop and mixup, rendered at each teacher's resolution (the same
    array where a teacher's resolution is the student's)."""
    cfg = cfg_of()
    images = fmnist.train.images[:16]
    labels = jax.nn.one_hot(fmnist.train.labels[:16], 10)
    key = jax.random.key(3)
    xs, xt, _, coef = make_inputs(POLICIES.get("funmatch"), cfg, images, labels, key, 28, (28, 42, 28))
    assert len(xt) == 3 and xt[1].shape == (16, 42, 42, 1)
    np.testing.assert_array_equal(np.asarray(xt[0]), np.asarray(xs))
    np.testing.assert_array_equal(np.asarray(xt[2]), np.asarray(xs))
    kv, _ = jax.random.split(key)
    crops, _ = POLICIES.get("funmatch").draw(kv, images.shape, cfg)
    np.testing.assert_allclose(np.asarray(xt[1]), np.asarray(views.mix(views.render(images, crops, 42), coef)),
                               rtol=1e-6, atol=1e-6)
    one = make_inputs(POLICIES.get("funmatch"), cfg, images, labels, key, 28, 42)
    np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(xt[1]))  # as a one-teacher run at 42 px


def _batch(fmnist, rows=20, start=0):
    idx = np.arange(start, start + rows)
    return {"image": jnp.asarray(fmnist.train.images[idx]), "label": jnp.asarray(fmnist.train.labels[idx]),
            "index": jnp.asarray(idx.astype(np.int32))}


def _student(seed=1):
    student = build_model("resnet_xs", 10)
    params = student.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))["params"]
    params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(seed + 1), params["head"]["kernel"].shape)
    return student, params


@pytest.mark.parametrize("mix", ["sum", "ensemble"])
@pytest.mark.parametrize("policy", ["funmatch", "fix/rs"])
def test_the_step_loss_is_the_sum_or_the_ensemble_computed_by_hand(fmnist, mix, policy):
    """Three teachers (one at 42 px), loss 'kl + 0.5*label_ce' at T = 2: the step's loss row is the objective, then
    each teacher's kl, as NumPy computes them from each teacher's logits on the same views (the teacher run on the
    batch, or its fixed targets); the label term counts once."""
    teachers = (random_teacher(0), random_teacher(1), random_teacher(2, resolution=42))
    cfg = cfg_of(policy=policy, teacher_mix=mix, loss="kl + 0.5*label_ce", temperature=2.0)
    student, params = _student()
    opt = optim.paper_optimizer(cfg.lr, cfg.wd, 10, 1)
    res = tuple(t.resolution for t in teachers)
    step = jax.jit(make_train_step(cfg, student, tuple(t.model for t in teachers), opt, 10, 28, res))
    b, key = _batch(fmnist), jax.random.key(42)
    targets = None
    if policy == "fix/rs":  # fixed targets: any logits per training example, looked up by index
        rng = np.random.default_rng(0)
        targets = tuple(jnp.asarray(rng.normal(size=(100, 10)).astype(np.float32) * 3) for _ in teachers)
    state, loss = step(TrainState(params, opt.init(params), jnp.int32(0)), tuple(t.params for t in teachers),
                       targets, b, key)
    labels1 = jax.nn.one_hot(b["label"], 10)
    xs, xt, labels, _ = make_inputs(POLICIES.get(policy), cfg, b["image"], labels1, key, 28, res)
    zs = run(student, params, xs)
    if policy == "funmatch":
        zts = [run(t.model, t.params, x) for t, x in zip(teachers, xt)]
    else:
        assert xt is None
        zts = [np.asarray(t, np.float64)[np.asarray(b["index"])] for t in targets]
    per = [np.mean(np_kl(zs, z, 2.0)) for z in zts]
    ce = 0.5 * np.mean(-np.sum(np.asarray(labels) * log_softmax(zs), -1))
    objective = (sum(per) if mix == "sum" else np.mean(np_kl(zs, np_ensemble(zts), 2.0))) + ce
    assert loss.shape == (4,)
    np.testing.assert_allclose(np.asarray(loss), [objective, *per], rtol=1e-4)
    assert len({round(p, 4) for p in per}) == 3 and int(state.step) == 1


def test_several_teachers_in_cohorts_lanes_and_multi_step_programs(fmnist, monkeypatch):
    """A cohort of a summing and an ensembling student equals each trained alone; its step split over two lanes
    equals one program; the multi-step program equals the per-step loop: rows of losses included."""
    from ablate import xla_flags

    teachers = (random_teacher(0), random_teacher(1, resolution=42))
    t_models, t_params = tuple(t.model for t in teachers), tuple(t.params for t in teachers)
    res = (28, 42)
    cfgs = [cfg_of(batch_size=32), cfg_of(batch_size=32, teacher_mix="ensemble", lr=3e-2)]
    students = [build_model("resnet_xs", 10)] * 2
    opts = [optim.paper_optimizer(c.lr, c.wd, 100, 10, c.clip) for c in cfgs]

    def fresh():
        return tuple(TrainState(p, o.init(p), jnp.int32(0)) for p, o in
                     zip([_student(k)[1] for k in (1, 2)], opts))

    def loop(step, states, n=3):
        losses = []
        for i in range(n):
            states, loss = step(states, t_params, None, _batch(fmnist, 32, 32 * i), jax.random.key(i))
            losses.append(np.asarray(loss))
        return states, np.stack(losses)

    monkeypatch.setattr(xla_flags, "lanes_in_effect", 2)
    one, loss_one = loop(compile_cohort_step(cfgs, students, t_models, opts, 10, 28, res, 1), fresh())
    split, loss_split = loop(compile_cohort_step(cfgs, students, t_models, opts, 10, 28, res, 2), fresh())
    assert loss_one.shape == (3, 2, 3)  # steps, members, (objective, each teacher's loss)
    np.testing.assert_allclose(loss_split, loss_one, rtol=2e-5, atol=1e-6)
    for j in range(2):  # each member alone
        alone, loss_alone = loop(jax.jit(make_cohort_step(cfgs[j:j + 1], students[:1], t_models, opts[j:j + 1], 10,
                                                          28, res)), fresh()[j:j + 1])
        np.testing.assert_allclose(loss_alone[:, 0], loss_one[:, j], rtol=2e-5, atol=1e-6)
    # the multi-step program draws its batches itself: compare it with the same step dispatched per step
    source = student_source(cfgs[0], fmnist)
    resident = Resident(jnp.asarray(source.images), jnp.asarray(source.labels), order_key(0), jax.random.key(0))
    cohort = make_cohort_step(cfgs, students, t_models, opts, 10, 28, res)
    multi = jax.jit(make_multi_step(cohort, 32, width=3))
    _, sums, first_bad = multi(fresh(), t_params, None, resident, 0, 3)
    from ablate.stream import batch_indices

    states, expect = fresh(), np.zeros((2, 3))
    for s in range(3):
        idx = batch_indices(resident.order, s, len(source), 32)
        batch = {"image": resident.images[idx], "label": resident.labels[idx], "index": idx}
        states, loss = jax.jit(cohort)(states, t_params, None, batch, jax.random.fold_in(resident.views, s))
        expect += np.asarray(loss)
    np.testing.assert_allclose(np.asarray(sums), expect, rtol=1e-4)
    assert (np.asarray(first_bad) == -1).all()


# ----------------------------------------------------------------------------- caches and evaluation

def test_fixed_targets_are_cached_per_teacher_and_reused(fmnist_small, tmp_path, monkeypatch):
    """A two-teacher fix/rs run reads its first teacher's targets and val/test logits from the one-teacher run's
    cache entries and adds only the second teacher's; each is that teacher's own logits."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    first, second = random_teacher(0, name="fmnist_xs"), random_teacher(1, name="fmnist_xs_s1")
    cfg = cfg_of(policy="fix/rs")

    def entries():
        return {p.name: p.stat().st_mtime_ns for p in paths.targets_dir().glob("*.npy")}

    one_targets, one_eval = run_inputs(cfg.replace(teacher="fmnist_xs"), fmnist_small, first, log=pytest.fail)
    after_one = entries()
    assert len(after_one) == 3  # training targets, val, test
    targets, eval_teacher = run_inputs(cfg, fmnist_small, (first, second), log=pytest.fail)
    after_two = entries()
    assert len(after_two) == 6 and all(after_two[k] == v for k, v in after_one.items())  # reused, not rewritten
    assert isinstance(targets, tuple) and len(targets) == 2
    np.testing.assert_array_equal(targets[0], one_targets)
    assert not np.allclose(targets[0], targets[1])
    assert set(eval_teacher["test"]) == {"fmnist_xs", "fmnist_xs_s1"}
    np.testing.assert_array_equal(eval_teacher["val"]["fmnist_xs"], one_eval["val"])
    again, _ = run_inputs(cfg, fmnist_small, (first, second), log=pytest.fail)
    assert entries() == after_two and all(np.array_equal(a, b) for a, b in zip(again, targets))


def test_evaluation_logs_each_teacher_and_the_ensemble():
    """With several teachers: agreement and KL with each (named) and, under the one-teacher names, with the
    ensemble of mean probabilities; with one teacher the metrics are those it always had."""
    rng = np.random.default_rng(0)
    student, a, b = (rng.normal(size=(200, 10)).astype(np.float32) * 2 for _ in range(3))
    labels = rng.integers(0, 10, 200)
    m = eval_metrics(student, {"ta": a, "tb": b}, labels, "val")
    assert m["val/agree_top1/ta"] == eval_metrics(student, a, labels, "val")["val/agree_top1"]
    assert m["val/kl/tb"] == pytest.approx(float(np.mean(np_kl(student.astype(np.float64), b))), rel=1e-5)
    ens = np_ensemble([a.astype(np.float64), b.astype(np.float64)])
    assert m["val/agree_top1"] == float(np.mean(student.argmax(-1) == ens.argmax(-1)))
    assert m["val/kl"] == pytest.approx(float(np.mean(np_kl(student.astype(np.float64), ens))), rel=1e-5)
    assert set(m) == {"val/acc", *(f"val/{k}{s}" for k in ("agree_top1", "agree_top5", "kl")
                                   for s in ("", "/ta", "/tb"))}
    assert set(eval_metrics(student, a, labels, "val")) == {"val/acc", "val/agree_top1", "val/agree_top5", "val/kl"}


# ----------------------------------------------------------------------------- end to end

def test_a_two_teacher_study_trains_end_to_end_through_the_cli(teacher, fmnist, tmp_path, capsys):
    """`ablate run` of a study with two tiny teachers, summed and ensembled, on the fly and fixed: every run
    finishes and logs its per-teacher losses, per-teacher and ensemble agreement and KL, and the teachers'
    accuracies; the summing and ensembling runs train as one cohort."""
    from ablate.teachers import get_teacher

    get_teacher("fmnist_xs_s1", fmnist, progress=False, log=lambda *a, **k: None)  # trained once per session
    study = tmp_path / "two.py"
    study.write_text(tiny_study(dict(teacher=PAIR), name="two", question="Two teachers?",
                                axes=dict(policy=["funmatch", "fix/rs"], teacher_mix=["sum", "ensemble"])))
    store = tmp_path / "store"
    assert main(["run", str(study), "--store", str(store), "--wandb", "disabled", "--no-progress"]) == 0
    assert "4 ran" in capsys.readouterr().out
    for run_dir in store.iterdir():
        if not (run_dir / "summary.json").exists():
            continue
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        assert cfg["teacher"] == PAIR
        history = json.loads((run_dir / "history.json").read_text())
        last = history[-1]
        for name in ("fmnist_xs", "fmnist_xs_s1"):
            assert np.isfinite(last[f"train/loss/{name}"])
            for k in ("agree_top1", "agree_top5", "kl"):
                assert f"val/{k}/{name}" in last and f"test/{k}/{name}" in last
        assert {"train/loss", "test/agree_top1", "test/kl"} <= set(last)
        if cfg["teacher_mix"] == "sum":
            assert last["train/loss"] == pytest.approx(last["train/loss/fmnist_xs"] + last["train/loss/fmnist_xs_s1"],
                                                       rel=1e-5)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert 0 < summary["teacher/test/acc"] <= 1 and 0 < summary["teacher/fmnist_xs_s1/test/acc"] <= 1
    done = [d for d in store.iterdir() if (d / "summary.json").exists()]
    assert len(done) == 4


def test_a_seed_cohort_with_several_teachers_trains_as_its_runs_alone(fmnist_small):
    """Two seeds of a two-teacher run (one teacher at 42 px) vmapped in blocks of steps, as on an accelerator, log
    what each logs trained alone one step at a time: the objective, each teacher's loss and each one's agreement."""
    from ablate.train import Member, train, train_cohort

    teachers = (random_teacher(0, name="fmnist_xs"), random_teacher(1, resolution=42, name="fmnist_xs_s1"))
    seeds = [cfg_of(seed=s, optimizer="sgdm", lr=0.03, epochs=2, teacher_mix="ensemble") for s in (0, 1)]
    _, eval_teacher = run_inputs(seeds[0], fmnist_small, teachers, log=pytest.fail)
    kw = dict(teacher=teachers, eval_teacher=eval_teacher, progress=False)
    together = train_cohort([Member(c) for c in seeds], fmnist_small, use_multi_step=True, **kw)
    for cfg, run_ in zip(seeds, together):
        alone = train(cfg, fmnist_small, use_multi_step=False, **kw)
        assert [r["step"] for r in run_.history] == [r["step"] for r in alone.history]
        last, expect = run_.history[-1], alone.history[-1]
        assert {"train/loss/fmnist_xs", "train/loss/fmnist_xs_s1", "val/kl/fmnist_xs_s1", "val/kl"} <= set(last)
        for k in ("train/loss", "train/loss/fmnist_xs", "train/loss/fmnist_xs_s1", "val/kl", "val/kl/fmnist_xs"):
            assert last[k] == pytest.approx(expect[k], rel=1e-3), k
