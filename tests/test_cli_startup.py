"""Commands that compute nothing start quickly: `ablate -h`, `ablate CMD -h` and `ablate list` import no jax (nor
flax, optax, TFDS, W&B, pandas or matplotlib), and importing ablate still sets up jax's compilation cache."""

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("jax", "flax", "optax", "orbax", "grain", "tensorflow_datasets", "wandb", "pandas", "matplotlib")

PROBE = """
import json, sys
import ablate.cli
try:
    code = ablate.cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _fresh(code: str, *args: str, **env) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (this one has imported jax already), with the compilation cache unless `env`
    turns it off."""
    env = {**{k: v for k, v in os.environ.items() if k != "ABLATE_NO_COMPILATION_CACHE"}, **env}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv", [["-h"], ["run", "-h"], ["distill", "-h"], ["list"]])
def test_commands_that_compute_nothing_import_no_jax(argv):
    """They exit 0 without importing jax or any other heavy library (a second or more each)."""
    out = _fresh(PROBE, *argv)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}, argv
    if argv == ["list"]:  # it still lists the studies, the paper's included (their split sizes need no TFDS)
        assert "studies:" in out.stdout and "paper/pets" in out.stdout and "consistency" in out.stdout


CACHE_PROBE = """
import json, os, sys
import ablate
assert "jax" not in sys.modules
import jax
print(json.dumps([jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs]))
"""


def test_importing_ablate_sets_up_jax_compilation_cache_without_importing_jax(tmp_path):
    """jax, imported after ablate, caches compiled programs in $ABLATE_CACHE/xla; a value passed down by a parent
    process gives way to the child's own $ABLATE_CACHE, and ABLATE_NO_COMPILATION_CACHE=1 turns the cache off."""
    inherited = dict(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "parent" / "xla"))
    on = _fresh(CACHE_PROBE, ABLATE_CACHE=str(tmp_path / "child"), **inherited)
    assert on.returncode == 0, on.stderr[-2000:]
    assert json.loads(on.stdout) == [str(tmp_path / "child" / "xla"), 0.5]
    off = _fresh(CACHE_PROBE, ABLATE_NO_COMPILATION_CACHE="1", **inherited)
    assert off.returncode == 0, off.stderr[-2000:]
    assert json.loads(off.stdout)[0] is None
