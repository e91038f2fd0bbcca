"""The replay engine as a JAX function: the whole checkpointed sweep in one compiled program.

`replay_loop` runs ``T`` training steps and returns the final state; its reverse-mode
derivative (a `jax.custom_vjp`) executes a checkpoint policy's plan (`mgd.engine.policies`)
inside compiled code, so ``jax.grad``, ``jax.value_and_grad``, ``jax.jit`` and ``jax.vmap``
compose with it like with ``lax.scan`` or ``jax.checkpoint``.

How a plan becomes compiled code. `_tables` turns the plan, once per ``(policy, T)``, into
integer arrays and a few static numbers (`_PlanShape`):

- the plan's ``Store``/``Restore``/``Free`` slots are mapped onto the rows of one
  preallocated buffer of states (a stacked pytree, one row per slot the plan holds at once,
  plus a scratch row that "no store" writes to), so storing is a ``dynamic_update_index``
  and restoring a ``dynamic_index``, never a host round trip;
- the actions between two ``Reverse`` actions become *rows* ``(restore, t, advance,
  store)``: restore a buffer row (or keep the current state), run ``advance`` steps from step
  ``t`` (a ``fori_loop`` with traced bounds), store into a buffer row;
- each ``Reverse(n)`` is a *block*: its rows, then the VJP of ``n`` steps in the leaf mode
  (`_block_vjp`: `mgd.engine.leaf.block_vjp`, ``"fused"``, ``"remat"`` or ``"mixed"``),
  chosen by ``lax.switch`` when the plan has blocks of several lengths.

The forward pass runs the plan up to its first ``Reverse`` (the run's last block: the first
pass of the tree, storing its states) and that block under ``jax.vjp``; its residuals, the
buffer and the block's pullback (a closure made a pytree by `_as_pytree`) are the
``custom_vjp`` residuals. The backward pass applies
the pullback and loops over the remaining blocks in a ``fori_loop``. So the step evaluations
are exactly the plan's (`mgd.engine.policies.simulate`), and the programs compile once per
problem and plan shape: the tables are arguments, not constants.

`mgd.metagradient` calls `sweep` for device-resident stores: the same forward and backward
halves in one jitted program, with the objective in between and a finite flag carried out.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mgd.engine import leaf, policies
from mgd.engine.leaf import LEAF_MODES
from mgd.engine.leaf import run_block as _run_block
from mgd.engine.memory import check_options, resolve
from mgd.engine.replay import (
    MetagradientResult,
    MetagradientStats,
    _all_finite,
    _combine,
    _join_fns,
    _partition,
    _split_fns,
)
from mgd.engine.storage import DeviceStore
from mgd.engine.validation import check_inputs, check_num_steps, check_step

PyTree = Any


class _PlanShape(NamedTuple):
    """The static half of a compiled plan (hashable: part of the compiled program's key).

    Attributes:
      num_slots: buffer rows the plan's stored states need at once (its ``peak_slots``); the
        buffer has one more, the scratch row.
      first_rows: rows before the plan's first ``Reverse`` (run by the forward pass).
      last_length: ``n`` of the first ``Reverse``: the run's last block, ending at ``T``.
      last_start: the step at which that block starts, ``T - last_length``.
      lengths: the distinct lengths of the other blocks, sorted (``lax.switch`` branches).
      num_blocks: ``Reverse`` actions in the plan.
    """

    num_slots: int
    first_rows: int
    last_length: int
    last_start: int
    lengths: tuple[int, ...]
    num_blocks: int


class _Tables(NamedTuple):
    """The plan's integer arrays (int32; traced arguments of the compiled programs).

    Row ``r``: restore buffer row ``restore[r]`` (``-1``: keep the current state), then run
    ``advance[r]`` steps from step ``start[r]``, then store into buffer row ``store[r]`` (the
    scratch row if the plan stores nothing there). Block ``j >= 1``: rows ``lo[j]`` to
    ``hi[j] - 1``, then the VJP of ``lengths[branch[j]]`` steps from step ``t0[j]``.
    """

    restore: np.ndarray
    start: np.ndarray
    advance: np.ndarray
    store: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    t0: np.ndarray
    branch: np.ndarray


@functools.lru_cache(maxsize=32)
def _tables(
    policy: policies.AbstractCheckpointPolicy, num_steps: int
) -> tuple[_PlanShape, _Tables, policies.PlanCost]:
    """Compiles ``policy``'s plan for ``num_steps`` into `_PlanShape` and `_Tables`, with the
    plan's simulated cost (which also checks the plan). Cached: building and simulating a plan
    costs Python time linear in its length, which a compiled call should not pay again."""
    plan = policy.plan(num_steps)
    cost = policies.simulate(plan, num_steps)
    slot_row = {0: 0}  # plan slot -> buffer row; the initial state is in row 0
    slot_step = {0: 0}
    free_rows: list[int] = []
    num_rows = 1
    rows: list[list[int]] = []
    blocks: list[tuple[int, int, int, int]] = []  # (lo, hi, t0, n)
    t = 0
    row = None  # the open row [restore, start, advance, store]; store -1 until set

    def close():
        nonlocal row
        if row is not None:
            rows.append(row)
        row = None

    for action in plan:
        match action:
            case policies.Restore(slot):
                close()
                t = slot_step[slot]
                row = [slot_row[slot], t, 0, -1]
            case policies.Advance(n):
                if row is None or row[2]:
                    close()
                    row = [-1, t, 0, -1]
                row[2] = n
                t += n
            case policies.Store(slot):
                if row is None:
                    row = [-1, t, 0, -1]
                if free_rows:
                    slot_row[slot] = free_rows.pop()
                else:
                    slot_row[slot], num_rows = num_rows, num_rows + 1
                slot_step[slot] = t
                row[3] = slot_row[slot]
                close()
            case policies.Free(slot):
                free_rows.append(slot_row.pop(slot))
                del slot_step[slot]
            case policies.Reverse(n):
                close()
                lo = blocks[-1][1] if blocks else 0
                blocks.append((lo, len(rows), t, n))
    scratch = num_rows
    # A trailing row that no block runs: the row loop's body is traced even for a plan
    # without rows (StoreAll), and indexing an empty table cannot be traced.
    table = np.asarray([*rows, [-1, 0, 0, -1]], np.int32)
    table[:, 3] = np.where(table[:, 3] < 0, scratch, table[:, 3])
    lengths = tuple(sorted({n for *_, n in blocks[1:]}))
    later = np.asarray(blocks[1:], np.int32).reshape(-1, 4)
    shape = _PlanShape(
        num_slots=num_rows,
        first_rows=blocks[0][1],
        last_length=blocks[0][3],
        last_start=blocks[0][2],
        lengths=lengths,
        num_blocks=len(blocks),
    )
    branch = np.searchsorted(np.asarray(lengths, np.int32), later[:, 3]).astype(np.int32)
    # Block 0 runs in the forward pass; its entries pad the arrays so block j is at index j.
    pad = lambda a: np.concatenate([np.zeros(1, np.int32), a]).astype(np.int32)
    tables = _Tables(
        *(np.ascontiguousarray(table[:, i]) for i in range(4)),
        *(pad(later[:, i]) for i in range(3)),
        pad(branch),
    )
    for array in tables:
        array.flags.writeable = False  # Cached and shared between calls.
    return shape, tables, cost


@functools.partial(jax.jit, static_argnames=("fns",))
def _run_rows(fns, fn_arrays, restore, start, advance, store, lo, hi, state, buffer, meta):
    """Rows ``lo .. hi - 1`` of the tables on ``(state, buffer)`` (see `_Tables`).

    Jitted with ``fns`` static so that the forward and backward passes share one trace of
    ``step_fn`` (inlined into the enclosing program; no separate dispatch).
    """
    step_fn = _join_fns(fns, fn_arrays)[0]

    def row(r, carry):
        state, buffer = carry
        kept = restore[r]
        at = jnp.maximum(kept, 0)
        state = jax.tree.map(
            lambda s, b: jnp.where(kept >= 0, lax.dynamic_index_in_dim(b, at, 0, False), s),
            state,
            buffer,
        )
        t0 = start[r]
        state = lax.fori_loop(t0, t0 + advance[r], lambda t, s: step_fn(s, meta, t), state)
        buffer = jax.tree.map(
            lambda b, s: lax.dynamic_update_index_in_dim(b, s, store[r], 0), buffer, state
        )
        return state, buffer

    return lax.fori_loop(lo, hi, row, (state, buffer))


@functools.partial(jax.jit, static_argnames=("fns",))
def _step(fns, fn_arrays, state, meta, t):
    """One training step, jitted with ``fns`` static so that every block program (the forward
    pass's, the backward pass's, each length's) shares one trace of ``step_fn``; inlined into
    the enclosing program, not dispatched on its own."""
    return _join_fns(fns, fn_arrays)[0](state, meta, t)


def _block_vjp(fns, fn_arrays, state, meta, t0, length: int, mode: str):
    """The one place a differentiated block is built: its output state and its pullback.

    ``length`` steps from step ``t0`` by `mgd.engine.leaf.block_vjp` in leaf ``mode``
    (``"fused"``: one ``lax.scan`` under ``jax.vjp``, every step's residuals kept;
    ``"remat"``/``"mixed"``: the block's input states kept, each step's VJP recomputing its
    residuals). Integer leaves are carried along, not differentiated.

    Returns:
      ``(out_state, pullback)``: ``pullback(ct_out_diff, grad) -> (ct_in_diff, grad +
      ct_meta)`` maps the cotangent of the output's floating leaves (`_partition`'s first
      half) to that of the input's, and adds the block's meta cotangent to ``grad``. A
      closure: `_as_pytree` makes it a ``custom_vjp`` residual.
    """
    # A mixed-mode VJP traces the `GradientStep`'s loss and update itself: not wrapped.
    step_fn = (
        _join_fns(fns, fn_arrays)[0]
        if mode == "mixed"
        else functools.partial(_step, fns, fn_arrays)
    )
    out, vjp = leaf.block_vjp(step_fn, state, meta, t0, length=length, mode=mode)

    def pullback(ct, grad):
        ct_in, ct_meta = vjp(ct)
        return ct_in, jax.tree.map(jnp.add, grad, ct_meta)

    return out, pullback


def _as_pytree(fn, *example_args) -> jax.tree_util.Partial:
    """``fn`` (a closure over traced arrays) as a pytree whose leaves are those arrays.

    A ``custom_vjp``'s forward and backward passes are traced separately, so a pullback built
    in the forward pass reaches the backward pass only as a pytree of residuals. The remat and
    mixed pullbacks close over the block's stored states (and integer arrays, which
    ``jax.closure_convert`` would leave captured); tracing ``fn`` to a jaxpr hoists all of its
    closed-over arrays as its constants.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    jaxpr, out_tree = closed.jaxpr, jax.tree.structure(out_shape)

    def apply(consts, *args):
        return out_tree.unflatten(jax.core.eval_jaxpr(jaxpr, consts, *jax.tree.leaves(args)))

    return jax.tree_util.Partial(apply, closed.consts)


def _forward(fns, shape: _PlanShape, mode: str, fn_arrays, tables: _Tables, init_state, meta):
    """The plan up to its first ``Reverse``, then that block (the run's last) under ``jax.vjp``.

    Returns:
      ``(final_state, residuals)``; the residuals are what `_backward` takes.
    """
    tables = _Tables(*map(jnp.asarray, tables))
    buffer = jax.tree.map(
        lambda x: jnp.zeros((shape.num_slots + 1, *x.shape), x.dtype).at[0].set(x), init_state
    )
    state, buffer = _run_rows(
        fns,
        fn_arrays,
        *tables[:4],
        jnp.int32(0),
        jnp.int32(shape.first_rows),
        init_state,
        buffer,
        meta,
    )
    final, pullback = _block_vjp(
        fns, fn_arrays, state, meta, jnp.int32(shape.last_start), shape.last_length, mode
    )
    return final, (state, buffer, pullback, fn_arrays, tables, meta)


def _backward(fns, shape: _PlanShape, mode: str, residuals, ct_final_diff):
    """The reverse sweep from the cotangent of the final state's floating leaves.

    Returns:
      ``(ct_init_diff, ct_meta, finite)``: the cotangents of the initial state's floating
      leaves and of ``meta``, and whether every block's state cotangent was finite (a bool
      scalar on the device).
    """
    state, buffer, pullback, fn_arrays, tables, meta = residuals
    ct, grad = pullback(ct_final_diff, jax.tree.map(jnp.zeros_like, meta))
    if shape.num_blocks == 1:  # StoreAll: the forward pass's block was the whole run.
        return ct, grad, jnp.asarray(_all_finite(ct))

    def reverse(length):
        def branch(state, ct, grad, t0):
            return _block_vjp(fns, fn_arrays, state, meta, t0, length, mode)[1](ct, grad)

        return branch

    branches = [reverse(n) for n in shape.lengths]

    def block(j, carry):
        state, buffer, ct, grad, finite = carry
        state, buffer = _run_rows(
            fns, fn_arrays, *tables[:4], tables.lo[j], tables.hi[j], state, buffer, meta
        )
        if len(branches) == 1:  # The built-in policies: one length besides the last block's.
            ct, grad = branches[0](state, ct, grad, tables.t0[j])
        else:
            ct, grad = lax.switch(tables.branch[j], branches, state, ct, grad, tables.t0[j])
        return state, buffer, ct, grad, finite & _all_finite(ct)

    carry = (state, buffer, ct, grad, jnp.asarray(_all_finite(ct)))
    _, _, ct, grad, finite = lax.fori_loop(1, shape.num_blocks, block, carry)
    return ct, grad, finite


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _replay(fns, shape, mode, fn_arrays, tables, init_state, meta):
    # Not differentiated: the plain training run, nothing stored.
    step_fn = _join_fns(fns, fn_arrays)[0]
    num_steps = shape.last_start + shape.last_length
    return _run_block(step_fn, init_state, meta, jnp.int32(0), num_steps)


def _replay_fwd(fns, shape, mode, fn_arrays, tables, init_state, meta):
    if any(x.perturbed for x in jax.tree.leaves(fn_arrays)):
        raise ValueError(
            "replay_loop differentiates with respect to meta and init_state only, not the "
            "arrays held by step_fn; pass those as (part of) meta instead"
        )
    unwrap = lambda tree: jax.tree.map(lambda x: x.value, tree)
    fn_arrays, tables, init_state, meta = map(unwrap, (fn_arrays, tables, init_state, meta))
    final, (state, buffer, pullback, *rest) = _forward(
        fns, shape, mode, fn_arrays, tables, init_state, meta
    )
    grad = jax.tree.map(jnp.zeros_like, meta)
    pullback = _as_pytree(pullback, _partition(final)[0], grad)
    return final, (state, buffer, pullback, *rest)


def _replay_bwd(fns, shape, mode, residuals, ct_final):
    # A symbolic zero (the objective ignores a leaf) becomes a zero array: the sweep adds it.
    ct_final = jax.tree.map(
        lambda c: jnp.zeros(c.shape, c.dtype) if isinstance(c, jax.custom_derivatives.SymbolicZero)
        else c,
        ct_final,
        is_leaf=lambda c: isinstance(c, jax.custom_derivatives.SymbolicZero),
    )  # fmt: skip
    ct_diff = _partition(ct_final)[0]
    ct_init, ct_meta, _ = _backward(fns, shape, mode, residuals, ct_diff)
    return None, None, ct_init, ct_meta


_replay.defvjp(_replay_fwd, _replay_bwd, symbolic_zeros=True)


def replay_loop(
    step_fn,
    init_state: PyTree,
    meta: PyTree,
    num_steps: int,
    *,
    checkpoint: policies.AbstractCheckpointPolicy | None = None,
    leaf: str = "fused",
) -> PyTree:
    """``num_steps`` training steps as a differentiable JAX function with checkpointed reverse
    mode: ``state_T`` from ``state_{t+1} = step_fn(state_t, meta, t)``.

    The forward pass is the training run. Its reverse-mode derivative (a `jax.custom_vjp`)
    executes ``checkpoint``'s plan in compiled code, like `mgd.metagradient` but as part of
    the caller's program: stored states in one preallocated device buffer, replays as
    ``fori_loop``s, differentiated blocks as ``lax.scan``s under ``jax.vjp``, all inside one
    ``fori_loop`` over the plan's blocks, with no host round trip. So ``jax.grad``,
    ``jax.value_and_grad``, ``jax.jit`` and ``jax.vmap`` (over ``meta`` or ``init_state``)
    compose with it, and any objective written after it is differentiated exactly: the same
    numbers as ``jax.grad`` of the unrolled loop, up to float rounding, holding the plan's
    ``peak_states`` training states instead of ``T + 1``.

    The forward pass runs the plan up to its first differentiated block (for `mgd.KAryTree`,
    the first pass storing the segment starts) and that block, the run's last, keeping its
    residuals; the backward pass runs the rest of the plan. Step evaluations are the plan's
    ``forward_steps`` (`mgd.AbstractCheckpointPolicy.cost`), as in `mgd.metagradient`.

    Reverse mode only: like any `jax.custom_vjp`, it has no forward-mode derivative
    (``jax.jvp`` and ``jax.hessian`` raise a ``TypeError``).

    Use `mgd.metagradient` instead for stored states off the device (``store="host"`` or
    ``"disk"``), a ``memory_budget``, work statistics, or a non-finite check that names the
    step; it runs this same compiled sweep for device-resident stores.

    Args:
      step_fn: ``(state, meta, t) -> state``, one training step, as for `mgd.metagradient`;
        pure and jittable; ``t`` an int32 scalar. Integer state leaves are carried along,
        not differentiated. A ``jax.tree_util.Partial``'s arrays are passed to the compiled
        programs as arguments (they are not differentiated: put what you differentiate in
        ``meta``).
      init_state: the training state at step 0, a pytree of arrays.
      meta: the metaparameters, a pytree of floating-point arrays.
      num_steps: ``T``, the number of training steps, a Python int ``>= 1``.
      checkpoint: `mgd.StoreAll`, `mgd.KAryTree` or `mgd.Binomial`; ``None`` is
        ``KAryTree(max(2, ceil(sqrt(T))))`` (`mgd.engine.policies.default_policy`).
      leaf: how each differentiated block is back-propagated (`mgd.engine.leaf`):
        ``"fused"`` (the default: the fastest, holding every step's residuals of the longest
        block), ``"remat"`` (holding the block's states only; one more step evaluation per
        step) or ``"mixed"`` (as ``"remat"``, second-order terms forward-over-reverse; needs
        a `mgd.engine.GradientStep`). No ``"auto"``: without a memory budget to fit there
        is nothing to choose by, so the fastest is the default; `mgd.metagradient`'s
        ``leaf="auto"`` chooses by the device's free memory.

    Returns:
      The state after ``num_steps`` steps, with the structure, shapes and dtypes of
      ``init_state``.

    Raises:
      ValueError: ``num_steps < 1``; ``step_fn`` changes the state's structure or a leaf's
        shape; differentiating with respect to an array held by ``step_fn``; ``leaf`` is
        unknown, or ``"mixed"`` for a step that is not a `mgd.engine.GradientStep`.
      TypeError: a ``meta`` leaf is not floating point; ``step_fn`` changes a leaf's dtype;
        ``checkpoint`` is not a policy.

    Example:
      >>> import jax, jax.numpy as jnp, mgd
      >>> step = lambda w, lr, t: w - lr * 2 * w        # gradient descent on w**2
      >>> loss = lambda lr: mgd.replay_loop(step, jnp.float32(1.0), lr, 10) ** 2
      >>> float(jax.grad(loss)(jnp.float32(0.1)))  # d (1 - 2 lr)**20 / d lr = -40 (0.8)**19
      -0.576460...
    """
    if leaf == "auto":
        raise ValueError(f"replay_loop's leaf must be one of {LEAF_MODES}, got 'auto'")
    check_options(step_fn, checkpoint, None, leaf)
    policy = policies.default_policy(num_steps) if checkpoint is None else checkpoint
    init_state, meta = check_step(step_fn, init_state, meta, num_steps, policy)
    fns, fn_arrays = _split_fns(step_fn, None)
    shape, tables, _ = _tables(policy, num_steps)
    return _replay(fns, shape, leaf, fn_arrays, tables, init_state, meta)


def _metagradient_body(fns, shape, mode, fn_arrays, tables, init_state, meta):
    """Forward pass, objective, backward pass: ``(value, grad, finite)``, traced into the
    caller's program (`_metagradient_program`, `_update_program`)."""
    objective_fn = _join_fns(fns, fn_arrays)[1]
    final, residuals = _forward(fns, shape, mode, fn_arrays, tables, init_state, meta)
    diff, rest = _partition(final)
    objective = lambda d, m: objective_fn(_combine(d, rest), m)
    value, (ct, ct_meta_objective) = jax.value_and_grad(objective, argnums=(0, 1))(diff, meta)
    _, grad, finite = _backward(fns, shape, mode, residuals, ct)
    return value, jax.tree.map(jnp.add, ct_meta_objective, grad), finite


# `mgd.metagradient`'s whole sweep, one program.
_metagradient_program = jax.jit(_metagradient_body, static_argnames=("fns", "shape", "mode"))


def sweep(
    fns,
    init_state,
    meta,
    num_steps: int,
    policy: policies.AbstractCheckpointPolicy,
    store_name: str,
    mode: str,
) -> tuple[MetagradientResult, jax.Array]:
    """`mgd.metagradient`'s sweep as one compiled program (device-resident stored states).

    Args:
      fns: `mgd.engine.replay._split_fns`'s pair for ``(step_fn, objective_fn)``.
      init_state, meta: validated (`mgd.engine.validation.check_inputs`).
      num_steps, policy: the run's ``T`` and checkpoint policy.
      store_name: what ``result.stats.store`` says.
      mode: the leaf mode, ``"fused"``, ``"remat"`` or ``"mixed"`` (`mgd.engine.leaf`).

    Returns:
      The result, and whether every block's state cotangent was finite (a bool scalar on the
      device), as `mgd.engine.replay._sweep` returns them.
    """
    shape, tables, cost = _tables(policy, num_steps)
    static, fn_arrays = fns
    value, grad, finite = _metagradient_program(
        static, shape, mode, fn_arrays, tables, init_state, meta
    )
    return MetagradientResult(value, grad, _stats(cost, policy, store_name, mode)), finite


def _stats(cost: policies.PlanCost, policy, store_name: str, mode: str) -> MetagradientStats:
    return MetagradientStats(
        cost.forward_steps, cost.replay_steps, cost.vjp_steps, cost.peak_states, repr(policy),
        store_name, mode,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("fns", "shape", "mode", "embed", "optimizer"))
def _update_program(
    fns, shape, mode, embed, optimizer, fn_arrays, tables, init_state, base, params, opt_state
):
    """The metagradient at ``embed(base, params)`` and ``optimizer``'s update of ``params``:
    one meta-step of an outer loop, one program (see `outer_update`)."""
    meta, embed_vjp = jax.vjp(lambda p: embed(base, p), params)
    value, grad, finite = _metagradient_body(fns, shape, mode, fn_arrays, tables, init_state, meta)
    (grad,) = embed_vjp(grad)
    # What an outer loop makes of `NonFiniteCotangentError`: a diverged run, NaN objective.
    diverged = lambda x: jnp.where(finite, x, jnp.nan)
    value, grad = diverged(value), jax.tree.map(diverged, grad)
    updates, opt_state = optimizer.update(grad, opt_state, params, value=value)
    return value, grad, finite, updates, opt_state


def outer_update(
    step_fn,
    objective_fn,
    init_state: PyTree,
    base: PyTree,
    params: PyTree,
    num_steps: int,
    *,
    embed,
    checkpoint: policies.AbstractCheckpointPolicy | None = None,
    store=None,
    memory_budget: int | None = None,
    leaf: str = "auto",
):
    """An outer loop's meta-step as one compiled program, or ``None`` off the device.

    The loop optimizes ``params``, which ``embed(base, params)`` places into the full
    metaparameters (e.g. ``{**base, "log_lr": params}``). The engine options are resolved
    once, here, as `mgd.metagradient` resolves them (`mgd.engine.memory.resolve`); when the
    stored states land on the device, every meta-step is `mgd.metagradient`'s compiled sweep
    (`sweep`'s program, the same numbers) followed by the optimizer's update, with no host
    round trip or per-call validation between them.

    Args:
      step_fn, objective_fn, init_state, num_steps: as for `mgd.metagradient`.
      base: the metaparameters that stay fixed (a pytree of arrays).
      params: the optimized metaparameters' initial values (their shapes and dtypes are
        those of every later call).
      embed: ``(base, params) -> meta``, hashable (a module-level function); differentiated
        to map ``d value / d meta`` to ``d value / d params``.
      checkpoint, store, memory_budget, leaf: `mgd.metagradient`'s options.

    Returns:
      ``None`` if the resolved store is not the device (host, disk or a custom store: the
      caller keeps `mgd.metagradient`); otherwise ``(update, stats)``. ``update(params,
      opt_state, optimizer) -> (value, grad, finite, updates, new_opt_state)``, ``optimizer``
      an ``optax.GradientTransformationExtraArgs`` (hashable: one object per loop) called as
      ``optimizer.update(grad, opt_state, params, value=value)``; ``value`` and ``grad`` (with
      the structure of ``params``) are NaN where ``finite`` is false, i.e. where
      `mgd.metagradient` would raise `mgd.NonFiniteCotangentError`. ``stats`` are every
      meta-step's `MetagradientStats`.

    Raises:
      ValueError, TypeError: as `mgd.metagradient` for bad input.
    """
    check_num_steps(num_steps)
    check_options(step_fn, checkpoint, memory_budget, leaf)
    fns = _split_fns(step_fn, objective_fn)
    init_state, meta = check_inputs(
        *_join_fns(*fns), init_state, embed(base, params), num_steps,
        checkpoint or policies.StoreAll(),
    )  # fmt: skip
    policy, store, mode, _ = resolve(
        fns, init_state, meta, num_steps, checkpoint, store, memory_budget, leaf
    )
    if not (store in (None, "device") or type(store) is DeviceStore):
        return None
    shape, tables, cost = _tables(policy, num_steps)
    static, fn_arrays = fns
    tables = _Tables(*map(jnp.asarray, tables))  # On the device once, not once per call.

    def update(params, opt_state, optimizer):
        return _update_program(
            static, shape, mode, embed, optimizer, fn_arrays, tables, init_state, base,
            params, opt_state,
        )  # fmt: skip

    return update, _stats(cost, policy, "device", mode)


@functools.partial(jax.jit, static_argnames=("fns", "num_steps", "optimizer", "checkpoint"))
def _meta_step(fns, fn_arrays, init_state, meta, opt_state, *, num_steps, optimizer, checkpoint):
    step_fn, objective_fn = _join_fns(fns, fn_arrays)

    def objective(meta):
        final = replay_loop(step_fn, init_state, meta, num_steps, checkpoint=checkpoint)
        return objective_fn(final, meta)

    value, grad = jax.value_and_grad(objective)(meta)
    updates, opt_state = optimizer.update(grad, opt_state, meta)
    return optax.apply_updates(meta, updates), opt_state, value


def meta_step(
    step_fn,
    objective_fn,
    init_state: PyTree,
    meta: PyTree,
    opt_state: PyTree,
    num_steps: int,
    optimizer: optax.GradientTransformation,
    *,
    checkpoint: policies.AbstractCheckpointPolicy | None = None,
) -> tuple[PyTree, PyTree, jax.Array]:
    """One meta-step as one compiled program: the metagradient (`replay_loop` under
    ``jax.value_and_grad``) and an optax update of ``meta``, with no host round trip between.

    Compiled once per problem (``step_fn``, ``objective_fn``, shapes), ``num_steps``,
    ``optimizer`` and ``checkpoint``; an outer loop calls it again with the returned ``meta``
    and ``opt_state``. It descends the objective; to ascend, give ``optimizer`` a negative
    learning rate or negate the objective. A ``jax.tree_util.Partial`` ``step_fn`` or
    ``objective_fn`` has its arrays passed as arguments (new data of the same shapes reuses the
    compilation); a closure's are compiled in as constants.

    Args:
      step_fn: ``(state, meta, t) -> state``, as for `mgd.metagradient`.
      objective_fn: ``(state, meta) -> scalar``, as for `mgd.metagradient`.
      init_state: the training state at step 0, a pytree of arrays.
      meta: the metaparameters, a pytree of floating-point arrays.
      opt_state: ``optimizer``'s state for ``meta`` (``optimizer.init(meta)`` at first).
      num_steps: ``T``, the number of training steps, ``>= 1``.
      optimizer: the outer optimizer, an ``optax.GradientTransformation`` (hashable: reuse
        one object across calls, or each call compiles anew).
      checkpoint: the checkpoint policy, as for `replay_loop`.

    Returns:
      ``(new_meta, new_opt_state, value)``: the updated metaparameters and optimizer state,
      and the objective at the end of the run with the *old* ``meta`` (a scalar array).

    Raises:
      ValueError, TypeError: as `mgd.metagradient` for bad input (checked when traced).

    Example:
      >>> import jax.numpy as jnp, mgd, optax
      >>> step = lambda w, lr, t: w - lr * 2 * w        # gradient descent on w**2
      >>> loss = lambda w, lr: w**2
      >>> outer = optax.sgd(0.1)
      >>> lr, opt_state = jnp.float32(0.1), outer.init(jnp.float32(0.1))
      >>> lr, opt_state, value = mgd.meta_step(step, loss, jnp.float32(1.0), lr, opt_state,
      ...                                      10, outer)
      >>> float(lr)  # 0.1 - 0.1 * d (1 - 2 lr)**20 / d lr = 0.1 + 0.1 * 40 (0.8)**19
      0.157646...
    """
    fns, fn_arrays = _split_fns(step_fn, objective_fn)
    return _meta_step(
        fns, fn_arrays, init_state, meta, opt_state,
        num_steps=num_steps, optimizer=optimizer, checkpoint=checkpoint,
    )  # fmt: skip
