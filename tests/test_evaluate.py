"""Evaluation: one program per resident split (equal to the chunked path), its evaluation steps, the teacher's cache."""

import dataclasses
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate import evaluate, paths, xla_flags
from ablate.config import NUMERICS, ConfigError, RunConfig, content_hash, validate
from ablate.evaluate import device_split, evaluation_steps, predict, predict_chunked
from ablate.models import build_model
from ablate.teachers import Teacher, params_fingerprint, run_inputs, save_targets, source_id, targets_key

COMPILE_EVENTS = "/jax/core/compile/"  # tracing, lowering and XLA compilation (also where a persistent cache hits)


@pytest.fixture
def lanes_at(monkeypatch):
    """Set this process's lanes (as xla_flags.apply would have) for one test."""
    return lambda n: monkeypatch.setattr(xla_flags, "lanes_in_effect", n)


@pytest.fixture(scope="module")
def net():
    """A resnet_xs with random weights (its zero-initialised head too, so the logits differ between classes)."""
    model = build_model("resnet_xs", 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
    return model, params


@pytest.fixture
def compiles():
    """A list that gets an entry for each stage of every jit compilation while the test runs."""
    seen = []

    def listener(event, duration, **kw):
        if event.startswith(COMPILE_EVENTS):
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


# ----------------------------------------------------------------------------- the student on a split

@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("n", [1000, 1234])
def test_one_program_per_split_equals_the_chunked_predict(fmnist, net, lanes_at, lanes, n):
    """A whole 1000-image split, and one that is no whole number of chunks (padded), in lanes and without: the
    resident one-program evaluation gives the chunked path's logits."""
    model, params = net
    lanes_at(lanes)
    source = fmnist.test.take(np.arange(n))
    old = predict_chunked(model, params, source, "rs", 28)
    new = predict(model, params, source, "rs", 28)
    assert (id(source), lanes) in evaluate._DEVICE_SPLITS and len(device_split(source)) == lanes  # the new path ran
    assert new.shape == old.shape == (n, 10) and np.ptp(new, axis=1).min() > 0
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6)


def test_a_split_compiles_once_and_stays_on_the_device(fmnist, net, compiles):
    """Evaluating a split again compiles nothing and reuses its device array; another split shape is one more
    program; a dropped split's device copy goes with it."""
    model, params = net
    source = fmnist.val.take(np.arange(700))
    first = predict(model, params, source, "rs", 28)
    fn = evaluate._split_fn(model, "rs", 28)
    programs, arrays = fn._cache_size(), device_split(source)
    compiles.clear()
    np.testing.assert_array_equal(predict(model, params, source, "rs", 28), first)
    assert compiles == [] and fn._cache_size() == programs
    assert all(a is b for a, b in zip(device_split(source), arrays, strict=True))

    predict(model, params, fmnist.val.take(np.arange(300)), "rs", 28)
    assert fn._cache_size() == programs + 1 and compiles  # a new shape: traced and compiled (so the listener hears)
    keys = [k for k in evaluate._DEVICE_SPLITS if k[0] == id(source)]
    assert keys
    del source, arrays
    gc.collect()
    assert not any(k in evaluate._DEVICE_SPLITS for k in keys)


# ----------------------------------------------------------------------------- when to evaluate

@pytest.mark.parametrize("total,num_evals", [(1, 1), (8, 3), (781, 10), (3906, 10), (100, 7)])
def test_linear_steps_are_the_even_points_plus_step_0(total, num_evals):
    assert evaluation_steps(total, num_evals, "linear") == sorted(
        {0, *(round(total * (i + 1) / num_evals) for i in range(num_evals))})


def test_log_steps_are_geometric_from_a_small_first_step_to_the_last():
    steps = evaluation_steps(10**6, 6, "log")
    assert steps == [0, 10, 100, 1000, 10**4, 10**5, 10**6]
    steps = evaluation_steps(3906, 10, "log")  # patience's longest quick schedule
    assert steps[0] == 0 and steps[-1] == 3906 and len(steps) == 11 and steps == sorted(set(steps))
    ratios = np.array(steps[2:]) / np.array(steps[1:-1])
    np.testing.assert_allclose(ratios, 3906 ** 0.1, rtol=0.25)  # rounding to whole steps moves the first ones


@pytest.mark.parametrize("total", [1, 2, 5, 8, 30])
@pytest.mark.parametrize("num_evals", [1, 3, 10, 50])
def test_short_schedules_get_fewer_unique_steps(total, num_evals):
    for spacing in ("linear", "log"):
        steps = evaluation_steps(total, num_evals, spacing)
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == total
        assert set(steps) <= set(range(total + 1)) and len(steps) <= num_evals + 1
    assert evaluation_steps(total, 1, "log") == [0, total]


def test_eval_spacing_is_validated_and_keeps_earlier_run_ids():
    with pytest.raises(ConfigError, match="unknown eval_spacing 'cubic'; valid values: linear, log"):
        validate(RunConfig(eval_spacing="cubic"))
    with pytest.raises(ValueError, match="linear, log"):
        evaluation_steps(10, 2, "cubic")
    validate(RunConfig(eval_spacing="log"))
    cfg = RunConfig()
    assert cfg.run_id == RunConfig(eval_spacing="linear").run_id != RunConfig(eval_spacing="log").run_id
    unset = {k: v for k, v in cfg.to_dict().items() if k not in ("eval_spacing", "init_seed", "teacher_mix")}
    assert cfg.run_id == content_hash({**unset, "numerics": NUMERICS})[:12]  # the id it had before the field


def test_a_run_evaluates_at_its_log_steps(fmnist_small):
    """8 steps, 3 evaluations: log spacing evaluates at 2, 4, 8 (linear would at 3, 5, 8), and at step 0."""
    from ablate.train import train

    cfg = RunConfig(policy="supervised", loss="label_ce", teacher=None, model="resnet_xs", subset_per_class=10,
                    batch_size=50, epochs=4, num_evals=3, eval_spacing="log")
    result = train(cfg, fmnist_small, progress=False)
    assert [row["step"] for row in result.history] == [0, 2, 4, 8]


def test_runs_that_start_alike_evaluate_step_0_once(fmnist_small, monkeypatch):
    """Two runs from the same initialisation (one seed, one model, here another learning rate) share their step-0
    evaluation: the second computes no logits there and logs the first's numbers; another seed starts from other
    parameters and is evaluated (its numbers may still be equal: the zero-initialised head predicts class 0
    everywhere)."""
    from ablate.train import train

    computed = []
    original = evaluate.predict
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: computed.append(1) or original(*a, **k))
    evaluate._AT_START.clear()
    cfg = RunConfig(policy="supervised", loss="label_ce", teacher=None, model="resnet_xs", subset_per_class=10,
                    batch_size=50, epochs=2, num_evals=1)
    first = train(cfg, fmnist_small, progress=False).history[0]
    assert len(computed) == 2  # val and test at step 0 (later evaluations call train's own predict)
    again = train(cfg.replace(lr=0.05), fmnist_small, progress=False).history[0]
    assert len(computed) == 2 and again == {**first, "time/train_s": again["time/train_s"]}
    train(cfg.replace(seed=1), fmnist_small, progress=False)
    assert len(computed) == 4


# ----------------------------------------------------------------------------- the teacher on the splits

def _random_teacher(net, **changes) -> Teacher:
    model, params = net
    params = changes.pop("params", params)
    return Teacher(model=changes.pop("model", model), params=params, resolution=28, name="random",
                   fingerprint=params_fingerprint(params))


def test_teacher_eval_logits_are_cached_per_teacher_split_and_view(fmnist, net):
    """run_inputs reads the teacher's val/test logits from a content-keyed cache: read back while teacher, split and
    view are unchanged; new keys and new values when the parameters, the definition, the split or the view change."""
    data = dataclasses.replace(fmnist, val=fmnist.val.take(np.arange(200)), test=fmnist.test.take(np.arange(300)))
    cfg = RunConfig(policy="funmatch")
    teacher = _random_teacher(net)

    def key(t, split, d=data):
        return targets_key(t, source_id(getattr(d, split)), d.eval_view)

    _, base = run_inputs(cfg, data, teacher, log=pytest.fail)
    for split in ("val", "test"):
        expect = predict(teacher.model, teacher.params, getattr(data, split), "rs", 28)
        np.testing.assert_array_equal(base[split], expect)
        assert (paths.targets_dir() / f"{key(teacher, split)}.npy").exists()
    assert key(teacher, "val") != key(teacher, "test")

    # unchanged: read back, not recomputed (a planted array comes back)
    path = paths.targets_dir() / f"{key(teacher, 'val')}.npy"
    save_targets(path, np.full_like(base["val"], 7.0))
    np.testing.assert_array_equal(run_inputs(cfg, data, teacher)[1]["val"], 7.0)
    save_targets(path, base["val"])

    params = jax.tree.map(lambda x: x, net[1])
    params["head"]["bias"] = params["head"]["bias"] + jnp.arange(10, dtype=jnp.float32)
    changed = {"parameters": _random_teacher(net, params=params),
               "definition": _random_teacher(net, model=net[0].clone(groups=1))}
    for what, other in changed.items():
        got = run_inputs(cfg, data, other)[1]
        for split in ("val", "test"):
            assert key(other, split) != key(teacher, split), what
            assert not np.allclose(got[split], base[split]), what
            np.testing.assert_allclose(got[split], predict(other.model, other.params, getattr(data, split), "rs", 28),
                                       rtol=1e-5, atol=1e-6)

    fewer = dataclasses.replace(data, val=fmnist.val.take(np.arange(1, 201)))  # the split: other images
    assert key(teacher, "val", fewer) != key(teacher, "val")
    np.testing.assert_allclose(run_inputs(cfg, fewer, teacher)[1]["val"][:-1], base["val"][1:], rtol=1e-5, atol=1e-6)

    cropped = dataclasses.replace(data, eval_view="cc")  # the view
    got = run_inputs(cfg, cropped, teacher)[1]
    for split in ("val", "test"):
        assert key(teacher, split, cropped) != key(teacher, split)
        assert not np.allclose(got[split], base[split])
        expect = predict(teacher.model, teacher.params, getattr(data, split), "cc", 28)
        np.testing.assert_array_equal(got[split], expect)
