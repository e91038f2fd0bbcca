"""The poisoning experiment as one config: data, victim recipe, MGD attack, baselines, evaluation.

``PoisonConfig`` (read from ``configs/poison/*.yaml`` with ``mgd.config.load_config``) describes
the whole experiment; :func:`run_poison_experiment` runs it: crafts the MGD poison and every
baseline on the same poisoned examples, trains victims from scratch with unseen seeds on the clean
and on each poisoned pool, and writes ``metrics.json`` / ``accuracy.png``. ``scripts/poison.py``
and the notebooks call it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import optax

from mgd.config import config_to_dict
from mgd.engine import KAryTree
from mgd.outer._loop import Replay
from mgd.outer.poison._attack import PoisonResult, check_fraction, poison_attack
from mgd.outer.poison._baselines import label_flip_poison, random_noise_poison
from mgd.outer.poison._evaluate import PoisonReport, evaluate_poisons, plot_poison_report
from mgd.outer.poison._gc import gradient_canceling_poison
from mgd.outer.poison._update import check_bound
from mgd.train import (
    Dataset,
    TrainingSetup,
    load_cifar10,
    load_digits,
    load_npz,
    make_optimizer,
    make_synthetic,
)
from mgd.train.models import make_model

__all__ = [
    "PoisonDataConfig",
    "PoisonVictimConfig",
    "PoisonAttackConfig",
    "GradientCancelingConfig",
    "PoisonConfig",
    "PoisonExperiment",
    "load_poison_data",
    "make_victim_setup",
    "run_poison_experiment",
    "BASELINES",
]

BASELINES = ("random_noise", "label_flip", "gradient_canceling")
_DATASETS = ("digits", "cifar10", "synthetic", "npz")


@dataclasses.dataclass(frozen=True)
class PoisonDataConfig:
    """Which data the experiment poisons.

    Attributes:
      name: ``"digits"`` (embedded), ``"cifar10"`` (a local copy: ``path`` or
        ``$MGD_CIFAR10_DIR``), ``"npz"`` (``path``, Contract 2's keys) or ``"synthetic"``
        (Gaussian clusters of ``synthetic_shape``, e.g. CIFAR-shaped for timing).
      path: folder (cifar10) or file (npz).
      val_fraction: digits: fraction held out as the validation (attack target) split.
      test_fraction: digits: fraction held out for reporting.
      split_seed: digits: seed of the split.
      num_train: optional size of the training pool (its first ``num_train`` examples); ``None``
        keeps all (CIFAR-10: 40,000 as in the paper).
      synthetic_shape: synthetic: input shape.
      synthetic_sizes: synthetic: ``(num_train, num_val, num_test)``.
    """

    name: str = "digits"
    path: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    num_train: int | None = None
    synthetic_shape: tuple[int, ...] = (32, 32, 3)
    synthetic_sizes: tuple[int, ...] = (400, 100, 100)

    def __post_init__(self):
        if self.name not in _DATASETS:
            raise ValueError(f"data.name must be one of {_DATASETS}, got {self.name!r}")
        if self.num_train is not None and self.num_train < 2:
            raise ValueError(f"data.num_train must be >= 2 or null, got {self.num_train}")
        if len(self.synthetic_sizes) != 3:
            raise ValueError(
                "data.synthetic_sizes must be [num_train, num_val, num_test], got "
                f"{list(self.synthetic_sizes)}"
            )


@dataclasses.dataclass(frozen=True)
class PoisonVictimConfig:
    """The victim's training recipe (the same for crafting and for evaluation).

    Attributes:
      model: ``mgd.train.models.make_model`` config, e.g. ``{name: mlp, hidden: [64]}``.
      optimizer: ``mgd.train.make_optimizer`` config, e.g. ``{name: sgd, learning_rate: 0.1,
        momentum: 0.9}``.
      lr_decay: ``"cosine"`` (the optimizer's learning rate decays to 5% over training) or
        ``"constant"``.
      batch_size: examples per step.
      num_steps: training steps.
      augment: random crops and flips (CIFAR-10).
      objective: what the attack maximizes on the validation split: ``"val_loss"`` (the
        victim's cross-entropy) or ``"val_margin"``.
    """

    model: dict = dataclasses.field(default_factory=lambda: {"name": "mlp", "hidden": [64]})
    optimizer: dict = dataclasses.field(
        default_factory=lambda: {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9}
    )
    lr_decay: str = "cosine"
    batch_size: int = 64
    num_steps: int = 150
    augment: bool = False
    objective: str = "val_loss"

    def __post_init__(self):
        if self.lr_decay not in ("cosine", "constant"):
            raise ValueError(
                f"victim.lr_decay must be 'cosine' or 'constant', got {self.lr_decay!r}"
            )


@dataclasses.dataclass(frozen=True)
class PoisonAttackConfig:
    """The MGD attack (see ``mgd.poison_attack``).

    Attributes:
      fraction: poisoned fraction of the training pool, in (0, 1); the paper: 0.025.
      bound: optional L-infinity radius as a fraction of the valid range (null: valid inputs
        only).
      meta_steps: outer iterations; the paper: ~800 on CIFAR-10.
      step_size: initial ascent step as a fraction of the valid range.
      final_step_size: the step after cosine decay over the meta-steps.
      rule: ``"sign"`` or ``"normalized"``.
      craft_seeds: training seeds cycled over meta-steps (kept apart from ``victim_seeds``).
      subset_seed: seed of the poisoned subset (shared by all attacks).
      replay_k: ``k`` of the engine's ``KAryTree(k)`` policy; null for the engine's default.
    """

    fraction: float = 0.025
    bound: float | None = None
    meta_steps: int = 100
    step_size: float = 0.05
    final_step_size: float = 0.005
    rule: str = "sign"
    craft_seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    subset_seed: int = 0
    replay_k: int | None = None

    def __post_init__(self):
        # Fail when the config is read, not after the data is loaded and compiled.
        check_fraction(self.fraction)
        check_bound(self.bound, where="attack")
        if self.meta_steps < 1:
            raise ValueError(f"attack.meta_steps must be >= 1, got {self.meta_steps}")
        if not 0 < self.final_step_size <= self.step_size:
            raise ValueError(
                "attack needs 0 < final_step_size <= step_size, got "
                f"{self.final_step_size} and {self.step_size}"
            )
        if not self.craft_seeds:
            raise ValueError("attack.craft_seeds is empty; give at least one training seed")


@dataclasses.dataclass(frozen=True)
class GradientCancelingConfig:
    """Gradient Canceling's options (see ``mgd.gradient_canceling_poison``)."""

    steps: int = 200
    step_size: float = 0.05
    target_radius: float = 0.1
    target_steps: int = 50
    craft_seed: int = 0


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
    """The whole poisoning experiment; the defaults are ``configs/poison/digits.yaml``.

    Attributes:
      data: which data.
      victim: the victim's training recipe.
      attack: the MGD attack.
      baselines: which baselines run, a subset of ``random_noise``, ``label_flip``,
        ``gradient_canceling``.
      gradient_canceling: Gradient Canceling's options.
      victim_seeds: seeds of the victims trained for evaluation (three or more; disjoint from
        every crafting seed).
    """

    data: PoisonDataConfig = PoisonDataConfig()
    victim: PoisonVictimConfig = PoisonVictimConfig()
    attack: PoisonAttackConfig = PoisonAttackConfig()
    baselines: tuple[str, ...] = BASELINES
    gradient_canceling: GradientCancelingConfig = GradientCancelingConfig()
    victim_seeds: tuple[int, ...] = (100, 101, 102, 103, 104)

    def __post_init__(self):
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(
                f"baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES)}"
            )
        crafted = set(self.attack.craft_seeds) | {self.gradient_canceling.craft_seed}
        shared = sorted(crafted & set(self.victim_seeds))
        if shared:
            raise ValueError(
                f"victim_seeds {shared} are also crafting seeds; evaluate victims on seeds the "
                "attacks never trained with"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class PoisonExperiment:
    """What :func:`run_poison_experiment` produced.

    Attributes:
      config: the config that ran.
      setup: the victim's training setup on the clean data.
      results: one :class:`mgd.outer.poison.PoisonResult` per attack, MGD first.
      report: the evaluation (:class:`mgd.outer.poison._evaluate.PoisonReport`).
      seconds: wall-clock seconds per phase (``"mgd"``, each baseline, ``"evaluation"``).
    """

    config: PoisonConfig
    setup: TrainingSetup
    results: dict[str, PoisonResult]
    report: PoisonReport
    seconds: dict[str, float]


def load_poison_data(cfg: PoisonDataConfig) -> Dataset:
    """Loads the dataset a :class:`PoisonDataConfig` names (never downloads).

    Raises:
      ValueError: a missing CIFAR-10 folder or npz file, or a malformed one.
    """
    if cfg.name == "digits":
        data = load_digits(
            val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed
        )
    elif cfg.name == "cifar10":
        data = load_cifar10(cfg.path)
    elif cfg.name == "npz":
        if cfg.path is None:
            raise ValueError("data.path is required for data.name 'npz'; pass the .npz file")
        data = load_npz(cfg.path)
    else:
        n_train, n_val, n_test = cfg.synthetic_sizes
        data = make_synthetic(
            num_train=n_train,
            num_val=n_val,
            num_test=n_test,
            input_shape=tuple(cfg.synthetic_shape),
            num_classes=10,
            seed=cfg.split_seed,
        )
    if cfg.num_train is not None and cfg.num_train < data.num_train:
        data = data.subset(np.arange(cfg.num_train))
    return data


def make_victim_setup(cfg: PoisonVictimConfig, data: Dataset) -> TrainingSetup:
    """The victim's ``TrainingSetup`` on ``data`` from a :class:`PoisonVictimConfig`."""
    model = make_model(cfg.model, num_classes=data.num_classes)
    opt_cfg = dict(cfg.optimizer)
    if cfg.lr_decay == "cosine":
        opt_cfg["learning_rate"] = optax.cosine_decay_schedule(
            float(opt_cfg.get("learning_rate", 1.0)), cfg.num_steps, alpha=0.05
        )
    return TrainingSetup(
        model,
        make_optimizer(opt_cfg),
        data,
        batch_size=cfg.batch_size,
        num_steps=cfg.num_steps,
        objective=cfg.objective,
        augment=cfg.augment,
    )


def run_poison_experiment(
    config: PoisonConfig,
    *,
    data: Dataset | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> PoisonExperiment:
    """Runs the MGD attack and the baselines on the same examples and evaluates all of them.

    Args:
      config: the experiment.
      data: the clean ``Dataset``; ``None`` loads ``config.data``.
      out: optional output folder: writes ``metrics.json`` (``clean`` and one entry per attack,
        each with ``test_accuracy_mean``, ``test_accuracy_std``, per-seed accuracies and the
        paired drop), ``accuracy.png``, ``run.json`` (config echo, seeds, timings, crafting
        histories) and ``poisons.npz`` (indices and perturbations per attack).
      resume: continue an interrupted MGD attack from ``out/checkpoints`` (needs ``out``);
        without it, checkpoints of an earlier run in ``out`` are discarded.
      progress: show progress bars.

    Returns:
      A :class:`PoisonExperiment`.

    Raises:
      ValueError: any invalid setting (fraction, bound, seeds, data without held-out splits...).
    """
    if resume and out is None:
        raise ValueError("resume needs an output folder (out=...) holding the checkpoints")
    data = load_poison_data(config.data) if data is None else data
    setup = make_victim_setup(config.victim, data)
    att = config.attack
    seconds: dict[str, float] = {}
    results: dict[str, PoisonResult] = {}

    ckpt_dir = None if out is None else Path(out) / "checkpoints"
    if ckpt_dir is not None and not resume and ckpt_dir.exists():
        # A fresh run must not pick up the meta-steps of an earlier run in the same folder.
        shutil.rmtree(ckpt_dir)
    t0 = time.perf_counter()
    results["mgd"] = poison_attack(
        setup,
        fraction=att.fraction,
        meta_steps=att.meta_steps,
        step_size=optax.cosine_decay_schedule(
            att.step_size, att.meta_steps, alpha=att.final_step_size / att.step_size
        ),
        bound=att.bound,
        rule=att.rule,
        craft_seeds=att.craft_seeds,
        seed=att.subset_seed,
        replay=Replay(None if att.replay_k is None else KAryTree(att.replay_k)),
        save_dir=ckpt_dir,
        resume=resume,
        fingerprint=config_to_dict(config),
        progress=progress,
    )
    seconds["mgd"] = time.perf_counter() - t0
    same = dict(fraction=att.fraction, seed=att.subset_seed)
    for name in config.baselines:
        t0 = time.perf_counter()
        if name == "random_noise":
            results[name] = random_noise_poison(data, bound=att.bound, **same)
        elif name == "label_flip":
            results[name] = label_flip_poison(data, **same)
        else:
            gc = config.gradient_canceling
            results[name] = gradient_canceling_poison(
                setup,
                bound=att.bound,
                steps=gc.steps,
                step_size=gc.step_size,
                target_radius=gc.target_radius,
                target_steps=gc.target_steps,
                craft_seed=gc.craft_seed,
                progress=progress,
                **same,
            )
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = evaluate_poisons(
        setup, list(results.values()), seeds=config.victim_seeds, progress=progress
    )
    seconds["evaluation"] = time.perf_counter() - t0
    experiment = PoisonExperiment(config, setup, results, report, seconds)
    if out is not None:
        _write_outputs(experiment, Path(out))
    return experiment


def _write_outputs(experiment: PoisonExperiment, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = experiment.report
    (out / "metrics.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    run = {
        "config": config_to_dict(experiment.config),
        "victim_seeds": list(report.seeds),
        "num_train": experiment.setup.data.num_train,
        "num_poisoned": int(experiment.results["mgd"].indices.size),
        "seconds": experiment.seconds,
        "history": {k: [h._asdict() for h in r.history] for k, r in experiment.results.items()},
        "mgd_drop_over_largest_baseline_drop": _ratio(report),
    }
    (out / "run.json").write_text(json.dumps(run, indent=2, default=_jsonable) + "\n")
    arrays: dict[str, Any] = {}
    for name, r in experiment.results.items():
        arrays[f"{name}_indices"] = r.indices
        arrays[f"{name}_perturbations"] = r.perturbations
        if name == "label_flip":
            arrays[f"{name}_labels"] = r.data.y_train[r.indices]
    np.savez_compressed(out / "poisons.npz", **arrays)
    import matplotlib.pyplot as plt

    fig = plot_poison_report(report, os.fspath(out / "accuracy.png"))
    plt.close(fig)


def _ratio(report: PoisonReport) -> float | None:
    if "mgd" not in report.attacks:
        return None
    base = report.largest_baseline_drop("mgd")
    return report.attacks["mgd"].drop_mean / base if base > 0 else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")
