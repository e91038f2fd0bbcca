"""The poisoning attack's outer update: projected metagradient *ascent* on input perturbations.

Perturbations stay in ``C = {delta : lower <= x + delta <= upper, |delta|_inf <= bound}``
(bound optional), whose projection is a clip; the threat model and references:
``docs/outer.md`` (poisoning).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "PoisonAscentState",
    "poison_ascent",
    "project_perturbations",
    "check_bound",
]

AscentRule = Literal["sign", "normalized"]


def check_bound(bound: float | None, *, where: str) -> None:
    """Raises ``ValueError`` unless ``bound`` is ``None`` or a finite number ``> 0``."""
    if bound is None:
        return
    if not np.isfinite(bound) or bound <= 0:
        raise ValueError(
            f"{where}: bound must be a finite L-infinity radius > 0 (in the data's input units), "
            f"got {bound}; pass e.g. bound=0.1, or bound=None for only the valid-range constraint"
        )


def project_perturbations(
    perturbations: jax.Array,
    clean_inputs: jax.Array,
    *,
    lower: float | jax.Array,
    upper: float | jax.Array,
    bound: float | None = None,
) -> jax.Array:
    """Euclidean projection of perturbations onto the attack's constraint set.

    ``delta -> clip(delta, max(-bound, lower - x), min(bound, upper - x))``, the exact projection
    onto ``{delta : lower <= x + delta <= upper, |delta|_inf <= bound}``.

    Args:
      perturbations: float array ``(m, *input_shape)``.
      clean_inputs: the poisoned examples' clean inputs ``x``, same shape.
      lower: smallest valid input value; a scalar or an array broadcastable to ``input_shape``
        (e.g. per channel after normalization).
      upper: largest valid input value, like ``lower``.
      bound: optional L-infinity radius ``> 0``; ``None`` for only the valid range.

    Returns:
      The projected perturbations, same shape and dtype as ``perturbations``.

    Example:
      >>> x = jnp.array([[0.0, 0.5, 1.0]])
      >>> project_perturbations(jnp.array([[-1.0, 0.3, 0.2]]), x, lower=0.0, upper=1.0, bound=0.25)
      Array([[0.  , 0.25, 0.  ]], dtype=float32)
    """
    lo = lower - clean_inputs
    hi = upper - clean_inputs
    if bound is not None:
        lo = jnp.maximum(lo, -bound)
        hi = jnp.minimum(hi, bound)
    return jnp.clip(perturbations, lo, hi).astype(perturbations.dtype)


class PoisonAscentState(NamedTuple):
    """State of :func:`poison_ascent`: the number of meta-steps taken (int32 scalar)."""

    count: jax.Array


def poison_ascent(
    step_size: float | optax.Schedule,
    *,
    clean_inputs: jax.Array,
    lower: float | jax.Array,
    upper: float | jax.Array,
    bound: float | None = None,
    rule: AscentRule = "sign",
) -> optax.GradientTransformation:
    """Projected ascent on perturbations along the metagradient of the loss to *maximize*.

    One meta-step: ``delta <- P_C(delta + eta_k * d(g))`` with ``g = d objective / d delta`` (the
    metagradient of the victim's held-out loss) and ``P_C`` :func:`project_perturbations`:

    ``rule="sign"`` (the default) steps by ``sign(g)``, so that examples with small
    metagradients keep moving; ``rule="normalized"`` scales each example's metagradient to unit
    root-mean-square entry. Why: ``docs/outer.md`` (poisoning).

    Args:
      step_size: ``eta``, a float ``> 0`` in the data's input units, or an optax schedule
        ``count -> eta_k`` (e.g. ``optax.cosine_decay_schedule``).
      clean_inputs: the poisoned examples' clean inputs, ``(m, *input_shape)``.
      lower: smallest valid input value (scalar or broadcastable to ``input_shape``).
      upper: largest valid input value.
      bound: optional L-infinity radius ``> 0`` of the perturbations.
      rule: ``"sign"`` or ``"normalized"``.

    Returns:
      An ``optax.GradientTransformation``. ``update(grads, state, perturbations)`` takes the
      metagradient (``(m, *input_shape)``, the direction that *increases* the objective) and the
      current perturbations, and returns ``(updates, state)`` with
      ``optax.apply_updates(perturbations, updates)`` the projected new perturbations.

    Raises:
      ValueError: a non-positive float ``step_size``, a negative or zero ``bound``, an unknown
        ``rule``, ``lower >= upper``, or ``update`` called without the perturbations.

    Example:
      >>> x = jnp.zeros((2, 3))
      >>> opt = poison_ascent(0.1, clean_inputs=x, lower=-1.0, upper=1.0, bound=0.15)
      >>> delta = jnp.zeros_like(x)
      >>> state = opt.init(delta)
      >>> g = jnp.array([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0]])
      >>> for _ in range(2):
      ...     updates, state = opt.update(g, state, delta)
      ...     delta = optax.apply_updates(delta, updates)
      >>> delta  # the second step is clipped to the bound
      Array([[ 0.15, -0.15,  0.  ],
             [ 0.15,  0.15, -0.15]], dtype=float32)

    References:
      Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
      Engstrom et al., "Optimizing ML Training with Metagradient Descent", arXiv 2503.13751.
    """
    if not callable(step_size) and not step_size > 0:
        raise ValueError(
            f"poison_ascent: step_size must be > 0 (or an optax schedule), got {step_size}; "
            "e.g. step_size=0.05"
        )
    check_bound(bound, where="poison_ascent")
    if rule not in ("sign", "normalized"):
        raise ValueError(f"poison_ascent: rule must be 'sign' or 'normalized', got {rule!r}")
    if np.any(np.asarray(lower) >= np.asarray(upper)):
        raise ValueError(
            f"poison_ascent: the valid range needs lower < upper, got lower={lower}, "
            f"upper={upper}; pass the data's value range"
        )
    clean_inputs = jnp.asarray(clean_inputs)
    schedule = step_size if callable(step_size) else (lambda count: step_size)

    def init(perturbations: jax.Array) -> PoisonAscentState:
        del perturbations
        return PoisonAscentState(jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError(
                "poison_ascent: update needs the current perturbations to project onto the "
                "constraint set; call update(grads, state, perturbations)"
            )
        if rule == "sign":
            direction = jnp.sign(grads)
        else:
            axes = tuple(range(1, grads.ndim))
            rms = jnp.sqrt(jnp.mean(jnp.square(grads), axis=axes, keepdims=True))
            # An example whose metagradient is exactly 0 (never drawn) stays where it is.
            direction = grads / jnp.where(rms > 0, rms, 1.0)
        eta = schedule(state.count)
        new = project_perturbations(
            params + eta * direction, clean_inputs, lower=lower, upper=upper, bound=bound
        )
        return new - params, PoisonAscentState(state.count + 1)

    return optax.GradientTransformation(init, update)
