"""Baseline selections practitioners use against noisy labels, beside the MGD selection.

Both score every candidate of the pool with a model trained *briefly* on the whole (noisy) pool
and keep the ``size`` candidates with the smallest scores: examples whose labels a network fits
early are mostly correctly labelled, since networks learn clean patterns before they memorize
noise (Arpit et al. 2017).

- :func:`small_loss_selection` - the training loss (the criterion of Co-teaching).
- :func:`el2n_selection` - the EL2N score, the error norm averaged over several runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mgd.train import MetaSpec, TrainingSetup, model_fns

__all__ = ["BaselineSelection", "small_loss_selection", "el2n_selection"]


@dataclasses.dataclass(frozen=True)
class BaselineSelection:
    """A subset of the pool chosen by a per-candidate score.

    Attributes:
      name: ``"small_loss"``, ``"el2n"``, ``"dsir"`` or ``"domain_oracle"``.
      indices: int64 ``(size,)``, sorted: the chosen candidates (``small_loss``, ``el2n``: the
        ``size`` smallest scores, ties broken by index; see each function for the others).
      scores: float64 ``(n,)``, one score per candidate of the pool.
    """

    name: str
    indices: np.ndarray
    scores: np.ndarray


def _check(setup: TrainingSetup, size: int, num_steps: int | None, where: str) -> int:
    n = setup.data.num_train
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 0 < size <= n:
        raise ValueError(f"{where}: size must be an int in [1, {n}] (the pool), got {size!r}")
    if num_steps is None:
        return max(1, setup.num_steps // 10)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"{where}: num_steps must be an int >= 1 or None, got {num_steps!r}")
    return num_steps


def _pool_outputs(setup: TrainingSetup, seeds: Sequence[int], num_steps: int) -> list[np.ndarray]:
    # The outputs (inference mode) on every candidate of models trained plainly on the pool,
    # one float64 (num_train, ...) array per seed. One setup and one jitted apply for all seeds:
    # training and scoring compile once.
    plain = setup
    if setup.meta_spec != MetaSpec() or setup.num_steps != num_steps:
        plain = setup.replace(meta_spec=MetaSpec(), num_steps=num_steps)  # Compiles its own.
    fns = model_fns(setup.model)
    apply = jax.jit(lambda params, model_state, x: fns.apply(params, model_state, x, False)[0])
    x = setup.data.x_train
    c = min(setup.eval_batch_size, x.shape[0])
    # One chunk shape (the last one padded with repeats): one compilation.
    xs = np.concatenate([x, x[: -x.shape[0] % c]])
    chunks = [jnp.asarray(xs[i : i + c], setup.dtype) for i in range(0, len(xs), c)]
    outputs = []
    for seed in seeds:
        state = plain.train(seed=seed)
        out = [np.asarray(apply(state.params, state.model_state, xc)) for xc in chunks]
        outputs.append(np.concatenate(out)[: x.shape[0]].astype(np.float64))
    return outputs


def _keep_smallest(name: str, scores: np.ndarray, size: int) -> BaselineSelection:
    indices = np.sort(np.argsort(scores, kind="stable")[:size]).astype(np.int64)
    return BaselineSelection(name, indices, scores)


def small_loss_selection(
    setup: TrainingSetup, size: int, *, num_steps: int | None = None, seed: int | None = None
) -> BaselineSelection:
    """Keeps the ``size`` candidates with the smallest training loss after brief training.

    One model is trained with the setup's recipe (no metaparameters) on the whole pool for
    ``num_steps`` steps; each candidate's score is the setup's per-example ``loss`` of that
    model's outputs (inference mode) against its own, possibly noisy, label or target.

    Args:
      setup: the training recipe and the pool (``setup.data``); its ``meta_spec`` is ignored.
      size: number of candidates kept, in ``[1, num_train]``.
      num_steps: training steps before scoring; ``None`` takes a tenth of ``setup.num_steps``
        (at least 1): early, before the network memorizes noisy labels.
      seed: the training seed; ``None`` is ``setup.seed``.

    Returns:
      A :class:`BaselineSelection` named ``"small_loss"`` whose ``scores`` are the losses.

    Raises:
      ValueError: ``size`` outside ``[1, num_train]`` or ``num_steps < 1``.

    References:
      Han et al. "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy
      Labels", NeurIPS 2018 (the small-loss criterion).
    """
    num_steps = _check(setup, size, num_steps, "small_loss_selection")
    seed = setup.seed if seed is None else seed
    (outputs,) = _pool_outputs(setup, [seed], num_steps)
    targets = jnp.asarray(setup.data.y_train)
    scores = np.asarray(setup.loss(jnp.asarray(outputs, setup.dtype), targets), np.float64)
    return _keep_smallest("small_loss", scores, size)


def el2n_selection(
    setup: TrainingSetup,
    size: int,
    *,
    num_steps: int | None = None,
    seeds: Sequence[int] | None = None,
) -> BaselineSelection:
    """Keeps the ``size`` candidates with the smallest EL2N score (the easiest examples).

    EL2N is ``|| softmax(f(x)) - onehot(y) ||_2`` for a model ``f`` trained briefly, averaged
    over models trained from several seeds. Keeping the *smallest* scores suits noisy labels:
    a mislabelled example has a large error norm (Paul et al. keep the largest on clean data).

    Args:
      setup: the training recipe and the pool (``setup.data``, integer class labels); its
        ``meta_spec`` is ignored.
      size: number of candidates kept, in ``[1, num_train]``.
      num_steps: training steps before scoring; ``None`` takes a tenth of ``setup.num_steps``
        (at least 1), early in training as in the paper.
      seeds: the training seeds of the averaged runs; ``None`` takes four,
        ``setup.seed, setup.seed + 1, ...``.

    Returns:
      A :class:`BaselineSelection` named ``"el2n"`` whose ``scores`` are the mean error norms.

    Raises:
      ValueError: regression targets, ``size`` outside ``[1, num_train]``, ``num_steps < 1`` or
        no seeds.

    References:
      Paul, Ganguli, Dziugaite. "Deep Learning on a Data Diet: Finding Important Examples Early
      in Training", NeurIPS 2021.
    """
    num_steps = _check(setup, size, num_steps, "el2n_selection")
    if setup.data.num_classes is None:
        raise ValueError(
            "el2n_selection: the pool holds regression targets; EL2N needs integer class labels "
            "(use small_loss_selection)"
        )
    seeds = [setup.seed + j for j in range(4)] if seeds is None else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("el2n_selection: seeds is empty; pass at least one training seed")
    onehot = np.eye(setup.data.num_classes)[setup.data.y_train]
    norms = []
    for logits in _pool_outputs(setup, seeds, num_steps):
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        norms.append(np.linalg.norm(probs - onehot, axis=1))
    return _keep_smallest("el2n", np.mean(norms, axis=0), size)
