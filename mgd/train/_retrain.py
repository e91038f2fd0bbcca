"""Honest evaluation: models retrained from scratch with seeds the outer loop never used."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mgd.train._setup import TrainingSetup

__all__ = ["retrain_and_evaluate"]


def retrain_and_evaluate(
    setup: TrainingSetup, *, seeds: Iterable[int], meta: dict | None = None, split: str = "test"
) -> dict[str, np.ndarray]:
    """Trains a model from scratch per seed and evaluates each on ``split``.

    The seed replaces the setup's seed for parameter init, batch order and augmentation; the
    training function is compiled once for all seeds.

    Args:
      setup: the ``TrainingSetup`` (e.g. restricted to selected data, or with poisoned inputs).
      seeds: the seeds, e.g. ``range(1000, 1005)``: ones the outer optimizer never trained with.
      meta: metaparameters to train with; ``None`` is ``setup.init_meta()``.
      split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
      The keys of ``setup.evaluate`` (``{"loss", "accuracy"}`` by default; ``"loss"`` and the
      setup's metric), each a ``(len(seeds),)`` float64 array, one entry per seed in the given
      order.

    Raises:
      ValueError: if ``seeds`` is empty.

    Example:
      >>> r = mgd.train.retrain_and_evaluate(setup, seeds=range(100, 103))
      >>> r["accuracy"].mean(), r["accuracy"].std()
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("retrain_and_evaluate: seeds is empty; give at least one seed")
    results = [setup.evaluate(setup.train(meta, seed=s), split) for s in seeds]
    return {k: np.array([r[k] for r in results], np.float64) for k in results[0]}
