"""The meta-descent loop every outer optimizer runs, and the engine options it passes down.

One meta-step: ``(value, grad) = metagradient(params)`` through the whole training run, an
optax-shaped update of ``params``, one :class:`MetaStep` history record, an atomic orbax
checkpoint, the progress bar, the callback. Selection, learning-rate search and poisoning plug
in their metagradient (which setup, which seed), their update rule and what a record notes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from mgd.engine import AbstractCheckpointPolicy, AbstractStateStore
from mgd.outer.checkpointing import OuterCheckpointer

__all__ = [
    "Replay",
    "MetaStep",
    "LoopResult",
    "ResumeError",
    "meta_descent",
    "check_meta_steps",
    "setup_fingerprint",
]


class ResumeError(ValueError):
    """A save directory whose checkpoint this run cannot continue (bad input, not a failure).

    Raised before the first meta-step, so a command line can report it as bad input.
    """


@dataclasses.dataclass(frozen=True)
class Replay:
    """How the replay engine computes each metagradient (``mgd.metagradient``'s options).

    Passed as ``replay=`` to every application, as diffrax passes ``adjoint=``.

    Args:
      checkpoint: the checkpoint policy (``mgd.StoreAll()``, ``mgd.KAryTree(k)``,
        ``mgd.Binomial(slots)``); ``None`` lets the engine choose.
      store: where stored states live (``"device"``, ``"host"``, ``"disk"`` or a store object);
        ``None`` is the device.
      memory_budget: bytes the reverse sweep may hold on the device; ``None`` for no bound.

    Raises:
      ValueError: a ``checkpoint`` that is not a policy or a ``memory_budget`` that is not a
        positive int.

    Example:
      >>> replay = mgd.Replay(checkpoint=mgd.KAryTree(4), store="host")
      >>> mgd.select_data(setup, size=100, meta_steps=10, replay=replay)  # doctest: +SKIP
    """

    checkpoint: AbstractCheckpointPolicy | None = None
    store: AbstractStateStore | str | None = None
    memory_budget: int | None = None

    def __post_init__(self):
        if self.checkpoint is not None and not isinstance(
            self.checkpoint, AbstractCheckpointPolicy
        ):
            raise ValueError(
                f"Replay: checkpoint must be a checkpoint policy (mgd.StoreAll(), "
                f"mgd.KAryTree(k), mgd.Binomial(slots)) or None, got {self.checkpoint!r}"
            )
        budget = self.memory_budget
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget <= 0
        ):
            raise ValueError(
                f"Replay: memory_budget must be a positive number of bytes or None, got {budget!r}"
            )

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``mgd.metagradient`` (and ``TrainingSetup.metagradient``);
        options left at ``None`` are left out, so the engine's defaults apply."""
        options = {"checkpoint": self.checkpoint}
        if self.store is not None:
            options["store"] = self.store
        if self.memory_budget is not None:
            options["memory_budget"] = self.memory_budget
        return options

    def describe(self) -> dict[str, Any]:
        """A JSON-able echo (for fingerprints and run records)."""
        return {
            "checkpoint": None if self.checkpoint is None else repr(self.checkpoint),
            "store": None if self.store is None else repr(self.store),
            "memory_budget": self.memory_budget,
        }


class MetaStep(NamedTuple):
    """One meta-step of an outer loop (the same record for every application).

    Attributes:
      step: the meta-step, 0-based.
      objective: the objective of the run trained with this step's metaparameters (before its
        update); ``nan``/``inf`` if the run diverged.
      seconds: wall time of its metagradient (the first one includes compiling).
      forward_steps: training steps the engine ran (0 if the metagradient failed).
      vjp_steps: reverse steps the engine ran.
      info: what the application notes (JSON-able): selection the subset, LR search the rates,
        poisoning the crafting seed.
    """

    step: int
    objective: float
    seconds: float
    forward_steps: int
    vjp_steps: int
    info: dict[str, Any]


class LoopResult(NamedTuple):
    """What :func:`meta_descent` returns: the last ``params``, ``opt_state`` and the history."""

    params: Any
    opt_state: Any
    history: list[MetaStep]


def check_meta_steps(meta_steps: Any, *, where: str) -> int:
    """``meta_steps`` as an int, or a ``ValueError`` unless it is an int >= 1 (not a bool)."""
    if (
        isinstance(meta_steps, bool)
        or not isinstance(meta_steps, int | np.integer)
        or meta_steps < 1
    ):
        raise ValueError(f"{where}: meta_steps must be an int >= 1, got {meta_steps!r}")
    return int(meta_steps)


def _digest(value: Any) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(value):
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def setup_fingerprint(setup: Any) -> dict[str, Any]:
    """What of a ``TrainingSetup`` a resumed run must share: data, model, recipe, seed.

    The optimizer is a pair of functions and cannot be compared; an experiment passes its
    config echo as the loop's ``fingerprint`` for it.
    """
    d = setup.data
    return {
        "data": _digest([d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test]),
        "model": repr(setup.model),
        "batch_size": setup.batch_size,
        "num_steps": setup.num_steps,
        "seed": setup.seed,
        "meta_spec": repr(setup.meta_spec),
        "objective": repr(setup.objective),
        "augment": repr(setup.augment),
    }


def _jsonable(value: Any) -> Any:
    # A round trip through JSON, so that a fresh fingerprint compares equal to a restored one.
    return json.loads(json.dumps(value, default=repr))


def meta_descent(
    metagradient: Callable[[int, Any], tuple[Any, Any, Any]],
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    meta_steps: int,
    record: Callable[[int, Any, Any, Any, Any], dict[str, Any]] | None = None,
    fingerprint: Any | Callable[[], Any] = None,
    save_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[list[MetaStep]], None] | None = None,
    progress: bool = True,
    desc: str = "meta-steps",
    where: str = "meta_descent",
    meta_step: Callable[..., tuple[Any, Any, Any, Any, Any]] | None = None,
) -> LoopResult:
    """Runs ``meta_steps`` steps of metagradient descent on ``params``, resumably.

    Meta-step ``k``: ``value, grad, stats = metagradient(k, params)``; ``info = record(k, params,
    value, grad, new_opt_state)``; ``updates, opt_state = optimizer.update(grad, opt_state,
    params, value=value)`` (optax's extra-args protocol: rules that ignore ``value`` work
    unchanged); ``params = optax.apply_updates(params, updates)``; then a checkpoint, the bar and
    ``callback(history)``.

    Resuming: every checkpoint stores a fingerprint of the run (``fingerprint`` with the initial
    ``params`` and optimizer state). ``resume=True`` continues after the last checkpointed
    meta-step when the fingerprints match and refuses a mismatch; with no checkpoint yet (a run
    killed before its first) it starts from the beginning. Each meta-step is a deterministic
    function of the checkpointed state, so a resumed run ends where an uninterrupted one does.

    Args:
      metagradient: ``(k, params) -> (value, grad, stats)``: the objective, its gradient with
        respect to ``params`` (same structure) and the engine's stats (or ``None``).
      params: pytree of arrays, the initial metaparameters being optimized.
      optimizer: an ``optax.GradientTransformation`` (``init``/``update`` pair) on ``params``.
      meta_steps: total meta-steps (resumed ones included), an int >= 1.
      record: ``(k, params, value, grad, opt_state) -> dict``: JSON-able notes for the
        history record of meta-step ``k`` (``params`` before the update, ``opt_state`` after).
      fingerprint: JSON-able description of everything else that determines the run, or a
        function returning it (called only with ``save_dir``: hashing a large dataset is not
        free).
      save_dir: directory of the outer loop's orbax checkpoints (one after every meta-step);
        ``None`` saves nothing.
      resume: continue from the checkpoint in ``save_dir``.
      callback: called after every meta-step with the history so far (resumed steps included).
      progress: show a tqdm bar with the objective.
      desc: the bar's label.
      where: the caller's name in error messages.
      meta_step: ``(k, params, opt_state, optimizer) -> (value, grad, stats, updates,
        opt_state)``: the metagradient and the update together (e.g. one compiled program,
        `mgd.engine.compiled.outer_update`), used instead of ``metagradient`` and the loop's
        own ``optimizer.update``, with the same results; ``optimizer`` is the loop's
        (extra-args) optimizer. A record's ``seconds`` then include the update.

    Returns:
      A :class:`LoopResult`: the final ``params`` and ``opt_state`` and one :class:`MetaStep`
      per meta-step.

    Raises:
      ValueError: ``meta_steps`` not an int >= 1; ``resume=True`` without ``save_dir``.
      ResumeError: (a ``ValueError``) a ``save_dir`` holding a checkpoint without
        ``resume=True``; a checkpoint of a different run (fingerprint mismatch) or of more
        meta-steps than ``meta_steps``.
    """
    meta_steps = check_meta_steps(meta_steps, where=where)
    if resume and save_dir is None:
        raise ValueError(f"{where}: resume=True needs save_dir, the directory to resume from")
    optimizer = optax.with_extra_args_support(optimizer)
    opt_state = optimizer.init(params)
    history: list[MetaStep] = []
    ckpt = None if save_dir is None else OuterCheckpointer(save_dir)
    if ckpt is not None:
        run = fingerprint() if callable(fingerprint) else fingerprint
        print_ = _jsonable({"run": run, "start": _digest((params, opt_state))})
    try:
        latest = None if ckpt is None else ckpt.latest_step()
        if ckpt is not None and latest is not None:
            if not resume:
                raise ResumeError(
                    f"{where}: {ckpt.directory} already holds a checkpoint (meta-step {latest}); "
                    "pass resume=True to continue it or choose another save directory"
                )
            _, state, saved = ckpt.restore({"params": params, "opt_state": opt_state})
            if saved.get("fingerprint") != print_:
                raise ResumeError(
                    f"{where}: the checkpoint in {ckpt.directory} was written by a different run "
                    "(setup, data, seeds, indices or options differ); rerun with those, or "
                    "choose another save directory"
                )
            history = [MetaStep(*r) for r in saved["history"]]
            if len(history) > meta_steps:
                raise ResumeError(
                    f"{where}: the checkpoint in {ckpt.directory} has {len(history)} meta-steps, "
                    f"more than meta_steps={meta_steps}; pass meta_steps >= {len(history)}"
                )
            params = jax.tree.map(jnp.asarray, state["params"])
            opt_state = jax.tree.map(jnp.asarray, state["opt_state"])

        bar = tqdm(total=meta_steps, initial=len(history), desc=desc, disable=not progress)
        for k in range(len(history), meta_steps):
            started = time.perf_counter()
            if meta_step is None:
                value, grad, stats = metagradient(k, params)
                objective = float(value)  # blocks until the metagradient is done
                seconds = time.perf_counter() - started
                updates, opt_state = optimizer.update(grad, opt_state, params, value=value)
            else:
                value, grad, stats, updates, opt_state = meta_step(k, params, opt_state, optimizer)
                objective = float(value)
                seconds = time.perf_counter() - started
            info = {} if record is None else record(k, params, value, grad, opt_state)
            history.append(
                MetaStep(
                    k,
                    objective,
                    seconds,
                    0 if stats is None else int(stats.forward_steps),
                    0 if stats is None else int(stats.vjp_steps),
                    _jsonable(info),
                )
            )
            params = optax.apply_updates(params, updates)
            if ckpt is not None:
                ckpt.save(
                    k + 1,
                    {"params": params, "opt_state": opt_state},
                    {"fingerprint": print_, "history": [list(r) for r in history]},
                )
            bar.set_postfix(objective=f"{objective:.4g}")
            bar.update(1)
            if callback is not None:
                callback(history)
        bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()
    return LoopResult(params, opt_state, history)
