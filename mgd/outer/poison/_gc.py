"""Gradient Canceling (Lu, Kamath, Yu 2023), the model-targeted attack the MGD paper compares to.

Corrupts a clean model into nearby bad parameters ``w_p`` (GradPC), then perturbs the poisoned
inputs so that ``w_p`` is a stationary point of training on the poisoned pool. The two stages,
the threat model and the references: ``docs/outer.md`` (Gradient Canceling).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from mgd.outer.poison._attack import (
    PoisonResult,
    absolute_bound,
    apply_perturbations,
    check_poison_data,
    resolve_indices,
)
from mgd.outer.poison._update import check_bound, poison_ascent
from mgd.train import MetaSpec, TrainingSetup, model_fns

__all__ = ["gradient_canceling_poison"]


def _norm(tree: Any) -> jax.Array:
    # optax's global-norm helpers were renamed across the versions we support; this is stable.
    return jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(tree)))


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def gradient_canceling_poison(
    setup: TrainingSetup,
    *,
    fraction: float | None = None,
    indices: Any = None,
    bound: float | None = None,
    steps: int = 200,
    step_size: float = 0.05,
    target_radius: float = 0.5,
    target_steps: int = 50,
    craft_seed: int | None = None,
    seed: int = 0,
    chunk_size: int = 512,
    progress: bool = True,
) -> PoisonResult:
    """Gradient Canceling toward GradPC target parameters, on the attack's poisoned examples.

    Args:
      setup: the victim's training recipe on the clean data (as for ``poison_attack``).
      fraction: poisoned fraction in (0, 1), the same seeded subset as the other attacks for the
        same ``seed``. Give this or ``indices``.
      indices: the examples to perturb, instead of ``fraction``.
      bound: optional L-infinity radius as a fraction of the valid range (``None``: only valid
        inputs, the setting of Lu et al.).
      steps: projected descent steps on ``f(delta)``, ``>= 1``.
      step_size: initial signed step as a fraction of the valid range; cosine-decayed to 0.
      target_radius: ``r``, the relative L2 distance of the target parameters from the clean
        ones, ``> 0``; larger targets are worse models but harder to reach with few poisons.
      target_steps: GradPC ascent steps, ``>= 1``.
      craft_seed: training seed of the clean model; default ``setup.seed``. Keep it out of the
        victims' evaluation seeds.
      seed: seed of the poisoned subset (with ``fraction``).
      chunk_size: examples per chunk of the per-example gradient sums.
      progress: show a progress bar.

    Returns:
      A :class:`PoisonResult` named ``"gradient_canceling"``; ``details`` holds
      ``"objective"`` (``f`` per step, before its update), ``"target_train_loss"`` and
      ``"clean_train_loss"``.

    Raises:
      ValueError: ``fraction`` outside (0, 1), bad ``indices``, a non-positive ``bound``,
        ``steps``, ``target_steps``, ``target_radius`` or ``step_size``, or a dataset without
        validation/test split.

    Example:
      >>> res = gradient_canceling_poison(setup, fraction=0.025, steps=100)  # doctest: +SKIP

    References:
      Lu, Kamath, Yu. "Exploring the Limits of Model-Targeted Indiscriminate Data Poisoning
      Attacks", ICML 2023.
      Sun et al. "Exploring the Vulnerability of Deep Neural Networks: A Study of Parameter
      Corruption", AAAI 2021.
    """
    where = "gradient_canceling_poison"
    data = setup.data
    check_poison_data(data, where=where)
    check_bound(bound, where=where)
    for name, value in (("steps", steps), ("target_steps", target_steps)):
        if int(value) != value or value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {value}")
    for name, value in (("target_radius", target_radius), ("step_size", step_size)):
        if not value > 0:
            raise ValueError(f"{where}: {name} must be > 0, got {value}")
    idx = resolve_indices(data, fraction=fraction, indices=indices, seed=seed, where=where)
    craft_seed = int(setup.seed if craft_seed is None else craft_seed)

    fns = model_fns(setup.model)
    n = data.num_train

    def loss_sum(params, model_state, x, y):
        # Training-mode forward (batch statistics), as the victim's gradient steps see it.
        logits, _ = fns.apply(params, model_state, x, True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    grad_sum = jax.jit(jax.grad(loss_sum))
    jit_loss_sum = jax.jit(loss_sum)

    def full_gradient(params, model_state, x, y) -> Any:
        """Mean training gradient over a pool, accumulated chunk by chunk."""
        total = jax.tree.map(jnp.zeros_like, params)
        for sl in _chunks(x.shape[0], chunk_size):
            g = grad_sum(params, model_state, jnp.asarray(x[sl]), jnp.asarray(y[sl]))
            total = jax.tree.map(jnp.add, total, g)
        return total

    def pool_loss(params, model_state) -> float:
        total = 0.0
        for sl in _chunks(n, chunk_size):
            x, y = jnp.asarray(data.x_train[sl]), jnp.asarray(data.y_train[sl])
            total += float(jit_loss_sum(params, model_state, x, y))
        return total / n

    # Stage 1: the clean model and GradPC target parameters.
    plain = MetaSpec()
    # Reusing the given setup when it already trains plainly reuses its compiled training.
    victim = setup if setup.meta_spec == plain else setup.replace(meta_spec=plain)
    clean_state = victim.train(seed=craft_seed)
    w_c, model_state = clean_state.params, clean_state.model_state
    radius = target_radius * float(_norm(w_c))
    alpha = 2.0 * radius / target_steps
    w_p = w_c
    for _ in tqdm(range(target_steps), desc="GC: GradPC target", disable=not progress):
        g = full_gradient(w_p, model_state, data.x_train, data.y_train)
        scale = alpha / max(float(_norm(g)), 1e-12)
        w_p = jax.tree.map(lambda w, gi, s=scale: w + s * gi, w_p, g)
        diff = jax.tree.map(jnp.subtract, w_p, w_c)
        d_norm = float(_norm(diff))
        if d_norm > radius:
            shrink = radius / d_norm
            w_p = jax.tree.map(lambda c, d, s=shrink: c + s * d, w_c, diff)

    # Stage 2: cancel the training gradient at w_p with the poisoned inputs.
    clean_mask = np.ones(n, bool)
    clean_mask[idx] = False
    clean_sum = full_gradient(w_p, model_state, data.x_train[clean_mask], data.y_train[clean_mask])
    x_p, y_p = jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx])
    low, high = data.x_range
    width = jnp.asarray(high - low)
    schedule = optax.cosine_decay_schedule(step_size, steps)
    descent = poison_ascent(
        # Step sizes are fractions of the valid range, as for the MGD attack.
        lambda count: schedule(count) * width,
        clean_inputs=x_p,
        lower=jnp.asarray(low),
        upper=jnp.asarray(high),
        bound=absolute_bound(data, bound),
    )

    def poison_grad_sum(delta, x, y):
        # The same clip as the victim's data pipeline, so what is optimized is what is trained on.
        return grad_sum(w_p, model_state, jnp.clip(x + delta, low, high), y)

    @jax.jit
    def chunk_vjp(delta, x, y, cotangent):
        _, vjp = jax.vjp(lambda d: poison_grad_sum(d, x, y), delta)
        return vjp(cotangent)[0]

    chunks = _chunks(idx.size, chunk_size)
    delta = jnp.zeros_like(x_p)
    state = descent.init(delta)
    details = {"objective": []}
    for _ in tqdm(range(steps), desc="GC: canceling", disable=not progress):
        total = clean_sum
        for sl in chunks:
            total = jax.tree.map(jnp.add, total, poison_grad_sum(delta[sl], x_p[sl], y_p[sl]))
        mean_grad = jax.tree.map(lambda t: t / n, total)
        details["objective"].append(0.5 * float(_norm(mean_grad)) ** 2)
        # d f / d delta = J^T G / n, with J the Jacobian of the poisoned gradient sum.
        cot = jax.tree.map(lambda t: t / n, mean_grad)
        grad = jnp.concatenate([chunk_vjp(delta[sl], x_p[sl], y_p[sl], cot) for sl in chunks])
        # poison_ascent ascends; canceling descends f, so it gets -grad.
        updates, state = descent.update(-grad, state, delta)
        delta = optax.apply_updates(delta, updates)

    details["clean_train_loss"] = [pool_loss(w_c, model_state)]
    details["target_train_loss"] = [pool_loss(w_p, model_state)]
    poisoned = apply_perturbations(data, idx, np.asarray(delta))
    return PoisonResult(
        name="gradient_canceling",
        data=poisoned,
        indices=idx,
        perturbations=poisoned.x_train[idx] - data.x_train[idx],
        details=details,
        craft_seeds=(craft_seed,),
    )
