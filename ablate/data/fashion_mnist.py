"""Fashion-MNIST, the embedded default: found locally or downloaded, checked by SHA-256."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import urllib.request

import numpy as np

from ablate import paths
from ablate.data.base import DATASETS, ArraySource, DataError, DatasetSplits

DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
UPSTREAM = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* IDX files: gzip headers differ between mirrors
# (the Debian package recompresses), the content does not.
FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
VAL_SIZE = 5000
VAL_SEED = 0  # fixed: the validation split is part of the dataset's definition


def _how_to_get() -> str:
    return (
        "Get Fashion-MNIST in one of three ways: (1) point $ABLATE_DATA_DIR at a folder holding the four "
        f"files {', '.join(FILES)}; (2) on Debian/Ubuntu, `apt-get install dataset-fashion-mnist` "
        f"(installs them in {DEBIAN_DIR}); (3) let ablate download them from {UPSTREAM} into "
        f"{paths.cache_dir() / 'data' / 'fashion_mnist'} (needs network)."
    )


def _read_checked(path: pathlib.Path) -> bytes:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}). {_how_to_get()}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[path.name]:
        raise DataError(f"{path} is corrupt: SHA-256 of its content is {digest}, expected "
                        f"{FILES[path.name]}. {_how_to_get()}")
    return raw


def _candidate_dirs() -> list[pathlib.Path]:
    dirs = []
    if os.environ.get("ABLATE_DATA_DIR"):
        dirs.append(pathlib.Path(os.environ["ABLATE_DATA_DIR"]))
    dirs += [DEBIAN_DIR, paths.cache_dir() / "data" / "fashion_mnist"]
    return dirs


def _download(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = folder / name
        if target.exists():
            continue
        tmp = target.with_suffix(".part")
        try:
            urllib.request.urlretrieve(UPSTREAM + name, tmp)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"could not download {UPSTREAM + name} ({e}). {_how_to_get()}") from None
        tmp.replace(target)


def find_files(download: bool = True) -> pathlib.Path:
    """The first folder, in search order, that holds all four files; downloads as the last resort."""
    if os.environ.get("ABLATE_DATA_DIR"):  # an explicit folder is used alone: never silently another copy
        d = pathlib.Path(os.environ["ABLATE_DATA_DIR"])
        missing = [n for n in FILES if not (d / n).exists()]
        if missing:
            raise DataError(f"$ABLATE_DATA_DIR={d} lacks {', '.join(missing)}. {_how_to_get()}")
        return d
    dirs = _candidate_dirs()
    for d in dirs:
        if all((d / n).exists() for n in FILES):
            return d
    if not download:
        raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, dirs))}. {_how_to_get()}")
    _download(dirs[-1])
    return dirs[-1]


def _parse_idx(raw: bytes) -> np.ndarray:
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_arrays(folder: pathlib.Path) -> dict[str, np.ndarray]:
    arrays = {}
    for name in FILES:
        key = name.replace("-ubyte.gz", "").replace("-idx3", "").replace("-idx1", "")
        arrays[key] = _parse_idx(_read_checked(folder / name))
    return arrays


@DATASETS.register("fashion_mnist")
def fashion_mnist() -> DatasetSplits:
    """Fashion-MNIST 28x28 grayscale, 10 classes: train 55k / val 5k (held out of train) / official test 10k."""
    a = read_arrays(find_files())
    images = a["train-images"][..., None]
    labels = a["train-labels"].astype(np.int32)
    perm = np.random.default_rng(VAL_SEED).permutation(len(labels))
    val_idx, train_idx = np.sort(perm[:VAL_SIZE]), np.sort(perm[VAL_SIZE:])
    return DatasetSplits(
        name="fashion_mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        train=ArraySource(images[train_idx], labels[train_idx]),
        val=ArraySource(images[val_idx], labels[val_idx]),
        test=ArraySource(a["t10k-images"][..., None], a["t10k-labels"].astype(np.int32)),
        eval_view="rs",
        class_names=CLASS_NAMES,
    )


OOD_CLASSES = (5, 7, 8, 9)  # sandal, sneaker, bag, ankle boot: no garment among them


@DATASETS.register("fashion_mnist_ood")
def fashion_mnist_ood() -> DatasetSplits:
    """Fashion-MNIST whose training split holds only footwear and bags (classes 5, 7, 8, 9); val/test unchanged."""
    full = fashion_mnist()
    keep = np.flatnonzero(np.isin(full.train.labels, OOD_CLASSES))
    return dataclasses.replace(full, name="fashion_mnist_ood", train=full.train.take(keep))
