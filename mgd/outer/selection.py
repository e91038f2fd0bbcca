"""Dataset selection by metagradient descent on data weights, and its honest evaluation.

``select_data`` runs the outer loop: each meta-step takes the exact metagradient of the target
loss with respect to every candidate's weight (``setup.metagradient``, i.e. the replay engine
through the whole training run) and lets a selection update rule
(``mgd.outer.selection_optim``) move the weights. ``evaluate_selection`` retrains models from
scratch, with seeds the outer loop never used, on the selected subset, on random subsets of the
same size and on the whole pool.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mgd.outer.checkpointing import OuterCheckpointer
from mgd.outer.selection_optim import (
    SelectionOptimizer,
    budget_exchange,
    subset_weights,
    top_k_subset,
)
from mgd.train import MetaSpec, TrainingSetup, retrain_and_evaluate

__all__ = ["SelectionResult", "select_data", "evaluate_selection"]


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """What :func:`select_data` found.

    Attributes:
      indices: int array ``(size,)``, the selected candidates (sorted), from the meta-step with the
        lowest target objective.
      best_step: that meta-step (0-based).
      weights: float array ``(n,)``, the weights after the last meta-step.
      history: one dict per meta-step: ``step``, ``objective`` (target loss of training with that
        step's weights), ``indices`` (the subset at that step), ``seconds`` (wall time of its
        metagradient), ``forward_steps`` and ``vjp_steps`` (the engine's counts).
    """

    indices: np.ndarray
    best_step: int
    weights: np.ndarray
    history: list[dict[str, Any]]


def select_data(
    setup: TrainingSetup,
    *,
    size: int,
    meta_steps: int,
    optimizer: SelectionOptimizer | None = None,
    fixed_budget: bool = True,
    seed: int = 0,
    checkpoint: Any = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    callback: Callable[[list[dict[str, Any]]], None] | None = None,
    progress: bool = True,
) -> SelectionResult:
    """Chooses ``size`` candidates of the training pool that minimize the target objective.

    The weights start at a random subset of ``size`` candidates scaled to keep the training
    budget (:func:`~mgd.outer.selection_optim.subset_weights`) when ``fixed_budget``, else at the
    paper's counts of 1. Each meta-step computes ``res = setup.metagradient(meta)`` (the engine;
    never a full unroll), logs the objective and the current subset, applies
    ``optimizer.update(res.grad["data_weights"], state, weights)``, and, with ``checkpoint_dir``,
    saves the outer state atomically. The subset of a count vector is its ``size`` largest
    counts (:func:`~mgd.outer.selection_optim.top_k_subset`). The returned subset is the logged one
    with the lowest target objective (the target split is the selection's own data; the test
    split is never looked at).

    Cost: one metagradient per meta-step, i.e. what the engine's checkpoint policy costs (about
    ``1 + log_k T`` training runs forward plus the reverse sweep).

    Args:
      setup: the training recipe, with ``MetaSpec(data_weights=True)``; its seed fixes the
        initialization and batch order used during selection. Other metaparameters stay at
        ``setup.init_meta()``.
      size: number of candidates to select, in ``[1, n]``.
      meta_steps: number of meta-steps (metagradients), >= 1.
      optimizer: a selection update rule; default
        ``budget_exchange(num_exchange=max(1, size // 10), momentum=0.5, seed=seed)`` when
        ``fixed_budget``, which it must match (``budget_exchange`` needs ``fixed_budget=True``,
        ``count_descent`` ``fixed_budget=False``).
      fixed_budget: start from a subset indicator (for ``budget_exchange``) rather than counts.
      seed: seed of the initial subset.
      checkpoint: the engine's checkpoint policy (``None``: the engine's default).
      checkpoint_dir: where to save the outer state after every meta-step; ``None`` saves nothing.
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if there is one.
      fingerprint: JSON-able description of the run stored with each checkpoint; resuming a
        checkpoint whose fingerprint differs is refused.
      callback: called after every meta-step (once it is checkpointed) with the history so far,
        resumed steps included; the last entry is the new meta-step (for logging).
      progress: show a tqdm progress bar over meta-steps with the objective.

    Returns:
      A :class:`SelectionResult`.

    Raises:
      ValueError: data weights are not switched on, ``size`` or ``meta_steps`` out of range, or
        the checkpoint to resume was written by a different run.

    Example:
      >>> setup = mgd.TrainingSetup(model, optax.sgd(0.01, momentum=0.9), data, batch_size=64,
      ...                           num_steps=500, meta_spec=mgd.MetaSpec(data_weights=True))
      >>> res = mgd.select_data(setup, size=data.num_train // 2, meta_steps=10)
      >>> data.subset(res.indices)  # the selected training set  # doctest: +SKIP
    """
    if not setup.meta_spec.data_weights:
        raise ValueError(
            "select_data: the setup's meta_spec has data_weights=False; build it with "
            "mgd.MetaSpec(data_weights=True)"
        )
    n = setup.data.num_train
    if not 1 <= size <= n:
        raise ValueError(f"select_data: size must be in [1, {n}] (the pool size), got {size}")
    if meta_steps < 1:
        raise ValueError(f"select_data: meta_steps must be >= 1, got {meta_steps}")
    if optimizer is None:
        if not fixed_budget:
            raise ValueError("select_data: without fixed_budget pass optimizer=count_descent(...)")
        optimizer = budget_exchange(num_exchange=max(1, size // 10), momentum=0.5, seed=seed)

    if fixed_budget:
        start = np.sort(np.random.default_rng(seed).permutation(n)[:size])
        weights = subset_weights(jnp.asarray(start), n)
    else:
        weights = jnp.ones(n, jnp.float32)
    state = {"weights": weights, "opt_state": optimizer.init(weights)}
    history: list[dict[str, Any]] = []
    fingerprint = {} if fingerprint is None else fingerprint

    ckpt = None if checkpoint_dir is None else OuterCheckpointer(checkpoint_dir)
    try:
        if ckpt is not None and resume and ckpt.latest_step() is not None:
            _, restored, metadata = ckpt.restore(state)
            if metadata.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"select_data: the checkpoint in {ckpt.directory} was written by a different "
                    "run (config, data or seed differ); rerun with those, or use a new output "
                    "directory"
                )
            state = jax.tree.map(jnp.asarray, restored)
            history = list(metadata["history"])

        update = jax.jit(optimizer.update)
        base_meta = setup.init_meta()
        bar = tqdm(total=meta_steps, initial=len(history), desc="meta-steps", disable=not progress)
        for step in range(len(history), meta_steps):
            weights = state["weights"]
            started = time.perf_counter()
            res = setup.metagradient({**base_meta, "data_weights": weights}, checkpoint=checkpoint)
            grad = res.grad["data_weights"]
            objective = float(res.value)  # blocks until the metagradient is done
            seconds = time.perf_counter() - started
            if fixed_budget:
                indices = np.flatnonzero(np.asarray(weights) > 0)
            else:
                indices = np.asarray(top_k_subset(weights, grad, size))
            entry = {
                "step": step,
                "objective": objective,
                "indices": indices.tolist(),
                "seconds": seconds,
                "forward_steps": int(res.stats.forward_steps),
                "vjp_steps": int(res.stats.vjp_steps),
            }
            updates, opt_state = update(grad, state["opt_state"], weights)
            state = {"weights": weights + updates, "opt_state": opt_state}
            history.append(entry)
            if ckpt is not None:
                ckpt.save(step + 1, state, {"history": history, "fingerprint": fingerprint})
            bar.set_postfix(objective=f"{objective:.4f}")
            bar.update(1)
            if callback is not None:
                callback(history)
        bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()

    best = min(history, key=lambda h: h["objective"])
    return SelectionResult(
        indices=np.asarray(best["indices"], np.int64),
        best_step=int(best["step"]),
        weights=np.asarray(state["weights"]),
        history=history,
    )


def evaluate_selection(
    setup: TrainingSetup,
    indices: Sequence[int] | np.ndarray,
    *,
    seeds: Sequence[int],
    num_random: int = 5,
    random_seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Test accuracy of models retrained from scratch on the selection, random subsets, the pool.

    Every model is trained with the setup's recipe (model, optimizer, batch size, steps) and no
    metaparameters, on the training data it is given, from the seeds in ``seeds`` (pass seeds
    the selection never trained with). Accuracy is measured on the held-out test split only.

    Args:
      setup: the training recipe used for selection (its ``meta_spec`` is ignored).
      indices: the selected candidates, ``(k,)``.
      seeds: training seeds for the selected subset and the full pool (one model each); the
        ``j``-th random subset is trained with ``seeds[j % len(seeds)]``.
      num_random: number of random subsets of size ``k`` (drawn with ``random_seed``).
      random_seed: seed of the random subsets.
      progress: show a tqdm progress bar over the retrained models.

    Returns:
      ``{"selected": {"accuracy", "accuracy_std", "accuracies"}, "random": {...}, "full":
      {...}, "size": k, "num_candidates": n}``; ``random["accuracies"]`` holds one mean accuracy
      per random subset and ``accuracy_std`` is their standard deviation.

    Raises:
      ValueError: ``seeds`` is empty or contains the setup's own seed, or ``num_random < 1``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or setup.seed in seeds:
        raise ValueError(
            f"evaluate_selection: seeds must be non-empty and exclude the selection's seed "
            f"{setup.seed} (honest evaluation retrains with fresh seeds), got {seeds}"
        )
    if num_random < 1:
        raise ValueError(f"evaluate_selection: num_random must be >= 1, got {num_random}")
    plain = setup.replace(meta_spec=MetaSpec())
    data, n, k = setup.data, setup.data.num_train, len(indices)
    rng = np.random.default_rng(random_seed)
    random_subsets = [np.sort(rng.permutation(n)[:k]) for _ in range(num_random)]
    total = 2 * len(seeds) + num_random
    with tqdm(total=total, desc="retraining", disable=not progress) as bar:

        def run(subset: np.ndarray | None, run_seeds: list[int]) -> np.ndarray:
            trained = plain if subset is None else plain.replace(data=data.subset(subset))
            acc = retrain_and_evaluate(trained, seeds=run_seeds, split="test")["accuracy"]
            bar.update(len(run_seeds))
            return acc

        selected = run(np.asarray(indices), seeds)
        random = np.array(
            [run(s, [seeds[j % len(seeds)]])[0] for j, s in enumerate(random_subsets)]
        )
        full = run(None, seeds)

    def summary(acc: np.ndarray) -> dict[str, Any]:
        return {
            "accuracy": float(acc.mean()),
            "accuracy_std": float(acc.std()),
            "accuracies": acc.tolist(),
        }

    return {
        "selected": summary(selected),
        "random": summary(random),
        "full": summary(full),
        "size": k,
        "num_candidates": n,
    }
