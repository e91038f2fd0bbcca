"""Scoring many learning-rate schedules at once: one compiled, batched training run per chunk.

A schedule enters training only as ``meta["log_lr"]``, so a grid of schedules is a batch of meta
values for one per-step-LR setup: the training run is compiled once and ``vmap``-ed over the
schedules, instead of being recompiled or re-dispatched per schedule.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from mgd.outer.lr._schedule import PiecewiseLinearSchedule

__all__ = ["evaluate_schedules", "lr_knots_of", "per_step_setup"]


def lr_knots_of(setup: Any, *, where: str) -> tuple[int, ...]:
    """The knot steps of a setup's learning-rate metaparameter.

    ``MetaSpec(lr_knots=...)`` gives its knots; ``MetaSpec(per_step_lr=True)`` a knot at every
    step ``0 .. T-1``.

    Raises:
      ValueError: the setup has no learning-rate metaparameter.
    """
    spec = setup.meta_spec
    if spec.lr_knots is not None:
        return tuple(spec.lr_knots)
    if spec.per_step_lr:
        return tuple(range(setup.num_steps))
    raise ValueError(
        f"{where}: the setup has no learning-rate metaparameter; build it with "
        "meta_spec=mgd.MetaSpec(lr_knots=(0, ..., num_steps)) (or per_step_lr=True) and an "
        "optimizer whose learning rate is 1.0, so meta['log_lr'] sets the absolute rate"
    )


def per_step_setup(setup: Any) -> Any:
    """The same setup with one learning rate per step (``MetaSpec(per_step_lr=True)``)."""
    spec = dataclasses.replace(setup.meta_spec, lr_knots=None, per_step_lr=True)
    return setup.replace(meta_spec=spec)


def evaluate_schedules(
    setup: Any,
    schedules: Sequence[PiecewiseLinearSchedule],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """Trains once per schedule (vmapped in chunks) and returns each run's objective.

    Every schedule is turned into its rate at each step, so schedules with any knots — a found
    knot schedule, a one-cycle grid entry — are trained by the same compiled function and scored
    identically. Each run starts from ``setup.init_state()`` with the setup's seed and batch
    order, like the runs of the search.

    Args:
      setup: a ``mgd.TrainingSetup`` (its learning-rate spec, if any, is replaced by a per-step
        one; other metaparameters keep their ``init_meta()`` values).
      schedules: ``N`` schedules with ``num_steps == setup.num_steps``.
      batch_size: schedules trained at once; memory grows with it (one training state each).
      progress: show a tqdm bar over chunks.

    Returns:
      float64 array ``(N,)``: the objective (e.g. validation loss) of each run; NaN or inf
      where training diverged.

    Raises:
      ValueError: a schedule made for another number of steps, or ``batch_size < 1``.

    Example:
      >>> grid = mgd.outer.lr.lr_schedule_grid(setup.num_steps)  # doctest: +SKIP
      >>> losses = evaluate_schedules(setup, [g.schedule for g in grid])  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError(f"evaluate_schedules: batch_size must be >= 1, got {batch_size}")
    for i, s in enumerate(schedules):
        if s.num_steps != setup.num_steps:
            raise ValueError(
                f"evaluate_schedules: schedule {i} is for {s.num_steps} steps but the setup "
                f"trains for {setup.num_steps}; build it with num_steps={setup.num_steps}"
            )
    if not schedules:
        return np.zeros((0,))
    per_step = per_step_setup(setup)
    base = per_step.init_meta()
    dtype = base["log_lr"].dtype
    log_lr = np.stack([np.log(s.rates()) for s in schedules]).astype(dtype)

    @jax.jit
    def run_chunk(chunk):
        def objective(log_lr):
            meta = {**base, "log_lr": log_lr}
            return per_step.objective_fn(per_step.train(meta), meta)

        return jax.vmap(objective)(chunk)

    size = min(batch_size, len(schedules))
    out = []
    for start in tqdm(
        range(0, len(schedules), size), desc="schedules", unit="chunk", disable=not progress
    ):
        chunk = log_lr[start : start + size]
        # Pad the last chunk to the compiled size instead of compiling a second shape.
        pad = size - chunk.shape[0]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        out.append(np.asarray(run_chunk(padded))[: chunk.shape[0]])
    return np.concatenate(out).astype(np.float64)


def mean_seconds(fns, counts, rounds: int = 3) -> list[float]:
    """Mean wall time of each ``fn()``, after one call that compiles it.

    Each round calls ``fns[i]`` ``counts[i]`` times back to back (choose counts so every block
    takes about equally long); rounds alternate between the functions, so load from other
    processes on a shared machine slows both alike and their ratio stays fair. (A minimum over
    single calls would not: a short call slips between other processes' work more easily.)
    """
    for fn in fns:
        jax.block_until_ready(fn())
    totals = [0.0 for _ in fns]
    for _ in range(rounds):
        for i, (fn, n) in enumerate(zip(fns, counts, strict=True)):
            start = time.perf_counter()
            for _ in range(n):
                jax.block_until_ready(fn())
            totals[i] += time.perf_counter() - start
    return [t / (rounds * n) for t, n in zip(totals, counts, strict=True)]
