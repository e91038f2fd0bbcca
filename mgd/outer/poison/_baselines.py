"""Baseline poisoning attacks, in the same harness and budget as the MGD attack.

Each returns a :class:`mgd.outer.poison.PoisonResult` over the same poisoned examples (the same
``fraction`` or ``indices``) so that every attack is evaluated on the same victims:

- :func:`random_noise_poison` - random perturbations of the same budget (a sanity floor).
- :func:`label_flip_poison` - random label flipping of the same fraction (the one baseline that
  changes labels instead of inputs).
- :func:`mgd.outer.poison._gc.gradient_canceling_poison` - Gradient Canceling (Lu, Kamath, Yu
  2023), the earlier state of the art the MGD paper compares against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mgd.outer.poison._attack import (
    PoisonResult,
    absolute_bound,
    apply_perturbations,
    check_poison_data,
    resolve_indices,
)
from mgd.outer.poison._update import check_bound
from mgd.train import Dataset

__all__ = ["random_noise_poison", "label_flip_poison"]


def random_noise_poison(
    data: Dataset,
    *,
    fraction: float | None = None,
    indices: Any = None,
    bound: float | None = None,
    seed: int = 0,
) -> PoisonResult:
    """Random input noise on the poisoned examples, using the attack's whole budget.

    With an L-infinity ``bound`` (a fraction of the valid range, as for the MGD attack), each
    coordinate moves by ``+bound`` or ``-bound`` with equal probability (a random corner of the
    L-infinity ball: the largest random perturbation the budget allows), then is clipped to the
    valid range. Without a bound (only valid inputs, the budget of Gradient Canceling and of the
    unbounded MGD attack) each poisoned input is replaced by uniform noise over the valid range.
    Random noise is the standard "no optimization" control of the poisoning literature.

    Args:
      data: the clean ``Dataset`` (with non-empty validation and test splits).
      fraction: poisoned fraction in (0, 1); a seeded random subset (same as the other attacks
        for the same ``fraction`` and ``seed``). Give this or ``indices``.
      indices: the examples to perturb, instead of ``fraction``.
      bound: optional L-infinity radius as a fraction of the valid range, ``> 0``.
      seed: seed of the subset (with ``fraction``) and of the noise.

    Returns:
      A :class:`PoisonResult` named ``"random_noise"``.

    Raises:
      ValueError: ``fraction`` outside (0, 1), bad ``indices``, a non-positive ``bound``, or a
        dataset without validation/test split.

    Example:
      >>> res = random_noise_poison(mgd.load_digits(), fraction=0.025, bound=0.25)
      >>> float(np.abs(res.perturbations).max()) <= 0.25
      True

    References:
      Biggio, Nelson, Laskov. "Poisoning Attacks against Support Vector Machines", ICML 2012
      (random perturbations as the unoptimized baseline of optimized poisoning).
    """
    where = "random_noise_poison"
    check_poison_data(data, where=where)
    check_bound(bound, where=where)
    idx = resolve_indices(data, fraction=fraction, indices=indices, seed=seed, where=where)
    # A stream separate from the subset's, so the noise does not depend on how it was chosen.
    rng = np.random.default_rng([seed, 1])
    shape = (idx.size, *data.input_shape)
    low, high = data.x_range
    x = data.x_train[idx]
    if bound is None:
        noise = low + (high - low) * rng.uniform(size=shape).astype(np.float32)
        delta = noise - x
    else:
        delta = absolute_bound(data, bound) * rng.choice(np.float32([-1.0, 1.0]), size=shape)
    poisoned = apply_perturbations(data, idx, delta)
    return PoisonResult(
        name="random_noise",
        data=poisoned,
        indices=idx,
        perturbations=poisoned.x_train[idx] - x,
    )


def label_flip_poison(
    data: Dataset,
    *,
    fraction: float | None = None,
    indices: Any = None,
    seed: int = 0,
) -> PoisonResult:
    """Random label flipping: each poisoned example gets a uniformly random *different* label.

    The inputs stay clean; only the labels of the same fraction of the pool change. This is the
    label-noise attack of Biggio, Nelson and Laskov (2011), the usual label-flipping baseline for
    indiscriminate poisoning.

    Args:
      data: the clean ``Dataset`` (with non-empty validation and test splits).
      fraction: poisoned fraction in (0, 1). Give this or ``indices``.
      indices: the examples whose labels to flip, instead of ``fraction``.
      seed: seed of the subset (with ``fraction``) and of the new labels.

    Returns:
      A :class:`PoisonResult` named ``"label_flip"`` (zero perturbations).

    Raises:
      ValueError: ``fraction`` outside (0, 1), bad ``indices``, or a dataset without
        validation/test split.

    Example:
      >>> data = mgd.load_digits()
      >>> res = label_flip_poison(data, fraction=0.025)
      >>> bool(np.all(res.data.y_train[res.indices] != data.y_train[res.indices]))
      True

    References:
      Biggio, Nelson, Laskov. "Support Vector Machines Under Adversarial Label Noise", ACML 2011.
    """
    where = "label_flip_poison"
    check_poison_data(data, where=where)
    idx = resolve_indices(data, fraction=fraction, indices=indices, seed=seed, where=where)
    rng = np.random.default_rng([seed, 2])
    # An offset in [1, C) added modulo C is a uniform draw among the other C - 1 classes.
    offset = rng.integers(1, data.num_classes, size=idx.size)
    y = np.array(data.y_train)
    y[idx] = (y[idx] + offset) % data.num_classes
    return PoisonResult(
        name="label_flip",
        data=data.replace(y_train=y),
        indices=idx,
        perturbations=np.zeros((idx.size, *data.input_shape), np.float32),
    )
