"""The MGD accuracy-degrading poisoning attack: metagradient ascent on training-input perturbations.

The attacker controls ``m = round(fraction * n)`` training examples (their inputs, not their
labels) and adds perturbations ``delta`` so that a victim trained *from scratch* on the poisoned
pool has the largest possible loss on held-out data. Each meta-step trains on the poisoned pool,
takes the exact metagradient ``d L_val(A(delta)) / d delta`` through every training step from
the replay engine (``setup.metagradient``), and moves ``delta`` one projected ascent step
(``poison_ascent``), on the shared meta-descent loop. Victims for evaluation are trained with
seeds the attack never used (``evaluate_poisons``).

References:
  Engstrom, Ilyas, Chen, Feldmann, Moses, Madry. "Optimizing ML Training with Metagradient
  Descent", arXiv 2503.13751 (2025): 2.5% of CIFAR-10's training images perturbed over ~800
  meta-steps drop a ResNet-9 from ~92% to ~78% test accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
import optax

from mgd.outer._loop import MetaStep, Replay, check_meta_steps, meta_descent, setup_fingerprint
from mgd.outer.poison._update import (
    AscentRule,
    check_bound,
    poison_ascent,
    project_perturbations,
)
from mgd.train import Dataset, TrainingSetup
from mgd.train._setup import _margin

__all__ = [
    "PoisonResult",
    "poison_attack",
    "choose_poison_indices",
    "influential_poison_indices",
    "other_class_start",
    "apply_perturbations",
    "check_poison_data",
    "check_fraction",
    "check_target_augment",
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
      craft_seeds: the training seeds the attack trained models with (none for attacks that
        train no model); victims must be evaluated with other seeds.
      history: the MGD attack's meta-steps (one :class:`mgd.outer.MetaStep` each: the
        held-out loss of its crafting run, ``info["craft_seed"]``); empty for the baselines.
      details: an attack's own diagnostics as JSON-able lists (Gradient Canceling: its
        objective per step and the training losses at its target).
    """

    name: str
    data: Dataset
    indices: np.ndarray
    perturbations: np.ndarray
    craft_seeds: tuple[int, ...] = ()
    history: list[MetaStep] = dataclasses.field(default_factory=list)
    details: dict[str, list] = dataclasses.field(default_factory=dict)


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


def _target_data(data: Dataset, idx: np.ndarray, target: str, *, where: str) -> Dataset:
    """The data whose validation split is the attack's target (see ``poison_attack``)."""
    if target == "val_and_clean":
        clean = np.setdiff1d(np.arange(data.num_train), idx)
        return data.replace(
            x_val=np.concatenate([data.x_val, data.x_train[clean]]),
            y_val=np.concatenate([data.y_val, data.y_train[clean]]),
        )
    if target == "val":
        return data
    raise ValueError(f"{where}: target must be 'val' or 'val_and_clean', got {target!r}")


def _image_layout(input_shape: tuple[int, ...], *, where: str) -> tuple[int, int, int]:
    """``(height, width, channels)`` of image inputs: ``(H, W, C)``, or flattened square grey."""
    if len(input_shape) == 3:
        return input_shape
    if len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        side = math.isqrt(input_shape[0])
        return side, side, 1
    raise ValueError(
        f"{where}: target_augment shifts images, which needs inputs of shape (H, W, C) or "
        f"flattened square grey images (H*H,), got input shape {input_shape}; pass "
        "target_augment=None"
    )


def check_target_augment(target_augment: Any, *, where: str) -> int | None:
    """``target_augment`` as an int, or ``None``; raises ``ValueError`` naming ``where`` unless
    it is ``None`` or an int >= 1."""
    if target_augment is None:
        return None
    if isinstance(target_augment, bool) or not isinstance(target_augment, int | np.integer):
        raise ValueError(
            f"{where}: target_augment must be None (null) or an int >= 1 (pixels), got "
            f"{target_augment!r}; e.g. 2"
        )
    if target_augment < 1:
        raise ValueError(
            f"{where}: target_augment must be None (null) or an int >= 1 (pixels), got "
            f"{target_augment}; pass None for no augmentation"
        )
    return int(target_augment)


def _shift_images(x: np.ndarray, shifts: np.ndarray, layout: tuple[int, int, int]) -> np.ndarray:
    """Each image translated by its own whole-pixel shift, the edge pixels repeated.

    Args:
      x: ``(n, *input_shape)`` images, ``(H, W, C)`` or flattened to ``(H*W*C,)``.
      shifts: int ``(n, 2)``, each image's ``(down, right)`` shift in pixels (negative: up, left).
      layout: ``(H, W, C)``.

    Returns:
      ``(n, *input_shape)``: output pixel ``(r, c)`` of image ``i`` is input pixel
      ``(clip(r - down_i), clip(c - right_i))``, clipped to the image.
    """
    n = x.shape[0]
    h, w, c = layout
    pad = int(np.abs(shifts).max(initial=0))
    images = np.asarray(x).reshape(n, h, w, c)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty_like(images)
    # One slice per distinct shift: at most (2 * pad + 1) ** 2 of them.
    for down, right in np.unique(shifts, axis=0):
        mine = np.all(shifts == (down, right), axis=1)
        out[mine] = padded[mine, pad - down : pad - down + h, pad - right : pad - right + w]
    return out.reshape(x.shape)


def _target_shifts(n: int, max_shift: int, *, seed: int, step: int) -> np.ndarray:
    """The target's shifts at a meta-step: uniform in ``[-max_shift, max_shift]`` per axis."""
    return np.random.default_rng([seed, step]).integers(-max_shift, max_shift + 1, size=(n, 2))


def other_class_start(
    data: Dataset, indices: np.ndarray, *, seed: int = 0, bound: float | None = None
) -> np.ndarray:
    """Starting perturbations that turn each poisoned input into a pool image of another class.

    For each poisoned example ``i`` (label ``y_i``) draws, seeded, an unpoisoned training example
    ``j`` with ``y_j != y_i`` and returns ``x_j - x_i`` projected onto the attack's constraint
    set: without ``bound``, the poisoned input *is* ``x_j`` under its own label ``y_i`` (a label
    flip written into the image), where the ascent then starts instead of at the clean image.

    Args:
      data: the clean ``Dataset`` (integer class labels).
      indices: int ``(m,)``, the poisoned examples.
      seed: seed of the draw.
      bound: optional L-infinity radius as a fraction of the valid range, as for
        :func:`poison_attack`.

    Returns:
      float32 ``(m, *input_shape)`` perturbations inside the constraint set.

    Raises:
      ValueError: labels that are not one integer class per example, or a poisoned class
        without an unpoisoned example of another class.
    """
    labels = np.asarray(data.y_train)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "other_class_start: needs one integer class label per training example; use "
            "init='zero' for other targets"
        )
    clean = np.setdiff1d(np.arange(data.num_train), indices)
    rng = np.random.default_rng(seed)
    start = np.empty(len(indices), np.int64)
    for c in np.unique(labels[indices]):
        mine = labels[indices] == c
        others = clean[labels[clean] != c]
        if others.size == 0:
            raise ValueError(
                f"other_class_start: no unpoisoned example of a class other than {c}; "
                "use init='zero'"
            )
        start[mine] = rng.choice(others, size=int(mine.sum()))
    low, high = data.x_range
    x = np.asarray(data.x_train[indices], np.float32)
    delta = jnp.asarray(data.x_train[start], np.float32) - x
    bound = absolute_bound(data, bound)
    return np.asarray(
        project_perturbations(delta, x, lower=low, upper=high, bound=bound), np.float32
    )


def _scaled_step(data: Dataset, step_size: Any, meta_steps: int, *, where: str):
    """The step in input units (a float or a schedule) and its JSON-able fingerprint."""
    low, high = data.x_range
    width = jnp.asarray(high - low)
    if callable(step_size):
        # A schedule is a function; its first values stand for it in the fingerprint.
        return (
            lambda count: step_size(count) * width,
            [float(step_size(k)) for k in range(min(meta_steps, 8))],
        )
    if step_size > 0:
        return step_size * width, float(step_size)
    raise ValueError(f"{where}: step_size must be > 0, got {step_size}; e.g. 0.05")


def _ascent(data: Dataset, idx: np.ndarray, step: Any, *, bound, rule):
    low, high = data.x_range
    return poison_ascent(
        step,
        clean_inputs=jnp.asarray(data.x_train[idx]),
        lower=jnp.asarray(low),
        upper=jnp.asarray(high),
        bound=absolute_bound(data, bound),
        rule=rule,
    )


def _clipped_margin(kappa: float) -> Callable[[Any, Any], Any]:
    """The objective ``mean(min(margin, kappa))`` over the target split (see ``poison_attack``)."""

    def clipped_margin(logits, labels):
        return jnp.mean(jnp.minimum(_margin(logits, labels), kappa))

    return clipped_margin


def _rescaled_cross_entropy(tau: float) -> Callable[[Any, Any], Any]:
    """Cross-entropy of each example's logits rescaled to RMS ``tau`` (see ``poison_attack``)."""

    def rescaled_cross_entropy(logits, labels):
        z = logits - jnp.mean(logits, axis=1, keepdims=True)
        z = tau * z / jnp.sqrt(jnp.mean(jnp.square(z), axis=1, keepdims=True) + 1e-12)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, labels))

    return rescaled_cross_entropy


def _crafting_setup(
    setup: TrainingSetup,
    idx: np.ndarray,
    craft_data: Dataset,
    margin_clip: float | None,
    logit_scale: float | None,
    *,
    where: str,
) -> TrainingSetup:
    """``setup`` with ``idx`` perturbable, the target split and the attack's objective."""
    check_objective_options(margin_clip, logit_scale, where=where)
    spec = dataclasses.replace(setup.meta_spec, perturb_indices=tuple(int(i) for i in idx))
    crafting = setup.replace(meta_spec=spec, data=craft_data)
    if margin_clip is not None:
        # One function object for all crafting seeds: their programs compile once.
        return crafting.replace(objective=_clipped_margin(float(margin_clip)))
    if logit_scale is not None:
        return crafting.replace(objective=_rescaled_cross_entropy(float(logit_scale)))
    return crafting


def check_objective_options(
    margin_clip: float | None, logit_scale: float | None, *, where: str
) -> None:
    """Raises ``ValueError`` naming ``where`` unless at most one of the attack's objective
    options is set, ``margin_clip`` finite and ``logit_scale`` finite and positive."""
    if margin_clip is not None and logit_scale is not None:
        raise ValueError(f"{where}: pass at most one of margin_clip and logit_scale")
    if margin_clip is not None and not np.isfinite(margin_clip):
        raise ValueError(f"{where}: margin_clip must be a finite number, got {margin_clip}")
    if logit_scale is not None and not (np.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(
            f"{where}: logit_scale must be a finite number > 0, got {logit_scale}; e.g. 5.0"
        )


def influential_poison_indices(
    setup: TrainingSetup,
    fraction: float,
    *,
    step_size: float = 0.05,
    bound: float | None = None,
    rule: AscentRule = "sign",
    target: Literal["val", "val_and_clean"] = "val",
    margin_clip: float | None = None,
    logit_scale: float | None = None,
    seeds: Sequence[int] | None = None,
    per_class: bool = False,
    replay: Replay | None = None,
) -> np.ndarray:
    """The training examples whose perturbation raises the attack's objective most, to first order.

    Takes one metagradient ``g`` of the objective with respect to a perturbation of *every*
    training input (at zero perturbation) per seed in ``seeds``, takes the attack's first
    ascent step ``u`` on all of them (:func:`poison_ascent` with ``step_size``, ``bound`` and
    ``rule``, projected onto the valid range), and keeps the ``m`` examples with the largest
    first-order gain ``<g_i, u_i>`` (its geometric mean over the seeds): the examples the
    attack can move the objective with most. For ``rule="sign"`` the gain is
    ``eta * |g_i|_1`` over the pixels free to move; for ``"normalized"`` it grows with
    ``|g_i|_2``. An example drawn late in a run's batch order moves the loss far more than one
    drawn early, so a single seed's choice is largely its batch order's; the geometric mean
    over several seeds keeps one seed from deciding.

    Cost: one metagradient of ``setup`` with ``n`` perturbed inputs per seed (the engine's
    memory grows by a few copies of the training inputs).

    Args:
      setup: the victim's recipe on the clean data, as for :func:`poison_attack`.
      fraction: poisoned fraction in (0, 1); ``m = max(1, round(fraction * n))`` examples.
      step_size: the attack's first ascent step, as a fraction of the valid input range.
      bound: optional L-infinity radius, as for :func:`poison_attack`.
      rule: ``"sign"`` or ``"normalized"``, as for :func:`poison_attack`.
      target: ``"val"``, or ``"val_and_clean"``: the validation split together with the whole
        training pool (which examples stay clean is not known yet).
      margin_clip: the attack's objective, as for :func:`poison_attack`.
      logit_scale: the attack's objective, as for :func:`poison_attack`.
      seeds: training seeds of the metagradients (keep them apart from the victims' seeds);
        default ``(setup.seed,)``.
      per_class: keep each class's share of the pool (the largest-remainder rounding of
        ``m * n_c / n``), the largest gains within each class; the gain alone concentrates on
        a few confusable classes (classification only).
      replay: the engine's options; ``None`` is ``Replay()``.

    Returns:
      Sorted int64 array ``(m,)`` of distinct indices in ``[0, n)``.

    Raises:
      ValueError: ``fraction`` outside (0, 1) or poisoning every example, a dataset without
        validation/test split, a non-positive ``step_size`` or ``bound``, an unknown ``rule``
        or ``target``, a bad ``margin_clip`` or ``logit_scale``, no seed.

    Example:
      >>> from mgd.outer.poison import influential_poison_indices
      >>> idx = influential_poison_indices(setup, 0.025, seeds=(0, 1))  # doctest: +SKIP
      >>> res = mgd.poison_attack(setup, indices=idx, meta_steps=50)  # doctest: +SKIP
    """
    where = "influential_poison_indices"
    data = setup.data
    check_poison_data(data, where=where)
    check_bound(bound, where=where)
    m = choose_poison_indices(data.num_train, fraction).size
    every = np.arange(data.num_train, dtype=np.int64)
    # Nothing is poisoned yet, so "the unpoisoned pool" is the whole pool.
    craft_data = _target_data(data, every[:0], target, where=where)
    step, _ = _scaled_step(data, step_size, 1, where=where)
    optimizer = _ascent(data, every, step, bound=bound, rule=rule)
    everywhere = _crafting_setup(setup, every, craft_data, margin_clip, logit_scale, where=where)
    meta = everywhere.init_meta()
    zero = meta["perturbations"]
    replay = Replay() if replay is None else replay
    seeds = tuple(int(s) for s in (seeds if seeds is not None else (setup.seed,)))
    if not seeds:
        raise ValueError(f"{where}: seeds is empty; pass at least one training seed")
    log_gain = np.zeros(data.num_train)
    for s in seeds:
        grad = everywhere.replace(seed=s).metagradient(meta, **replay.options()).grad
        update, _ = optimizer.update(grad["perturbations"], optimizer.init(zero), zero)
        gain = jnp.sum((grad["perturbations"] * update).reshape(data.num_train, -1), axis=1)
        # The gain is >= 0 (a projected step along g); 0 (never drawn) ranks last.
        with np.errstate(divide="ignore"):
            log_gain += np.log(np.asarray(gain, np.float64))
    # Stable sort: ties go to the lower index.
    order = np.argsort(-log_gain, kind="stable")
    if not per_class:
        return np.sort(order[:m]).astype(np.int64)
    labels = np.asarray(data.y_train)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: per_class needs one integer class label per example")
    classes, counts = np.unique(labels, return_counts=True)
    share = m * counts / data.num_train
    quota = np.floor(share).astype(int)
    quota[np.argsort(-(share - quota), kind="stable")[: m - quota.sum()]] += 1
    ranked = labels[order]
    chosen = [order[ranked == c][:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


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
    seeds_per_step: int = 1,
    target: Literal["val", "val_and_clean"] = "val",
    target_augment: int | None = None,
    margin_clip: float | None = None,
    logit_scale: float | None = None,
    init: Literal["zero", "other_class"] = "zero",
    seed: int = 0,
    replay: Replay | None = None,
    save_dir: str | Path | None = None,
    resume: bool = False,
    fingerprint: Any = None,
    callback: Callable[[list[MetaStep]], None] | None = None,
    progress: bool = True,
) -> PoisonResult:
    """Crafts input perturbations that maximize the victim's held-out loss, by MGD.

    Maximizes ``phi(delta) = L_val(A(x + delta))``, the victim's loss on the validation (target)
    split after training from scratch on the poisoned pool, over the constraint set of
    :func:`mgd.outer.poison._update.project_perturbations` (valid input range, optional
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
        disjoint from the victims' evaluation seeds. One seed per meta-step (e.g.
        ``range(meta_steps)``) crafts against a fresh initialization and batch order every time.
      seeds_per_step: crafting runs per meta-step, ``>= 1``: meta-step ``k`` ascends along the
        mean metagradient of the runs with seeds ``craft_seeds[(k * s + j) % len]``,
        ``j < s`` (``s`` times the cost of a meta-step; its ``info["craft_seeds"]`` lists them).
      target: the examples whose objective is maximized: ``"val"``, the validation split, or
        ``"val_and_clean"``, the validation split together with the training examples the
        attacker does not control (the victim trains on them; the attacker knows them in this
        threat model). The larger target leaves the perturbations less room to fit the
        validation examples themselves instead of the data's distribution.
      target_augment: ``None``, or a shift ``k`` in pixels: every meta-step translates each
        target image by its own random whole-pixel shift in ``[-k, k]`` per axis (edge pixels
        repeated; drawn from ``seed`` and the meta-step), so the perturbations cannot encode
        features of particular target images, only ones that survive a small translation.
        Needs image inputs, ``(H, W, C)`` or flattened square grey images.
      margin_clip: ``None`` maximizes ``setup``'s objective; a number ``kappa`` maximizes
        instead the mean over the target of ``min(m, kappa)``, with ``m`` the logit margin
        (logsumexp of the wrong logits minus the right one, > 0 when misclassified; the
        Carlini-Wagner loss): every correctly classified example steers the perturbations
        alike (the cross-entropy's gradient fades on confident ones) and one misclassified
        by more than ``kappa`` stops steering (classification only).
      logit_scale: a number ``tau`` maximizes instead the cross-entropy of each target
        example's logits, centred and rescaled to root-mean-square ``tau``: invariant to the
        logits' scale, so the attack cannot raise it by making the victim less confident
        without making it wrong (classification only; at most one of ``margin_clip`` and
        ``logit_scale``).
      init: where the ascent starts: ``"zero"``, the clean inputs, or ``"other_class"``, each
        poisoned input replaced by a random unpoisoned pool image of another class
        (:func:`other_class_start`; its label stays), a label flip written into the image.
      seed: seed of the random poisoned subset (with ``fraction``), of the ``other_class``
        images and of the ``target_augment`` shifts.
      replay: the engine's options (:class:`mgd.Replay`); ``None`` is ``Replay()``.
      save_dir: directory of the outer loop's checkpoint after every meta-step, or ``None``.
      resume: continue from the checkpoint in ``save_dir``; refused if it was written by a
        different attack (setup, poisoned examples, crafting seeds, step size, bound, rule,
        replay options or ``fingerprint`` differ).
      fingerprint: JSON-able description of what else determines the run, checked on resume.
      callback: called after every meta-step with the history so far.
      progress: show a progress bar over meta-steps.

    Returns:
      A :class:`PoisonResult` named ``"mgd"`` whose ``history`` holds the held-out loss of each
      meta-step's crafting run (before its update).

    Raises:
      ValueError: ``fraction`` outside (0, 1), both or neither of ``fraction``/``indices``,
        indices out of range or repeated, a negative or zero ``bound`` or ``step_size``, an
        unknown ``target`` or ``init``, a ``target_augment`` that is not an int >= 1 or on
        inputs that are not images, a bad ``margin_clip`` or ``logit_scale``,
        ``meta_steps < 1``, no crafting seed, a dataset without validation/test split, or a
        resume refused (see :func:`mgd.outer.meta_descent`).

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
    meta_steps = check_meta_steps(meta_steps, where=where)
    idx = resolve_indices(data, fraction=fraction, indices=indices, seed=seed, where=where)
    seeds = tuple(int(s) for s in (craft_seeds if craft_seeds is not None else (setup.seed,)))
    if not seeds:
        raise ValueError(f"{where}: craft_seeds is empty; pass at least one training seed")
    if (
        isinstance(seeds_per_step, bool)
        or not isinstance(seeds_per_step, int)
        or seeds_per_step < 1
    ):
        raise ValueError(f"{where}: seeds_per_step must be an int >= 1, got {seeds_per_step!r}")
    replay = Replay() if replay is None else replay
    craft_data = _target_data(data, idx, target, where=where)
    target_augment = check_target_augment(target_augment, where=where)
    if target_augment is not None:
        layout = _image_layout(data.input_shape, where=where)
    scaled_step, step_print = _scaled_step(data, step_size, meta_steps, where=where)
    optimizer = _ascent(data, idx, scaled_step, bound=bound, rule=rule)

    # Keep the recipe's other metaparameters (e.g. a learning-rate schedule) at their defaults.
    # One setup with the perturbations switched on, then seed-only copies of it: `replace`
    # shares compiled programs between copies that differ in seed, so every engine program
    # compiles once for all crafting seeds.
    crafting0 = _crafting_setup(setup, idx, craft_data, margin_clip, logit_scale, where=where)
    crafting = {s: crafting0.replace(seed=s) for s in dict.fromkeys(seeds)}
    meta = crafting0.init_meta()
    if init == "other_class":
        start = jnp.asarray(other_class_start(data, idx, seed=seed, bound=bound)).astype(
            meta["perturbations"].dtype
        )
    elif init == "zero":
        start = meta["perturbations"]
    else:
        raise ValueError(f"{where}: init must be 'zero' or 'other_class', got {init!r}")

    def step_seeds(step: int) -> list[int]:
        return [seeds[(step * seeds_per_step + j) % len(seeds)] for j in range(seeds_per_step)]

    def metagradient(step: int, perturbations):
        runs = [crafting[s] for s in step_seeds(step)]
        if target_augment is not None:
            shifts = _target_shifts(len(craft_data.x_val), target_augment, seed=seed, step=step)
            shifted = craft_data.replace(x_val=_shift_images(craft_data.x_val, shifts, layout))
            # Other data of the same shapes: the copies share the compiled programs.
            runs = [run.replace(data=shifted) for run in runs]
        results = [
            run.metagradient({**meta, "perturbations": perturbations}, **replay.options())
            for run in runs
        ]
        # The mean over the step's seeds; its cost is the sum of theirs.
        stats = dataclasses.replace(
            results[0].stats,
            forward_steps=sum(r.stats.forward_steps for r in results),
            replay_steps=sum(r.stats.replay_steps for r in results),
            vjp_steps=sum(r.stats.vjp_steps for r in results),
        )
        value = sum(r.value for r in results) / len(results)
        grad = sum(r.grad["perturbations"] for r in results) / len(results)
        return value, grad, stats

    def record(step, perturbations, value, grad, opt_state) -> dict[str, Any]:
        if seeds_per_step == 1:
            return {"craft_seed": step_seeds(step)[0]}
        return {"craft_seeds": step_seeds(step)}

    loop = meta_descent(
        metagradient,
        start,
        optimizer,
        meta_steps=meta_steps,
        record=record,
        fingerprint=lambda: {
            "setup": setup_fingerprint(setup),
            "indices": idx.tolist(),
            "craft_seeds": list(seeds),
            "seeds_per_step": seeds_per_step,
            "step_size": step_print,
            "bound": bound,
            "rule": rule,
            "target": target,
            "target_augment": target_augment,
            "margin_clip": margin_clip,
            "logit_scale": logit_scale,
            "init": init,
            "replay": replay.describe(),
            "user": fingerprint,
        },
        save_dir=save_dir,
        resume=resume,
        callback=callback,
        progress=progress,
        desc="MGD poisoning",
        where=where,
    )
    poisoned = apply_perturbations(data, idx, np.asarray(loop.params, np.float32))
    return PoisonResult(
        name="mgd",
        data=poisoned,
        indices=idx,
        perturbations=poisoned.x_train[idx] - data.x_train[idx],
        craft_seeds=seeds,
        history=loop.history,
    )
