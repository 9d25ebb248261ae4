"""Data parallelism over every device of every host: the batch is sharded on its leading axis, the rest replicated.

On one CPU this is a single-device mesh and costs nothing; on a GPU/TPU host
or pod the same jitted step is partitioned by XLA (SPMD) over the mesh. For
multiple hosts, call `initialize()` first (ablate does when
`JAX_COORDINATOR_ADDRESS` is set): each process then loads only its own rows
of every global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def initialize() -> None:
    """Join a multi-host run when its coordinator is configured (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID; on Cloud TPU pods and Slurm jax finds them itself when ABLATE_MULTIHOST=1)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                   int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
    elif os.environ.get("ABLATE_MULTIHOST"):
        jax.distributed.initialize()


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
