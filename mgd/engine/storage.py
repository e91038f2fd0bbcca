"""Where the replay engine keeps checkpointed training states.

A store maps a plan's slot numbers to ``(step index, state)`` pairs. The executor calls
``put``, ``get``, ``delete`` and ``clear``, and ``prefetch`` when it knows which slot the plan
restores next, so stores that keep states in host memory or on disk slot in without touching
the reverse sweep:

- `DeviceStore`: states stay in device memory (no copies);
- `HostStore`: states go to host memory (a ``pinned_host`` memory kind where the backend has
  one, else numpy arrays), freeing device memory for the differentiated blocks;
- `DiskStore`: states go to raw numpy files in a temporary directory, removed by ``clear``.

Off-device stores keep each leaf's sharding and put it back exactly where it was. Each process
keeps only its own shards (one copy of each distinct shard; replicas share it), so a state that
spans several processes (`jax.distributed`) is stored piecewise by them all. Their copies
overlap with compute: ``put`` hands the device-to-host copy to a background thread and returns,
and ``prefetch`` starts bringing the next restored state back while the current block is still
running.
"""

from __future__ import annotations

import abc
import functools
import math
import os
import pathlib
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
import psutil

PyTree = Any

_HOST_KIND = "pinned_host"


class AbstractStateStore(abc.ABC):
    """Keeps training states between the forward replay and the reverse sweep."""

    @property
    def name(self) -> str:
        """What `mgd.MetagradientStats.store` calls this store: ``"device"``, ``"host"`` or
        ``"disk"`` for the built-in stores and their subclasses, else the class name."""
        return type(self).__name__

    @abc.abstractmethod
    def put(self, slot: int, step: int, state: PyTree) -> None:
        """Keeps ``state`` (the state at ``step``) under ``slot``."""

    @abc.abstractmethod
    def get(self, slot: int) -> tuple[int, PyTree]:
        """Returns ``(step, state)`` kept under ``slot``, as arrays on the compute device."""

    @abc.abstractmethod
    def delete(self, slot: int) -> None:
        """Drops the state kept under ``slot``."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Drops every state; called when a metagradient finishes or fails."""

    def prefetch(self, slot: int) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Hints that ``get(slot)`` comes next: a store may start moving it to the device.

        Called by the executor while the preceding block still computes. The default does
        nothing; off-device stores start the host-to-device copy here.
        """


class DeviceStore(AbstractStateStore):
    """Keeps states where they were computed (device memory), sharding included.

    Costs nothing to put or get: the stored arrays are the very arrays the step produced.
    """

    name = "device"

    def __init__(self):
        self._states: dict[int, tuple[int, PyTree]] = {}

    def put(self, slot: int, step: int, state: PyTree) -> None:
        self._states[slot] = (step, state)

    def get(self, slot: int) -> tuple[int, PyTree]:
        return self._states[slot]

    def delete(self, slot: int) -> None:
        del self._states[slot]

    def clear(self) -> None:
        self._states.clear()


@functools.lru_cache(maxsize=64)
def _has_host_memory(sharding: jax.sharding.Sharding) -> bool:
    # This process's devices only: another process's are not addressable from here.
    try:
        return all(
            _HOST_KIND in {m.kind for m in d.addressable_memories()}
            for d in sharding.addressable_devices
        )
    except (NotImplementedError, AttributeError, jax.errors.JaxRuntimeError):
        return False


def _index_key(index: tuple) -> tuple:
    # A shard's index (a tuple of slices, unhashable before Python 3.12) as a dict key.
    return tuple((s.start, s.stop, s.step) for s in index)


def _local_shards(leaf: jax.Array) -> dict[tuple, np.ndarray]:
    """This process's shards of ``leaf`` as numpy arrays, one per distinct index.

    Replicated leaves thus cost one copy per process, not one per device, and a leaf spanning
    several processes is never fetched whole (which JAX refuses).
    """
    shards = {}
    for shard in leaf.addressable_shards:
        key = _index_key(shard.index)
        if key not in shards:
            shards[key] = np.asarray(shard.data)
    return shards


def _from_local_shards(
    shards: dict[tuple, np.ndarray], shape: tuple, sharding: jax.sharding.Sharding
) -> jax.Array:
    """The array `_local_shards` took apart, back on ``sharding`` (this process's part)."""
    return jax.make_array_from_callback(shape, sharding, lambda index: shards[_index_key(index)])


class _OffDeviceStore(AbstractStateStore):
    """Shared bookkeeping of `HostStore` and `DiskStore`: slots, shardings and prefetches.

    Subclasses implement ``_save(slot, leaves) -> handle`` (start moving the leaves off the
    device on the store's thread; a future) and ``_load(handle, layouts)`` (a future of the
    leaves back on their ``(shape, sharding)`` layouts).
    """

    def __init__(self):
        # slot -> (step, treedef, (shape, sharding) of each leaf, handle)
        self._slots: dict[int, tuple[int, Any, list, Future]] = {}
        self._prefetched: dict[int, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _submit(self, fn, *args) -> Future:
        # One background thread per call of metagradient, ended by clear(): one thread keeps
        # copies in order, and outer loops calling metagradient thousands of times leak none.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mgd-store")
        return self._pool.submit(fn, *args)

    def put(self, slot: int, step: int, state: PyTree) -> None:
        leaves, treedef = jax.tree.flatten(state)
        layouts = [(leaf.shape, leaf.sharding) for leaf in leaves]
        self._slots[slot] = (step, treedef, layouts, self._save(slot, leaves))

    def prefetch(self, slot: int) -> None:
        if slot in self._slots and slot not in self._prefetched:
            _, _, layouts, handle = self._slots[slot]
            self._prefetched[slot] = self._load(handle, layouts)

    def get(self, slot: int) -> tuple[int, PyTree]:
        step, treedef, layouts, handle = self._slots[slot]
        leaves = self._prefetched.pop(slot, None)
        if leaves is None:
            leaves = self._load(handle, layouts)
        return step, jax.tree.unflatten(treedef, leaves.result())

    def delete(self, slot: int) -> None:
        self._prefetched.pop(slot, None)
        self._discard(self._slots.pop(slot)[3])

    def clear(self) -> None:
        self._prefetched.clear()
        self._slots.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # Pending writes finish before the files go.
            self._pool = None

    @abc.abstractmethod
    def _save(self, slot: int, leaves: list) -> Future: ...

    @abc.abstractmethod
    def _load(self, handle: Future, layouts: list) -> Future: ...

    def _discard(self, handle: Future) -> None:  # noqa: B027 (host handles need no cleanup)
        pass


class HostStore(_OffDeviceStore):
    """Keeps states in host memory, freeing device memory for the differentiated blocks.

    Where the backend has a ``pinned_host`` memory kind (GPUs, TPUs and recent CPU backends),
    each leaf is `jax.device_put` to its own sharding with that memory kind; elsewhere its
    shards on this process are copied to numpy arrays. The copies run on a background thread, so
    ``put`` returns at once and the replay goes on; ``get`` (or ``prefetch``, earlier) puts
    the leaves back onto their original shardings.

    Costs per stored state: one device-to-host copy on ``put`` and one host-to-device copy on
    each ``get``, of the state's size; host memory holds the stored states, the device only the
    current state, the differentiated block and at most one prefetched state. The values are
    the same bits as with `DeviceStore`.
    """

    name = "host"

    def _save(self, slot: int, leaves: list) -> Future:
        # The copies run on the store's thread: transfers cost host time per leaf (about
        # 0.1 ms on a CPU backend) that the main thread spends dispatching compute instead.
        if all(_has_host_memory(leaf.sharding) for leaf in leaves):
            host = [x.sharding.with_memory_kind(_HOST_KIND) for x in leaves]
            return self._submit(jax.device_put, leaves, host)
        for leaf in leaves:
            leaf.copy_to_host_async()
        return self._submit(lambda: [_local_shards(leaf) for leaf in leaves])

    def _load(self, handle: Future, layouts: list) -> Future:
        def load():
            stored = handle.result()
            if all(isinstance(leaf, jax.Array) for leaf in stored):  # In pinned host memory.
                return jax.device_put(stored, [sharding for _, sharding in layouts])
            return [
                _from_local_shards(shards, *layout)
                for shards, layout in zip(stored, layouts, strict=True)
            ]

        return self._submit(load)


class DiskStore(_OffDeviceStore):
    """Keeps states in raw numpy files in a temporary directory, removed by ``clear``.

    A background thread writes each stored state (one file) while the replay goes on;
    ``prefetch`` reads the next restored state back in the background. The temporary directory
    is made under ``directory`` at the first ``put`` and removed, files and all, by ``clear``,
    which the executor calls when a metagradient finishes or fails.

    Costs per stored state: one device-to-host copy and one file write on ``put``, one file
    read and one host-to-device copy on each ``get``; disk holds the stored states, the device
    only the current state, the differentiated block and at most one prefetched state. The
    values are the same bits as with `DeviceStore`.

    Args:
      directory: where to make the temporary directory; ``None`` is the system's temporary
        directory (`tempfile.gettempdir`, e.g. ``$TMPDIR``).

    Raises:
      ValueError: if ``directory`` does not exist or is not writable (checked when built,
        before any training).
    """

    name = "disk"

    def __init__(self, directory: str | os.PathLike | None = None):
        super().__init__()
        self.directory = pathlib.Path(tempfile.gettempdir() if directory is None else directory)
        if not self.directory.is_dir() or not os.access(self.directory, os.W_OK | os.X_OK):
            raise ValueError(
                f"DiskStore(directory={str(self.directory)!r}): not a writable directory; "
                "pass an existing directory you can write to"
            )
        self._root: pathlib.Path | None = None

    @property
    def path(self) -> pathlib.Path | None:
        """The temporary directory holding the stored states, or ``None`` when empty."""
        return self._root

    def _save(self, slot: int, leaves: list) -> Future:
        if self._root is None:
            self._root = pathlib.Path(tempfile.mkdtemp(prefix="mgd-states-", dir=self.directory))
        for leaf in leaves:
            leaf.copy_to_host_async()
        return self._submit(self._write, self._root / f"slot{slot}.bin", leaves)

    @staticmethod
    def _write(path: pathlib.Path, leaves: list) -> tuple[pathlib.Path, list[list[tuple]]]:
        # One file per state (file creation, not bytes, dominates for small states) holding
        # this process's shards as raw bytes, plus (index, shape, dtype) of each kept in memory:
        # unlike .npy headers, this round-trips every JAX dtype (bfloat16, float8) bit for bit.
        specs = []
        with open(path, "wb") as f:
            for leaf in leaves:
                shards = _local_shards(leaf)
                for array in shards.values():
                    array.tofile(f)
                specs.append([(key, a.shape, a.dtype) for key, a in shards.items()])
        return path, specs

    def _load(self, handle: Future, layouts: list) -> Future:
        def read():
            path, specs = handle.result()
            data, offset, arrays = path.read_bytes(), 0, []
            for leaf_specs, layout in zip(specs, layouts, strict=True):
                shards = {}
                for key, shape, dtype in leaf_specs:
                    count = math.prod(shape)
                    shards[key] = np.frombuffer(data, dtype, count, offset).reshape(shape)
                    offset += count * dtype.itemsize
                arrays.append(_from_local_shards(shards, *layout))
            return arrays

        return self._submit(read)

    def _discard(self, handle: Future) -> None:
        self._submit(lambda: handle.result()[0].unlink(missing_ok=True))

    def clear(self) -> None:
        super().clear()
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


_STORES = {store.name: store for store in (DeviceStore, HostStore, DiskStore)}

# The share of free host memory and disk space a memory budget lets stored states take: the
# rest stays for this process (data, compiled programs, copies in flight) and for others.
_ROOM_FRACTION = 0.5


def offload_room() -> tuple[int, int]:
    """Bytes that stored states may take in host memory and on disk, measured now.

    What ``metagradient(..., memory_budget=...)`` offers `mgd.choose_for_budget` when no
    ``store`` is given: half of the available host memory (`psutil.virtual_memory`) and half of
    the free space in the system's temporary directory, where a `DiskStore` writes by default.
    On a CPU backend host memory is the device's own memory, which ``memory_budget`` already
    bounds, so it offers none.

    Returns:
      ``(host_bytes, disk_bytes)``.
    """
    host = 0 if jax.default_backend() == "cpu" else psutil.virtual_memory().available
    disk = shutil.disk_usage(tempfile.gettempdir()).free
    return int(host * _ROOM_FRACTION), int(disk * _ROOM_FRACTION)


def device_room() -> int:
    """Bytes of device memory a sweep may take without a ``memory_budget``, measured now.

    Half of what this process's first device has free: ``bytes_limit - bytes_in_use`` of its
    ``memory_stats()`` where the backend reports them (GPUs, TPUs), else (a CPU) the available
    host memory (`psutil.virtual_memory`). ``leaf="auto"`` fuses leaf blocks only if their
    residuals fit there (`mgd.engine.memory.auto_leaf`).
    """
    # This process's first device: another process's devices report no memory statistics.
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    else:
        free = psutil.virtual_memory().available
    return int(free * _ROOM_FRACTION)


def make_store(store: AbstractStateStore | str | None) -> AbstractStateStore:
    """The store named by ``metagradient``'s ``store`` argument.

    Args:
      store: ``None`` or ``"device"`` (`DeviceStore`), ``"host"`` (`HostStore`), ``"disk"``
        (`DiskStore` in the system's temporary directory), or a store, returned as is.

    Raises:
      ValueError: for an unknown name.
      TypeError: for anything else that is not an `AbstractStateStore`.
    """
    if store is None:
        return DeviceStore()
    if isinstance(store, AbstractStateStore):
        return store
    if isinstance(store, str):
        if store not in _STORES:
            raise ValueError(
                f"store={store!r} is not a known store; pass one of {sorted(_STORES)} or an "
                "AbstractStateStore such as mgd.engine.DiskStore(directory)"
            )
        return _STORES[store]()
    raise TypeError(f"store must be a name such as 'host' or an AbstractStateStore, got {store!r}")
