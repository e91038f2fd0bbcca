"""Atomic checkpoints of an outer optimizer's state, so a killed outer loop can resume.

An outer loop (dataset selection, learning-rate search, ...) saves after every meta-step: its
state pytree (metaparameters, optimizer state, RNG key, meta-step counter; arrays) and JSON-able
metadata (history, config echo). Writes go through orbax-checkpoint, which writes each step into a
temporary directory and renames it only once complete, so a process killed mid-write leaves the
previous checkpoint intact and the partial one is ignored on restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["OuterCheckpointer"]


class OuterCheckpointer:
    """Saves and restores the latest state of an outer loop under one directory.

    Args:
      directory: where checkpoints live (created on the first save); one sub-directory per kept
        meta-step.
      max_to_keep: how many of the latest checkpoints to keep (default 1: only the latest).

    The state pytree must hold arrays (numpy or JAX) and Python scalars; NamedTuple and dict
    containers are restored as the ``like`` pytree given to :meth:`restore`. Store PRNG keys as
    raw ``uint32`` arrays (``jax.random.PRNGKey``), not typed keys. Metadata must be JSON-able.

    Raises:
      ValueError: ``max_to_keep < 1``.

    Example:
      >>> ckpt = OuterCheckpointer("runs/x/checkpoints")  # doctest: +SKIP
      >>> ckpt.save(3, {"weights": w, "key": key}, {"history": [0.5, 0.4, 0.3]})  # doctest: +SKIP
      >>> step, state, meta = ckpt.restore({"weights": w, "key": key})  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 1):
        if max_to_keep < 1:
            raise ValueError(
                f"OuterCheckpointer: max_to_keep must be >= 1, got {max_to_keep}; "
                "pass 1 to keep only the latest"
            )
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # Synchronous: when save() returns the checkpoint is on disk, so "killed after meta-step
            # t" reliably means "resumes after meta-step t".
            enable_async_checkpointing=False,
            create=False,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "metadata")
        )

    def save(self, step: int, state: Any, metadata: dict[str, Any]) -> None:
        """Writes the checkpoint of meta-step ``step`` atomically, deleting older ones.

        Args:
          step: the number of meta-steps completed (a non-negative int, increasing across saves).
          state: pytree of arrays (the outer optimizer's state).
          metadata: JSON-able dict (history, config echo, ...).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        state = jax.tree.map(np.asarray, state)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The meta-step of the latest complete checkpoint, or ``None`` if there is none."""
        if not self.directory.exists():
            return None
        self._manager.reload()
        return self._manager.latest_step()

    def restore(self, like: Any, step: int | None = None) -> tuple[int, Any, dict[str, Any]]:
        """Reads a checkpoint back.

        Args:
          like: a pytree with the structure, shapes and dtypes of the saved state (e.g. the
            freshly initialized state); its containers (NamedTuples, dicts) are reproduced.
          step: which meta-step to restore; default the latest.

        Returns:
          ``(step, state, metadata)``; the state's leaves are numpy arrays.

        Raises:
          FileNotFoundError: there is no complete checkpoint in the directory.
        """
        if step is None:
            step = self.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory}; start without resuming or point at the "
                "directory of an earlier run"
            )
        target = jax.tree.map(np.asarray, like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore()
            ),
        )
        state = jax.tree.map(np.asarray, restored["state"])
        return step, state, dict(restored["metadata"])

    def close(self) -> None:
        """Releases orbax's resources (threads); the checkpoints stay on disk."""
        self._manager.close()

    def __enter__(self) -> OuterCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
