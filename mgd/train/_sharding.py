"""Data parallelism for `TrainingSetup`: each batch sharded over a mesh axis, parameters
replicated, with JAX's own `Mesh` and `NamedSharding` (the SPMD partitioner inserts the
gradient all-reduce), so the engine replays and differentiates sharded steps unchanged.

On several hosts (multi-GPU nodes, TPU pods) call `jax.distributed.initialize()` first on every
process and build the mesh from `jax.devices()` (all processes' devices); see the README.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any


def check_mesh(mesh: Mesh | None, data_axis: str, batch_size: int) -> None:
    """Raises unless ``mesh`` is ``None`` or a `Mesh` whose ``data_axis`` divides the batch.

    Raises:
      TypeError: ``mesh`` is not a `jax.sharding.Mesh`.
      ValueError: ``data_axis`` is not an axis of ``mesh``, or its size does not divide
        ``batch_size``.
    """
    if mesh is None:
        return
    if not isinstance(mesh, Mesh):
        raise TypeError(f"TrainingSetup: mesh must be a jax.sharding.Mesh or None, got {mesh!r}")
    if data_axis not in mesh.shape:
        raise ValueError(
            f"TrainingSetup: data_axis={data_axis!r} is not an axis of the mesh "
            f"{dict(mesh.shape)}; pass data_axis= one of {tuple(mesh.shape)}"
        )
    size = mesh.shape[data_axis]
    if batch_size % size:
        raise ValueError(
            f"TrainingSetup: batch_size={batch_size} is not divisible by the mesh's "
            f"{data_axis!r} axis of size {size}; pick a batch size that is a multiple of {size}"
        )


def shard_batch(batch: PyTree, mesh: Mesh | None, data_axis: str) -> PyTree:
    """Constrains each batch array (leading axis: examples) to be split over ``data_axis``.

    Used inside the jitted step; a no-op without a mesh.
    """
    if mesh is None:
        return batch
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), batch)


def replicate(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """Puts every leaf of ``tree`` on all devices of ``mesh`` (a no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
