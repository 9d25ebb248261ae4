"""Fixed-teacher targets, the training step and loop, and checkpoint resume, on real Fashion-MNIST (CPU-sized)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate import optim, paths, views
from ablate.config import RunConfig
from ablate.losses import kl
from ablate.models import build_model
from ablate.policies import POLICIES
from ablate.teachers import params_fingerprint, run_inputs, save_targets, source_id, targets_key, teacher_logits
from ablate.config import num_steps
from ablate.evaluate import predict
from ablate.step import TrainState, make_inputs, make_train_step
from ablate.stream import batches, student_source
from ablate.train import train
from tests.helpers import no_time

QUIET = dict(progress=False)


@functools.cache
def jitted_apply(model):
    """model.apply under jit (eager flax on CPU takes seconds per call)."""
    return jax.jit(model.apply)


def run(model, params, x):
    """Logits of a model with `params` on the rendered inputs `x`, computed outside the trainer."""
    return jitted_apply(model)({"params": params}, x)


def distill_cfg(**kw):
    """A tiny distillation config: resnet_xs student, fmnist_xs teacher, 50 images per class."""
    base = dict(dataset="fashion_mnist", teacher="fmnist_xs", model="resnet_xs", policy="funmatch", loss="kl",
                subset_per_class=50, batch_size=50, epochs=10, lr=1e-2, warmup_frac=0.1, num_evals=2)
    return RunConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- batches and fixed targets

def test_batches_index_the_images_they_carry(fmnist):
    """Every batch's `index` points at its own images and labels in the source, over several epochs of reshuffles."""
    cfg = distill_cfg(subset_per_class=12, batch_size=40, epochs=3, policy="fix/rs")
    source = student_source(cfg, fmnist)
    assert len(source) == 120
    total = num_steps(cfg, len(source))
    ds = batches(source, cfg, total)
    seen = []
    for k in range(total):
        b = ds[k]
        idx = np.asarray(b["index"])
        np.testing.assert_array_equal(np.asarray(b["image"]), source.images[idx])
        np.testing.assert_array_equal(np.asarray(b["label"]), source.labels[idx])
        seen.append(idx)
    seen = np.concatenate(seen)
    per_epoch = seen.reshape(3, 120)
    for epoch in per_epoch:  # each epoch is a permutation of the source ...
        np.testing.assert_array_equal(np.sort(epoch), np.arange(120))
    assert not np.array_equal(per_epoch[0], per_epoch[1])  # ... reshuffled every epoch
    again = batches(source, cfg, total)[total - 1]  # random access: batch k does not depend on how we got there
    np.testing.assert_array_equal(np.asarray(again["index"]), seen[-40:])


def test_batches_run_across_epoch_boundaries(fmnist):
    """A batch size that does not divide the source: batches straddle epochs, each epoch is still a permutation."""
    cfg = distill_cfg(subset_per_class=7, batch_size=32, epochs=4, policy="fix/rs")
    source = student_source(cfg, fmnist)
    total = num_steps(cfg, len(source))
    ds = batches(source, cfg, total)
    seen = np.concatenate([np.asarray(ds[k]["index"]) for k in range(total)])
    whole = len(seen) // len(source)
    assert whole >= 3 and len(seen) % len(source)  # the last batch ends inside an epoch
    for epoch in seen[:whole * len(source)].reshape(whole, len(source)):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(len(source)))
    other_seed = batches(source, dataclasses.replace(cfg, seed=cfg.seed + 1), total)
    assert not np.array_equal(np.asarray(other_seed[0]["index"]), seen[:32])
    halves = batches(source, cfg, total, rows=slice(16, 32))  # a second host's rows of the same global batch
    np.testing.assert_array_equal(np.asarray(halves[2]["index"]), seen[2 * 32 + 16:3 * 32])


def test_fixed_rs_targets_are_the_teacher_on_the_rs_view_and_cached(teacher, fmnist):
    """teacher_logits(rs) equals predict on the rs view exactly, is written to the cache, and is read back from it."""
    source = fmnist.train.take(np.arange(300))
    key = targets_key(teacher, source_id(source), "rs")
    path = paths.targets_dir() / f"{key}.npy"
    assert not path.exists()
    first = teacher_logits(teacher, source, "rs", log=pytest.fail)
    assert path.exists()
    np.testing.assert_array_equal(first, predict(teacher.model, teacher.params, source, "rs", teacher.resolution))
    direct = run(teacher.model, teacher.params, views.render(source.images, views.resize(None, 300), teacher.resolution))
    np.testing.assert_allclose(first, np.asarray(direct), rtol=1e-5, atol=1e-5)
    assert first.shape == (300, 10) and np.isfinite(first).all()
    np.testing.assert_array_equal(teacher_logits(teacher, source, "rs"), first)  # constant across calls

    # the second call reads the file: a planted array of the right shape (with its checksum) comes back
    planted = np.full_like(first, 7.0)
    save_targets(path, planted)
    np.testing.assert_array_equal(teacher_logits(teacher, source, "rs"), planted)
    save_targets(path, first)
    # other views and other examples get other keys
    assert targets_key(teacher, source_id(source), "cc") != key
    assert targets_key(teacher, source_id(fmnist.train.take(np.arange(1, 301))), "rs") != key


def test_a_damaged_target_cache_is_recomputed(teacher, fmnist):
    """A truncated cache file is detected, reported and replaced by freshly computed targets."""
    source = fmnist.train.take(np.arange(300, 400))
    good = teacher_logits(teacher, source, "cc")
    path = paths.targets_dir() / f"{targets_key(teacher, source_id(source), 'cc')}.npy"
    path.write_bytes(path.read_bytes()[:100])
    messages = []
    np.testing.assert_array_equal(teacher_logits(teacher, source, "cc", log=messages.append), good)
    assert messages and "damaged" in messages[0]
    np.testing.assert_array_equal(np.load(path), good)


def test_a_changed_teacher_gets_new_targets(teacher, fmnist):
    """Perturbed teacher parameters change the fingerprint, hence the cache key and the targets."""
    source = fmnist.train.take(np.arange(300))
    base = teacher_logits(teacher, source, "rs")
    params = jax.tree.map(lambda x: x, teacher.params)
    params["head"]["bias"] = params["head"]["bias"] + jnp.arange(10, dtype=jnp.float32)
    other = dataclasses.replace(teacher, params=params, fingerprint=params_fingerprint(params))
    assert other.fingerprint != teacher.fingerprint
    assert targets_key(other, source_id(source), "rs") != targets_key(teacher, source_id(source), "rs")
    changed = teacher_logits(other, source, "rs")
    np.testing.assert_allclose(changed - base, np.broadcast_to(np.arange(10.0), base.shape), atol=1e-4)
    assert (paths.targets_dir() / f"{targets_key(other, source_id(source), 'rs')}.npy").exists()
    assert params_fingerprint(teacher.params) == teacher.fingerprint  # the original is untouched


def test_another_architecture_with_the_same_parameters_gets_its_own_targets(teacher, fmnist):
    """The same parameter tree under another definition (other GroupNorm groups) computes other logits, so it must not
    read the first model's cached targets."""
    source = fmnist.train.take(np.arange(300))
    base = teacher_logits(teacher, source, "rs")
    assert teacher.model.groups != 1
    regrouped = dataclasses.replace(teacher, model=teacher.model.clone(groups=1))  # same params and fingerprint
    assert regrouped.fingerprint == teacher.fingerprint
    assert targets_key(regrouped, source_id(source), "rs") != targets_key(teacher, source_id(source), "rs")
    got = teacher_logits(regrouped, source, "rs")
    expect = run(regrouped.model, teacher.params, views.render(source.images, views.resize(None, 300),
                                                               teacher.resolution))
    np.testing.assert_allclose(got, np.asarray(expect), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, base, atol=1e-3)


def test_train_leaves_the_callers_init_params_usable(fmnist_small):
    """The step donates its state's buffers: the parameters a caller passes in must survive training, unchanged."""
    cfg = RunConfig(model="resnet_xs", policy="supervised", subset_per_class=10, batch_size=50, epochs=5,
                    num_evals=1)
    model = build_model("resnet_xs", 10)
    init = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 28, 28, 1)))["params"]
    before = jax.tree.map(np.asarray, init)
    result = train(cfg, fmnist_small, init_params=init, **QUIET)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, init), before)  # not deleted, not changed
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, jax.tree.map(np.asarray, result.params), before)))


def test_ic_ens_is_the_log_mean_softmax_over_k_inception_crops(teacher, fmnist):
    """fix/ic_ens targets = log(mean_k softmax(teacher(inception crop k))), recomputed by hand with the same keys."""
    source = fmnist.train.take(np.arange(600))  # two chunks of the 500-example loop
    k, min_area = 3, 0.25
    got = teacher_logits(teacher, source, "ic_ens", ens_crops=k, min_area=min_area)
    expect = []
    for start in (0, 500):
        chunk = source.images[start:start + 500]
        probs = 0.0
        for j in range(k):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), start), j)
            crops = views.inception_crop(key, chunk.shape, min_area)
            x = views.render(chunk, crops, teacher.resolution)
            probs = probs + np.asarray(jax.nn.softmax(run(teacher.model, teacher.params, x)), np.float64)
        expect.append(np.log(probs / k))
    expect = np.concatenate(expect)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)  # normalised log-probabilities
    rs = teacher_logits(teacher, source, "rs")
    assert not np.allclose(jax.nn.log_softmax(rs), got, atol=1e-3)
    one = teacher_logits(teacher, source, "ic_ens", ens_crops=1, min_area=min_area)
    assert not np.allclose(one, got, atol=1e-3)
    key0 = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)
    x0 = views.render(source.images[:500], views.inception_crop(key0, source.images[:500].shape, min_area),
                      teacher.resolution)
    np.testing.assert_allclose(one[:500], np.asarray(jax.nn.log_softmax(run(teacher.model, teacher.params, x0))), rtol=1e-4, atol=1e-5)


def test_ic_ens_targets_stay_finite_for_a_very_confident_teacher(teacher, fmnist):
    """A teacher so confident that float32 softmax underflows to 0 still gives finite targets, and a finite kl."""
    from ablate.teachers import ensemble_logits

    params = jax.tree_util.tree_map(lambda x: x, teacher.params)
    params["head"] = {**params["head"], "kernel": params["head"]["kernel"] * 1e4, "bias": params["head"]["bias"]}
    loud = dataclasses.replace(teacher, params=params, fingerprint="loud")
    source = fmnist.train.take(np.arange(50))
    probs = jax.nn.softmax(run(loud.model, loud.params, views.render(source.images, views.resize(None, 50),
                                                                      loud.resolution)))
    assert (np.asarray(probs) == 0).any()  # the premise: some probabilities underflow
    got = ensemble_logits(loud, source, 2, 0.25)
    assert np.isfinite(got).all()
    student = jnp.zeros((50, got.shape[1]))
    assert np.isfinite(np.asarray(kl(student, jnp.asarray(got), None))).all()


def test_fixed_targets_equal_the_frozen_teacher_on_the_students_rs_input(teacher, fmnist_small):
    """fix/rs: targets[index] gathered for any batch, in any epoch, equal the teacher run on that batch's input."""
    cfg = distill_cfg(policy="fix/rs", subset_per_class=10, batch_size=25, epochs=2)
    source = student_source(cfg, fmnist_small)
    targets, eval_teacher = run_inputs(cfg, fmnist_small, teacher, log=pytest.fail)
    assert targets.shape == (len(source), 10)
    assert eval_teacher["test"].shape == (1000, 10) and eval_teacher["val"].shape == (1000, 10)
    ds = batches(source, cfg, num_steps(cfg, len(source)))
    policy = POLICIES.get("fix/rs")
    for k in (0, 5, 7):  # steps in the first and the second epoch
        b = ds[k]
        labels = jax.nn.one_hot(b["label"], 10)
        xs, xt, _, _ = make_inputs(policy, cfg, b["image"], labels, jax.random.key(k), 28, 28)
        assert xt is None
        np.testing.assert_allclose(targets[np.asarray(b["index"])], np.asarray(run(teacher.model, teacher.params, xs)),
                                   rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the step

@pytest.mark.parametrize("policy", ["funmatch", "fix/rs"])
def test_train_step_loss_is_kl_to_the_right_teacher_output(teacher, fmnist_small, policy):
    """The jitted step's loss is mean kl(student(xs), teacher(xt)) (funmatch) or to targets[index] (fix/rs)."""
    cfg = distill_cfg(policy=policy, subset_per_class=10, batch_size=20, temperature=2.0)
    source = student_source(cfg, fmnist_small)
    targets, _ = run_inputs(cfg, fmnist_small, teacher)
    student = build_model(cfg.model, 10)
    params = student.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"]
    # a non-zero head so that the student's logits depend on its input
    params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
    opt = optim.paper_optimizer(cfg.lr, cfg.wd, 10, 1)
    step = jax.jit(make_train_step(cfg, student, teacher.model, opt, 10, 28, 28))
    b = batches(source, cfg, 10)[3]
    b = {k: jnp.asarray(b[k]) for k in ("image", "label", "index")}
    key = jax.random.key(42)
    state, loss = step(TrainState(params, opt.init(params), jnp.int32(0)), teacher.params,
                       None if targets is None else jnp.asarray(targets), b, key)
    xs, xt, _, coef = make_inputs(POLICIES.get(policy), cfg, b["image"], jax.nn.one_hot(b["label"], 10), key, 28, 28)
    zs = run(student, params, xs)
    zt = run(teacher.model, teacher.params, xt) if policy == "funmatch" else targets[np.asarray(b["index"])]
    expect = float(jnp.mean(kl(zs, zt, None, temperature=2.0)))
    assert float(loss) == pytest.approx(expect, rel=1e-4)
    assert expect > 1e-4
    assert int(state.step) == 1
    if policy == "funmatch":
        assert float(coef) < 1.0


def _at_progress(opt_state, count: int):
    """The optimiser state with its schedule moved to step `count` (what a loss's warm-up reads)."""
    return jax.tree.map(lambda x: x._replace(count=jnp.int32(count)) if isinstance(x, optim.ScheduleState) else x,
                        opt_state, is_leaf=lambda x: isinstance(x, optim.ScheduleState))


@pytest.mark.parametrize("loss", ["0.5*kl + at", "dkd(temperature=4, warmup=0.5)", "dist(temperature=2)"])
def test_the_step_gives_each_loss_what_it_reads(teacher, fmnist_small, loss):
    """The step's loss equals the spec computed outside the trainer from the same views: with both models' stage
    outputs for attention transfer, the run's progress through its schedule (3 of 10 steps) for DKD's warm-up, and
    the whole batch for DIST."""
    from ablate.losses import LossSpec
    from ablate.models import apply_with_features

    cfg = distill_cfg(policy="funmatch", subset_per_class=10, batch_size=20, loss=loss)
    source = student_source(cfg, fmnist_small)
    student = build_model(cfg.model, 10)
    params = student.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"]
    params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
    opt = optim.paper_optimizer(cfg.lr, cfg.wd, 10, 1)
    step = jax.jit(make_train_step(cfg, student, teacher.model, opt, 10, 28, 28))
    b = batches(source, cfg, 10)[3]
    b = {k: jnp.asarray(b[k]) for k in ("image", "label", "index")}
    key = jax.random.key(42)
    state = TrainState(params, _at_progress(opt.init(params), 3), jnp.int32(3))
    _, got = step(state, teacher.params, None, b, key)
    xs, xt, labels, _ = make_inputs(POLICIES.get("funmatch"), cfg, b["image"], jax.nn.one_hot(b["label"], 10), key,
                                    28, 28)
    zs, fs = apply_with_features(student, params, xs)
    zt, ft = apply_with_features(teacher.model, teacher.params, xt)
    assert len(fs) == len(ft) == 3
    expect = float(jnp.mean(LossSpec.parse(loss)(zs, zt, labels, temperature=1.0, progress=0.3,
                                                 student_features=fs, teacher_features=ft)))
    assert float(got) == pytest.approx(expect, rel=1e-4)
    if loss.startswith("dkd"):  # the warm-up is at 0.3 / 0.5 of its weight: the step did not take progress 1
        full = float(jnp.mean(LossSpec.parse(loss)(zs, zt, labels, progress=1.0)))
        assert float(got) == pytest.approx(0.6 * full, rel=1e-4)


def test_a_batch_level_loss_trains_on_whole_batches_in_lanes(teacher, fmnist_small, monkeypatch):
    """DIST couples a batch's rows, so where the trainer would split each batch over lanes it trains on whole
    batches instead: two lanes give the one-lane run exactly, while a per-example loss (kl) is split and so
    differs by rounding (which shows the lanes were in use)."""
    from ablate import xla_flags

    _, eval_teacher = run_inputs(FUNMATCH, fmnist_small, teacher)
    runs = {}
    for loss in ("dist", "kl"):
        for lanes in (1, 2):
            monkeypatch.setattr(xla_flags, "lanes_in_effect", lanes)
            cfg = FUNMATCH.replace(loss=loss, epochs=3, num_evals=1)
            runs[loss, lanes] = train(cfg, fmnist_small, teacher=teacher, eval_teacher=eval_teacher, **QUIET).params
    same = [np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(runs["dist", 1]), jax.tree.leaves(runs["dist", 2]), strict=True)]
    assert all(same)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(runs["kl", 1]), jax.tree.leaves(runs["kl", 2]), strict=True))


# ----------------------------------------------------------------------------- the loop

FUNMATCH = distill_cfg(policy="funmatch", epochs=10, num_evals=4)  # 100 steps, evals at 25, 50, 75, 100


@pytest.fixture(scope="module")
def funmatch_run(teacher, fmnist_small, tmp_path_factory):
    """One complete checkpointed funmatch run (resnet_xs student, 500 images, 100 steps), shared by two tests."""
    _, eval_teacher = run_inputs(FUNMATCH, fmnist_small, teacher)
    ckpt = tmp_path_factory.mktemp("funmatch_full")
    res = train(FUNMATCH, fmnist_small, teacher=teacher, eval_teacher=eval_teacher, ckpt_dir=ckpt, **QUIET)
    return res, eval_teacher


def test_funmatch_raises_teacher_student_agreement(funmatch_run):
    """A short funmatch run lifts test agreement with the teacher from ~0 far above the teacher's majority-class rate.

    100 steps of a 20k-parameter student: agreement is about 0.5 (the teacher's majority class covers ~0.22).
    """
    res, eval_teacher = funmatch_run
    first, last = res.history[0], res.history[-1]
    assert [r["step"] for r in res.history] == [0, 25, 50, 75, 100] and res.summary["total_steps"] == 100
    majority = np.bincount(eval_teacher["test"].argmax(-1), minlength=10).max() / 1000
    assert first["test/agree_top1"] < 0.2
    assert last["test/agree_top1"] > max(0.4, majority + 0.2)
    assert last["test/agree_top5"] >= last["test/agree_top1"]
    assert last["test/kl"] < 0.25 * first["test/kl"]
    assert res.summary["train_examples"] == 500
    assert np.isfinite(last["train/loss"])


def test_supervised_run_needs_no_teacher(fmnist_small):
    """A label-only run trains without any teacher, logs no agreement metrics, and learns well above chance."""
    cfg = distill_cfg(policy="supervised", teacher=None, loss="label_ce", epochs=6)
    res = train(cfg, fmnist_small, **QUIET)
    first, mid, last = res.history
    assert not any("agree" in k or k.endswith("/kl") for k in last)
    assert first["test/acc"] < 0.2
    assert last["test/acc"] > 0.25 and last["test/acc"] > first["test/acc"] + 0.1
    assert last["train/loss"] < mid["train/loss"] < np.log(10)
    assert res.summary["best/val/acc"] >= last["val/acc"]


def test_resume_from_checkpoint_is_bit_identical(funmatch_run, teacher, fmnist_small, tmp_path):
    """A funmatch run interrupted at its 2nd eval and resumed ends with bit-identical params and metrics."""
    full, eval_teacher = funmatch_run
    kw = dict(teacher=teacher, eval_teacher=eval_teacher, ckpt_dir=tmp_path / "split", **QUIET)

    def interrupt(row):
        interrupted.append(row)
        if row["step"] == 50:
            raise KeyboardInterrupt

    interrupted = []
    with pytest.raises(KeyboardInterrupt):
        train(FUNMATCH, fmnist_small, on_eval=interrupt, **kw)
    assert [r["step"] for r in interrupted] == [0, 25, 50]
    resumed_at = []
    rest = train(FUNMATCH, fmnist_small, on_resume=resumed_at.append, **kw)
    assert resumed_at == [25]  # the step-50 eval raised before its checkpoint was saved
    assert [r["step"] for r in rest.history] == [50, 75, 100]

    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(rest.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    by_step = {r["step"]: no_time(r) for r in interrupted + rest.history}
    assert by_step == {r["step"]: no_time(r) for r in full.history}  # exact float equality, row by row
    assert no_time(rest.summary) == no_time(full.summary)


def test_host_batches_are_the_in_program_batch_indices(fmnist):
    """The host pipeline's batches and the multi-step program's `batch_indices` are one data order, across epochs."""
    from ablate.stream import batch_indices, order_key

    cfg = distill_cfg(subset_per_class=7, batch_size=32, epochs=4, policy="fix/rs")
    source = student_source(cfg, fmnist)
    ds = batches(source, cfg, num_steps(cfg, len(source)))
    index = jax.jit(batch_indices, static_argnums=(2, 3))
    for k in (0, 1, 2, 3, 7):  # 70 examples, 32 a batch: steps 2 and 7 straddle epochs
        np.testing.assert_array_equal(np.asarray(ds[k]["index"]), np.asarray(index(order_key(cfg.seed), k, 70, 32)))


@pytest.fixture(scope="module")
def one_program_per_step(teacher, fmnist_small):
    """(run) -> train's result with each step one jitted program and no lanes, in one program per block or not."""
    import ablate.lanes

    _, eval_teacher = run_inputs(FUNMATCH, fmnist_small, teacher)
    mp = pytest.MonkeyPatch()
    mp.setattr(ablate.lanes, "count", lambda batch: 1)  # the per-step loop's step as one program, as the block's
    yield lambda cfg, multi, **kw: train(cfg, fmnist_small, teacher=teacher, eval_teacher=eval_teacher,
                                         use_multi_step=multi, **QUIET, **kw)
    mp.undo()


@pytest.mark.parametrize("policy", ["funmatch", "fix/rs"])
def test_the_multi_step_loop_trains_as_the_per_step_loop(one_program_per_step, teacher, fmnist_small, policy):
    """Blocks of steps run in one program (batches, views, mixup and keys computed inside from the step number) train
    as the per-step loop does, bit for bit: the same steps, dispatched together, the same parameters and metrics
    (the mean training loss to float32 rounding: a block sums its steps' losses inside the program). Before the
    models' convolutions wrote out their gradients (`ablate.models.resnet.conv2d`), XLA compiled a step inside a
    loop with other rounding: 1e-6 apart at the 3rd step."""
    cfg = FUNMATCH.replace(policy=policy, epochs=4, num_evals=3)
    kw = {}
    if policy == "fix/rs":
        kw["targets"], _ = run_inputs(cfg, fmnist_small, teacher)
    student = build_model(cfg.model, 10)
    init = jax.jit(student.init)(jax.random.key(cfg.seed), jnp.zeros((1, 28, 28, 1)))["params"]
    per_step = one_program_per_step(cfg, False, init_params=init, **kw)
    blocks = one_program_per_step(cfg, True, init_params=init, **kw)
    for a, b, i in zip(jax.tree.leaves(per_step.params), jax.tree.leaves(blocks.params), jax.tree.leaves(init),
                       strict=True):
        assert np.abs(np.asarray(a) - np.asarray(i)).max() > 0
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert [r["step"] for r in blocks.history] == [r["step"] for r in per_step.history] == [0, 13, 27, 40]
    losses = ("best/train/loss", "last/train/loss")  # a block sums its steps' losses in the program, in float32
    assert no_time(blocks.summary, *losses) == no_time(per_step.summary, *losses)
    for key in losses:
        assert blocks.summary[key] == pytest.approx(per_step.summary[key], rel=1e-6)


def test_a_block_resumed_in_its_middle_is_exact(teacher, fmnist_small):
    """The multi-step program from step 0 for 30 steps equals 13 steps, then the 17 from step 13: any block can
    start anywhere (a resume, or a block cut at a checkpoint), as a step's inputs depend on its number alone."""
    from ablate.step import Resident, make_cohort_step, make_multi_step
    from ablate.stream import order_key

    cfg = FUNMATCH.replace(epochs=3)
    source = student_source(cfg, fmnist_small)
    student = build_model(cfg.model, 10)
    opt = optim.paper_optimizer(cfg.lr, cfg.wd, 30, 3, cfg.clip)
    params = jax.jit(student.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    fresh = lambda: (TrainState(jax.tree.map(jnp.array, params), opt.init(params), jnp.int32(0)),)  # noqa: E731
    resident = Resident(jnp.asarray(source.images), jnp.asarray(source.labels), order_key(cfg.seed),
                        jax.random.key(cfg.seed))
    multi = jax.jit(make_multi_step(make_cohort_step([cfg], [student], teacher.model, [opt], 10, 28, 28),
                                    cfg.batch_size))
    whole, sums, bad = multi(fresh(), teacher.params, None, resident, 0, 30)
    head, sums_a, _ = multi(fresh(), teacher.params, None, resident, 0, 13)
    split, sums_b, _ = multi(head, teacher.params, None, resident, 13, 17)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(bad[0]) == -1 and int(whole[0].step) == 30
    np.testing.assert_allclose(np.asarray(sums), np.asarray(sums_a + sums_b), rtol=1e-6)


def test_runs_of_any_length_share_one_step_program(teacher, fmnist_small):
    """The schedule's length is optimiser state, not a constant of the program: the multi-step program of a
    10-epoch and of a 3,000-epoch run is the same program (one compilation, shared through XLA's cache)."""
    from ablate.step import Resident, make_cohort_step, make_multi_step
    from ablate.stream import order_key

    texts = []
    for epochs in (10, 3000):
        cfg = FUNMATCH.replace(epochs=epochs)
        source = student_source(cfg, fmnist_small)
        total = num_steps(cfg, len(source))
        student = build_model(cfg.model, 10)
        opt = optim.paper_optimizer(cfg.lr, cfg.wd, total, round(cfg.warmup_frac * total), cfg.clip)
        params = jax.eval_shape(student.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
        states = (TrainState(params, jax.eval_shape(opt.init, params), jax.ShapeDtypeStruct((), jnp.int32)),)
        resident = Resident(jnp.asarray(source.images), jnp.asarray(source.labels), order_key(cfg.seed),
                            jax.random.key(cfg.seed))
        multi = make_multi_step(make_cohort_step([cfg], [student], teacher.model, [opt], 10, 28, 28), cfg.batch_size)
        texts.append(jax.jit(multi).lower(states, teacher.params, None, resident, 0, 5).as_text())
    assert texts[0] == texts[1]


def _lowered_step(cfg, teacher, data):
    """The text of `cfg`'s one-program step, lowered for its shapes (nothing is computed)."""
    from ablate.step import make_cohort_step

    total = num_steps(cfg, len(student_source(cfg, data)))
    student = build_model(cfg.model, 10)
    opt = optim.paper_optimizer(cfg.lr, cfg.wd, total, round(cfg.warmup_frac * total), cfg.clip)
    params = jax.eval_shape(student.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    states = (TrainState(params, jax.eval_shape(opt.init, params), jax.ShapeDtypeStruct((), jnp.int32)),)
    b = cfg.batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, 28, 28, 1), jnp.uint8), "label": jax.ShapeDtypeStruct((b,), jnp.int32),
             "index": jax.ShapeDtypeStruct((b,), jnp.int32)}
    step = make_cohort_step([cfg], [student], teacher.model, [opt], 10, 28, 28)
    return jax.jit(step).lower(states, teacher.params, None, batch, jax.random.key(0)).as_text()


def test_fields_outside_the_step_leave_its_program_unchanged(teacher, fmnist_small):
    """Every field of `NOT_IN_STEP` leaves the step's program as it is (so runs may share it), and a field outside
    that list, the learning rate, does change it (the comparison can fail)."""
    from ablate.step import NOT_IN_STEP

    changed = dict(epochs=300, seed=4, num_evals=7, eval_spacing="log", subset_seed=9, init="0123456789ab",
                   init_seed=5)
    assert set(changed) == set(NOT_IN_STEP)
    reference = _lowered_step(FUNMATCH, teacher, fmnist_small)
    for field, value in changed.items():
        assert _lowered_step(FUNMATCH.replace(**{field: value}), teacher, fmnist_small) == reference, field
    assert _lowered_step(FUNMATCH.replace(lr=0.5), teacher, fmnist_small) != reference


@pytest.mark.parametrize("blocks", [False, True], ids=["per_step", "blocks"])
def test_a_later_run_reuses_the_step_program_and_trains_exactly_as_alone(teacher, fmnist_small, blocks):
    """Runs that differ only in `NOT_IN_STEP` get one compiled step (or blocks-of-steps program) in a process;
    the later run's result equals what it gives with the program built afresh (bit for bit), so nothing of the
    first run (its schedule's length, its seed) is carried over."""
    from ablate import step as step_lib

    _, eval_teacher = run_inputs(FUNMATCH, fmnist_small, teacher)
    first, later = FUNMATCH.replace(epochs=4, num_evals=1), FUNMATCH.replace(epochs=6, seed=1, num_evals=1)
    kw = dict(teacher=teacher, eval_teacher=eval_teacher, use_multi_step=blocks, **QUIET)
    step_lib._PROGRAMS.clear()
    train(first, fmnist_small, **kw)
    programs = dict(step_lib._PROGRAMS)
    reused = train(later, fmnist_small, **kw)
    assert dict(step_lib._PROGRAMS) == programs  # no new program
    step_lib._PROGRAMS.clear()
    alone = train(later, fmnist_small, **kw)
    assert len(step_lib._PROGRAMS) == 1
    for a, b in zip(jax.tree.leaves(reused.params), jax.tree.leaves(alone.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert no_time(reused.summary) == no_time(alone.summary)
    other = train(later.replace(lr=0.02), fmnist_small, **kw)
    assert len(step_lib._PROGRAMS) == 2 and not np.array_equal(np.asarray(jax.tree.leaves(other.params)[0]),
                                                                np.asarray(jax.tree.leaves(alone.params)[0]))
