"""The outer optimizer of the schedule search: Adam on log learning rates, bounded and guarded.

Optax-shaped (an ``optax.GradientTransformationExtraArgs``), with two additions a metagradient
loop needs and optax's Adam lacks: each log-rate moves by at most ``max_step`` per meta-step (a
relative change of the rate by at most ``e**max_step``), and a non-finite objective or
metagradient *rejects* the previous step instead of feeding NaN into the moments.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["LogLRAdamState", "log_lr_adam"]


class LogLRAdamState(NamedTuple):
    """State of :func:`log_lr_adam`.

    Attributes:
      count: accepted steps so far (int32 scalar); Adam's bias correction uses it.
      mu: first moment, same structure as the parameters.
      nu: second moment, same structure as the parameters.
      step_scale: multiplier on the step size and its bound (float32 scalar, starts at 1);
        each rejection multiplies it by ``shrink``.
      last_update: the update most recently returned (same structure as the parameters), which
        a rejection retracts.
      rejections: rejected steps so far (int32 scalar).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    step_scale: jax.Array
    last_update: optax.Updates
    rejections: jax.Array


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def log_lr_adam(
    learning_rate: float = 0.1,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_step: float = 0.5,
    shrink: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with a bounded step and rejection of non-finite evaluations.

    For parameters :math:`x` (log learning rates) and metagradient :math:`g` at :math:`x`, an
    accepted step is Adam's, clipped coordinate-wise:

    .. math::
        u = -\mathrm{clip}\big(s\,\eta\,\hat m / (\sqrt{\hat v} + \epsilon),\; -s\,\delta,\;
        s\,\delta\big),

    with :math:`\eta` = ``learning_rate``, :math:`\delta` = ``max_step`` and :math:`s` the step
    scale (1 until a rejection). Since :math:`x` is a log rate, a step multiplies each rate by
    at most :math:`e^{s\delta}`.

    The gradient and ``value`` passed to ``update`` are those at the parameters the *previous*
    update led to. If either is non-finite (the inner run diverged there), that previous update
    :math:`u_{prev}` is rejected: ``update`` returns :math:`(\rho - 1)\,u_{prev}`, which moves the
    parameters back to :math:`x_{prev} + \rho\,u_{prev}` (``shrink`` :math:`= \rho`), leaves the
    moments untouched and multiplies the step scale :math:`s` by :math:`\rho` for all later steps.
    Repeated rejections approach the last finite point geometrically.

    Args:
      learning_rate: Adam's step size, in log-rate units per meta-step (0.1: about 10% change).
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment.
      max_step: bound on each coordinate's step, in log-rate units (0.5: at most x1.65).
      shrink: factor in ``(0, 1)`` applied to the rejected step and to all later steps.

    Returns:
      ``optax.GradientTransformationExtraArgs(init, update)``; ``update(grads, state,
      params=None, *, value=None)`` takes the objective ``value`` (scalar) as an extra argument.
      Pure and jittable.

    Raises:
      ValueError: a non-positive ``learning_rate``, ``max_step`` or ``eps``, ``b1``/``b2``
        outside ``[0, 1)``, or ``shrink`` outside ``(0, 1)``.

    Example:
      >>> opt = log_lr_adam(0.1, max_step=0.5)
      >>> x = jnp.zeros(3)
      >>> state = opt.init(x)
      >>> u, state = opt.update(jnp.array([1.0, -1.0, 0.0]), state, x, value=jnp.float32(0.3))
      >>> [round(float(v), 3) for v in u]
      [-0.1, 0.1, 0.0]

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.
    """
    for name, value in (("learning_rate", learning_rate), ("max_step", max_step), ("eps", eps)):
        if not value > 0:
            raise ValueError(f"log_lr_adam: {name} must be positive, got {value!r}")
    for name, value in (("b1", b1), ("b2", b2)):
        if not 0 <= value < 1:
            raise ValueError(f"log_lr_adam: {name} must be in [0, 1), got {value!r}")
    if not 0 < shrink < 1:
        raise ValueError(
            f"log_lr_adam: shrink must be in (0, 1), got {shrink!r}; 0.5 halves a rejected step"
        )

    def init(params: optax.Params) -> LogLRAdamState:
        zeros = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)
        return LogLRAdamState(
            count=jnp.zeros((), jnp.int32),
            mu=zeros,
            nu=zeros,
            step_scale=jnp.ones((), jnp.float32),
            last_update=zeros,
            rejections=jnp.zeros((), jnp.int32),
        )

    def update(
        grads: optax.Updates,
        state: LogLRAdamState,
        params: optax.Params | None = None,
        *,
        value: jax.Array | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, LogLRAdamState]:
        del params, extra_args
        finite = _all_finite(grads)
        if value is not None:
            finite = finite & jnp.all(jnp.isfinite(value))
        # Where the evaluation is not finite, zeros keep NaN out of the (discarded) Adam branch:
        # jnp.where selects, but NaN in an unselected branch would still poison reductions.
        safe = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, safe)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, safe)
        bound = max_step * state.step_scale

        def adam_step(m, v):
            m_hat = m / (1 - b1**count)
            v_hat = v / (1 - b2**count)
            step = state.step_scale * learning_rate * m_hat / (jnp.sqrt(v_hat) + eps)
            return -jnp.clip(step, -bound, bound)

        accepted = jax.tree.map(adam_step, mu, nu)
        retract = jax.tree.map(lambda u: (shrink - 1) * u, state.last_update)
        pick = lambda a, r: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, r)
        updates = pick(accepted, retract)
        new_state = LogLRAdamState(
            count=jnp.where(finite, count, state.count),
            mu=pick(mu, state.mu),
            nu=pick(nu, state.nu),
            step_scale=jnp.where(finite, state.step_scale, state.step_scale * shrink),
            last_update=pick(accepted, jax.tree.map(lambda u: shrink * u, state.last_update)),
            rejections=state.rejections + jnp.where(finite, 0, 1).astype(jnp.int32),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)
