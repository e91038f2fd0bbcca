"""The outer optimizer of the schedule search: Adam on log learning rates, bounded and guarded.

Optax-shaped (an ``optax.GradientTransformationExtraArgs``), with three additions a metagradient
loop over learning rates needs and optax's Adam lacks: each log-rate moves by at most
``max_step`` per meta-step (a relative change of the rate by at most ``e**max_step``); a
non-finite objective or metagradient *rejects* the previous step instead of feeding NaN into the
moments; and a knot whose metagradient has exploded — the inner run is chaotic there — has its
rate lowered instead of following a gradient whose sign is noise.
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
      unstable: which coordinates the last update lowered because the run was chaotic (bool,
        same structure as the parameters; all or none).
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    step_scale: jax.Array
    last_update: optax.Updates
    rejections: jax.Array
    unstable: optax.Updates


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _any(tree) -> jax.Array:
    return jnp.any(jnp.stack([jnp.any(x) for x in jax.tree.leaves(tree)]))


def log_lr_adam(
    learning_rate: float | optax.Schedule = 0.1,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_step: float = 0.5,
    shrink: float = 0.5,
    unstable_ratio: float | None = 1e3,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with a bounded step, rejection of non-finite runs and descent out of chaotic ones.

    Adam's step clipped to ``max_step`` per coordinate; a step that led to a non-finite run is
    taken back and later steps shrink by ``shrink``; a chaotic run (some ``|g_i| >
    unstable_ratio * |value|``) lowers every rate by the full bound, because its exploded
    gradients do not say which knot to lower. The update rules and their rationale:
    ``docs/outer.md`` (learning-rate search).

    Args:
      learning_rate: Adam's step size, in log-rate units per meta-step (0.1: about 10% change);
        a float, or an optax schedule ``accepted steps so far -> step size`` (e.g.
        ``optax.cosine_decay_schedule(0.1, meta_steps)``: a decaying step settles a search whose
        metagradients are noisy instead of letting it wander).
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment.
      max_step: bound on each coordinate's step, in log-rate units (0.5: at most x1.65).
      shrink: factor in ``(0, 1)`` applied to the rejected step and to all later steps.
      unstable_ratio: threshold :math:`\kappa` of the relative sensitivity ``|g_i| / |value|``
        above which the run counts as chaotic and all rates are lowered instead of following
        the gradient; ``None`` turns the rule off.

    Returns:
      ``optax.GradientTransformationExtraArgs(init, update)``; ``update(grads, state,
      params=None, *, value=None)`` takes the objective ``value`` (scalar) as an extra argument.
      Pure and jittable.

    Raises:
      ValueError: a non-positive ``learning_rate`` (a float), ``max_step``, ``eps`` or
        ``unstable_ratio``, ``b1``/``b2`` outside ``[0, 1)``, or ``shrink`` outside ``(0, 1)``.

    Example:
      >>> opt = log_lr_adam(0.1, max_step=0.5)
      >>> x = jnp.zeros(3)
      >>> state = opt.init(x)
      >>> u, state = opt.update(jnp.array([1.0, -1.0, 0.0]), state, x, value=jnp.float32(0.3))
      >>> [round(float(v), 3) for v in u]  # Adam's first step: learning_rate * sign(g)
      [-0.1, 0.1, -0.0]

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.
    """
    positive = [("max_step", max_step), ("eps", eps)]
    if not callable(learning_rate):
        positive.append(("learning_rate", learning_rate))
    if unstable_ratio is not None:
        positive.append(("unstable_ratio", unstable_ratio))
    for name, value in positive:
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
            unstable=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), bool), params),
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
        if unstable_ratio is None or value is None:
            unstable = jax.tree.map(lambda g: jnp.zeros(g.shape, bool), safe)
        else:
            limit = unstable_ratio * jnp.abs(jnp.where(finite, value, 0.0))
            chaotic = _any(jax.tree.map(lambda g: jnp.abs(g) > limit, safe))
            unstable = jax.tree.map(lambda g: jnp.broadcast_to(chaotic, g.shape), safe)
        count = state.count + 1
        # Unstable coordinates keep their moments: their gradient is noise of huge magnitude.
        mu = jax.tree.map(
            lambda m, g, u: jnp.where(u, m, b1 * m + (1 - b1) * g), state.mu, safe, unstable
        )
        nu = jax.tree.map(
            lambda v, g, u: jnp.where(u, v, b2 * v + (1 - b2) * g * g), state.nu, safe, unstable
        )
        bound = max_step * state.step_scale
        # A schedule sees the accepted steps before this one, as optax's schedules see `count`.
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def adam_step(m, v, u):
            m_hat = m / (1 - b1**count)
            v_hat = v / (1 - b2**count)
            step = state.step_scale * rate * m_hat / (jnp.sqrt(v_hat) + eps)
            return jnp.where(u, -bound, -jnp.clip(step, -bound, bound))

        accepted = jax.tree.map(adam_step, mu, nu, unstable)
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
            unstable=jax.tree.map(lambda u: u & finite, unstable),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)
