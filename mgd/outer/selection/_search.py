"""Dataset selection by metagradient descent on data weights.

Each meta-step of the shared loop (:func:`mgd.outer.meta_descent`) takes the exact metagradient
of the target loss with respect to every candidate's weight (``setup.metagradient``: the replay
engine through the whole training run) and lets a selection update rule
(:mod:`mgd.outer.selection`'s ``budget_exchange`` or ``count_descent``) move the weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mgd.outer._loop import MetaStep, Replay, meta_descent, setup_fingerprint
from mgd.outer.selection._update import (
    SelectionOptimizer,
    budget_exchange,
    subset_weights,
    top_k_subset,
)
from mgd.train import TrainingSetup, retrain_and_evaluate

__all__ = ["SelectionResult", "retrained_loss", "select_data"]


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """What :func:`select_data` found.

    Attributes:
      indices: int64 ``(size,)``, the selected candidates (sorted), from the meta-step with the
        lowest target objective; with a ``check``, the last subset it accepted.
      best_step: that meta-step (0-based); with a ``check``, the meta-step whose update
        proposed the subset (-1: the start was kept).
      weights: float ``(n,)``, the weights after the last meta-step.
      history: one :class:`mgd.outer.MetaStep` per meta-step; ``info["indices"]`` is the subset
        that step trained with (or would select, for counts).
    """

    indices: np.ndarray
    best_step: int
    weights: np.ndarray
    history: list[MetaStep]


def select_data(
    setup: TrainingSetup,
    *,
    size: int,
    meta_steps: int,
    optimizer: SelectionOptimizer | None = None,
    fixed_budget: bool = True,
    seed: int = 0,
    reseed: bool = False,
    step_window: int | None = None,
    start: Any = None,
    inner_batches: str = "pool",
    selection_share: float = 0.75,
    selection_holdout: float = 0.25,
    check: Callable[[np.ndarray], float] | None = None,
    replay: Replay | None = None,
    save_dir: str | Path | None = None,
    resume: bool = False,
    fingerprint: Any = None,
    callback: Callable[[list[MetaStep]], None] | None = None,
    progress: bool = True,
) -> SelectionResult:
    """Chooses ``size`` candidates of the training pool that minimize the target objective.

    The weights start at a random subset of ``size`` candidates (or ``start``) scaled to keep
    the training budget (``subset_weights``) when ``fixed_budget``, else at the paper's counts
    of 1. Each meta-step computes the metagradient of the target loss with respect to the
    weights and applies ``optimizer``. The subset of a count vector is its ``size`` largest counts
    (``top_k_subset``). The returned subset is the logged one with the lowest target objective
    (the test split is never looked at).

    Cost: one metagradient per meta-step (about ``1 + log_k T`` training runs forward plus the
    reverse sweep for the engine's ``KAryTree(k)``).

    Args:
      setup: the training recipe, with ``MetaSpec(data_weights=True)``; its seed fixes the
        initialization and batch order used during selection.
      size: number of candidates to select, in ``[1, n]``; a candidate is a training example,
        or a group of them (e.g. a document's windows) when ``setup.data`` has ``groups``.
        With an optimizer that keeps a cost budget (``budget_exchange(costs=..., budget=...)``,
        e.g. documents' bytes) it is the start's size, and the subset's size may change.
      meta_steps: number of meta-steps (metagradients), an int >= 1.
      optimizer: a selection update rule; default
        ``budget_exchange(num_exchange=max(1, size // 10), momentum=0.5, seed=seed)``
        (``budget_exchange`` needs ``fixed_budget=True``, ``count_descent``
        ``fixed_budget=False``).
      fixed_budget: start from a subset indicator (for ``budget_exchange``) rather than counts.
      seed: seed of the initial subset.
      reseed: train meta-step ``k`` with seed ``setup.seed + k`` (initialization and batch order)
        instead of ``setup.seed`` throughout. With one seed, a candidate's metagradient always
        comes from the same few steps it is drawn in (when the pool is seen about once per run);
        new seeds draw it elsewhere, and the update rule's momentum averages over them. The
        objectives of different meta-steps then belong to different seeds.
      step_window: rank candidates by their *step-normalized* metagradient instead of the raw
        one: each example's metagradient divided by the RMS metagradient of the examples drawn
        within ``step_window`` steps of it (a candidate with groups: the mean over its drawn
        examples; one never drawn scores 0). In a run that sees each candidate about once, the
        raw metagradient of a candidate mostly says *when* it was drawn: with Adam it shrinks
        by orders of magnitude over the run, so the exchange would favour whatever the first
        steps drew. Needs a run that draws every example at most once (``num_steps *
        batch_size <= data.num_train``) unless ``inner_batches="selection"`` (whose every
        draw has its own weight). ``None``: the raw metagradient.
      start: the initial subset, ``size`` distinct candidate indices (e.g. a cheap baseline's
        selection, which the meta-steps then refine), ``fixed_budget`` only; ``None``: a random
        subset drawn with ``seed``.
      inner_batches: what the differentiated training run draws. ``"pool"``: the setup's
        batches of the whole pool, unselected candidates at weight 0 and selected ones at the
        subset's weight. ``"selection"`` (``fixed_budget`` only): the run a selection is judged
        by, training on the current selection: ``round(selection_share * batch_size)`` slots
        of every batch cycle through the selection's examples (weight ``1 / share``, so the
        loss is their mean), the other slots hold a fresh random sample of unselected
        candidates at weight 0, each drawn at most once while enough remain. Every meta-step
        draws a new order (from ``setup.seed + k`` with ``reseed``, else ``setup.seed``), and
        every draw gets its own weight. A random ``selection_holdout`` share of the selection
        sits out of the run and is drawn once among the candidates, at weight 0: candidates
        are scored only by such weight-0 draws (summed; with ``step_window``: their mean
        step-normalized one, normalized among weight-0 draws), so a selected candidate is
        judged, when held out, like an unselected one: by the first-order value of adding it
        to the rest. (The derivative at the weight of a candidate the run already repeats
        many times is the value of *more* of it, not of it: in pilots its use removed the
        target's documents and raised the target loss.) A candidate not scored scores 0. Use
        it when the selection is evaluated by training on it alone, many passes over few
        examples, unlike one pass over the pool.
      selection_share: ``inner_batches="selection"`` only: the share of each batch given to
        the selection, in (0, 1) (at least one slot, and one left for candidates).
      selection_holdout: ``inner_batches="selection"`` only: the share of the selection held
        out of each meta-step's run (at least one candidate), in (0, 1).
      check: a held-out check of a subset, ``check(indices) -> loss`` (int64 ``(k,)`` sorted
        candidate indices; smaller is better), e.g. :func:`retrained_loss` on validation data
        the metagradient's objective does not contain (``fixed_budget`` only). With it, a
        meta-step's update is a *proposal*: the subset changes only if ``check`` of the
        proposed subset is not larger than the current subset's (checked at the start), and
        the result is the last subset accepted (a rejected proposal leaves the subset, not the
        update rule's state: its momentum keeps averaging). The metagradient is a first-order,
        one-run estimate; near a good subset most of its swaps are noise, and this keeps only
        those that a retraining confirms. Each history record's ``info`` gets ``check`` (the
        proposal's; ``None`` if the update changed nothing), ``accepted`` and ``kept`` (the check
        of the subset after the meta-step). ``None``: every update is taken.
      replay: the engine's options (:class:`mgd.Replay`); ``None`` is ``Replay()``.
      save_dir: directory of the outer loop's checkpoint after every meta-step, or ``None``.
      resume: continue from the checkpoint in ``save_dir`` (refused if it belongs to another
        run).
      fingerprint: JSON-able description of what else determines the run (e.g. the optimizer's
        config), checked on resume together with the setup, size, seeds and replay options.
      callback: called after every meta-step with the history so far.
      progress: show a tqdm bar over meta-steps.

    Returns:
      A :class:`SelectionResult`.

    Raises:
      ValueError: data weights not switched on, ``size`` or ``meta_steps`` out of range,
        ``step_window`` negative or given for a run that draws an example twice, ``start`` not
        ``size`` distinct candidates, ``inner_batches`` unknown or ``"selection"`` without
        ``fixed_budget``, ``selection_share`` or ``selection_holdout`` outside (0, 1), ``check``
        without ``fixed_budget``, or a resume refused (see
        :func:`mgd.outer.meta_descent`).

    Example:
      >>> setup = mgd.TrainingSetup(model, optax.sgd(0.01, momentum=0.9), data, batch_size=64,
      ...                           num_steps=500, meta_spec=mgd.MetaSpec(data_weights=True))
      >>> res = mgd.select_data(setup, size=data.num_train // 2, meta_steps=10)  # doctest: +SKIP
      >>> data.subset(res.indices)  # the selected training set  # doctest: +SKIP
    """
    where = "select_data"
    if not setup.meta_spec.data_weights:
        raise ValueError(
            f"{where}: the setup's meta_spec has data_weights=False; build it with "
            "mgd.MetaSpec(data_weights=True)"
        )
    n = setup.data.num_groups  # The data weights: one per example, or per group (document).
    if not 1 <= size <= n:
        raise ValueError(f"{where}: size must be in [1, {n}] (the pool size), got {size}")
    if optimizer is None:
        if not fixed_budget:
            raise ValueError(f"{where}: without fixed_budget pass optimizer=count_descent(...)")
        optimizer = budget_exchange(num_exchange=max(1, size // 10), momentum=0.5, seed=seed)
    if inner_batches not in ("pool", "selection"):
        raise ValueError(
            f"{where}: inner_batches must be 'pool' or 'selection', got {inner_batches!r}"
        )
    if inner_batches == "selection" and not fixed_budget:
        raise ValueError(f"{where}: inner_batches='selection' needs fixed_budget=True")
    for name, share in (
        ("selection_share", selection_share),
        ("selection_holdout", selection_holdout),
    ):
        if not 0.0 < share < 1.0:
            raise ValueError(f"{where}: {name} must be in (0, 1), got {share}")
    if check is not None and not fixed_budget:
        raise ValueError(f"{where}: check needs fixed_budget=True (a subset to accept or keep)")
    replay = Replay() if replay is None else replay
    # The rules' top-k and masks run as one compiled program per meta-step, not op by op.
    optimizer = SelectionOptimizer(optimizer.init, jax.jit(optimizer.update))
    if check is not None:
        optimizer = _checked(optimizer, check)

    if start is not None:
        start = np.sort(np.asarray(start, np.int64))
        if (
            not fixed_budget
            or start.shape != (size,)
            or np.unique(start).size != size
            or not (0 <= start[0] and start[-1] < n)
        ):
            raise ValueError(
                f"{where}: start must be {size} (size) distinct candidate indices in [0, {n}) "
                f"with fixed_budget, got shape {start.shape}; or None for a random start"
            )
    given_start = None if start is None else start.tolist()
    if fixed_budget:
        if start is None:
            start = np.sort(np.random.default_rng(seed).permutation(n)[:size])
        weights = subset_weights(jnp.asarray(start), n)
    else:
        weights = jnp.ones(n, jnp.float32)
    base_meta = setup.init_meta()
    if inner_batches == "selection":
        if step_window is not None:
            check_step_window(setup, step_window, where, draws_once=False)
        run_on_selection = _SelectionRun(setup, selection_share, selection_holdout)
    elif step_window is not None:
        check_step_window(setup, step_window, where)
        # Per-example weights (each example takes its candidate's weight) give a metagradient
        # per drawn example, hence per step; a new `data` shares the compiled programs.
        groups = np.arange(setup.data.num_train) if setup.data.groups is None else setup.data.groups
        per_example = setup.replace(data=setup.data.replace(groups=None))

    def metagradient(step: int, weights):
        # replace(seed=...) shares the setup's compiled programs: reseeding compiles nothing.
        seed_k = (setup.seed + step) % 2**32
        if inner_batches == "selection":
            trained, meta, draw_group = run_on_selection(
                np.asarray(weights) > 0, seed_k if reseed else setup.seed
            )
            res = trained.metagradient({**base_meta, "data_weights": meta}, **replay.options())
            grad = np.asarray(res.grad["data_weights"])
            # Scores from the weight-0 draws only (unselected and held-out candidates).
            scored = (np.asarray(meta) == 0).reshape(trained.batch_order.shape)
            order = np.where(scored, trained.batch_order, -1)
            if step_window is None:
                real = order.ravel() >= 0
                score = np.bincount(draw_group[real], grad[real], minlength=n)
            else:
                score = _step_normalized(grad, order, draw_group, n, step_window)
            return res.value, jnp.asarray(score, weights.dtype), res.stats
        if step_window is None:
            trained = setup.replace(seed=seed_k) if reseed else setup
            res = trained.metagradient({**base_meta, "data_weights": weights}, **replay.options())
            return res.value, res.grad["data_weights"], res.stats
        trained = per_example.replace(seed=seed_k) if reseed else per_example
        meta = {**base_meta, "data_weights": jnp.asarray(weights)[jnp.asarray(groups)]}
        res = trained.metagradient(meta, **replay.options())
        score = _step_normalized(
            np.asarray(res.grad["data_weights"]), trained.batch_indices(), groups, n, step_window
        )
        return res.value, jnp.asarray(score, weights.dtype), res.stats

    def record(step, weights, value, grad, opt_state) -> dict[str, Any]:
        if fixed_budget:
            indices = np.flatnonzero(np.asarray(weights) > 0)
        else:
            indices = np.asarray(top_k_subset(weights, grad, size))
        info: dict[str, Any] = {"indices": indices.tolist()}
        if check is not None:
            proposed = float(opt_state.proposed)
            info["check"] = None if np.isnan(proposed) else proposed
            info["accepted"] = bool(opt_state.accepted)
            info["kept"] = float(opt_state.current)
        return info

    loop = meta_descent(
        metagradient,
        weights,
        optimizer,
        meta_steps=meta_steps,
        record=record,
        fingerprint=lambda: {
            "setup": setup_fingerprint(setup),
            "size": size,
            "fixed_budget": fixed_budget,
            "reseed": reseed,
            "step_window": step_window,
            "start": given_start,
            "inner_batches": inner_batches,
            "selection_share": selection_share if inner_batches == "selection" else None,
            "selection_holdout": selection_holdout if inner_batches == "selection" else None,
            "replay": replay.describe(),
            "user": fingerprint,
            # Only with a check, so that runs without one resume their earlier checkpoints.
            **({"check": True} if check is not None else {}),
        },
        save_dir=save_dir,
        resume=resume,
        callback=callback,
        progress=progress,
        desc="selection",
        where=where,
    )
    if check is not None:
        changed = [
            h.step for h in loop.history if h.info["accepted"] and h.info["check"] is not None
        ]
        return SelectionResult(
            indices=np.flatnonzero(np.asarray(loop.params) > 0).astype(np.int64),
            best_step=changed[-1] if changed else -1,
            weights=np.asarray(loop.params),
            history=loop.history,
        )
    best = min(loop.history, key=lambda h: h.objective)
    return SelectionResult(
        indices=np.asarray(best.info["indices"], np.int64),
        best_step=best.step,
        weights=np.asarray(loop.params),
        history=loop.history,
    )


class _CheckedState(NamedTuple):
    # The update rule's state; the check of the current subset; of the last proposal (nan if
    # it changed nothing); whether the last proposal was taken.
    inner: Any
    current: jax.Array
    proposed: jax.Array
    accepted: jax.Array


def _checked(optimizer: SelectionOptimizer, check: Callable) -> SelectionOptimizer:
    # `optimizer`'s updates, taken only where `check` of the new subset is not worse.
    def subset(weights) -> np.ndarray:
        return np.flatnonzero(np.asarray(weights) > 0).astype(np.int64)

    def init(weights):
        loss = jnp.asarray(float(check(subset(weights))), jnp.float32)
        return _CheckedState(optimizer.init(weights), loss, loss, jnp.asarray(True))

    def update(grad, state, weights):
        updates, inner = optimizer.update(grad, state.inner, weights)
        new = subset(weights + updates)
        if np.array_equal(new, subset(weights)):
            nan = jnp.asarray(np.nan, jnp.float32)
            return updates, _CheckedState(inner, state.current, nan, jnp.asarray(True))
        loss = jnp.asarray(float(check(new)), jnp.float32)
        if loss <= state.current:
            return updates, _CheckedState(inner, loss, loss, jnp.asarray(True))
        return jnp.zeros_like(updates), _CheckedState(inner, state.current, loss, False)

    return SelectionOptimizer(init, update)


def retrained_loss(
    setup: TrainingSetup, *, seeds, split: str = "val", metric: str = "loss"
) -> Callable[[np.ndarray], float]:
    """A held-out check for :func:`select_data`: the loss of models retrained on a subset.

    The returned function trains ``setup``'s recipe (with ``setup.init_meta()``: data weights
    1) on the given candidates alone (all examples of a group), once per seed, from scratch,
    and returns the mean of ``setup.evaluate(...)[metric]`` on ``split``. The candidates'
    batches are epochs of permutations, as ``setup.data.subset_groups(indices)`` would train,
    but given as a ``batch_order`` over the whole pool, so subsets of any size share one
    compiled program, the setup's own.

    Args:
      setup: the recipe and data (e.g. with a validation split held out of the selection's
        objective).
      seeds: the training seeds (initialization and order), e.g. ``[20000, 20001]``; ones the
        evaluation does not use.
      split: the split evaluated, ``"val"`` by default (never ``"test"`` for a check).
      metric: the key of ``setup.evaluate`` returned, e.g. ``"loss"`` or ``"bits_per_byte"``.

    Returns:
      ``check(indices) -> float``: ``indices`` an int array ``(k,)`` of distinct candidates.

    Raises:
      ValueError: ``seeds`` empty, or ``split`` not a split name (when called: a metric the
        setup does not report).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("retrained_loss: seeds is empty; give at least one seed")
    if split not in ("train", "val", "test"):
        raise ValueError(f"retrained_loss: split must be 'train', 'val' or 'test', got {split!r}")
    groups = np.arange(setup.data.num_train) if setup.data.groups is None else setup.data.groups
    steps, b = setup.num_steps, setup.batch_size

    def check(indices) -> float:
        examples = np.flatnonzero(np.isin(groups, np.asarray(indices)))
        if not examples.size:
            raise ValueError("retrained_loss: the subset holds no training example")
        per_epoch = -(-examples.size // b)
        epochs = -(-steps // per_epoch)
        losses = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            # Epochs of permutations, each padded with empty slots to whole batches.
            pad = np.full(per_epoch * b - examples.size, -1)
            order = np.concatenate(
                [np.concatenate([rng.permutation(examples), pad]) for _ in range(epochs)]
            ).reshape(-1, b)[:steps]
            scores = retrain_and_evaluate(
                setup.replace(batch_order=order), seeds=[seed], split=split
            )
            if metric not in scores:
                raise ValueError(
                    f"retrained_loss: the setup's evaluate reports {sorted(scores)}, not "
                    f"metric={metric!r}; pass one of those"
                )
            losses.append(float(scores[metric][0]))
        return float(np.mean(losses))

    return check


def check_step_window(
    setup: TrainingSetup, step_window: int, where: str, *, draws_once: bool = True
) -> None:
    """Checks ``select_data(setup, step_window=...)`` before a run starts (the experiments do).

    Args:
      setup: the selection's training setup.
      step_window: the requested half-width in steps.
      where: the name the error message starts with.
      draws_once: the inner run draws from the setup's batches of the pool (``inner_batches=
        "pool"``), which must then draw each example at most once.

    Raises:
      ValueError: ``step_window`` is not an integer >= 0, or the run draws an example twice.
    """
    if isinstance(step_window, bool) or int(step_window) != step_window or step_window < 0:
        raise ValueError(f"{where}: step_window must be an integer >= 0 or None, got {step_window}")
    if not draws_once:
        return
    drawn = setup.num_steps * setup.batch_size
    if drawn > setup.data.num_train:
        raise ValueError(
            f"{where}: step_window needs a run that draws each example at most once, but "
            f"{setup.num_steps} steps x batch {setup.batch_size} = {drawn} draws > "
            f"{setup.data.num_train} examples; shorten the run or use step_window=None"
        )


class _SelectionRun:
    """The inner runs of ``select_data(inner_batches="selection")``, one per meta-step.

    Every draw (slot of a batch) is its own training example of an unrolled pool of
    ``num_steps * batch_size`` examples, trained in the explicit order ``arange``, so its weight
    is its own metaparameter and its metagradient is the effect of that one draw. The unrolled
    pools all have one shape: the setups share their compiled programs.
    """

    def __init__(self, setup: TrainingSetup, share: float, holdout: float):
        self.data = setup.data
        self.groups = (
            np.arange(setup.data.num_train) if setup.data.groups is None else setup.data.groups
        )
        steps, b = setup.num_steps, setup.batch_size
        self.shape = (steps, b)
        self.num_selected = min(b - 1, max(1, round(share * b)))
        self.holdout = holdout
        slots = np.arange(steps * b)
        unrolled = self._unrolled(slots % setup.data.num_train)
        self.setup = setup.replace(data=unrolled, batch_order=slots.reshape(steps, b))

    def _unrolled(self, example: np.ndarray):
        d = self.data
        return d.replace(x_train=d.x_train[example], y_train=d.y_train[example], groups=None)

    def __call__(self, selected: np.ndarray, seed: int):
        """Returns ``(setup, per-draw weights, per-draw candidate)`` for the subset ``selected``
        (bool ``(n,)``), in an order and with a held-out part drawn from ``seed``."""
        rng = np.random.default_rng(seed)
        chosen = np.flatnonzero(selected)
        held = rng.choice(chosen, max(1, round(self.holdout * chosen.size)), replace=False)
        trained = selected.copy()
        trained[held] = False
        in_run = trained[self.groups]
        steps, b = self.shape
        k = self.num_selected
        mine = _cycled(rng, np.flatnonzero(in_run), steps * k).reshape(steps, k)
        # The held-out windows are all drawn (once), the rest of the slots sample the others.
        held_out = rng.permutation(np.flatnonzero(np.isin(self.groups, held)))
        count = steps * (b - k)
        rest = _cycled(rng, np.flatnonzero(~selected[self.groups]), count)
        others = rng.permutation(np.concatenate([held_out, rest])[:count])
        example = np.concatenate([mine, others.reshape(steps, b - k)], axis=1).ravel()
        order = np.where(example >= 0, np.arange(steps * b), -1).reshape(steps, b)
        example = np.maximum(example, 0)  # An empty slot (no candidate left) trains nothing.
        draw_group = self.groups[example]
        weight = np.where(trained, b / k, 0.0)[draw_group]
        run = self.setup.replace(data=self._unrolled(example), batch_order=order, seed=seed)
        return run, jnp.asarray(weight, run.dtype), draw_group


def _cycled(rng: np.random.Generator, pool: np.ndarray, count: int) -> np.ndarray:
    # `count` draws from `pool`: permutations of it one after another (each element once
    # before any twice); all -1 if the pool is empty.
    if pool.size == 0 or count == 0:
        return np.full(count, -1, np.int64)
    rounds = -(-count // pool.size)
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:count]


def _step_normalized(
    grad: np.ndarray, order: np.ndarray, groups: np.ndarray, n: int, window: int
) -> np.ndarray:
    """Candidates' metagradients with the scale of the training step they were drawn at removed.

    Args:
      grad: float ``(num_train,)``, the metagradient per training example.
      order: int ``(num_steps, batch_size)``, the examples of each step (``-1``: none).
      groups: int ``(num_train,)``, each example's candidate.
      n: number of candidates.
      window: half-width, in steps, of the neighbourhood whose RMS scales a step.

    Returns:
      float64 ``(n,)``: per candidate, the mean over its drawn examples of ``grad`` divided by
      the RMS of ``grad`` over the examples drawn within ``window`` steps; 0 if none was drawn.
    """
    steps = np.repeat(np.arange(order.shape[0]), order.shape[1])
    example = order.ravel()
    steps, example = steps[example >= 0], example[example >= 0]
    g = grad[example].astype(np.float64)
    num_steps = order.shape[0]
    # Sums over [t - window, t + window] from cumulative sums of per-step sums.
    sq = np.concatenate([[0.0], np.cumsum(np.bincount(steps, g**2, minlength=num_steps))])
    count = np.concatenate([[0], np.cumsum(np.bincount(steps, minlength=num_steps))])
    t = np.arange(num_steps)
    lo, hi = np.clip(t - window, 0, num_steps), np.clip(t + window + 1, 0, num_steps)
    rms = np.sqrt((sq[hi] - sq[lo]) / np.maximum(count[hi] - count[lo], 1))
    z = np.where(rms[steps] > 0, g / np.where(rms[steps] > 0, rms[steps], 1.0), 0.0)
    candidate = groups[example]
    drawn = np.bincount(candidate, minlength=n)
    return np.bincount(candidate, z, minlength=n) / np.maximum(drawn, 1)
