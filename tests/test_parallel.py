"""Data parallelism: the same run on 4 simulated CPU devices gives the metrics of the 1-device run."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, dataclasses, numpy as np, jax
from ablate.config import RunConfig
from ablate.data import load_dataset
from ablate.teachers import get_teacher, run_inputs
from ablate.train import train
d = load_dataset("fashion_mnist")
d = dataclasses.replace(d, val=d.val.take(np.arange(1000)), test=d.test.take(np.arange(1000)))
cfg = RunConfig(teacher="fmnist_xs", model="resnet_xs", policy="funmatch", subset_per_class=20, batch_size=40,
                epochs=6, lr=1e-2, num_evals=1)
t = get_teacher("fmnist_xs", load_dataset("fashion_mnist"), progress=False, log=lambda *a, **k: None)
targets, ev = run_inputs(cfg, d, t, log=lambda *a, **k: None)
r = train(cfg, d, teacher=t, targets=targets, eval_teacher=ev, progress=False)
print("RESULT", json.dumps({"devices": jax.device_count(), **r.history[-1]}))
"""

TOLERANCE = {"val/acc": 0.01, "test/acc": 0.01, "test/agree_top1": 0.01, "train/loss": 1e-3}


def run_on(devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_four_devices_match_one(teacher):
    """Batch sharded over 4 devices (SPMD): metrics equal the single-device run within the stated tolerance."""
    one, four = run_on(1), run_on(4)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert one["step"] == four["step"] == 30
    for key, tol in TOLERANCE.items():
        assert four[key] == pytest.approx(one[key], abs=tol), key
