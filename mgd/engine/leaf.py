"""Differentiated leaf blocks: how the reverse sweep back-propagates ``n`` consecutive steps.

A checkpoint plan's ``Reverse(n)`` hands ``n`` steps to `block_vjp`, which runs them forward
and returns their pullback. Three modes trade memory for time:

- ``"fused"``: the whole block is one ``jax.vjp`` of a ``lax.scan``: every step's residuals
  (the activations of its forward and backward pass) are kept until the block's backward pass.
  Memory ``n`` times one step's residuals; the fastest (each step runs forward once).
- ``"remat"``: the forward pass keeps only the block's ``n`` input states; the backward pass
  reverses step by step, each step's VJP recomputing that step's residuals. Memory ``n``
  states plus one step's residuals; one extra forward step per step.
- ``"mixed"``: as ``"remat"``, but each step's VJP is mixed-mode (Kemaev et al., 2025): for a
  step that exposes its loss gradient (a `GradientStep`), the Hessian-vector and mixed
  second-derivative products of the training loss are computed forward-over-reverse
  (``jax.jvp`` of the loss gradient) instead of reverse-over-reverse, so the inner backward
  pass's intermediates are never stored.

All three are exact: the same numbers as ``jax.grad`` of the unrolled loop up to rounding.

References:
  Kemaev, Calian, Zintgraf, Farquhar, van Hasselt. "Scalable meta-learning via mixed-mode
  differentiation", ICML 2025 (arXiv:2505.00793).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any

LEAF_MODES = ("fused", "remat", "mixed")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GradientStep:
    """A training step that exposes its loss gradient, so the engine can use mixed mode.

    The step is ``update(state, meta, t, grads, aux)`` where ``(grads, aux)`` is
    ``jax.grad(loss, has_aux=True)(params(state), state, meta, t)``: the gradient of the
    training loss with respect to the parameters, and whatever else the loss's forward pass
    produces (e.g. batch-norm statistics). Calling the object runs that step, so it is a
    valid ``step_fn`` for every engine mode; ``leaf="mixed"`` needs it. It is a pytree: its
    functions may be ``jax.tree_util.Partial`` objects holding arrays, which the engine passes to
    its compiled programs as arguments.

    Attributes:
      loss: ``(params, state, meta, t) -> (scalar, aux)``, the training loss of step ``t``
        (twice differentiable in ``params``, ``state`` and ``meta``) and its auxiliary output.
      update: ``(state, meta, t, grads, aux) -> state``, the optimizer step given the loss
        gradient ``grads`` (structure of ``params(state)``) and ``aux``.
      params: ``state -> params``, the part of the state the loss is differentiated in (a
        subtree of the state, e.g. ``lambda s: s.params``).

    Example:
      >>> step = mgd.engine.GradientStep(
      ...     loss=lambda w, s, lr, t: (jnp.sum(w**2), ()),
      ...     update=lambda s, lr, t, g, aux: s - lr * g,
      ...     params=lambda s: s)
      >>> float(step(jnp.float32(1.0), jnp.float32(0.1), 0))
      0.8
    """

    loss: Callable
    update: Callable
    params: Callable

    def __call__(self, state: PyTree, meta: PyTree, t: jax.Array) -> PyTree:
        grads, aux = jax.grad(self.loss, has_aux=True)(self.params(state), state, meta, t)
        return self.update(state, meta, t, grads, aux)


def is_differentiable(x) -> bool:
    """Whether a leaf is floating point (differentiated) rather than an integer or a flag."""
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def partition(tree: PyTree) -> tuple[PyTree, PyTree]:
    """Splits a pytree into its floating leaves and the rest (integer counters, flags)."""
    diff = jax.tree.map(lambda x: x if is_differentiable(x) else None, tree)
    rest = jax.tree.map(lambda x: None if is_differentiable(x) else x, tree)
    return diff, rest


def combine(diff: PyTree, rest: PyTree) -> PyTree:
    """Inverse of `partition`."""
    return jax.tree.map(lambda a, b: b if a is None else a, diff, rest, is_leaf=lambda x: x is None)


def _add(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.add, a, b)


def run_block(step_fn: Callable, state: PyTree, meta: PyTree, t0, length: int) -> PyTree:
    """``length`` steps of ``step_fn`` from step ``t0``, as a ``lax.scan``."""

    def body(s, i):
        return step_fn(s, meta, t0 + i), None

    return lax.scan(body, state, jnp.arange(length, dtype=jnp.int32))[0]


def reverse_step_vjp(step_fn: Callable, state: PyTree, meta: PyTree, t, ct_out: PyTree):
    """One step's VJP by reverse mode (reverse-over-reverse through its loss gradient).

    Returns:
      ``(ct_in, ct_meta)``: cotangents of the step's input state (floating leaves, as from
      `partition`) and of ``meta``, given ``ct_out``, that of its output state.
    """
    diff, rest = partition(state)
    step = lambda d, m: partition(step_fn(combine(d, rest), m, t))[0]
    return jax.vjp(step, diff, meta)[1](ct_out)


def mixed_step_vjp(step_fn: GradientStep, state: PyTree, meta: PyTree, t, ct_out: PyTree):
    """One step's VJP in mixed mode: second-order terms forward-over-reverse.

    With ``(g, a) = (grad_p L, aux)(p, s, m)`` at ``p = params(s)`` and the step
    ``update(s, m, t, g, a)``, the cotangents ``(c_g, c_a)`` that the update's (cheap, reverse
    mode) VJP sends to ``(g, a)`` come back to ``(p, s, m)`` as
    ``grad <grad_p L, c_g> + grad <aux, c_a>``. The first term equals the derivative along
    ``c_g`` of the full gradient ``grad_(p,s,m) L`` (second derivatives commute), which
    ``jax.jvp`` of ``jax.grad`` computes with the loss's forward activations alone; the second
    is a plain VJP of the loss's forward pass.

    Returns:
      ``(ct_in, ct_meta)`` as `reverse_step_vjp`, the same numbers up to rounding.
    """
    diff, rest = partition(state)
    params = step_fn.params(state)

    def loss(p, d, m):
        value, aux = step_fn.loss(p, combine(d, rest), m, t)
        aux_diff, aux_rest = partition(aux)
        return (value, aux_diff), aux_rest

    def loss_for_grad(p):
        (value, aux_diff), aux_rest = loss(p, diff, meta)
        return value, (aux_diff, aux_rest)

    # The step's own forward and backward pass, for the update's inputs.
    grads, (aux_diff, aux_rest) = jax.grad(loss_for_grad, has_aux=True)(params)

    def update(d, m, g, a):
        return partition(step_fn.update(combine(d, rest), m, t, g, combine(a, aux_rest)))[0]

    ct_diff, ct_meta, ct_g, ct_a = jax.vjp(update, diff, meta, grads, aux_diff)[1](ct_out)
    has_aux = bool(jax.tree.leaves(aux_diff))

    def first_order(p):
        (value, aux_out), pullback, _ = jax.vjp(loss, p, diff, meta, has_aux=True)
        zero_aux = jax.tree.map(jnp.zeros_like, aux_out)
        full_grad = pullback((jnp.ones_like(value), zero_aux))
        aux_pull = pullback((jnp.zeros_like(value), ct_a)) if has_aux else None
        return full_grad, aux_pull

    (_, aux_pull), (hessian_ct, _) = jax.jvp(first_order, (params,), (ct_g,))
    ct_p, ct_d, ct_m = hessian_ct
    if has_aux:
        ct_p, ct_d, ct_m = _add(ct_p, aux_pull[0]), _add(ct_d, aux_pull[1]), _add(ct_m, aux_pull[2])
    # `params` is a subtree of the state: its cotangent goes back into the state's structure.
    (ct_from_params,) = jax.vjp(lambda d: step_fn.params(combine(d, rest)), diff)[1](ct_p)
    ct_in = jax.tree.map(lambda *x: sum(x), ct_diff, ct_from_params, ct_d)
    return ct_in, _add(ct_meta, ct_m)


def block_vjp(step_fn: Callable, state: PyTree, meta: PyTree, t0, *, length: int, mode: str):
    """Runs ``length`` steps from ``state`` (at step ``t0``) and returns their pullback.

    The engine's one entry point for a differentiated leaf block (see the module docstring for
    the modes); traceable, to be called inside a jitted program.

    Args:
      step_fn: ``(state, meta, t) -> state``; a `GradientStep` for ``mode="mixed"``.
      state: the state at step ``t0``.
      meta: the metaparameters.
      t0: the block's first step index, an int32 scalar (traced or not).
      length: ``n``, the number of steps, ``>= 1``.
      mode: ``"fused"``, ``"remat"`` or ``"mixed"``.

    Returns:
      ``(out_state, pullback)``: the state at step ``t0 + n`` and a function mapping the
      cotangent of its floating leaves (as from `partition`) to ``(ct_in, ct_meta)``, the
      cotangents of the floating leaves of ``state`` and of ``meta``.

    Raises:
      ValueError: an unknown ``mode``, or ``"mixed"`` for a step that is not a `GradientStep`.
    """
    if mode not in LEAF_MODES:
        raise ValueError(f"leaf mode must be one of {LEAF_MODES}, got {mode!r}")
    diff, rest = partition(state)
    if mode == "fused":

        def block(d, m):
            return partition(run_block(step_fn, combine(d, rest), m, t0, length))

        out_diff, pullback, out_rest = jax.vjp(block, diff, meta, has_aux=True)
        return combine(out_diff, out_rest), pullback
    if mode == "mixed" and not isinstance(step_fn, GradientStep):
        raise ValueError(
            "leaf='mixed' needs a step that exposes its loss gradient, an "
            "mgd.engine.GradientStep (TrainingSetup.step_fn is one); pass leaf='remat' instead"
        )
    step_vjp = mixed_step_vjp if mode == "mixed" else reverse_step_vjp
    steps = t0 + jnp.arange(length, dtype=jnp.int32)
    # Forward: keep the block's input states (the only residuals kept across steps).
    out, states = lax.scan(lambda s, t: (step_fn(s, meta, t), s), state, steps)

    def pullback(ct_out):
        def back(carry, xs):
            (ct, grad), (s, t) = carry, xs
            ct, ct_meta = step_vjp(step_fn, s, meta, t, ct)
            return (ct, _add(grad, ct_meta)), None

        zero = jax.tree.map(jnp.zeros_like, meta)
        (ct_in, grad), _ = lax.scan(back, (ct_out, zero), (states, steps), reverse=True)
        return ct_in, grad

    return out, pullback
