"""The paper's datasets from TFDS, read by random access (`tfds.data_source`, no TensorFlow needed).

Each record is {image: uint8 (S, S, 3), label: int32, index: int32}, where the
"source size" S = round(1.25 * resolution) (160 for the 128 px small datasets,
280 for 224 px ImageNet): the eval view (resize shorter side to 1.25x, central
crop) is then a central crop of the record, and random/inception crops have
1.25x headroom. Images are fitted to S x S lazily in `__getitem__`, by
default aspect-preserving ("crop": central square, then resize; loses the
periphery of non-square images) or optionally "squash" (whole image resized
to a square; keeps everything, distorts the aspect ratio). The CIFARs' specs
fit by "zeropad" instead: the image at the model resolution, zero-padded to S, so
that random crops are the usual pad-and-crop augmentation and the central crop
is the image itself.

The datasets must be prepared once in ArrayRecord format (see `how_to_prepare`);
nothing here downloads. TensorFlow is never imported.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import re
import tempfile
import unittest.mock

import numpy as np

from ablate.data.base import DATASETS, DataError, DatasetSplits


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """How the paper uses one TFDS dataset: (train, val, test) split strings, class count, model resolution."""

    tfds_name: str
    splits: tuple[str, str, str]
    num_classes: int
    resolution: int
    # Example counts of the TFDS splits (TFDS catalog), so dry runs can size a run without the data.
    num_examples: dict = dataclasses.field(default_factory=dict, hash=False)
    # How records are fitted to the source size by default (see `fit_image`): "zeropad" for the CIFARs, whose images
    # are the model's resolution and whose standard augmentation is a random crop of the image padded by 4 px
    fit: str = "crop"

    @property
    def source_size(self) -> int:
        return round(1.25 * self.resolution)

    def split_size(self, split: str) -> int | None:
        """Examples in a split string such as 'train[:90%]', from the known counts (None if unknown)."""
        return split_size(split, self.num_examples)

    @property
    def sizes(self) -> tuple[int | None, int | None, int | None]:
        """Known (train, val, test) sizes of the splits the paper uses."""
        return tuple(self.split_size(s) for s in self.splits)


SPECS = {
    "oxford_flowers102": TfdsSpec("oxford_flowers102", ("train", "validation", "test"), 102, 128,
                                  {"train": 1020, "validation": 1020, "test": 6149}),
    "oxford_iiit_pet": TfdsSpec("oxford_iiit_pet", ("train[:90%]", "train[90%:]", "test"), 37, 128,
                                {"train": 3680, "test": 3669}),
    "food101": TfdsSpec("food101", ("train[:90%]", "train[90%:]", "validation"), 101, 128,
                        {"train": 75750, "validation": 25250}),
    # sun397/tfds: TFDS's split lists hold 76,128 / 10,875 / 21,750 files; its builder skips one train image
    "sun397": TfdsSpec("sun397/tfds", ("train", "validation", "test"), 397, 128,
                       {"train": 76127, "validation": 10875, "test": 21750}),
    "imagenet2012": TfdsSpec("imagenet2012", ("train[:98%]", "train[99%:]", "validation"), 1000, 224,
                             {"train": 1281167, "validation": 50000}),
    # CRD's / mdistiller's CIFAR benchmark at 32 px. Records are the 32 px images zero-padded by 4 px to 40 px:
    # the "rc" view is then the standard augmentation (a random 32 px crop of the padded image, flipped at random;
    # at sub-pixel offsets) and the "cc" eval view the image itself, pixel for pixel
    "cifar10": TfdsSpec("cifar10", ("train[:90%]", "train[90%:]", "test"), 10, 32,
                        {"train": 50000, "test": 10000}, fit="zeropad"),
    "cifar100": TfdsSpec("cifar100", ("train[:90%]", "train[90%:]", "test"), 100, 32,
                         {"train": 50000, "test": 10000}, fit="zeropad"),
}
MANUAL = {"imagenet2012": ("ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org/"
                           "download-images (registration required)")}


_SPLIT = re.compile(r"(?P<name>[\w-]+)(?:\[(?P<start>-?[\d_.]+%?)?:(?P<stop>-?[\d_.]+%?)?\])?")


def split_size(split: str, num_examples: dict) -> int | None:
    """Examples selected by a TFDS split string ('train', 'train[:90%]', 'train[-500:]', 'a+b'), by TFDS's
    slicing rules, without importing TFDS (a second); tests check it against TFDS. None for a split not in
    `num_examples` or a form not read here (shards, 'all')."""
    total = 0
    for part in re.split(r"\s*\+\s*", split):
        m = _SPLIT.fullmatch(part)
        if m is None or m["name"] not in num_examples or ("[" in part and not (m["start"] or m["stop"])):
            return None
        n, percent = num_examples[m["name"]], "%" in part
        try:
            total += _boundary(m["stop"], n, n, percent) - _boundary(m["start"], 0, n, percent)
        except ValueError:
            return None
    return total


def _boundary(text: str | None, default: int, n: int, percent: bool) -> int:
    """One end of a slice of n examples as an index in [0, n]: a percent rounds to the closest example, a
    negative end counts from the end (TFDS's rules); ValueError for one outside the split."""
    if text is None:
        return default
    value = round(float(text.rstrip("%")) * n / 100.0) if percent else int(text)
    if abs(value) > n:
        raise ValueError(f"slice end {text} outside a split of {n} examples")
    return n + value if value < 0 else value


def known_facts(name: str) -> dict | None:
    """What a dry run needs of registered TFDS dataset `name` without its data: classes, shapes, split sizes."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    train, val, test = spec.sizes
    return {"num_classes": spec.num_classes, "resolution": spec.resolution,
            "image_shape": (spec.source_size, spec.source_size, 3), "train": train, "val": val, "test": test}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str | None:
    """`data_dir`, else $TFDS_DATA_DIR, else None (TFDS's default, ~/tensorflow_datasets)."""
    return os.fspath(data_dir) if data_dir else os.environ.get("TFDS_DATA_DIR") or None


def how_to_prepare(name: str, data_dir: str | None) -> str:
    """Instructions for preparing `name` in the ArrayRecord format that random access needs."""
    where = data_dir or "~/tensorflow_datasets"
    manual = (f" First put {MANUAL[name]} into {where}/downloads/manual/ (TFDS cannot download them)."
              if name in MANUAL else "")
    return (f"Prepare it once in ArrayRecord format (random access does not work with TFDS's default "
            f"TFRecord format).{manual} With TensorFlow installed: `tfds build {name} --data_dir={where} "
            f"--file_format=array_record`, or in Python: `tfds.builder('{name}', data_dir='{where}', "
            f"file_format='array_record').download_and_prepare()`. Then pass data_dir=... or set $TFDS_DATA_DIR.")


@contextlib.contextmanager
def _own_tempdir():
    """Temporary files made meanwhile go to a folder removed afterwards: a TFDS builder of a dataset whose info is
    not prepared makes a `tmp*tfds` folder (DatasetInfo.initialize_from_bucket) that it never removes."""
    before = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="ablate-tfds-") as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = before


def open_data_source(name: str, split: str, data_dir: str | None, decoders=None):
    """`tfds.data_source` that never downloads and turns any failure into a DataError saying how to prepare."""
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # tfds warns about folders it probes; a failure says it all below
    try:
        with _own_tempdir():
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
    except Exception as e:  # noqa: BLE001 - tfds raises many types (not found, wrong format, bad split)
        root = os.path.join(data_dir or os.path.expanduser("~/tensorflow_datasets"), name.split("/")[0])
        detail = str(e).split("\nAvailable datasets:")[0][:600]  # DatasetNotFoundError lists every dataset
        reason = f"{root} does not exist" if not os.path.isdir(root) else f"{type(e).__name__}: {detail}"
        raise DataError(f"cannot open TFDS dataset {name!r} split {split!r}: {reason}\n"
                        f"{how_to_prepare(name.split('/')[0], data_dir)}") from e
    finally:
        absl_logging.set_verbosity(verbosity)


def fit_image(image: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    """Any HxW[xC] uint8 image -> (size, size, 3) uint8: 'crop' = central square then resize, 'squash' = resize,
    'zeropad' = central square resized to round(size / 1.25) (the model resolution), then zero-padded to size."""
    from PIL import Image

    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    h, w = image.shape[:2]
    if fit in ("crop", "zeropad"):
        s = min(h, w)
        image = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    elif fit != "squash":
        raise ValueError(f"fit must be 'crop', 'squash' or 'zeropad', got {fit!r}")
    if fit == "zeropad":
        inner = round(size / 1.25)
        lo, hi = (size - inner) // 2, size - inner - (size - inner) // 2
        return np.pad(fit_image(image, inner), ((lo, hi), (lo, hi), (0, 0)))
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))  # antialiased when shrinking


def read_labels(source, chunk: int = 1024, threads: int = 16) -> np.ndarray:
    """All labels of a TFDS data source, chunks read by a thread pool (reads are I/O bound)."""
    def read(start: int) -> list[int]:
        return [source[i]["label"] for i in range(start, min(len(source), start + chunk))]

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(read, range(0, len(source), chunk)))
    return np.asarray([x for p in parts for x in p], np.int32).reshape(-1)


class TfdsSource:
    """One TFDS split as a grain-compatible random-access source of fixed-size records.

    `labels` is computed on first use and kept in memory: it reads every record
    once with all features but the label left undecoded (no image decoding, but
    all record bytes are read: seconds for the small datasets, minutes for
    ImageNet train, about 150 GB). Picklable, so grain workers can use it.
    """

    def __init__(self, name: str, split: str, data_dir: str | None, size: int, fit: str = "crop"):
        if fit not in ("crop", "squash", "zeropad"):
            raise ValueError(f"fit must be 'crop', 'squash' or 'zeropad', got {fit!r}")
        self.name, self.split, self.data_dir, self.size, self.fit = name, split, data_dir, size, fit
        self.source = open_data_source(name, split, data_dir)
        self._labels: np.ndarray | None = None

    @property
    def features(self):
        return self.source.dataset_info.features

    @property
    def identity(self) -> dict:
        """What this source reads, for cache keys (its images are never all in memory to hash)."""
        return {"name": self.name, "split": self.split, "data_dir": self.data_dir, "size": self.size, "fit": self.fit}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[index]
        return {"image": fit_image(record["image"], self.size, self.fit),
                "label": np.int32(record["label"]), "index": np.int32(index)}

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self._read_labels()
        return self._labels

    def _read_labels(self) -> np.ndarray:
        import tensorflow_datasets as tfds

        if isinstance(getattr(self.source, "data_source", None), unittest.mock.Mock):
            return read_labels(self.source)  # tfds.testing.mock_data: undecoded fake records need TensorFlow
        skip = {k: tfds.decode.SkipDecoding() for k in self.features.keys() if k != "label"}
        return read_labels(open_data_source(self.name, self.split, self.data_dir, decoders=skip))


def load_tfds(name: str, data_dir: str | os.PathLike | None = None, source_size: int | None = None,
              fit: str | None = None) -> DatasetSplits:
    """The splits of registered TFDS dataset `name` (see SPECS) as fixed-size uint8 records (fitted as `fit`, by
    default the spec's)."""
    spec = SPECS[name]
    data_dir = resolve_data_dir(data_dir)
    size = source_size or spec.source_size
    fit = fit or spec.fit
    train, val, test = (TfdsSource(spec.tfds_name, s, data_dir, size, fit) for s in spec.splits)
    label = train.features["label"]
    if label.num_classes != spec.num_classes:
        raise DataError(f"TFDS {spec.tfds_name} has {label.num_classes} classes, expected {spec.num_classes}")
    return DatasetSplits(name=name, num_classes=spec.num_classes, image_shape=(size, size, 3),
                         train=train, val=val, test=test, eval_view="cc", resolution=spec.resolution,
                         class_names=tuple(label.names))


def _register(name: str) -> None:
    spec = SPECS[name]

    def load(data_dir: str | os.PathLike | None = None, source_size: int | None = None, fit: str | None = None):
        return load_tfds(name, data_dir=data_dir, source_size=source_size, fit=fit)

    load.__doc__ = (f"TFDS {spec.tfds_name}, {spec.num_classes} classes at {spec.resolution} px: train "
                    f"{spec.splits[0]} / val {spec.splits[1]} / test {spec.splits[2]}; records "
                    f"{spec.source_size}x{spec.source_size} (needs ArrayRecord data in $TFDS_DATA_DIR).")
    load.__name__ = name
    DATASETS.register(name)(load)


for _name in SPECS:
    _register(_name)
