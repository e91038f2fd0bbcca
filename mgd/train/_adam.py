"""Adam with a hand-written reverse pass, for training runs that metagradients differentiate.

A metagradient back-propagates through every optimizer update. Differentiating optax's
`optax.scale_by_adam` automatically keeps five parameter-sized intermediates per leaf and step
(``2 g``, the bias-corrected moment, the denominator, its square and a quotient) and spends
several passes over memory on them. Adam's reverse pass needs only the gradient and the two new
moments: `scale_by_adam` here computes the same forward values as optax's, operation for
operation (training is bit-identical), and gives each leaf's update a `jax.custom_vjp` whose
residuals are exactly those three arrays. On the 2-core CPU this makes the reverse sweep of an
MLP trained by Adam markedly cheaper (see ``docs/benchmarks.md``).

Per leaf, with ``c1 = 1 - b1**k`` and ``c2 = 1 - b2**k`` at step ``k`` (the bias corrections):

  mu' = (1 - b1) g + b1 mu,   nu' = (1 - b2) g**2 + b2 nu,
  u = (mu' / c1) / (S + eps),  S = sqrt(nu' / c2 + eps_root),

and for cotangents ``(du, dmu', dnu')`` of ``(u, mu', nu')``:

  dmu' += du / ((S + eps) c1),   dnu' -= du (mu' / c1) / ((S + eps)**2 2 S c2),
  dg = (1 - b1) dmu' + 2 (1 - b2) g dnu',   dmu = b1 dmu',   dnu = b2 dnu'.

Only reverse mode is defined (`jax.custom_vjp`): ``jax.jvp`` through the update raises.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

__all__ = ["adam", "scale_by_adam"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _adam_leaf(g, mu, nu, c1, c2, b1, b2, eps, eps_root):
    # The same expressions, in the same order and with the hyperparameters as Python floats
    # (weakly typed), as optax.scale_by_adam: bit-identical values.
    mu = (1 - b1) * g + b1 * mu
    nu = (1 - b2) * (g**2) + b2 * nu
    return (mu / c1) / (jnp.sqrt(nu / c2 + eps_root) + eps), mu, nu


def _adam_leaf_fwd(g, mu, nu, c1, c2, b1, b2, eps, eps_root):
    out = _adam_leaf(g, mu, nu, c1, c2, b1, b2, eps, eps_root)
    return out, (g, out[1], out[2], c1, c2)


def _adam_leaf_bwd(b1, b2, eps, eps_root, residuals, cotangents):
    g, mu, nu, c1, c2 = residuals
    d_u, d_mu, d_nu = cotangents
    root = jnp.sqrt(nu / c2 + eps_root)
    denominator = root + eps
    d_mu = d_mu + d_u / (denominator * c1)
    d_nu = d_nu - d_u * (mu / c1) / (denominator * denominator * 2 * root * c2)
    d_g = (1 - b1) * d_mu + 2 * (1 - b2) * g * d_nu
    # The bias corrections depend on the integer step count only: zero cotangents.
    return d_g, b1 * d_mu, b2 * d_nu, jnp.zeros_like(c1), jnp.zeros_like(c2)


_adam_leaf.defvjp(_adam_leaf_fwd, _adam_leaf_bwd)


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformation:
    """`optax.scale_by_adam` (same state, same values) with a cheap hand-written reverse pass.

    Args:
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the denominator outside the square root.
      eps_root: added inside the square root; keep it positive (e.g. 1e-8) when metagradients
        flow through the update: where a gradient is exactly zero, ``sqrt`` of zero has an
        infinite derivative.

    Returns:
      An ``optax.GradientTransformation`` whose state is ``optax.ScaleByAdamState``.

    Raises:
      ValueError: ``b1`` or ``b2`` outside ``[0, 1)``, or ``eps`` or ``eps_root`` negative or
        not finite.
    """
    hyper = {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root}
    for name, value in hyper.items():
        try:
            hyper[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"adam: {name} must be a float, got {value!r}") from None
        decay = name in ("b1", "b2")
        if not (0 <= hyper[name] < 1 if decay else 0 <= hyper[name] < float("inf")):
            allowed = "in [0, 1)" if decay else "finite and >= 0"
            raise ValueError(f"adam: {name} must be {allowed}, got {value!r}")
    b1, b2, eps, eps_root = hyper.values()
    base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        # As optax: the corrections in the count's float type, then cast to each leaf's dtype.
        c1, c2 = 1 - b1**count, 1 - b2**count
        grads, treedef = jax.tree.flatten(updates)
        leaves = [
            _adam_leaf(g, mu, nu, c1.astype(g.dtype), c2.astype(g.dtype), b1, b2, eps, eps_root)
            for g, mu, nu in zip(
                grads, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu),
                strict=True,
            )
        ]  # fmt: skip
        u, mu, nu = (treedef.unflatten([leaf[i] for leaf in leaves]) for i in range(3))
        return u, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(base.init, update_fn)


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformation:
    """`optax.adam` with the cheap reverse pass of `scale_by_adam`: same state, same training.

    Args:
      learning_rate: a float or an optax schedule.
      b1, b2, eps, eps_root: as `scale_by_adam`.

    Returns:
      ``optax.chain(scale_by_adam(...), optax.scale_by_learning_rate(learning_rate))``, the
      structure of ``optax.adam``'s.

    Example:
      >>> opt = mgd.train.adam(1e-3, eps_root=1e-8)   # in place of optax.adam(1e-3, ...)
    """
    return optax.chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        optax.scale_by_learning_rate(learning_rate),
    )
