"""Shared fixtures: an isolated cache/store per session, real Fashion-MNIST, and the tiny trained teacher."""

import dataclasses
import tempfile

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def ablate_env(tmp_path_factory):
    """Point every ablate cache, store and W&B folder at a fresh session temp dir."""
    root = tmp_path_factory.mktemp("ablate")
    mp = pytest.MonkeyPatch()
    mp.setenv("ABLATE_CACHE", str(root / "cache"))
    mp.setenv("ABLATE_STORE", str(root / "store"))
    mp.setenv("ABLATE_REPORTS", str(root / "reports"))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root / "wandb"))
    # temporary files and folders of this process and its subprocesses (TFDS's, W&B's) stay in the session's folder
    (root / "tmp").mkdir()
    mp.setenv("TMPDIR", str(root / "tmp"))
    mp.setattr(tempfile, "tempdir", str(root / "tmp"))
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST splits (55k train / 5k val / 10k test)."""
    from ablate.data import load_dataset

    return load_dataset("fashion_mnist")


@pytest.fixture(scope="session")
def fmnist_small(fmnist):
    """Fashion-MNIST with the full train split but 1000-image val and test splits, for quick evaluations."""
    return dataclasses.replace(fmnist, val=fmnist.val.take(np.arange(1000)), test=fmnist.test.take(np.arange(1000)))


@pytest.fixture(scope="session")
def teacher(fmnist):
    """The tiny `fmnist_xs` teacher, trained once per session into the session cache (~30-50 s on CPU)."""
    from ablate.teachers import get_teacher

    return get_teacher("fmnist_xs", fmnist, progress=False, log=lambda *a, **k: None)


@pytest.fixture(scope="session")
def batch(fmnist):
    """A real batch of 16 Fashion-MNIST training images (uint8 NHWC) and one-hot labels."""
    import jax

    images = fmnist.train.images[:16]
    labels = jax.nn.one_hot(fmnist.train.labels[:16], fmnist.num_classes)
    return images, labels
