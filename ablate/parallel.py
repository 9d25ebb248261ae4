"""Data parallelism over every device of every host: the batch is sharded on its leading axis, the rest replicated.

On one CPU this is a single-device mesh and costs nothing; on a GPU/TPU host
or pod the same jitted step is partitioned by XLA (SPMD) over the mesh. For
multiple hosts, call `initialize()` first (ablate does when
`JAX_COORDINATOR_ADDRESS` is set): each process then loads only its own rows
of every global batch, every process runs the same cells in the same order,
and process 0 (the leader) alone writes the run store, the caches and W&B
(`SharedStore`, `is_leader`, `agree`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def initialize() -> bool:
    """Join a multi-host run when its coordinator is configured (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID; on Cloud TPU pods and Slurm jax finds them itself when ABLATE_MULTIHOST=1); whether it did."""
    if not (os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("ABLATE_MULTIHOST")):
        return False
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):  # CPU processes exchange arrays through gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                   int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    return True


def is_leader() -> bool:
    """Whether this is process 0, the one that writes the store, the caches and W&B (always, on one host)."""
    return jax.process_index() == 0


def agree(value: int | bool) -> int:
    """Process 0's `value`, on every process: all then take the same branch and so enter the same collectives."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(np.int32(value)).item()


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class SharedStore:
    """A RunStore as the processes of one multi-host run use it: process 0 reads and writes it, the others follow.

    The answers that decide what runs (done? claimed? checkpointed? writable?)
    are process 0's, broadcast, so that every process trains the same cells in
    the same order; writes happen on process 0 alone. Other reads (paths,
    records) go to the store itself, which must therefore be on a file system
    every host sees, as orbax's checkpoints in it must be.
    """

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):  # paths and reads that decide nothing
        return getattr(self.store, name)

    def _ask(self, question: str, run_id: str) -> bool:
        return bool(agree(getattr(self.store, question)(run_id) if is_leader() else False))

    def is_done(self, run_id: str) -> bool:
        return self._ask("is_done", run_id)

    def claim(self, run_id: str) -> bool:
        return self._ask("claim", run_id)

    def has_checkpoint(self, run_id: str) -> bool:
        return self._ask("has_checkpoint", run_id)

    def check_writable(self) -> None:
        error = None
        if is_leader():
            try:
                self.store.check_writable()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the others have heard of it
                error = e
        if not agree(error is None):
            from ablate.store import StoreLocationError

            raise error or StoreLocationError(f"process 0 cannot write the run store {self.store.root}; "
                                              "see its error")

    def _write(self, method: str, *args):
        return getattr(self.store, method)(*args) if is_leader() else None

    def log(self, run_id: str, row: dict) -> None:
        self._write("log", run_id, row)

    def truncate(self, run_id: str, step: int) -> None:
        self._write("truncate", run_id, step)

    def finish(self, run_id: str, summary: dict) -> None:
        self._write("finish", run_id, summary)

    def fail(self, run_id: str, reason: str, step: int | None = None) -> None:
        self._write("fail", run_id, reason, step)

    def release(self, run_id: str) -> None:
        self._write("release", run_id)

    def start(self, run_id: str, config: dict, meta: dict) -> list:
        return self._write("start", run_id, config, meta) or []


class DataParallel:
    """A 1-D mesh named "data" over all devices."""

    def __init__(self, devices=None):
        devices = np.asarray(devices if devices is not None else jax.devices())
        self.mesh = jax.sharding.Mesh(devices, ("data",))
        self.sharded = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def size(self) -> int:
        return self.mesh.size

    def local_rows(self, batch_size: int) -> slice:
        """The rows of a global batch that this process loads."""
        per = batch_size // jax.process_count()
        return slice(jax.process_index() * per, (jax.process_index() + 1) * per)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def shard(self, local_batch: dict) -> dict:
        """Assemble global arrays from this process's rows, sharded over the mesh."""
        return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
                for k, v in local_batch.items()}

    @staticmethod
    def gather(x: jax.Array) -> np.ndarray:
        """The whole of a sharded array, as numpy, on every host."""
        if jax.process_count() == 1:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
