"""Checks on `metagradient`'s inputs, run in plain Python and with `jax.eval_shape` before any
training step, so mistakes surface as one-line errors instead of deep tracebacks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mgd.engine.policies import AbstractCheckpointPolicy

PyTree = Any


def _as_arrays(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.asarray, tree)


def check_num_steps(num_steps) -> None:
    """Raises unless ``num_steps`` is a Python int ``>= 1``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps must be a Python int, got {type(num_steps).__name__}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def check_inputs(step_fn, objective_fn, init_state, meta, num_steps, policy):
    """Validates the arguments of `mgd.metagradient`: `check_step`'s checks and the objective's.

    Returns:
      ``(init_state, meta)`` with every leaf converted to a JAX array.

    Raises:
      ValueError, TypeError: naming the offending argument or leaf (see `mgd.metagradient`).
    """
    if not callable(step_fn) or not callable(objective_fn):
        raise TypeError("step_fn and objective_fn must be callables")
    init_state, meta = check_step(step_fn, init_state, meta, num_steps, policy)
    value = jax.eval_shape(objective_fn, init_state, meta)
    if not isinstance(value, jax.ShapeDtypeStruct) or value.shape != ():
        shape = getattr(value, "shape", type(value).__name__)
        raise ValueError(f"objective_fn must return a scalar, got shape {shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"objective_fn must return a floating-point scalar, got {value.dtype}")
    return init_state, meta


def check_step(step_fn, init_state, meta, num_steps, policy):
    """Validates the arguments of `mgd.replay_loop` (all of `mgd.metagradient`'s but the
    objective): ``num_steps``, the policy, ``meta``'s dtypes, and that ``step_fn`` keeps the
    state's structure, shapes and dtypes (`jax.eval_shape`, nothing run).

    Returns:
      ``(init_state, meta)`` with every leaf converted to a JAX array.

    Raises:
      ValueError, TypeError: naming the offending argument or leaf (see `mgd.replay_loop`).
    """
    check_num_steps(num_steps)
    if not isinstance(policy, AbstractCheckpointPolicy):
        raise TypeError(
            f"checkpoint must be a policy such as mgd.KAryTree(k) or None, got {policy!r}"
        )
    if not callable(step_fn):
        raise TypeError(f"step_fn must be a callable, got {type(step_fn).__name__}")
    init_state, meta = _as_arrays(init_state), _as_arrays(meta)
    for path, leaf in jax.tree_util.tree_leaves_with_path(meta):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"meta leaf meta{jax.tree_util.keystr(path)} has dtype {leaf.dtype}; "
                "metaparameters must be floating point (cast it, e.g. with .astype(jnp.float32))"
            )

    t = jax.ShapeDtypeStruct((), jnp.int32)
    out = jax.eval_shape(step_fn, init_state, meta, t)
    in_def, out_def = jax.tree.structure(init_state), jax.tree.structure(out)
    if in_def != out_def:
        raise ValueError(
            f"step_fn must return a state with the structure of init_state: got {out_def}, "
            f"expected {in_def}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(init_state), jax.tree.leaves(out), strict=True
    ):
        name = f"state{jax.tree_util.keystr(path)}"
        if a.shape != b.shape:
            raise ValueError(f"step_fn changes the shape of {name} from {a.shape} to {b.shape}")
        if a.dtype != b.dtype:
            raise TypeError(
                f"step_fn changes the dtype of {name} from {a.dtype} to {b.dtype}; cast the "
                "step's output back to the input's dtype"
            )
    return init_state, meta
