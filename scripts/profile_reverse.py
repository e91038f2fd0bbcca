"""Where the reverse sweep's time goes on the linear regression of ``scripts/bench_compiled.py``.

Per training step, in one process (calls interleaved, best of ``--repeats`` warm calls):

- ``train``: the training run, a jitted ``fori_loop``;
- ``unroll grad``: ``jax.value_and_grad`` of the loop as one ``lax.scan`` (every step's
  residuals kept, no replay), with ``unroll=1`` and ``unroll=16`` (is it the loop's
  per-iteration overhead?) and with no metaparameter at all (the gradient with respect to the
  initial weights only: is it the meta cotangent's accumulation?);
- ``compiled``: `mgd.metagradient` (the compiled sweep) with ``KAryTree(ceil(sqrt T))``, in
  leaf modes ``"fused"`` and ``"remat"``, and with the learning rate or the example weights
  made constants instead of metaparameters;
- lower bounds of any executor built on the step's VJP, in ``T // k`` blocks of ``k`` steps
  like the sweep's leaves: ``scan storing every state`` (per block a ``lax.scan`` of the step
  whose outputs are its states, as a ``"remat"`` leaf's forward half), and ``reverse VJP scan
  only``: with a block's input states given, per block one reverse ``lax.scan`` of
  `mgd.engine.leaf.reverse_step_vjp` (the ``"remat"`` leaf's backward half: each step's VJP
  with respect to the state and ``meta``, the meta cotangent accumulated), and the same with
  respect to the state only. Neither replays nor runs a first pass: the sweep costs at least
  their sum.

Usage:
  python scripts/profile_reverse.py --steps 10000 100000
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
import jax.numpy as jnp
from bench_compiled import _train, best, linear_regression

import mgd
from mgd.engine import leaf


def profile(T: int, repeats: int) -> None:
    policy = mgd.KAryTree(math.isqrt(T - 1) + 1)
    step_fn, objective_fn, state, meta = linear_regression(T)
    lr, weights = meta["lr"], meta["weights"]
    # The same step with one metaparameter a constant (a Partial's array: passed, not folded).
    fixed_lr = jax.tree_util.Partial(
        lambda lr, s, m, t: step_fn(s, {"weights": m["weights"], "lr": lr}, t), lr
    )
    fixed_weights = jax.tree_util.Partial(
        lambda w, s, m, t: step_fn(s, {"weights": w, "lr": m["lr"]}, t), weights
    )

    def unrolled(unroll: int, wrt_meta: bool = True):
        def objective(state, meta):
            body = lambda s, t: (step_fn(s, meta, t), None)
            steps = jnp.arange(T, dtype=jnp.int32)
            return objective_fn(jax.lax.scan(body, state, steps, unroll=unroll)[0], meta)

        return jax.jit(jax.value_and_grad(objective, argnums=1 if wrt_meta else 0))

    u1, u16, u_state = unrolled(1), unrolled(16), unrolled(1, wrt_meta=False)
    # The lower bounds run in blocks of the tree's k steps, as the sweep does: a T-long buffer
    # of states would not stay in cache, a block's does.
    k, blocks = policy.k, T // policy.k
    block_steps = lambda i: i * k + jnp.arange(k, dtype=jnp.int32)

    @jax.jit
    def store_states(step_fn, state, meta):
        def block(i, carry):
            body = lambda s, t: (step_fn(s, meta, t), s)
            return jax.lax.scan(body, carry[0], block_steps(i))

        empty = jax.tree.map(lambda x: jnp.zeros((k, *x.shape), x.dtype), state)
        return jax.lax.fori_loop(0, blocks, block, (state, empty))

    @functools.partial(jax.jit, static_argnames="wrt_meta")
    def reverse_only(step_fn, states, ct, meta, wrt_meta=True):
        def back(carry, xs):
            (ct, grad), (s, t) = carry, xs
            if not wrt_meta:
                return (jax.vjp(lambda s: step_fn(s, meta, t), s)[1](ct)[0], grad), None
            ct, ct_meta = leaf.reverse_step_vjp(step_fn, s, meta, t, ct)
            return (ct, jax.tree.map(jnp.add, grad, ct_meta)), None

        def block(i, carry):  # Every block reverses the same k states: a cost, not a result.
            return jax.lax.scan(back, carry, (states, block_steps(blocks - 1 - i)), reverse=True)[0]

        return jax.lax.fori_loop(0, blocks, block, (ct, jax.tree.map(jnp.zeros_like, meta)))

    states = store_states(step_fn, state, meta)[1]
    run = lambda fn, m, **kw: mgd.metagradient(
        fn, objective_fn, state, m, T, checkpoint=policy, **kw
    )
    times = best(
        {
            "train": lambda: _train(step_fn, state, meta),
            "unroll grad, unroll=1": lambda: u1(state, meta),
            "unroll grad, unroll=16": lambda: u16(state, meta),
            "unroll grad, w.r.t. initial weights only": lambda: u_state(state, meta),
            "compiled, fused": lambda: run(step_fn, meta, leaf="fused"),
            "compiled, remat": lambda: run(step_fn, meta, leaf="remat"),
            "compiled, fused, lr constant": lambda: run(fixed_lr, {"weights": weights}),
            "compiled, fused, weights constant": lambda: run(fixed_weights, {"lr": lr}),
            "scan storing every state (blocks of k)": lambda: store_states(step_fn, state, meta),
            "reverse VJP scan only (blocks of k), w.r.t. state and meta": lambda: reverse_only(
                step_fn, states, state, meta
            ),
            "reverse VJP scan only (blocks of k), w.r.t. state": lambda: reverse_only(
                step_fn, states, state, meta, wrt_meta=False
            ),
        },
        repeats,
    )
    train = times["train"]
    print(f"\n## T = {T:,}, {policy!r} (best of {repeats}, interleaved)\n")
    print("| configuration | time (s) | us / step | x train |\n|---|---:|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.4f} | {1e6 * seconds / T:.2f} | {seconds / train:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1 or any(T < 1 for T in args.steps):
        parser.error("--repeats and --steps must be >= 1")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    for T in args.steps:
        profile(T, args.repeats)


if __name__ == "__main__":
    main()
