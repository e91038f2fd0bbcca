"""Update rules of metagradient descent on data weights (the paper's Algorithm 1 and its
fixed-budget variant), as optax-shaped ``(init, update)`` pairs.

Both act on a weight vector over the candidate pool, shape ``(n,)``, the ``data_weights``
metaparameter of the training layer (a weight multiplies the example's loss; 0 removes it).
``update(grad, state, weights)`` returns ``(updates, new_state)`` like an optax transformation, so
``optax.apply_updates(weights, updates)`` is the new weight vector. Both are pure and jittable;
their randomness comes from a raw ``uint32`` PRNG key carried in the state, so a checkpointed
state resumes the same sequence of masks.

References:
  Engstrom, Ilyas, Chen, Feldmann, Moses, Madry. "Optimizing ML Training with Metagradient
  Descent", arXiv 2503.13751 (2025), Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "SelectionOptimizer",
    "CountDescentState",
    "count_descent",
    "BudgetExchangeState",
    "budget_exchange",
    "subset_weights",
    "top_k_subset",
]


class SelectionOptimizer(NamedTuple):
    """An ``(init, update)`` pair over data weights, shaped like ``optax.GradientTransformation``.

    ``init(weights) -> state``; ``update(grad, state, weights) -> (updates, state)``.
    """

    init: Callable
    update: Callable


class CountDescentState(NamedTuple):
    """State of :func:`count_descent`.

    Attributes:
      key: raw ``uint32[2]`` PRNG key of the next mask.
      count: int32 scalar, meta-steps taken.
      trace: float ``(n,)``, the averaged normalized metagradient that is followed.
    """

    key: jax.Array
    count: jax.Array
    trace: jax.Array


def _trace(grad: jax.Array, trace: jax.Array, count: jax.Array, momentum: float) -> jax.Array:
    # Each metagradient is scaled to unit RMS so that steps with a large target loss (early on)
    # do not dominate the average; the first step starts the trace.
    g = grad / (jnp.sqrt(jnp.mean(grad**2)) + 1e-30)
    return jnp.where(count == 0, g, momentum * trace + (1.0 - momentum) * g)


def _check_momentum(name: str, momentum: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum}; 0 turns it off")


def count_descent(
    *, p: float = 0.2, step_size: float = 1.0, momentum: float = 0.0, seed: int = 0
) -> SelectionOptimizer:
    """The paper's count update: ``c <- max(0, c - step_size * sign(g) * m)``, ``m ~ Bernoulli(p)``.

    Counts start at 1 (every candidate used once; ``init`` does not change the weights). Each
    meta-step moves a random fraction ``p`` of the candidates by one count against the sign of
    their metagradient: examples whose upweighting raises the target loss are used less, the
    others more. The mask keeps the step small (a sign step on every weight at once overshoots,
    since the metagradient is a local, first-order signal) and makes successive steps explore
    different candidates. With ``momentum > 0`` the sign is taken of an exponential average of
    the metagradients (each scaled to unit RMS) instead of the latest one alone (an extension:
    single metagradients are noisy, and a candidate's effect changes slowly between meta-steps).

    Args:
      p: probability that a candidate's count changes in a meta-step, in (0, 1].
      step_size: how much a count moves (1 for the paper's integer counts), > 0.
      momentum: weight of the past in the averaged metagradient, in [0, 1); 0 is the paper's rule.
      seed: seed of the masks.

    Returns:
      A :class:`SelectionOptimizer`. ``update(grad, state, weights)`` takes float arrays of shape
      ``(n,)`` and returns updates of shape ``(n,)``.

    Raises:
      ValueError: ``p`` outside (0, 1], ``step_size <= 0`` or ``momentum`` outside [0, 1).

    Example:
      >>> opt = count_descent(p=0.5)
      >>> w = jnp.ones(4)
      >>> state = opt.init(w)
      >>> updates, state = opt.update(jnp.array([1.0, -1.0, 0.0, 2.0]), state, w)
      >>> w = w + updates  # or optax.apply_updates(w, updates)
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"count_descent: p must be in (0, 1], got {p}; e.g. p=0.2")
    if not step_size > 0:
        raise ValueError(f"count_descent: step_size must be > 0, got {step_size}; e.g. 1.0")
    _check_momentum("count_descent", momentum)

    def init(weights: jax.Array) -> CountDescentState:
        return CountDescentState(
            jax.random.PRNGKey(seed), jnp.zeros((), jnp.int32), jnp.zeros_like(weights)
        )

    def update(grad, state, weights):
        key, sub = jax.random.split(state.key)
        trace = _trace(grad, state.trace, state.count, momentum)
        mask = jax.random.bernoulli(sub, p, grad.shape).astype(weights.dtype)
        new = jnp.maximum(0.0, weights - step_size * jnp.sign(trace) * mask)
        return new - weights, CountDescentState(key, state.count + 1, trace)

    return SelectionOptimizer(init, update)


class BudgetExchangeState(NamedTuple):
    """State of :func:`budget_exchange` (fields as in :class:`CountDescentState`)."""

    key: jax.Array
    count: jax.Array
    trace: jax.Array


def budget_exchange(
    *,
    num_exchange: int,
    p: float = 1.0,
    momentum: float = 0.0,
    seed: int = 0,
    costs=None,
    budget: float | None = None,
) -> SelectionOptimizer:
    """Fixed-budget update: swap the worst selected candidates for the best unselected ones.

    The weights are a subset indicator scaled to a constant (see :func:`subset_weights`): selected
    candidates share one positive weight, the others are 0. A candidate's metagradient ``g_i``
    ranks it (smaller is better: upweighting it lowers the target loss). Each meta-step takes the
    ``num_exchange`` selected candidates with the largest ``g`` and the ``num_exchange``
    unselected ones with the smallest ``g``, pairs them in rank order, and swaps a pair only where
    that lowers the first-order estimate of the loss (``g_out > g_in``). The subset keeps exactly
    its size. With ``p < 1`` only a random fraction ``p`` of the candidates is eligible in each
    meta-step (the paper's Bernoulli mask, for exploration). With ``momentum > 0`` candidates are
    ranked by an exponential average of the metagradients, each scaled to unit RMS, as in
    :func:`count_descent`.

    With ``costs`` and ``budget`` (e.g. documents' bytes and a byte budget) the subset keeps its
    total cost instead of its size, and a ranking's sign counts: of the ``num_exchange``
    worst-ranked selected candidates, those with a positive ``g`` above the best unselected
    one's leave; then the best-ranked eligible unselected ones with a negative ``g`` join, in
    rank order, while they fit (up to the first that does not), so a candidate with no
    evidence (``g = 0``, e.g. not drawn) neither leaves nor joins, and the total never exceeds
    ``budget`` (a start above it first loses its worst-ranked members).

    Args:
      num_exchange: most pairs swapped per meta-step, >= 1 (at most half the subset is sensible:
        the metagradient is a local signal).
      p: probability that a candidate is eligible for exchange in a meta-step, in (0, 1].
      momentum: weight of the past in the averaged metagradient, in [0, 1).
      seed: seed of the eligibility masks.
      costs: ``None`` (the size is the budget) or float ``(n,)``, each candidate's cost, > 0.
      budget: with ``costs``, the most total cost of the subset, > 0.

    Returns:
      A :class:`SelectionOptimizer` over weight vectors of shape ``(n,)`` whose positive entries
      are all equal (the value the subset started with, also with ``costs``).

    Raises:
      ValueError: ``num_exchange < 1``, ``p`` outside (0, 1], ``momentum`` outside [0, 1), or
        only one of ``costs`` and ``budget``, or a cost or the budget not positive.

    Example:
      >>> opt = budget_exchange(num_exchange=1)
      >>> w = jnp.array([2.0, 2.0, 0.0, 0.0])
      >>> updates, _ = opt.update(jnp.array([3.0, -1.0, -2.0, 0.5]), opt.init(w), w)
      >>> w + updates  # example 0 (worst selected) out, example 2 (best unselected) in
      Array([0., 2., 2., 0.], dtype=float32)
    """
    if int(num_exchange) != num_exchange or num_exchange < 1:
        raise ValueError(
            f"budget_exchange: num_exchange must be an integer >= 1, got {num_exchange}; "
            "e.g. 5% of the subset size"
        )
    if not 0.0 < p <= 1.0:
        raise ValueError(f"budget_exchange: p must be in (0, 1], got {p}; 1.0 means all eligible")
    _check_momentum("budget_exchange", momentum)
    num_exchange = int(num_exchange)
    if (costs is None) != (budget is None):
        raise ValueError("budget_exchange: pass both costs= and budget=, or neither")
    if costs is not None:
        costs = jnp.asarray(costs, jnp.float32)
        if costs.ndim != 1 or not bool(jnp.all(costs > 0)) or not budget > 0:
            raise ValueError(
                "budget_exchange: costs must be positive, shape (n,), and budget > 0; got "
                f"costs of shape {costs.shape}, budget {budget}"
            )

    def init(weights: jax.Array) -> BudgetExchangeState:
        return BudgetExchangeState(
            jax.random.PRNGKey(seed), jnp.zeros((), jnp.int32), jnp.zeros_like(weights)
        )

    def update(grad, state, weights):
        key, sub = jax.random.split(state.key)
        grad = _trace(grad, state.trace, state.count, momentum)
        eligible = jax.random.bernoulli(sub, p, grad.shape)
        selected = weights > 0
        k = min(num_exchange, grad.shape[0])
        # Worst selected: largest g among eligible selected; best unselected: smallest g.
        out_score, out_idx = jax.lax.top_k(jnp.where(selected & eligible, grad, -jnp.inf), k)
        in_score, in_idx = jax.lax.top_k(jnp.where(~selected & eligible, -grad, -jnp.inf), k)
        in_score = -in_score
        # Both rankings are sorted, so the profitable pairs are a prefix; -inf/+inf padding
        # (too few eligible candidates) never passes the test.
        swap = (out_score > in_score) & jnp.isfinite(out_score) & jnp.isfinite(in_score)
        value = jnp.max(weights)
        if costs is not None:
            leave = (out_score > jnp.maximum(in_score[0], 0.0)) & jnp.isfinite(out_score)
            kept = selected.at[out_idx].set(selected[out_idx] & ~leave)
            new = jnp.where(_fill(kept, selected, grad, eligible, costs, budget), value, 0.0)
            return new - weights, BudgetExchangeState(key, state.count + 1, grad)
        new = weights.at[out_idx].set(jnp.where(swap, 0.0, weights[out_idx]))
        new = new.at[in_idx].set(jnp.where(swap, value, new[in_idx]))
        return new - weights, BudgetExchangeState(key, state.count + 1, grad)

    return SelectionOptimizer(init, update)


def _fill(selected, before, grad, eligible, costs, budget):
    # The worst-ranked (largest grad) selected leave until the total cost is within budget;
    # then the best-ranked eligible candidates with grad < 0 that were not selected `before`
    # join, in rank order, while they fit.
    order = jnp.argsort(jnp.where(selected, -grad, jnp.inf))
    cost = jnp.where(selected, costs, 0.0)[order]
    excess = jnp.sum(cost) - budget
    leave = jnp.zeros_like(selected).at[order].set((jnp.cumsum(cost) - cost < excess) & (cost > 0))
    selected = selected & ~leave
    free = ~selected & ~before & eligible & (grad < 0)
    order = jnp.argsort(jnp.where(free, grad, jnp.inf))
    room = budget - jnp.sum(jnp.where(selected, costs, 0.0))
    join = (jnp.cumsum(costs[order]) <= room) & free[order]
    join = jnp.cumprod(join).astype(bool)  # Stop at the first that does not fit.
    return selected | jnp.zeros_like(selected).at[order].set(join)


def subset_weights(indices: jax.Array, num_candidates: int) -> jax.Array:
    """Weights that train on ``indices`` with the pool's training budget: ``n / k`` on the subset.

    With the training layer's loss ``sum_i w_i * loss_i / batch_size`` over batches drawn from the
    whole pool, weight ``n / k`` on ``k`` selected examples gives each step the same expected loss
    scale as training on the subset alone, the model that is retrained for evaluation.

    Args:
      indices: int array ``(k,)`` of distinct candidate indices, ``k >= 1``.
      num_candidates: the pool size ``n``.

    Returns:
      float32 array ``(n,)``.
    """
    k = indices.shape[0]
    return jnp.zeros(num_candidates, jnp.float32).at[indices].set(num_candidates / k)


def top_k_subset(weights: jax.Array, grad: jax.Array, k: int) -> jax.Array:
    """The ``k`` candidates with the largest weights, ties broken by the smaller metagradient.

    Turns count-descent weights (many tied integer counts) into a subset of the requested size.

    Args:
      weights: float array ``(n,)``.
      grad: float array ``(n,)``, the latest metagradient (smaller is better).
      k: subset size, ``1 <= k <= n``.

    Returns:
      int32 array ``(k,)`` of indices, sorted ascending.
    """
    order = jnp.lexsort((grad, -weights))  # last key is primary
    return jnp.sort(order[:k]).astype(jnp.int32)
