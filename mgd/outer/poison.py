"""The MGD accuracy-degrading poisoning attack: metagradient ascent on training-input perturbations.

The attacker controls ``m = round(fraction * n)`` training examples (their inputs, not their
labels) and adds perturbations ``delta`` so that a victim trained *from scratch* on the poisoned
pool has the largest possible loss on held-out data. Each meta-step trains on the poisoned pool,
takes the exact metagradient ``d L_val(A(delta)) / d delta`` through every training step from
the replay engine (``setup.metagradient``), and moves ``delta`` one projected ascent step
(:func:`mgd.outer.poison_update.poison_ascent`). Victims for evaluation are trained with seeds the
attack never used (:func:`mgd.outer.poison_eval.evaluate_poisons`).

References:
  Engstrom, Ilyas, Chen, Feldmann, Moses, Madry. "Optimizing ML Training with Metagradient
  Descent", arXiv 2503.13751 (2025): 2.5% of CIFAR-10's training images perturbed over ~800
  meta-steps drop a ResNet-9 from ~92% to ~78% test accuracy.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from mgd.outer.checkpointing import OuterCheckpointer
from mgd.outer.poison_update import AscentRule, check_bound, poison_ascent
from mgd.train import Dataset, TrainingSetup

__all__ = [
    "PoisonResult",
    "poison_attack",
    "choose_poison_indices",
    "apply_perturbations",
    "check_poison_data",
    "check_fraction",
    "absolute_bound",
]


@dataclasses.dataclass(frozen=True, eq=False)
class PoisonResult:
    """A poisoned training pool and how it was made.

    Attributes:
      name: the attack, e.g. ``"mgd"``, ``"random_noise"``, ``"label_flip"``,
        ``"gradient_canceling"``.
      data: the poisoned ``Dataset`` (validation and test splits untouched).
      indices: int64 ``(m,)``, the poisoned training examples.
      perturbations: float32 ``(m, *input_shape)``, what was added to their inputs (after
        projection: ``data.x_train[indices] - clean.x_train[indices]``); zeros for label flipping.
      history: per-step records of the crafting loop (e.g. ``"objective"``: the held-out loss
        of each meta-step's crafting run), JSON-able lists.
      craft_seeds: the training seeds the attack trained models with (none for attacks that
        train no model); victims must be evaluated with other seeds.
    """

    name: str
    data: Dataset
    indices: np.ndarray
    perturbations: np.ndarray
    history: dict[str, list] = dataclasses.field(default_factory=dict)
    craft_seeds: tuple[int, ...] = ()


def check_poison_data(data: Dataset, *, where: str) -> None:
    """Raises ``ValueError`` unless ``data`` has non-empty held-out (validation and test) splits.

    The attack maximizes the loss on the validation split and reports on the test split; both
    must exist and neither may be the training pool.
    """
    for split, role in (("val", "the attack's target"), ("test", "reporting")):
        if getattr(data, f"x_{split}").shape[0] == 0:
            raise ValueError(
                f"{where}: the dataset has no held-out {split} split ({role}); poisoning needs "
                f"examples held out from training: pass a Dataset with non-empty x_{split}/"
                f"y_{split} (e.g. mgd.load_digits(val_fraction=0.2, test_fraction=0.2))"
            )


def check_fraction(fraction: float) -> None:
    """Raises ``ValueError`` unless the poisoned fraction lies in the open interval (0, 1)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"poisoned fraction must lie in (0, 1), got {fraction}; e.g. 0.025 for the paper's "
            "2.5% of the training pool"
        )


def choose_poison_indices(num_train: int, fraction: float, *, seed: int = 0) -> np.ndarray:
    """The training examples an attacker controls: a seeded uniform subset of the pool.

    Args:
      num_train: size of the training pool ``n``.
      fraction: poisoned fraction, in (0, 1); ``m = max(1, round(fraction * n))`` examples.
      seed: seed of the subset.

    Returns:
      Sorted int64 array ``(m,)`` of distinct indices in ``[0, n)``.

    Raises:
      ValueError: ``fraction`` outside (0, 1).

    Example:
      >>> choose_poison_indices(1000, 0.025).shape
      (25,)
    """
    check_fraction(fraction)
    m = max(1, round(fraction * num_train))
    if m >= num_train:
        raise ValueError(
            f"poisoned fraction {fraction} of {num_train} training examples poisons all of them; "
            "pass a smaller fraction"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=m, replace=False)).astype(np.int64)


def _check_indices(indices: Any, num_train: int, *, where: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"{where}: poison indices must be a non-empty 1-D integer array, got shape "
            f"{idx.shape} dtype {idx.dtype}"
        )
    if idx.min() < 0 or idx.max() >= num_train:
        raise ValueError(
            f"{where}: poison indices out of range: they lie in [{idx.min()}, {idx.max()}] but the "
            f"training pool has {num_train} examples; pass indices in [0, {num_train})"
        )
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{where}: poison indices repeat an example; pass distinct indices")
    return idx.astype(np.int64)


def resolve_indices(
    data: Dataset, *, fraction: float | None, indices: Any, seed: int, where: str
) -> np.ndarray:
    """The poisoned examples from exactly one of ``fraction`` (random subset) or ``indices``."""
    if (fraction is None) == (indices is None):
        raise ValueError(
            f"{where}: pass exactly one of fraction= (a random subset of that size) or indices= "
            "(the examples to poison)"
        )
    if indices is None:
        return choose_poison_indices(data.num_train, fraction, seed=seed)
    return _check_indices(indices, data.num_train, where=where)


def absolute_bound(data: Dataset, bound: float | None) -> np.ndarray | None:
    """The L-infinity radius in input units: ``bound`` times the width of the valid range.

    A bound is given as a fraction of the data's valid range ``high - low`` (per coordinate), so
    ``8/255`` is the usual 8-pixel-level budget whatever the normalization (per-channel
    standardized CIFAR-10 included).
    """
    if bound is None:
        return None
    low, high = data.x_range
    return np.asarray(bound * (high - low), np.float32)


def apply_perturbations(data: Dataset, indices: np.ndarray, perturbations: Any) -> Dataset:
    """The poisoned pool: ``x_i <- clip(x_i + delta_i, low, high)`` for the poisoned ``i``.

    Args:
      data: the clean ``Dataset``.
      indices: int ``(m,)``, distinct indices into the training pool.
      perturbations: float ``(m, *input_shape)``.

    Returns:
      A ``Dataset`` whose training inputs at ``indices`` are perturbed and clipped to
      ``data.x_range`` (the same clip the training layer applies to ``meta["perturbations"]``).
    """
    low, high = data.x_range
    x = np.array(data.x_train)
    x[indices] = np.clip(x[indices] + np.asarray(perturbations, np.float32), low, high)
    return data.replace(x_train=x)


# The engine compiles per step function and a setup's step function is built once per setup
# object, so each (setup, spec, seed) gets one crafting setup for the process: meta-steps, and
# later attacks with the same setup (a resumed run, a re-run notebook cell), compile only once.
_CRAFTING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _crafting_setup(setup: TrainingSetup, spec: Any, seed: int) -> TrainingSetup:
    cache = _CRAFTING.setdefault(setup, {})
    if (spec, seed) not in cache:
        cache[(spec, seed)] = setup.replace(meta_spec=spec, seed=seed)
    return cache[(spec, seed)]


def poison_attack(
    setup: TrainingSetup,
    *,
    meta_steps: int,
    fraction: float | None = None,
    indices: Any = None,
    step_size: float | optax.Schedule = 0.05,
    bound: float | None = None,
    rule: AscentRule = "sign",
    craft_seeds: Sequence[int] | None = None,
    seed: int = 0,
    checkpoint: Any = None,
    resume_dir: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> PoisonResult:
    """Crafts input perturbations that maximize the victim's held-out loss, by MGD.

    Maximizes ``phi(delta) = L_val(A(x + delta))``, the victim's loss on the validation (target)
    split after training from scratch on the poisoned pool, over the constraint set of
    :func:`mgd.outer.poison_update.project_perturbations` (valid input range, optional
    L-infinity ``bound``). Meta-step ``k`` trains with seed ``craft_seeds[k % len(craft_seeds)]``
    (initialization and batch order), gets ``g = d phi / d delta`` exactly from the replay
    engine and takes one projected ascent step ``delta <- P_C(delta + eta_k * d(g))``.
    Cycling over several crafting seeds makes the poison work against victims whose seed the
    attacker does not know. The crafting runs clip poisoned inputs to the valid range as the
    victims' data does, so what is optimized is exactly what is evaluated.

    Cost per meta-step: one metagradient, a few training runs of ``setup`` (the engine's
    forward pass, replays and per-step VJPs; see ``mgd.metagradient``).

    Args:
      setup: the victim's training recipe on the *clean* data (model, optimizer, batch size,
        steps); its ``objective`` (default ``"val_loss"``) is what the attack maximizes. The
        attack switches on ``perturb_indices`` in its ``meta_spec``; other metaparameters
        stay at their defaults (plain training).
      meta_steps: number of meta-steps (outer iterations), ``>= 1``; the paper uses ~800.
      fraction: poisoned fraction of the training pool, in (0, 1) (the paper: 0.025); the
        examples are a seeded random subset. Give this or ``indices``.
      indices: the training examples to poison (distinct ints in ``[0, n)``), instead of
        ``fraction``.
      step_size: ascent step ``eta`` as a fraction of the valid input range (like ``bound``), or
        an optax schedule of it over meta-steps.
      bound: optional L-infinity radius of the perturbations, as a fraction of the valid range
        (``8/255`` is the common image budget); ``None`` constrains only to valid inputs, the
        threat model of Gradient Canceling.
      rule: ``"sign"`` or ``"normalized"`` ascent direction (see ``poison_ascent``).
      craft_seeds: training seeds cycled over meta-steps; default ``(setup.seed,)``. Keep them
        disjoint from the victims' evaluation seeds.
      seed: seed of the random poisoned subset (with ``fraction``).
      checkpoint: the engine's checkpoint policy (``mgd.KAryTree(k)``, ...); ``None`` for the
        engine's default.
      resume_dir: optional folder for an atomic checkpoint after every meta-step; a run
        started again with the same folder resumes after the last completed meta-step.
      progress: show a progress bar over meta-steps.
      callback: optional ``callback(k, value)`` after meta-step ``k`` with the crafting run's
        held-out loss.

    Returns:
      A :class:`PoisonResult` named ``"mgd"`` with ``history["objective"]`` the held-out loss
      of each meta-step's crafting run (before its update).

    Raises:
      ValueError: ``fraction`` outside (0, 1), both or neither of ``fraction``/``indices``,
        indices out of range or repeated, a negative or zero ``bound`` or ``step_size``,
        ``meta_steps < 1``, no crafting seed, or a dataset without validation/test split.

    Example:
      >>> data = mgd.load_digits()
      >>> model = mgd.train.models.MLP()
      >>> setup = mgd.TrainingSetup(model, optax.sgd(0.1), data, batch_size=64, num_steps=100)
      >>> res = mgd.poison_attack(setup, fraction=0.025, meta_steps=50)  # doctest: +SKIP
      >>> report = mgd.evaluate_poisons(setup, [res], seeds=(100, 101, 102))  # doctest: +SKIP

    References:
      Engstrom et al., "Optimizing ML Training with Metagradient Descent", arXiv 2503.13751.
    """
    where = "poison_attack"
    data = setup.data
    check_poison_data(data, where=where)
    check_bound(bound, where=where)
    if int(meta_steps) != meta_steps or meta_steps < 1:
        raise ValueError(f"{where}: meta_steps must be an int >= 1, got {meta_steps}")
    idx = resolve_indices(data, fraction=fraction, indices=indices, seed=seed, where=where)
    seeds = tuple(int(s) for s in (craft_seeds if craft_seeds is not None else (setup.seed,)))
    if not seeds:
        raise ValueError(f"{where}: craft_seeds is empty; pass at least one training seed")

    low, high = data.x_range
    width = jnp.asarray(high - low)
    scaled_step = step_size
    if callable(step_size):
        scaled_step = lambda count: step_size(count) * width  # noqa: E731
    elif step_size > 0:
        scaled_step = step_size * width
    else:
        raise ValueError(f"{where}: step_size must be > 0, got {step_size}; e.g. 0.05")
    optimizer = poison_ascent(
        scaled_step,
        clean_inputs=jnp.asarray(data.x_train[idx]),
        lower=jnp.asarray(low),
        upper=jnp.asarray(high),
        bound=absolute_bound(data, bound),
        rule=rule,
    )

    # Keep the recipe's other metaparameters (e.g. a learning-rate schedule) at their defaults.
    spec = dataclasses.replace(setup.meta_spec, perturb_indices=tuple(int(i) for i in idx))
    crafting = {s: _crafting_setup(setup, spec, s) for s in dict.fromkeys(seeds)}
    meta = crafting[seeds[0]].init_meta()
    state = optimizer.init(meta["perturbations"])
    start, history = 0, {"objective": [], "craft_seed": []}

    ckpt = OuterCheckpointer(resume_dir) if resume_dir is not None else None
    if ckpt is not None and ckpt.latest_step() is not None:
        start, saved, info = ckpt.restore({"perturbations": meta["perturbations"], "opt": state})
        meta = {**meta, "perturbations": jnp.asarray(saved["perturbations"])}
        state = jax.tree.map(jnp.asarray, saved["opt"])
        history = {k: list(v) for k, v in info["history"].items()}

    bar = tqdm(range(start, meta_steps), desc="MGD poisoning", disable=not progress)
    try:
        for k in bar:
            s = seeds[k % len(seeds)]
            res = crafting[s].metagradient(meta, checkpoint=checkpoint)
            value = float(res.value)
            updates, state = optimizer.update(
                res.grad["perturbations"], state, meta["perturbations"]
            )
            meta = {**meta, "perturbations": optax.apply_updates(meta["perturbations"], updates)}
            history["objective"].append(value)
            history["craft_seed"].append(s)
            bar.set_postfix(val_loss=f"{value:.4f}")
            if ckpt is not None:
                ckpt.save(
                    k + 1,
                    {"perturbations": meta["perturbations"], "opt": state},
                    {"history": history},
                )
            if callback is not None:
                callback(k, value)
    finally:
        if ckpt is not None:
            ckpt.close()

    delta = np.asarray(meta["perturbations"], np.float32)
    poisoned = apply_perturbations(data, idx, delta)
    return PoisonResult(
        name="mgd",
        data=poisoned,
        indices=idx,
        perturbations=poisoned.x_train[idx] - data.x_train[idx],
        history=history,
        craft_seeds=seeds,
    )
