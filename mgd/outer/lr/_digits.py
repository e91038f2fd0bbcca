"""The reference setting of the learning-rate search: a metasmooth MLP on digits, plain SGD.

The setting of ``mgd lr``'s default config (``mgd.experiments.lr.LRConfig()``) as a function of
its size, for tests and interactive use.
"""

from __future__ import annotations

import numpy as np
import optax

from mgd.train import Dataset, MetaSpec, TrainingSetup, load_digits
from mgd.train.models import MLP, MLPConfig

__all__ = ["digits_lr_setup"]


def digits_lr_setup(
    *,
    num_steps: int = 200,
    num_knots: int = 11,
    batch_size: int = 64,
    width: int = 128,
    seed: int = 0,
    data: Dataset | None = None,
) -> TrainingSetup:
    """A ``TrainingSetup`` for schedule search: a normalized MLP on digits, SGD, knot LR.

    The MLP has one tanh hidden layer with layer norm before the activation
    (``MLPConfig(normalize=True)``): without it, a search step to a rate 10x above the best
    constant one blows the weights up and the run never recovers.

    Args:
      num_steps: training steps ``T`` (200 at batch 64 is about 12 epochs of the 1,079 training
        images).
      num_knots: evenly spaced learning-rate knots on ``[0, T]``, both ends included.
      batch_size: examples per step.
      width: hidden units of the MLP.
      seed: the setup's seed (init and batch order of every search run).
      data: the data; default ``mgd.load_digits()`` (validation split carved from the training
        data, test split held out).

    Returns:
      The setup; ``meta["log_lr"]`` has shape ``(num_knots,)``, the optimizer is
      ``optax.sgd(1.0)`` so the schedule sets the absolute rate.
    """
    if num_knots < 2:
        raise ValueError(f"digits_lr_setup: num_knots must be >= 2, got {num_knots}")
    knots = tuple(int(k) for k in np.round(np.linspace(0, num_steps, num_knots)))
    return TrainingSetup(
        MLP(MLPConfig(hidden=(width,), activation="tanh", normalize=True)),
        optax.sgd(1.0),
        load_digits() if data is None else data,
        batch_size=batch_size,
        num_steps=num_steps,
        seed=seed,
        meta_spec=MetaSpec(lr_knots=knots),
    )
