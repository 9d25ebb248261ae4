"""ablate's XLA defaults: which flags, who wins, that they take effect, and that results stay equal."""

import json
import os
import subprocess
import sys
import warnings

import pytest

from ablate import xla_flags

YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_defaults_are_appended_and_a_users_flag_wins():
    assert xla_flags.with_defaults("") == f"{YNN}="
    assert xla_flags.with_defaults("--xla_force_host_platform_device_count=4") == \
        f"--xla_force_host_platform_device_count=4 {YNN}="
    assert xla_flags.with_defaults(f"{YNN}=dot") == f"{YNN}=dot"  # the user's own value is kept
    assert xla_flags.with_defaults(xla_flags.with_defaults("")) == f"{YNN}="  # idempotent


def test_apply_sets_the_environment_unless_opted_out(monkeypatch):
    for name in ("in_effect", "given", "cores_in_effect"):  # restored afterwards
        monkeypatch.setattr(xla_flags, name, getattr(xla_flags, name))
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", "ABLATE_LANES": "1"}
    with warnings.catch_warnings():  # (this process's jax may have started already: see the last test)
        warnings.simplefilter("ignore")
        xla_flags.apply(env)
    assert env["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {YNN}="
    env = {"ABLATE_XLA_DEFAULTS": "0"}
    assert xla_flags.apply(env) == "" and "XLA_FLAGS" not in env


def test_a_one_core_process_keeps_jaxs_ynnpack_path_single_threaded(monkeypatch):
    for name in ("in_effect", "given", "cores_in_effect"):
        monkeypatch.setattr(xla_flags, name, getattr(xla_flags, name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cores, expected in ((1, "--xla_cpu_multi_thread_eigen=false"), (2, "--xla_cpu_multi_thread_eigen=false"),
                                (16, f"{YNN}=")):  # 2 cores: in lanes (tests/test_lanes.py)
            env = {"XLA_FLAGS": "--a=1"}
            xla_flags.apply(env, cores=cores)
            assert env["XLA_FLAGS"] == f"--a=1 {expected}"
            assert xla_flags.given == "--a=1"  # what a child process starts from (xla_flags.as_given)
        env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}  # the user's own choice wins
        assert xla_flags.apply(env, cores=1) == "--xla_cpu_multi_thread_eigen=true"
        env = {"ABLATE_XLA_CORES": "1"}  # one core's defaults without a one-core affinity mask
        xla_flags.apply(env)
        assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false" and xla_flags.cores_in_effect == 1
    with pytest.warns(UserWarning, match="ABLATE_XLA_CORES='two' is not a whole number >= 1; ignored"):
        assert xla_flags.cores_for({"ABLATE_XLA_CORES": "two"}) == len(xla_flags.usable_cpus())


# In a fresh interpreter: the step's HLO after compilation, and its results, for one 3x3 convolution
# with enough channels that jax's default sends it to YNNPACK, and for a teacher-sized model's loss.
PROBE = r"""
import json, sys
import ablate, jax, jax.numpy as jnp
from ablate.models import build_model
x = jax.random.normal(jax.random.key(0), (8, 14, 14, 32))
w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
def conv_loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jnp.square(y))
f = jax.jit(jax.value_and_grad(conv_loss, (0, 1)))
hlo = f.lower(x, w).compile().as_text()
(v, (gx, gw)) = f(x, w)
model = build_model("resnet_t", 10)
imgs = jax.random.uniform(jax.random.key(2), (16, 28, 28, 1))
params = model.init(jax.random.key(3), imgs)["params"]
params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(4), params["head"]["kernel"].shape)  # not zero:
# with the zero-initialised head every gradient below it would be zero
def model_loss(p):
    return jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, imgs))[:, 0])
lv, g = jax.jit(jax.value_and_grad(model_loss))(params)
flat = jnp.concatenate([jnp.ravel(t) for t in jax.tree.leaves(g)])
assert float(jnp.abs(g["root_block/conv_root"]["kernel"]).max()) > 0
json.dump({"ynn": "__ynn_fusion" in hlo, "conv": [float(v), gx.ravel()[:64].tolist(), gw.ravel()[:64].tolist()],
           "loss": float(lv), "grad": flat[::97].tolist(), "in_effect": ablate.xla_flags.in_effect}, sys.stdout)
"""


def _fresh_env(**env):
    """This process's environment without its XLA settings (importing ablate here already set XLA_FLAGS)."""
    return {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ABLATE_XLA_DEFAULTS", "ABLATE_LANES")},
            **env}


def _probe(pin: bool = False, **env):
    """PROBE in a fresh interpreter (pinned to one core before it imports anything, with `pin`)."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n" if pin else "") + PROBE
    out = subprocess.run([sys.executable, "-c", code], env=_fresh_env(**env, ABLATE_NO_COMPILATION_CACHE="1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def probes():
    return _probe(ABLATE_LANES="1"), _probe(ABLATE_XLA_DEFAULTS="0")  # ablate's defaults without lanes; jax's


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity masks")
def test_a_process_pinned_to_one_core_runs_ynnpack_single_threaded_with_equal_results(probes):
    import numpy as np

    one_core, (ours, _) = _probe(pin=True), probes
    assert one_core["ynn"] and one_core["in_effect"] == "--xla_cpu_multi_thread_eigen=false"
    for a, b in zip(one_core["conv"], ours["conv"]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(one_core["loss"], ours["loss"], rtol=1e-5)
    np.testing.assert_allclose(one_core["grad"], ours["grad"], rtol=1e-3, atol=1e-6)


def test_defaults_take_effect_in_a_fresh_process(probes):
    ours, jax_default = probes
    assert not ours["ynn"] and ours["in_effect"] == f"{YNN}="
    assert jax_default["ynn"] and jax_default["in_effect"] == ""  # the default this module turns off


def test_results_agree_with_jax_default_within_float32_rounding(probes):
    import numpy as np

    ours, jax_default = probes
    for a, b in zip(ours["conv"], jax_default["conv"]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ours["loss"], jax_default["loss"], rtol=1e-5)
    np.testing.assert_allclose(ours["grad"], jax_default["grad"], rtol=1e-3, atol=1e-6)


def test_warns_when_jax_started_before_ablate():
    code = "import jax; jax.numpy.zeros(1).block_until_ready(); import ablate; print(ablate.xla_flags.in_effect)"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=_fresh_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "are not in effect in this process" in out.stderr and "import ablate before" in out.stderr
    assert out.stdout.strip() == ""  # the flags jax started with, not ours
