"""A run's data stream: the examples it trains on, and which of them sit in the batch of each step.

Batch k is a pure function of the seed and k (each epoch a seeded permutation
of the source), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from ablate.config import ConfigError, RunConfig
from ablate.data import ArraySource, DatasetSplits, balanced_subset


def student_source(cfg: RunConfig, data: DatasetSplits):
    """The examples a run trains on: the full train split, or a balanced per-class subset of it."""
    if cfg.subset_per_class is None:
        return data.train
    idx = balanced_subset(data.train.labels, cfg.subset_per_class, cfg.subset_seed)
    return data.train.take(idx) if isinstance(data.train, ArraySource) else _Subset(data.train, idx)


@dataclasses.dataclass(frozen=True)
class _Subset:
    parent: Any
    indices: np.ndarray

    @property
    def labels(self):
        return self.parent.labels[self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return {**self.parent[int(self.indices[i])], "index": np.int32(i)}


DATA_ORDER = 0xFFFFFFFF
"""Folded into a run's seed for its data order: the views' keys fold in step numbers, which never reach it."""


def order_key(seed: int) -> jax.Array:
    """The key of a run's data order (its views use `jax.random.key(seed)` folded with the step)."""
    return jax.random.fold_in(jax.random.key(seed), DATA_ORDER)


def epoch_permutation(key: jax.Array, epoch, size: int) -> jax.Array:
    """The order of the examples in epoch `epoch`: a permutation drawn from the run's order key."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), size)


def batch_indices(key: jax.Array, step, size: int, batch: int) -> jax.Array:
    """The examples of batch `step`: positions [step * batch, (step + 1) * batch) of the stream of epochs.

    Positions run across epoch boundaries (so every example is seen equally often); a batch spans at most two
    epochs, as batch <= size. A pure function of (key, step), traced inside a multi-step program or jitted alone
    on the host: both give the same indices.
    """
    first = step * batch
    epoch = first // size
    pos = first % size + jnp.arange(batch)
    this, following = epoch_permutation(key, epoch, size), epoch_permutation(key, epoch + 1, size)
    return jnp.where(pos < size, this[pos % size], following[pos % size])


class EpochOrder:
    """`batch_indices` on the host, one permutation per epoch computed once (for pipelines that load on the host)."""

    def __init__(self, size: int, seed: int):
        self.size, self.key = size, order_key(seed)
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            if len(self._cache) > 4:  # a run reads epochs in order: keep only the recent ones
                self._cache.pop(min(self._cache))
            self._cache[e] = np.asarray(_permutation(self.key, e, self.size))
        return self._cache[e]

    def take(self, start: int, count: int) -> np.ndarray:
        """Indices at positions [start, start + count)."""
        out, pos = [], start
        while pos < start + count:
            e, i = divmod(pos, self.size)
            part = self.epoch(e)[i:i + start + count - pos]
            out.append(part)
            pos += len(part)
        return np.concatenate(out) if len(out) > 1 else out[0]


_permutation = jax.jit(epoch_permutation, static_argnums=2)


def batches(source, cfg: RunConfig, total_steps: int, rows: slice = slice(None)) -> grain.MapDataset:
    """Random-access batches: batch k is the same for a given seed however the run got to step k.

    Each epoch is a fresh seeded shuffle of the source (`batch_indices`); `rows`
    selects the part of every global batch this process loads (data
    parallelism over hosts).
    """
    if cfg.batch_size > len(source):
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {len(source)} training examples")
    order = EpochOrder(len(source), cfg.seed)
    indices = grain.MapDataset.range(total_steps).map(
        lambda k: order.take(k * cfg.batch_size, cfg.batch_size)[rows])
    if hasattr(source, "gather"):  # in-memory arrays: gather whole batches by index
        return indices.map(source.gather)
    return indices.map(lambda idx: {k: np.stack([source[int(i)][k] for i in idx]) for k in ("image", "label", "index")})


