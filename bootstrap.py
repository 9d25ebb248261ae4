#!/usr/bin/env python3
"""Set up ablate in ./.venv with nothing but python3, then run the main job or the tests.

    python3 bootstrap.py main   # set up, run the `consistency` study (quick preset), render its report into out/
    python3 bootstrap.py test   # set up, then run the test suite
    python3 bootstrap.py setup  # set up only
    python3 bootstrap.py bench  # set up, add PyTorch (CPU) for the comparison, then run the benchmarks (benchmarks/README.md)

Set-up is idempotent: a venv whose lock file has not changed is reused.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".ablate-lock-sha256"


def sh(*cmd: str | os.PathLike, **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def fashion_mnist_via_apt() -> None:
    """Install Debian's dataset-fashion-mnist where apt is usable (root, Debian/Ubuntu); ablate downloads it otherwise."""
    if pathlib.Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        return
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print("apt not usable here: ablate will find Fashion-MNIST in $ABLATE_DATA_DIR or download it")
        return
    print("ablate's default dataset, Fashion-MNIST, is in Debian's package dataset-fashion-mnist: installing it "
          "with apt-get, as this is root (the alternatives: $ABLATE_DATA_DIR, or ablate downloads the files)",
          flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        sh("apt-get", "update", "-qq", env=env)
        sh("apt-get", "install", "-y", "-qq", "dataset-fashion-mnist", env=env)
    except subprocess.CalledProcessError:
        print("apt-get could not install dataset-fashion-mnist: ablate will download the files instead")


def setup() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"warning: ablate is pinned for Python 3.11; this is {sys.version.split()[0]}", file=sys.stderr)
    fashion_mnist_via_apt()
    digest = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        sh(sys.executable, "-m", "venv", VENV)
    sh(BIN / "python", "-m", "pip", "install", "-q", "uv==0.13.9")
    env = {**os.environ, "VIRTUAL_ENV": str(VENV)}
    sh(BIN / "uv", "pip", "sync", "-q", LOCK, env=env)
    sh(BIN / "uv", "pip", "install", "-q", "--no-deps", "-e", ROOT, env=env)
    STAMP.write_text(digest)


TORCH = "torch==2.13.0"  # the benchmarks' PyTorch reference only; ablate itself never imports it


def install_torch() -> None:
    """Add PyTorch (CPU) to the venv for the benchmarks, with pip (a local wheel is found through pip's
    find-links where there is one; uv's resolver is not used for it)."""
    py = BIN / "python"
    want = TORCH.split("==")[1]
    probe = "import torch, sys; sys.exit(torch.__version__.split('+')[0] != sys.argv[1])"
    if subprocess.call([str(py), "-c", probe, want], stderr=subprocess.DEVNULL) == 0:
        return
    if subprocess.call([str(py), "-m", "pip", "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        sh(py, "-m", "ensurepip")  # a venv made by uv has no pip
    sh(py, "-m", "pip", "install", "-q", TORCH)


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else "main"
    if what not in ("main", "test", "setup", "bench"):
        print(__doc__)
        return 2
    setup()
    os.chdir(ROOT)
    if what == "test":
        return subprocess.call([str(BIN / "python"), "-m", "pytest", *sys.argv[2:]])
    if what == "bench":
        install_torch()
        return subprocess.call([str(BIN / "python"), "-m", "benchmarks.run_all", *sys.argv[2:]])
    if what == "main":  # its report goes to out/ (ignored by git): reports/ holds the project's published ones
        return subprocess.call([str(BIN / "ablate"), "run", "consistency", "--preset", "quick",
                                "--report", str(pathlib.Path("out", "consistency", "quick")), *sys.argv[2:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
