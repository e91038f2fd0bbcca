"""Learning-rate schedule search by metagradient descent.

Each meta-step trains with the current schedule, takes the exact metagradient of the validation
objective with respect to the log learning rate at every knot (``setup.metagradient``: the replay
engine through every training step), and moves the log rates one step of the outer optimizer
(:func:`mgd.outer.lr._update.log_lr_adam` by default).

References:
  Engstrom, Ilyas, Chen, Feldmann, Moses, Madry. "Optimizing ML Training with Metagradient
  Descent", arXiv 2503.13751 (2025): 50 meta-steps from a constant schedule match the best of
  more than 1,000 one-cycle schedules.
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
import optax

from mgd.engine import NonFiniteCotangentError
from mgd.engine.compiled import outer_update
from mgd.outer._loop import MetaStep, Replay, check_meta_steps, meta_descent, setup_fingerprint
from mgd.outer.lr._evaluate import lr_knots_of
from mgd.outer.lr._schedule import PiecewiseLinearSchedule, validate_knots
from mgd.outer.lr._update import log_lr_adam
from mgd.train import TrainingSetup, retrain_and_evaluate

__all__ = ["LRSearchResult", "search_lr_schedule"]

_WHERE = "search_lr_schedule"


@dataclasses.dataclass(frozen=True, eq=False)
class LRSearchResult:
    """What :func:`search_lr_schedule` returns.

    Attributes:
      schedule: the found schedule: the evaluated schedule with the lowest finite objective
        (callable ``step -> lr``; ``.knots``, ``.lr``, ``.to_json()``).
      history: one :class:`mgd.outer.MetaStep` per evaluated schedule, in order: the
        ``meta_steps`` metagradient steps, then the final schedule (evaluated by one training
        run without gradient; its ``seconds``, ``forward_steps`` and ``vjp_steps`` are 0).
        ``info`` holds ``lr`` (the rate at each knot), ``rejected`` (the run was not finite, so
        the step that led there was rejected and shrunk), ``step_scale`` (the outer optimizer's
        step scale after the step; ``nan`` for optimizers without one) and ``unstable_knots``
        (knots whose metagradient exploded, whose rates the optimizer lowered).
      best_step: the ``meta_step`` of ``schedule`` in the history.
      test: ``{"seeds", "accuracy", "loss"}`` of models retrained from scratch with
        ``schedule`` on fresh seeds, on the test split (lists, one entry per seed); empty if
        ``test_seeds`` was 0.
      cost: work done by this call (resumed meta-steps excluded): ``metagradients``,
        ``forward_steps`` and ``vjp_steps`` (summed engine stats), ``train_runs`` (runs without
        gradient), ``seconds``; the test report's retraining is not included.
    """

    schedule: PiecewiseLinearSchedule
    history: list[MetaStep]
    best_step: int
    test: dict[str, list[float]]
    cost: dict[str, float]

    @property
    def objectives(self) -> np.ndarray:
        """The objective of every history entry, float64 ``(len(history),)``."""
        return np.array([r.objective for r in self.history])

    def schedules(self) -> list[PiecewiseLinearSchedule]:
        """The schedule of every history entry, e.g. to plot its evolution."""
        knots, num_steps = self.schedule.knots, self.schedule.num_steps
        return [
            PiecewiseLinearSchedule.from_lr(knots, r.info["lr"], num_steps=num_steps)
            for r in self.history
        ]


def _initial_log_lr(init_schedule: Any, knots: tuple[int, ...], num_steps: int) -> np.ndarray:
    """The initial log rate at each knot, validated (see ``init_schedule`` in the search)."""
    if isinstance(init_schedule, PiecewiseLinearSchedule) and init_schedule.num_steps != num_steps:
        raise ValueError(
            f"{_WHERE}: init_schedule is for {init_schedule.num_steps} steps but the setup trains "
            f"for {num_steps}; build the schedule with num_steps={num_steps}"
        )
    if callable(init_schedule):
        rates = np.asarray(init_schedule(np.asarray(knots)), dtype=np.float64)
    else:
        rates = np.asarray(init_schedule, dtype=np.float64)
    if rates.ndim == 0:
        rates = np.full(len(knots), float(rates))
    if rates.shape != (len(knots),):
        raise ValueError(
            f"{_WHERE}: init_schedule gives {rates.shape} rates but the setup has {len(knots)} "
            "learning-rate knots; pass one float (a constant schedule), one rate per knot, or a "
            "callable step -> lr"
        )
    bad = [(k, float(r)) for k, r in zip(knots, rates, strict=True) if not (0 < r < np.inf)]
    if bad:
        raise ValueError(
            f"{_WHERE}: the initial schedule must be positive and finite, got (step, lr) "
            f"{bad[:5]}; the search moves log(lr), which needs lr > 0"
        )
    return np.log(rates)


def _check_test_seeds(test_seeds: int | Sequence[int], train_seed: int) -> list[int]:
    if isinstance(test_seeds, int | np.integer):
        if test_seeds < 0:
            raise ValueError(f"{_WHERE}: test_seeds must be >= 0, got {test_seeds}")
        # Offset far from the training seed so the defaults of nearby setups do not collide.
        return [int(train_seed) + 1000 + i for i in range(test_seeds)]
    seeds = [int(s) for s in test_seeds]
    if train_seed in seeds:
        raise ValueError(
            f"{_WHERE}: test_seeds {seeds} include the search's own seed {train_seed}; test "
            "models must be retrained with seeds the search never used"
        )
    return seeds


def search_lr_schedule(
    setup: Any,
    *,
    init_schedule: float | Sequence[float] | Callable[[np.ndarray], np.ndarray],
    meta_steps: int,
    optimizer: optax.GradientTransformation | None = None,
    replay: Replay | None = None,
    test_seeds: int | Sequence[int] = 3,
    reseed: bool = False,
    save_dir: str | Path | None = None,
    resume: bool = False,
    fingerprint: Any = None,
    callback: Callable[[list[MetaStep]], None] | None = None,
    progress: bool = True,
) -> LRSearchResult:
    r"""Finds a learning-rate schedule by metagradient descent on the validation objective.

    The schedule is piecewise linear in log space between ``setup.meta_spec.lr_knots``; each
    meta-step is one exact metagradient and one outer update (default :func:`log_lr_adam`),
    and the best evaluated schedule is retrained on fresh ``test_seeds`` so the test split
    takes no part in the search. Why these choices, and the cost: ``docs/outer.md``.

    Args:
      setup: a ``mgd.TrainingSetup`` whose ``meta_spec`` has ``lr_knots`` (or ``per_step_lr``)
        and whose optimizer has learning rate 1.0, so ``exp(meta["log_lr"])`` is the absolute
        rate. Other metaparameters stay at their ``init_meta()`` values.
      init_schedule: the start: a positive float (a constant schedule), one positive rate per
        knot (shape ``(m+1,)``), or a callable ``step -> lr`` (e.g. a
        ``PiecewiseLinearSchedule`` or a grid entry's schedule) sampled at the knots.
      meta_steps: metagradient steps, ``>= 1``.
      optimizer: the outer optimizer on the log rates, an optax transformation;
        default ``log_lr_adam()`` (Adam, learning rate 0.1, steps bounded by 0.5 in log space,
        rejection of non-finite runs). A plain optax optimizer is accepted but cannot reject.
      replay: the engine's options (:class:`mgd.Replay`: checkpoint policy, store, memory
        budget); ``None`` is ``Replay()``.
      test_seeds: how many fresh seeds to retrain the found schedule with (int), or the seeds
        themselves; 0 skips the test report.
      reseed: train meta-step ``k`` with seed ``setup.seed + k`` (initialization and batch
        order) instead of ``setup.seed`` throughout, so the outer optimizer's momentum averages
        the metagradient over seeds: through a run at rates high enough to be chaotic, one
        seed's exact metagradient is mostly that seed's noise. The objectives of different
        meta-steps then belong to different seeds (the found schedule is the one with the
        lowest). Test seeds must avoid ``setup.seed + k`` for ``k <= meta_steps``.
      save_dir: directory for an orbax checkpoint written after every meta-step (state of the
        outer loop and its history), or ``None``.
      resume: continue from the checkpoint in ``save_dir`` (refused if it belongs to another
        run: setup, initial schedule, replay options or ``fingerprint`` differ);
        ``meta_steps`` counts the resumed steps too.
      fingerprint: JSON-able description of what else determines the run (e.g. the outer
        optimizer's config), checked on resume.
      callback: called after every meta-step with the history so far.
      progress: show a tqdm bar over meta-steps.

    Returns:
      An :class:`LRSearchResult` with ``schedule``, ``history``, ``best_step``, ``test`` and
      ``cost``.

    Raises:
      ValueError: before any training: a setup without a learning-rate metaparameter; knots out
        of order or outside ``[0, num_steps]``; an initial schedule with a rate that is not
        positive and finite, or of the wrong shape; ``meta_steps < 1``; test seeds that include
        the setup's seed; ``resume=True`` without ``save_dir``; a ``save_dir`` holding a
        checkpoint without ``resume=True`` or one of another run. After the first
        metagradient: an initial schedule whose run diverges (nothing to fall back to).

    Example:
      >>> setup = mgd.TrainingSetup(model, optax.sgd(1.0, momentum=0.9), data, batch_size=64,
      ...     num_steps=200, meta_spec=mgd.MetaSpec(lr_knots=tuple(range(0, 201, 20))))
      ...     # doctest: +SKIP
      >>> res = mgd.search_lr_schedule(setup, init_schedule=0.01, meta_steps=50)  # doctest: +SKIP
      >>> res.schedule(100), res.history[-1].objective, res.test["accuracy"]  # doctest: +SKIP
    """
    knots = validate_knots(lr_knots_of(setup, where=_WHERE), setup.num_steps, where=_WHERE)
    meta_steps = check_meta_steps(meta_steps, where=_WHERE)
    x0 = _initial_log_lr(init_schedule, knots, setup.num_steps)
    seeds = _check_test_seeds(test_seeds, setup.seed)
    if reseed:
        used = sorted({(setup.seed + k) % 2**32 for k in range(meta_steps + 1)} & set(seeds))
        if used:
            raise ValueError(
                f"{_WHERE}: test_seeds {used} are among the seeds the reseeded search trains "
                f"with (setup.seed + 0..{meta_steps}); choose test seeds beyond those"
            )
    if resume and save_dir is None:
        raise ValueError(f"{_WHERE}: resume=True needs save_dir, the directory to resume from")
    optimizer = log_lr_adam() if optimizer is None else optimizer
    replay = Replay() if replay is None else replay
    base = setup.init_meta()
    x = jnp.asarray(x0, base["log_lr"].dtype)
    cost: dict[str, float] = {"metagradients": 0, "forward_steps": 0, "vjp_steps": 0}

    def account(step: int, value, grad, stats) -> None:
        if stats is not None:
            cost["forward_steps"] += stats.forward_steps
            cost["vjp_steps"] += stats.vjp_steps
        cost["metagradients"] += 1
        if step == 0 and not _finite(value, grad):
            raise ValueError(
                f"{_WHERE}: training with the initial schedule diverges (objective "
                f"{float(value)}); start from a lower learning rate"
            )

    def metagradient(step: int, log_lr):
        meta = _with_log_lr(base, log_lr)
        # replace(seed=...) shares the setup's compiled programs: reseeding compiles nothing.
        trained = setup.replace(seed=(setup.seed + step) % 2**32) if reseed else setup
        try:
            res = trained.metagradient(meta, **replay.options())
        except NonFiniteCotangentError:
            # The engine stops the reverse sweep at the first non-finite cotangent: a diverged run.
            value, grad, stats = jnp.float32(jnp.nan), jnp.full_like(log_lr, jnp.nan), None
        else:
            value, grad, stats = res.value, res.grad["log_lr"], res.stats
        account(step, value, grad, stats)
        return value, grad, stats

    # Stored states on the device: each meta-step is one compiled program, the metagradient
    # (the same sweep as `setup.metagradient`'s) and the update, with no per-call validation
    # or host round trip between them (docs/benchmarks.md, "One jitted meta-step").
    # A duck-typed setup that only provides `metagradient` keeps it, and so does a reseeded
    # search: the compiled program holds one seed's initial state.
    compiled = None
    if isinstance(setup, TrainingSetup) and not reseed:
        compiled = outer_update(
            setup.step_fn, setup.objective_fn, setup.init_state(), base, x, setup.num_steps,
            embed=_with_log_lr, **replay.options(),
        )  # fmt: skip

    def meta_step(step: int, log_lr, opt_state, optimizer):
        update, stats = compiled
        value, grad, finite, updates, opt_state = update(log_lr, opt_state, optimizer)
        stats = stats if bool(finite) else None  # As when the engine raises: a diverged run.
        account(step, value, grad, stats)
        return value, grad, stats, updates, opt_state

    def record(step, log_lr, value, grad, opt_state) -> dict[str, Any]:
        scale, unstable = _status(opt_state)
        return {
            "lr": np.exp(np.asarray(log_lr, np.float64)).tolist(),
            "rejected": not _finite(value, grad),
            "step_scale": scale,
            "unstable_knots": unstable,
        }

    started = time.perf_counter()
    loop = meta_descent(
        metagradient,
        x,
        optimizer,
        meta_steps=meta_steps,
        record=record,
        fingerprint=lambda: {
            "setup": setup_fingerprint(setup),
            "knots": list(knots),
            "replay": replay.describe(),
            "reseed": reseed,
            "user": fingerprint,
        },
        save_dir=save_dir,
        resume=resume,
        callback=callback,
        progress=progress,
        desc="lr search",
        where=_WHERE,
        meta_step=None if compiled is None else meta_step,
    )
    history = list(loop.history)
    x = loop.params

    # The last update has not been evaluated yet: one training run, no gradient (with the next
    # seed when reseeding, as the next meta-step would have).
    final_meta = {**base, "log_lr": x}
    final = setup.replace(seed=(setup.seed + meta_steps) % 2**32) if reseed else setup
    value = setup.objective_fn(final.train(final_meta), final_meta)
    cost["train_runs"] = 1
    cost["seconds"] = time.perf_counter() - started
    history.append(
        MetaStep(
            meta_steps,
            float(value),
            0.0,
            0,
            0,
            {
                "lr": np.exp(np.asarray(x, np.float64)).tolist(),
                "rejected": not bool(jnp.isfinite(value)),
                "step_scale": _status(loop.opt_state)[0],
                "unstable_knots": 0,
            },
        )
    )
    objectives = np.array([r.objective if not r.info["rejected"] else np.inf for r in history])
    best = int(np.argmin(objectives))
    schedule = PiecewiseLinearSchedule.from_lr(
        knots, history[best].info["lr"], num_steps=setup.num_steps
    )

    test: dict[str, list[float]] = {}
    if seeds:
        best_meta = {**base, "log_lr": jnp.asarray(schedule.log_lr, base["log_lr"].dtype)}
        report = retrain_and_evaluate(setup, seeds=seeds, meta=best_meta, split="test")
        test = {
            "seeds": seeds,
            "accuracy": np.asarray(report["accuracy"]).tolist(),
            "loss": np.asarray(report["loss"]).tolist(),
        }
    return LRSearchResult(schedule, history, best, test, cost)


def _with_log_lr(base: dict, log_lr: jax.Array) -> dict:
    """The full metaparameters with the searched log rates (hashable: a compiled program's
    static argument)."""
    return {**base, "log_lr": log_lr}


def _finite(value: Any, grad: Any) -> bool:
    return bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))


def _status(state: Any) -> tuple[float, int]:
    """(step scale, unstable knots) of a ``log_lr_adam`` state; (nan, 0) for other optimizers."""
    inner = getattr(state, "inner_state", state)
    unstable = getattr(inner, "unstable", None)
    count = 0 if unstable is None else int(sum(np.sum(u) for u in jax.tree.leaves(unstable)))
    return float(getattr(inner, "step_scale", np.nan)), count
