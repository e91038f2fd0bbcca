"""The poisoning experiment (``mgd poison``): config, ``run``, outputs.

``run(config, out)`` crafts the MGD poison and every baseline on the same examples, trains
victims from scratch with unseen seeds on the clean and on each poisoned pool, and writes
``metrics.json``, ``accuracy.png``, ``run.json`` and ``poisons.npz``. The CLI, the notebooks and
the tests call it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optax

from mgd import distributed
from mgd.config import config_to_dict
from mgd.experiments._common import (
    DataConfig,
    OptimizerConfig,
    ReplayConfig,
    TrainConfig,
    check_processes_agree,
    checking_input,
    load_data,
    prepare_out,
    require_class_labels,
    setup_from_config,
    write_json,
)
from mgd.outer.poison import (
    PoisonReport,
    PoisonResult,
    evaluate_poisons,
    gradient_canceling_poison,
    influential_poison_indices,
    label_flip_poison,
    plot_poison_report,
    poison_attack,
    random_noise_poison,
)
from mgd.outer.poison._attack import (
    check_fraction,
    check_objective_options,
    check_target_augment,
)
from mgd.outer.poison._update import check_bound
from mgd.train import TrainingSetup
from mgd.train.models import MLPConfig

__all__ = [
    "PoisonAttackConfig",
    "GradientCancelingConfig",
    "PoisonConfig",
    "PoisonRun",
    "run",
    "BASELINES",
]

BASELINES = ("random_noise", "label_flip", "gradient_canceling")


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
      craft_seeds: training seeds cycled over meta-steps (kept apart from ``victim_seeds``);
        as many as ``meta_steps`` crafts against a fresh seed every meta-step.
      seeds_per_step: crafting runs averaged per meta-step (see ``mgd.poison_attack``).
      target: ``"val"`` or ``"val_and_clean"`` (the validation split with the unpoisoned
        training examples): where the attack maximizes the objective.
      target_augment: null, or a shift in pixels: every meta-step translates each target
        image by its own random shift of up to that many pixels per axis (see
        ``mgd.poison_attack``); needs image inputs.
      margin_clip: null maximizes ``train.objective``; a number ``kappa``, the logit margin
        clipped at ``kappa`` (see ``mgd.poison_attack``).
      logit_scale: null, or a number ``tau``: the cross-entropy of logits rescaled to RMS ``tau``
        (see ``mgd.poison_attack``); at most one of ``margin_clip`` and ``logit_scale``.
      choose: which examples every attack poisons: ``"random"``, a seeded uniform subset, or
        ``"metagradient"``, those whose first ascent step raises the objective most
        (``mgd.outer.poison.influential_poison_indices``, one metagradient per seed in
        ``choose_seeds``), or ``"metagradient_per_class"``, the same within each class's share
        of the pool.
      subset_seed: seed of the random subset (``choose: random``) and of the ``other_class``
        starting images.
      init: where the ascent starts: ``"zero"`` (the clean images) or ``"other_class"`` (each
        poisoned image replaced by a pool image of another class, its label kept; see
        ``mgd.outer.poison.other_class_start``).
      choose_seeds: crafting seeds of the choice's metagradients (``choose: metagradient``).
    """

    fraction: float = 0.025
    bound: float | None = None
    meta_steps: int = 100
    step_size: float = 0.05
    final_step_size: float = 0.005
    rule: str = "sign"
    craft_seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    seeds_per_step: int = 1
    target: Literal["val", "val_and_clean"] = "val"
    target_augment: int | None = None
    margin_clip: float | None = None
    logit_scale: float | None = None
    choose: Literal["random", "metagradient", "metagradient_per_class"] = "random"
    subset_seed: int = 0
    choose_seeds: tuple[int, ...] = (9,)
    init: Literal["zero", "other_class"] = "zero"

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
        if self.seeds_per_step < 1:
            raise ValueError(f"attack.seeds_per_step must be >= 1, got {self.seeds_per_step}")
        check_objective_options(self.margin_clip, self.logit_scale, where="attack")
        check_target_augment(self.target_augment, where="attack")
        if self.choose != "random" and not self.choose_seeds:
            raise ValueError(
                f"attack.choose_seeds is empty; attack.choose: {self.choose} needs at least one "
                "training seed"
            )
        if self.choose not in ("random", "metagradient", "metagradient_per_class"):
            raise ValueError(
                "attack.choose must be 'random', 'metagradient' or 'metagradient_per_class', "
                f"got {self.choose!r}"
            )
        if self.init not in ("zero", "other_class"):
            raise ValueError(f"attack.init must be 'zero' or 'other_class', got {self.init!r}")


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
    """The whole poisoning experiment; the defaults are the shipped ``digits`` config.

    Attributes:
      data: which data.
      train: the victim's training recipe (crafting and evaluation).
      attack: the MGD attack.
      replay: the engine's options for the attack's metagradients.
      baselines: which baselines run, a subset of ``random_noise``, ``label_flip``,
        ``gradient_canceling``.
      gradient_canceling: Gradient Canceling's options.
      victim_seeds: seeds of the victims trained for evaluation (three or more; disjoint from
        every crafting seed).
    """

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig(
        model=MLPConfig(hidden=(64,)),
        optimizer=OptimizerConfig(name="sgd", learning_rate=0.1, momentum=0.9, lr_decay="cosine"),
        batch_size=64,
        num_steps=150,
    )
    attack: PoisonAttackConfig = PoisonAttackConfig()
    replay: ReplayConfig = ReplayConfig()
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
        if self.attack.choose != "random":
            crafted |= set(self.attack.choose_seeds)
        shared = sorted(crafted & set(self.victim_seeds))
        if shared:
            raise ValueError(
                f"victim_seeds {shared} are also crafting seeds; evaluate victims on seeds the "
                "attacks never trained with"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class PoisonRun:
    """What :func:`run` produced.

    Attributes:
      config: the config that ran.
      setup: the victim's training setup on the clean data.
      results: one :class:`mgd.PoisonResult` per attack, MGD first.
      report: the evaluation (:class:`mgd.PoisonReport`).
      seconds: wall-clock seconds per phase (``"mgd"``, each baseline, ``"evaluation"``).
    """

    config: PoisonConfig
    setup: TrainingSetup
    results: dict[str, PoisonResult]
    report: PoisonReport
    seconds: dict[str, float]

    def table(self) -> str:
        """The results table printed by ``mgd poison``."""
        lines = [self.report.table()]
        ratio = _ratio(self.report)
        if ratio is not None:
            lines.append(f"MGD's drop is {ratio:.1f}x the largest baseline drop")
        lines.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def run(
    config: PoisonConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> PoisonRun:
    """Runs the MGD attack and the baselines on the same examples and evaluates all of them.

    Args:
      config: the experiment.
      out: the output folder (new or empty, or the folder of the same run with ``resume``):
        ``metrics.json`` (``clean`` and one entry per attack, each with
        ``test_accuracy_mean``, ``test_accuracy_std``, per-seed accuracies and the paired
        drop), ``accuracy.png``, ``run.json`` (config echo, seeds, timings, crafting history)
        and ``poisons.npz`` (indices and perturbations per attack); ``None`` writes nothing.
      resume: continue the MGD attack in ``out`` from its last meta-step.
      progress: show progress bars.

    Returns:
      A :class:`PoisonRun`.

    Raises:
      InputError: (a ``ValueError``) any invalid setting (data without held-out splits, an
        ``out`` that is not empty without ``resume`` or holds another run...), before anything
        in ``out`` is written.
    """
    with checking_input():
        data, _ = load_data(config.data, model=config.train.model)
        require_class_labels(data, "poison")
        setup = setup_from_config(config.train, data)
        check_processes_agree("poison", config, setup)
        att = config.attack
        out = None if out is None else Path(out)
        if out is not None:
            prepare_out(out, "poison", config, resume=resume)
    seconds: dict[str, float] = {}
    results: dict[str, PoisonResult] = {}
    if att.choose != "random":
        t0 = time.perf_counter()
        # Every attack poisons the same examples: the MGD attack's choice.
        same: dict[str, Any] = dict(
            indices=influential_poison_indices(
                setup,
                att.fraction,
                step_size=att.step_size,
                bound=att.bound,
                rule=att.rule,
                target=att.target,
                margin_clip=att.margin_clip,
                logit_scale=att.logit_scale,
                seeds=att.choose_seeds,
                per_class=att.choose == "metagradient_per_class",
                replay=config.replay.build(),
            ),
            # The seed of the random draws (baselines, other-class starts), as without a choice.
            seed=att.subset_seed,
        )
        seconds["choose"] = time.perf_counter() - t0
    else:
        same = dict(fraction=att.fraction, seed=att.subset_seed)
    t0 = time.perf_counter()
    results["mgd"] = poison_attack(
        setup,
        meta_steps=att.meta_steps,
        step_size=optax.cosine_decay_schedule(
            att.step_size, att.meta_steps, alpha=att.final_step_size / att.step_size
        ),
        bound=att.bound,
        rule=att.rule,
        craft_seeds=att.craft_seeds,
        seeds_per_step=att.seeds_per_step,
        target=att.target,
        target_augment=att.target_augment,
        margin_clip=att.margin_clip,
        logit_scale=att.logit_scale,
        init=att.init,
        replay=config.replay.build(),
        save_dir=None if out is None else out / "checkpoints",
        resume=resume,
        fingerprint=config_to_dict(config),
        progress=progress,
        **same,
    )
    seconds["mgd"] = time.perf_counter() - t0
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
    done = PoisonRun(config, setup, results, report, seconds)
    # With several processes, all take the same decisions and process 0 writes the outputs.
    if out is not None and distributed.is_primary():
        _write_outputs(done, out)
    return done


def _write_outputs(done: PoisonRun, out: Path) -> None:
    report = done.report
    write_json(out / "metrics.json", report.to_dict())
    write_json(
        out / "run.json",
        {
            "config": config_to_dict(done.config),
            "victim_seeds": list(report.seeds),
            "num_train": done.setup.data.num_train,
            "num_poisoned": int(done.results["mgd"].indices.size),
            "seconds": done.seconds,
            "history": [h._asdict() for h in done.results["mgd"].history],
            "details": {k: r.details for k, r in done.results.items() if r.details},
            "mgd_drop_over_largest_baseline_drop": _ratio(report),
        },
    )
    arrays: dict[str, Any] = {}
    for name, r in done.results.items():
        arrays[f"{name}_indices"] = r.indices
        arrays[f"{name}_perturbations"] = r.perturbations
        if name == "label_flip":
            arrays[f"{name}_labels"] = r.data.y_train[r.indices]
    np.savez_compressed(out / "poisons.npz", **arrays)
    plot_poison_report(report, str(out / "accuracy.png"))


def _ratio(report: PoisonReport) -> float | None:
    if "mgd" not in report.attacks:
        return None
    base = report.largest_baseline_drop("mgd")
    return report.attacks["mgd"].drop_mean / base if base > 0 else None
