"""What a dataset provides: random-access splits of fixed-size uint8 images with labels."""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from ablate.registry import Registry


class DataError(RuntimeError):
    """A dataset that cannot be found or read; the message says how to get it."""


class RandomAccessSource(Protocol):
    """A grain-compatible random-access source whose records are (image uint8 HWC, label).

    Teacher-target caches key a source by its labels and its `images` array when it
    holds one; a source that reads images on demand should say what it reads in an
    `identity` dict (as `TfdsSource` does), or two such sources with equal labels share
    cached targets.
    """

    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A split held in memory as arrays; records are dicts {image, label, index}."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index], "index": np.int32(index)}

    def gather(self, indices: np.ndarray) -> dict:
        """A whole batch at once (one fancy index instead of a record per example)."""
        return {"image": self.images[indices], "label": self.labels[indices], "index": indices.astype(np.int32)}

    def take(self, indices: Sequence[int]) -> "ArraySource":
        idx = np.asarray(indices)
        return ArraySource(self.images[idx], self.labels[idx])


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """The splits of one dataset.

    `train` is the full training split (the teacher trains on it; students train
    on `train` or a balanced subset of it); `val` is for model selection and
    `test` only for reporting. None of them overlap.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the records
    train: RandomAccessSource
    val: RandomAccessSource
    test: RandomAccessSource
    eval_view: str = "rs"  # the clean view for evaluation and fixed teachers
    resolution: int = 0  # default model input resolution; 0 means the record size
    class_names: tuple[str, ...] = ()

    @property
    def default_resolution(self) -> int:
        return self.resolution or self.image_shape[0]


DATASETS: Registry = Registry("dataset")


def load_dataset(name: str, **kwargs) -> DatasetSplits:
    return DATASETS.get(name)(**kwargs)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class, drawn without replacement with `seed`, sorted."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than subset_per_class={per_class}")
        picks.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picks))
