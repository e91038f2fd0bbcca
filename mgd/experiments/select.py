"""The configuration of ``mgd select``: frozen dataclasses, read from YAML/TOML by ``load_config``.

``SelectConfig()`` is the built-in default and equals ``configs/select/default.yaml`` (a test
checks), so the installed command works without the repository's files.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "OuterConfig",
    "EvalConfig",
    "SelectConfig",
]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the candidate pool, the target and the test split come from.

    Attributes:
      name: ``"digits"`` (scikit-learn's digits, shipped with the package, split at random) or
        ``"npz"`` (a file with ``x_train, y_train, x_target, y_target, x_test, y_test``; the
        CLI's ``--data`` sets this).
      path: the ``.npz`` file when ``name`` is ``"npz"``.
      target_fraction: digits only, fraction of the images in the target split.
      test_fraction: digits only, fraction in the held-out test split; the rest is the pool.
      split_seed: digits only, seed of the split.
      label_noise: fraction of the candidate pool whose labels are replaced by a random *wrong*
        label (an experiment: the selection should avoid them), in [0, 1). Target and test
        labels are never changed.
      noise_seed: seed of the label noise.
    """

    name: Literal["digits", "npz"] = "digits"
    path: str | None = None
    target_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The inner model: an MLP on flattened inputs (``mgd.train.models.MLP``).

    Attributes:
      hidden: widths of the hidden layers.
      activation: ``relu``, ``gelu``, ``tanh``, ``softplus`` or ``silu``.
      output_scale: factor on the logits (below 1 makes metagradients smoother).
      normalize: layer norm before each activation (``MLPConfig.normalize``; metasmooth).
    """

    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    output_scale: float = 1.0
    normalize: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The inner training run, the same for selection and for the evaluation models.

    Attributes:
      optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
      learning_rate: the optimizer's learning rate.
      momentum: SGD momentum (ignored by Adam).
      batch_size: examples per step; the selected subset must hold at least one batch.
      num_steps: training steps (the metagradient goes through all of them).
    """

    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    num_steps: int = 1000


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    """The outer optimizer (see ``mgd.outer.selection._update``).

    Attributes:
      method: ``"exchange"`` (fixed budget: the subset always has the requested size; swaps the
        worst-ranked selected candidates for the best-ranked unselected ones) or ``"counts"``
        (the paper's Algorithm 1: integer counts from 1, ``c <- max(0, c - sign(g) * m)``; the
        subset is the largest counts).
      meta_steps: number of meta-steps, one metagradient each.
      p: Bernoulli probability of the random mask (``counts``: which counts move; ``exchange``:
        which candidates may be swapped).
      exchange_fraction: ``exchange`` only, most swaps per meta-step as a fraction of the subset
        size (the exchange size is ``max(1, round(exchange_fraction * size))``).
      momentum: weight of past metagradients in the ranking, in [0, 1) (0: latest only).
      step_size: ``counts`` only, how far a count moves per meta-step.
      replay_k: the engine's checkpoint policy ``KAryTree(replay_k)``; ``None`` lets the engine
        choose (a depth-2 tree, ``k ~ sqrt(num_steps)``).
    """

    method: Literal["exchange", "counts"] = "exchange"
    meta_steps: int = 10
    p: float = 1.0
    exchange_fraction: float = 0.1
    momentum: float = 0.5
    step_size: float = 1.0
    replay_k: int | None = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Honest evaluation: models retrained from scratch with seeds selection never used.

    Attributes:
      num_seeds: models trained on the selected subset and on the full pool (one per seed).
      num_random: random subsets of the same size, one model each (mean and std reported).
      num_steps: training steps of the evaluation models (``None``: ``train.num_steps``). The
        selection's metagradients go through ``train.num_steps``; the models that report its
        value may be trained longer, as final models usually are. The selected subset, the
        random subsets and the full pool all get this same recipe.
    """

    num_seeds: int = 3
    num_random: int = 5
    num_steps: int | None = None


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """Everything ``mgd select`` does; the CLI's flags override ``fraction``, ``seed``,
    ``outer.meta_steps`` and ``data``.

    Attributes:
      fraction: size of the subset as a fraction of the candidate pool, in (0, 1].
      seed: seed of selection: the inner model's initialization and batch order while selecting,
        the initial subset and the outer optimizer's masks.
      data, model, train, outer, eval: the sections above.
    """

    fraction: float = 0.25
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    outer: OuterConfig = OuterConfig()
    eval: EvalConfig = EvalConfig()
