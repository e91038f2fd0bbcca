"""Several devices for `TrainingSetup`: each batch sharded over a data axis of a `Mesh` and,
optionally, the training state sharded over a parameter axis (FSDP / ZeRO style), all with JAX's
own `NamedSharding` so that the SPMD partitioner inserts the collectives (the gradient
all-reduce; the all-gathers and reduce-scatters of sharded parameters). The engine replays and
differentiates the sharded step unchanged, and its stores keep each leaf's sharding.

The state's layout is a function of each leaf's shape alone (`leaf_spec`): without a parameter
axis every leaf is replicated; with one, a leaf is split along its largest dimension that the
axis size divides (the first such on ties) and replicated if it has none. Optimizer-state leaves
that mirror parameters (Adam's ``mu`` and ``nu``) thus get their parameter's layout, and scalars
(the step, Adam's ``count``) stay replicated.

On several hosts (multi-GPU nodes, TPU pods, or several local processes) call
`mgd.distributed.initialize()` first on every process and build the mesh over all processes'
devices (`make_mesh`); the setup then makes its inputs (data, batch order, metaparameters)
global arrays replicated over the mesh (`replicate`), built from each process's identical copy.
See the README.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any


def make_mesh(axes: dict[str, int]) -> Mesh:
    """A mesh over every process's devices (`jax.devices()`) with the named axes.

    Args:
      axes: axis name -> size, in mesh order, e.g. ``{"data": -1}`` (all devices on one data
        axis) or ``{"data": 2, "model": 2}``; one size may be ``-1``: the devices left over.

    Returns:
      A `jax.sharding.Mesh` spanning all devices of all processes.

    Raises:
      ValueError: no axes, a size that is not a positive int (or one ``-1``), or sizes that do
        not multiply to the number of devices (one line naming the count).

    Example:
      >>> mesh = mgd.make_mesh({"data": -1})  # After mgd.distributed.initialize().
      >>> setup = mgd.TrainingSetup(..., mesh=mesh, param_axis="data")  # doctest: +SKIP
    """
    count = jax.device_count()
    where = f"make_mesh({axes!r})"
    if not isinstance(axes, dict) or not axes:
        raise ValueError(f"{where}: axes must be a non-empty dict of axis name -> size")
    sizes = list(axes.values())
    if any(isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != -1) for n in sizes):
        raise ValueError(f"{where}: each size must be a positive int or -1 (the rest)")
    if sizes.count(-1) > 1:
        raise ValueError(f"{where}: at most one size may be -1")
    known = int(np.prod([n for n in sizes if n != -1]))
    if -1 in sizes and count % known == 0:
        sizes[sizes.index(-1)] = count // known
    if int(np.prod(sizes)) != count or -1 in sizes:
        raise ValueError(
            f"{where}: the axis sizes do not divide the {count} devices of the "
            f"{jax.process_count()} process(es) into a mesh; make them multiply to {count}"
        )
    return Mesh(mesh_utils.create_device_mesh(sizes, devices=jax.devices()), tuple(axes))


def replicate(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """Each leaf of ``tree`` as a global array replicated over ``mesh`` (a no-op without one).

    Leaves held by this process (numpy, Python scalars, arrays on its own devices) are taken as
    this process's copy of the value, which every process must hold alike (as a setup's data
    and batch order are); a leaf that already spans other processes is moved as it is. A
    mesh's programs then get their inputs in place instead of copying them to every device
    at each call.
    """
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())

    def leaf(x):
        if isinstance(x, jax.core.Tracer):
            return x  # Inside a user's jit or vmap (of `train`, say): placed by that program.
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x  # Already in place (e.g. metaparameters an outer loop got back).
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(leaf, tree)


def check_mesh(mesh: Mesh | None, data_axis: str, param_axis: str | None, batch_size: int) -> None:
    """Raises unless ``mesh`` is ``None`` (and ``param_axis`` too) or a `Mesh` that has both
    axes and whose ``data_axis`` divides the batch.

    Args:
      mesh: the setup's mesh or ``None``.
      data_axis: the mesh axis batches are split over.
      param_axis: the mesh axis the state is split over, or ``None`` (replicated).
      batch_size: examples per step.

    Raises:
      TypeError: ``mesh`` is not a `jax.sharding.Mesh`.
      ValueError: ``data_axis`` or ``param_axis`` is not an axis of ``mesh``, the size of
        ``data_axis`` does not divide ``batch_size``, or ``param_axis`` is given without a mesh.
    """
    if mesh is None:
        if param_axis is not None:
            raise ValueError(
                f"TrainingSetup: param_axis={param_axis!r} needs a mesh; pass mesh= a "
                "jax.sharding.Mesh with that axis, or param_axis=None"
            )
        return
    if not isinstance(mesh, Mesh):
        raise TypeError(f"TrainingSetup: mesh must be a jax.sharding.Mesh or None, got {mesh!r}")
    for name, axis in (("data_axis", data_axis), ("param_axis", param_axis)):
        if axis is not None and axis not in mesh.shape:
            raise ValueError(
                f"TrainingSetup: {name}={axis!r} is not an axis of the mesh "
                f"{dict(mesh.shape)}; pass {name}= one of {tuple(mesh.shape)}"
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


def leaf_spec(shape: tuple[int, ...], axis: str | None, axis_size: int) -> PartitionSpec:
    """The layout of one state leaf: split over ``axis`` along its largest dimension that
    ``axis_size`` divides (the first such on ties), else replicated.

    Args:
      shape: the leaf's shape.
      axis: the mesh axis to split over, or ``None`` (replicated).
      axis_size: the size of ``axis``.

    Returns:
      A `PartitionSpec` naming ``axis`` at the chosen dimension, or ``PartitionSpec()``.
    """
    dims = [d for d, n in enumerate(shape) if n % axis_size == 0]
    if axis is None or not dims:
        return PartitionSpec()
    dim = max(dims, key=lambda d: shape[d])
    return PartitionSpec(*([None] * dim), axis)


def _state_shardings(state: PyTree, mesh: Mesh, param_axis: str | None) -> PyTree:
    size = mesh.shape.get(param_axis, 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, param_axis, size)), state)


def put_state(state: PyTree, mesh: Mesh | None, param_axis: str | None) -> PyTree:
    """Places each leaf of ``state`` on ``mesh`` by `leaf_spec` (a no-op without a mesh)."""
    if mesh is None:
        return state
    return jax.device_put(state, _state_shardings(state, mesh, param_axis))


def constrain_state(state: PyTree, mesh: Mesh | None, param_axis: str | None) -> PyTree:
    """Constrains each leaf of ``state`` to its `leaf_spec` layout inside a jitted function.

    Applied to the state a step returns, so every state the engine stores, replays and
    differentiates has the layout of `put_state`'s, and the jitted engine pieces see one input
    layout (no recompilation). A no-op without a mesh.
    """
    if mesh is None:
        return state
    return jax.lax.with_sharding_constraint(state, _state_shardings(state, mesh, param_axis))
