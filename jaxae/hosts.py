"""Several processes (hosts) on JAX's own runtime: start-up, global arrays, gathers.

One process per host, each seeing its local devices; ``jax.distributed.initialize`` joins
them into one runtime whose ``jax.devices()`` are every host's devices. All processes run
the same program on the same data (batches are a pure function of the data seed, so they
are identical everywhere); arrays are global, the member axis sharded over all devices;
process 0 alone writes files. In a single process every function here is the plain
single-process operation.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join this process to a multi-process JAX runtime.

    Args:
        coordinator: ``host:port`` of process 0's coordination service; None lets JAX
            read it from the environment (SLURM, Open MPI, TPU pods, Kubernetes, or
            ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``).
        num_processes, process_id: this job's size and this process's rank.

    On CPU the cross-process collectives use gloo (set before the runtime starts).
    """
    if jax.config.jax_platforms in (None, "", "cpu") and not _has_accelerator_env():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def _has_accelerator_env() -> bool:
    return any(k in os.environ for k in ("CUDA_VISIBLE_DEVICES", "TPU_NAME", "TPU_WORKER_ID"))


def is_primary() -> bool:
    """True in the process that writes results, figures, summaries and the lock."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree_max(value: int) -> int:
    """The largest of every process's ``value`` (a collective: every process must call it
    at the same point). A decision one process makes alone (a signal it received, a
    refusal to start) becomes everyone's, so no process waits at a collective the others
    never reach."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def put(a, sharding):
    """Place host array ``a`` (identical on every process) as a global array."""
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put(jax.random.key_data(a), sharding))
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def mesh() -> jax.sharding.Mesh:
    """The 1-D mesh ``members`` over every device of every process (sweeps shard on it)."""
    return jax.sharding.Mesh(np.array(jax.devices()), ("members",))


def replicate(a):
    """Host array ``a`` (identical on every process) replicated on every device."""
    if jax.process_count() == 1:
        return jax.numpy.asarray(a)
    return put(a, jax.sharding.NamedSharding(mesh(), jax.sharding.PartitionSpec()))


def to_host(tree):
    """Every leaf as a numpy array holding the whole global value, on every process."""

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if a.sharding.is_fully_replicated:
                return np.asarray(a.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, tree)
