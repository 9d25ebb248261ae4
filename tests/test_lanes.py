"""Lanes: a step's rows split over threads give the one-program step's results, and only where they can run."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate import lanes, optim, xla_flags
from ablate.config import RunConfig
from ablate.models import build_model
from ablate.evaluate import predict
from ablate.step import TrainState, compile_cohort_step

YNN = "--xla_cpu_experimental_ynn_fusion_type"
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"


@pytest.fixture
def lanes_at(monkeypatch):
    """Set this process's lanes (as xla_flags.apply would have) for one test."""
    def set_lanes(n: int):
        monkeypatch.setattr(xla_flags, "lanes_in_effect", n)
    return set_lanes


def _steps(policy, lane_count, fmnist, n_steps=3, models=("resnet_xs", "resnet_s")):
    """A cohort of two students (different models and lrs) after `n_steps` steps on real batches."""
    base = RunConfig(policy=policy, batch_size=32, teacher="fmnist_xs", model=models[0])
    cfgs = [base, base.replace(model=models[1], lr=3e-2, temperature=2.0)]
    students = [build_model(c.model, 10) for c in cfgs]
    teacher = build_model("resnet_xs", 10)
    x = jnp.zeros((1, 28, 28, 1))
    t_params = teacher.init(jax.random.key(7), x)["params"]
    t_params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(8), t_params["head"]["kernel"].shape)
    opts = [optim.paper_optimizer(c.lr, c.wd, 100, 10, c.clip) for c in cfgs]
    states = tuple(TrainState(p, o.init(p), jnp.int32(0)) for p, o in
                   zip([s.init(jax.random.key(k), x)["params"] for k, s in enumerate(students)], opts))
    targets = jnp.asarray(np.random.default_rng(0).normal(size=(len(fmnist.train), 10)).astype(np.float32))
    step = compile_cohort_step(cfgs, students, teacher, opts, 10, 28, 28, lane_count)
    losses = []
    for i in range(n_steps):
        idx = np.arange(i * 32, (i + 1) * 32)
        batch = {"image": fmnist.train.images[idx], "label": fmnist.train.labels[idx].astype(np.int32),
                 "index": idx.astype(np.int32)}
        states, loss = step(states, t_params, targets, batch, jax.random.key(i))
        losses.append(np.asarray(loss))
    return states, np.stack(losses)


@pytest.mark.parametrize("policy", ["funmatch", "fix/rs", "supervised"])
def test_a_step_in_lanes_equals_the_one_program_step(policy, fmnist):
    """Teacher forward and mixup (funmatch), looked-up targets (fix/rs), labels only (supervised): two or four
    lanes end where one program ends, within float32 rounding (the gradient is summed in another order)."""
    one, loss_one = _steps(policy, 1, fmnist)
    for lane_count in (2, 4):
        split, loss_split = _steps(policy, lane_count, fmnist)
        np.testing.assert_allclose(loss_split, loss_one, rtol=2e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)  # Adam amplifies rounding where a gradient is ~0
        assert [int(s.step) for s in split] == [3, 3]


def test_lane_count_divides_the_rows_and_needs_single_threaded_xla(lanes_at):
    lanes_at(2)
    assert [lanes.count(n) for n in (128, 50, 7, 1)] == [2, 2, 1, 1]
    lanes_at(4)
    assert [lanes.count(n) for n in (128, 50, 6, 3)] == [4, 2, 3, 3]
    lanes_at(1)
    assert lanes.count(128) == 1


def test_map_rows_pads_to_the_lanes_and_keeps_the_order(lanes_at):
    lanes_at(2)
    seen = []

    @jax.jit
    def double(scale, x):
        return scale * x

    def recorded(scale, x):
        seen.append((threading.current_thread().name, len(x)))
        return double(scale, x)

    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    out = lanes.map_rows(recorded, x, const=(2.0,))
    np.testing.assert_array_equal(out, 2 * x)
    assert sorted(n for _, n in seen) == [4, 4]  # 7 rows padded to 8, 4 per lane
    assert len({name for name, _ in seen}) == 2  # on two threads


def test_an_error_in_any_lane_is_raised(lanes_at):
    def fail_on_lane_one(k):
        if k == 1:
            raise ValueError("lane one failed")
        return jnp.float32(k)

    with pytest.raises(ValueError, match="lane one failed"):
        lanes.run(fail_on_lane_one, [(0,), (1,)])


def test_predict_in_lanes_equals_one_lane(fmnist, lanes_at, teacher):
    source = fmnist.test.take(np.arange(301))  # odd: padded to the lanes
    lanes_at(1)
    one = predict(teacher.model, teacher.params, source, "rs", teacher.resolution)
    lanes_at(2)
    two = predict(teacher.model, teacher.params, source, "rs", teacher.resolution)
    assert one.shape == two.shape == (301, 10)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)


def test_lanes_default_to_one_per_core_on_a_few_cores(monkeypatch):
    for name in ("in_effect", "given", "cores_in_effect", "lanes_in_effect"):  # restored afterwards
        monkeypatch.setattr(xla_flags, name, getattr(xla_flags, name))
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)  # as in a process that imports ablate first
    assert [xla_flags.lanes_for(c, {}) for c in (1, 2, 3, 4, 5, 16)] == [1, 2, 3, 4, 1, 1]
    assert xla_flags.lanes_for(16, {"ABLATE_LANES": "8"}) == 8
    with pytest.warns(UserWarning, match="ABLATE_LANES='many' is not a whole number >= 1; ignored"):
        assert xla_flags.lanes_for(2, {"ABLATE_LANES": "many"}) == 2
    cases = [({}, 2, ONE_THREAD, 2),  # each lane like a one-core worker: jax's YNNPACK path, single-threaded
             ({"ABLATE_LANES": "1"}, 2, f"{YNN}=", 1),  # no lanes: XLA's own threads, as before
             ({}, 16, f"{YNN}=", 1),
             ({}, 1, ONE_THREAD, 1),  # a one-core worker
             ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}, 2, f"--xla_cpu_multi_thread_eigen=true {YNN}=",
              1)]  # the user's threads win, and lanes would not pay
    for env, cores, flags, lane_count in cases:
        xla_flags.apply(env, cores=cores)
        assert env["XLA_FLAGS"] == flags, env
        assert xla_flags.lanes_in_effect == lane_count, env
    env = {"ABLATE_XLA_DEFAULTS": "0"}
    xla_flags.apply(env, cores=2)
    assert "XLA_FLAGS" not in env and xla_flags.lanes_in_effect == 1
