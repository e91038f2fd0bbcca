"""The replay engine: exact metagradients through whole training runs in bounded memory.

`metagradient` executes a checkpoint policy's plan (`mgd.engine.policies`): ``Advance``
actions run a jitted ``fori_loop`` of ``step_fn``; each ``Reverse(n)`` differentiates a
``lax.scan`` of ``n`` steps as one function, so its forward residuals are kept for the block
and no step is re-run inside its own VJP. The jitted pieces take ``step_fn``/``objective_fn``
as static arguments (their array leaves, if they are pytrees such as
``jax.tree_util.Partial``, as traced ones) and the step index as a traced array, so they
compile once per problem (and per distinct block length of the plan, at most two for the
built-in policies), not once per segment or step, and repeated calls with new ``meta`` values
reuse them.

That Python driver runs for off-device and custom stores; with the stored states on the device
(``store=None``, ``"device"`` or a plain `mgd.DeviceStore`), `metagradient` runs the same plan
as one compiled program (`mgd.engine.compiled`, the sweep of `mgd.replay_loop`), with the same
results, statistics and errors.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mgd.engine import leaf, memory, policies
from mgd.engine.leaf import combine as _combine
from mgd.engine.leaf import partition as _partition
from mgd.engine.storage import AbstractStateStore, make_store
from mgd.engine.validation import check_num_steps

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], PyTree]
ObjectiveFn = Callable[[PyTree, PyTree], jax.Array]


@dataclasses.dataclass(frozen=True)
class MetagradientStats:
    """Work done by one `metagradient` call (see `mgd.engine.policies` for the counting).

    Attributes:
      forward_steps: every ``step_fn`` evaluation, the first run included: ``replay_steps``
        plus the forward half of each differentiated block (``num_steps`` of them).
      replay_steps: ``step_fn`` evaluations outside differentiated blocks (recomputation).
      vjp_steps: steps back-propagated; always ``num_steps``.
      peak_states: most training states held at once, whichever store holds them.
      policy: the checkpoint policy that ran, as its ``repr``, e.g. ``"KAryTree(k=32)"``.
      store: where stored states lived: ``"device"``, ``"host"``, ``"disk"`` (or a custom
        store's `mgd.AbstractStateStore.name`).
      leaf: how the leaf blocks were differentiated: ``"fused"``, ``"remat"`` or ``"mixed"``
        (`mgd.engine.leaf`).
    """

    forward_steps: int
    replay_steps: int
    vjp_steps: int
    peak_states: int
    policy: str
    store: str
    leaf: str


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["value", "grad"], meta_fields=["stats"]
)
@dataclasses.dataclass(frozen=True)
class MetagradientResult:
    """What `metagradient` returns: a pytree (``value`` and ``grad`` are its leaves, ``stats``
    static), so ``jax.block_until_ready(result)`` waits for the whole computation.

    Attributes:
      value: the objective at the final training state, a scalar array.
      grad: ``d value / d meta`` through every step, with the structure of ``meta``.
      stats: the `MetagradientStats` of the call.
    """

    value: jax.Array
    grad: PyTree
    stats: MetagradientStats


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


@dataclasses.dataclass(frozen=True)
class _StaticFns:
    """The static half of ``(step_fn, objective_fn)`` (see `_split_fns`): hashable, so the
    jitted programs take it as a static argument and compile once per problem."""

    treedef: Any
    leaves: tuple  # Their non-array leaves (the functions themselves); None for an array.


def _split_fns(step_fn: StepFn, objective_fn: ObjectiveFn) -> tuple[_StaticFns, list]:
    """Splits the user's functions into `_StaticFns` and their array leaves.

    A function that is a pytree, e.g. ``jax.tree_util.Partial(f, data)``, has its arrays passed
    to the jitted programs as arguments: not embedded in the compiled code as constants (slow
    to compile, a second copy in memory), and new values of the same shapes reuse the
    compilation. A plain function (a closure) is one static leaf.
    """
    leaves, treedef = jax.tree.flatten((step_fn, objective_fn))
    is_array = [isinstance(x, jax.Array | np.ndarray) for x in leaves]
    static = tuple(None if a else x for x, a in zip(leaves, is_array, strict=True))
    # NumPy arrays go to the device once here, not once per compiled call.
    arrays = [jnp.asarray(x) if a else None for x, a in zip(leaves, is_array, strict=True)]
    return _StaticFns(treedef, static), arrays


def _join_fns(static: _StaticFns, arrays: list) -> tuple[StepFn, ObjectiveFn]:
    leaves = [x if a is None else a for x, a in zip(static.leaves, arrays, strict=True)]
    return jax.tree.unflatten(static.treedef, leaves)


@functools.partial(jax.jit, static_argnames=("fns",), keep_unused=True)
def _advance(fns: _StaticFns, fn_arrays, state, meta, t0, n, after):
    """``n`` steps forward from step ``t0`` (``n`` traced: one compilation for every length).

    ``after`` (unused, kept as an argument) is the last block's ``finite`` flag: the runtime
    starts a program only when its arguments are ready, so a replay waits for the preceding
    block instead of running beside it (as a CPU backend would), and the sweep's peak memory
    is that of its plan, one action at a time (`mgd.engine.policies.sweep_peak`).
    """
    step_fn, _ = _join_fns(fns, fn_arrays)
    return lax.fori_loop(t0, t0 + n, lambda t, s: step_fn(s, meta, t), state)


@functools.partial(jax.jit, static_argnames=("fns", "length", "mode"))
def _reverse_block(
    fns: _StaticFns,
    fn_arrays,
    state,
    meta,
    t0,
    ct_diff,
    grad,
    finite,
    is_last,
    *,
    length: int,
    mode: str,
):
    """VJP of ``length`` steps from ``t0`` (`mgd.engine.leaf.block_vjp` in leaf ``mode``);
    adds the meta cotangent into ``grad``.

    ``is_last`` (a bool scalar) says the block ends the run: then the cotangent of its output
    is the objective's gradient there (``ct_diff`` is ignored; pass zeros) and the objective's
    value comes back, else ``ct_diff`` is used and the value is zero. Traced, not static, so
    that the run's last block shares its compiled program with every other block of its
    length: one large compilation fewer per problem, in time and in memory.

    ``finite`` (a bool scalar) comes back and-ed with "the new state cotangent is finite": the
    sweep carries one flag through its blocks on the device, syncing once at the end.

    Returns:
      ``(value, ct_diff, grad, finite)``: the cotangent of the state at ``t0``.
    """
    step_fn, objective_fn = _join_fns(fns, fn_arrays)
    out, vjp = leaf.block_vjp(step_fn, state, meta, t0, length=length, mode=mode)
    out_diff, out_rest = _partition(out)
    objective = lambda d, m: objective_fn(_combine(d, out_rest), m)
    value_shape = jax.eval_shape(objective, out_diff, meta)

    def seed_from_objective():
        return jax.value_and_grad(objective, argnums=(0, 1))(out_diff, meta)

    def seed_from_cotangent():
        zero_meta = jax.tree.map(jnp.zeros_like, meta)
        return jnp.zeros(value_shape.shape, value_shape.dtype), (ct_diff, zero_meta)

    value, (ct_out, ct_meta_objective) = lax.cond(is_last, seed_from_objective, seed_from_cotangent)
    ct_diff, ct_meta = vjp(ct_out)
    grad = jax.tree.map(lambda g, a, b: g + a + b, grad, ct_meta_objective, ct_meta)
    return value, ct_diff, grad, finite & _all_finite(ct_diff)


def _reverse(fns, state, meta, t0: int, n: int, ct_diff, grad, finite=None, mode="fused"):
    """`_reverse_block` of the ``n`` steps from ``t0``; ``fns`` is `_split_fns`'s pair;
    ``ct_diff=None`` marks the run's last block, seeded by the objective (``finite=None``: no
    block checked yet). The error path reverses one step at a time, where ``"fused"``, the
    default ``mode``, holds one step's residuals like the others."""
    is_last = ct_diff is None
    if is_last:
        ct_diff = jax.tree.map(jnp.zeros_like, _partition(state)[0])
    return _reverse_block(
        *fns,
        state,
        meta,
        np.int32(t0),
        ct_diff,
        grad,
        np.bool_(True) if finite is None else finite,
        np.bool_(is_last),
        length=n,
        mode=mode,
    )


class NonFiniteCotangentError(FloatingPointError):
    """The reverse sweep produced a NaN or Inf state cotangent."""


def _locate_non_finite(fns, state, meta, t0: int, n: int, ct_diff) -> int:
    """The step in ``[t0, t0+n]`` at which the state cotangent first (in reverse order) went
    non-finite; ``t0 + n`` stands for the objective's own gradient.

    ``ct_diff`` is the (finite) cotangent of the state at ``t0 + n``, or ``None`` for the
    run's last block, whose cotangent comes from the objective. Only runs on the error path:
    recomputes the block's states one by one and reverses them.
    """
    states = [state]
    for t in range(t0, t0 + n):
        states.append(_advance(*fns, states[-1], meta, np.int32(t), np.int32(1), np.bool_(True)))
    grad = jax.tree.map(jnp.zeros_like, meta)
    if ct_diff is None:
        _, ct_diff, _, finite = _reverse(fns, states[-1], meta, t0 + n, 0, None, grad)
        if not bool(finite):
            return t0 + n
    for t in reversed(range(t0, t0 + n)):
        _, ct_diff, grad, finite = _reverse(fns, states[t - t0], meta, t, 1, ct_diff, grad)
        if not bool(finite):
            return t
    return t0  # Not reproduced step by step (rounding differs): blame the block's first step.


def metagradient(
    step_fn: StepFn,
    objective_fn: ObjectiveFn,
    init_state: PyTree,
    meta: PyTree,
    num_steps: int,
    *,
    checkpoint: policies.AbstractCheckpointPolicy | None = None,
    check_finite: bool = True,
    store: AbstractStateStore | str | None = None,
    memory_budget: int | None = None,
    leaf: str = "auto",
) -> MetagradientResult:
    """Exact reverse-mode metagradient of a training run: ``d objective(A(meta)) / d meta``.

    Runs ``state_{t+1} = step_fn(state_t, meta, t)`` for ``t = 0 .. num_steps - 1`` from
    ``init_state`` and differentiates ``objective_fn(state_T, meta)`` with respect to ``meta``
    through every step, storing only the states the checkpoint policy asks for and recomputing
    the others. The result equals ``jax.grad`` of the fully unrolled loop up to float rounding.

    Args:
      step_fn: ``(state, meta, t) -> state``, one training step; pure and jittable; ``t`` is
        the step index as an int32 scalar array (the step fetches its own batch by ``t``). Its
        output has the structure, shapes and dtypes of ``state``. Integer leaves (optimizer
        step counters) are carried along and not differentiated. To hand it data, prefer
        ``jax.tree_util.Partial(step, data, ...)`` to a closure: a closure's arrays are
        compiled into the programs as constants, a ``Partial``'s are passed as arguments
        (faster to compile, no second copy, and new data of the same shapes reuses the
        compilation).
      objective_fn: ``(state, meta) -> scalar``, e.g. the validation loss of the trained model;
        a closure or a ``Partial`` like ``step_fn``.
      init_state: the training state at step 0, a pytree of arrays.
      meta: the metaparameters, a pytree of floating-point arrays.
      num_steps: ``T``, the number of training steps, ``>= 1``.
      checkpoint: the checkpoint policy: `mgd.StoreAll`, `mgd.KAryTree` or `mgd.Binomial`.
        ``None`` resolves to `mgd.engine.policies.default_policy`:
        ``KAryTree(max(2, ceil(sqrt(T))))``; with ``memory_budget``, to
        `mgd.choose_for_budget`: ``StoreAll()`` if ``T + 1`` states fit the budget, else
        ``KAryTree(max(2, ceil(sqrt(T))))`` if its peak fits, else (with ``store=None``) that
        tree with its stored states in host memory, then on disk, if the device holds its
        longest block plus a prefetched state and there is room there, else
        ``Binomial(budget // state_bytes - 1)``.
      check_finite: raise `NonFiniteCotangentError` naming the first step (in reverse order)
        at which the state cotangent became NaN or Inf. Costs one device-to-host sync at the
        end of the sweep (and, only when it fails, a second sweep checking block by block to
        find the step); turn off to skip even that.
      store: where stored states live: ``"device"`` (the device memory they were computed
        in), ``"host"`` (`mgd.engine.HostStore`, host memory), ``"disk"``
        (`mgd.engine.DiskStore`, a temporary directory removed when the call ends), or any
        `mgd.engine.AbstractStateStore`. ``None`` is ``"device"``, or with ``memory_budget``
        whichever the budget picks. Off-device stores copy each stored state out once and
        back on each restore, overlapped with compute; the gradient is the same bits as the
        driver's with the states on the device. The device store runs the whole sweep as one
        compiled program in every leaf mode (`mgd.replay_loop`'s; equal up to float
        rounding, and bit for bit in the test suite's problems); other stores (subclasses of
        `mgd.DeviceStore` included) run the driver, one program per block.
      memory_budget: bytes of device memory the whole sweep may hold at its peak: stored
        states, the running differentiated block (its residuals or states, one step's VJP,
        the objective's VJP, cotangents, the meta gradient) and the inputs, as
        `mgd.estimate_memory` counts them from the compiled programs (compiled, not run,
        before the sweep); only with ``checkpoint=None``. With ``store=None`` it picks the
        policy, the store and the leaf mode (`mgd.engine.policies.choose_plan`: the rule of
        `mgd.choose_for_budget` with every byte counted): ``StoreAll()`` if ``T + 1`` states
        fit, else ``KAryTree(max(2, ceil(sqrt(T))))`` if its peak fits, else that tree with
        its stored states in host memory, then on disk, else ``Binomial(budget // state_bytes
        - 1)`` in spirit: the ``Binomial`` with the most slots that fit; each candidate in
        the leaf modes fastest first (with ``leaf="auto"``: fused then rematerialized, or
        rematerialized then fused for a step with large residuals, then, for a
        `mgd.engine.GradientStep`, mixed-mode, the leanest). A candidate on the device fits if the
        memory analysis of its compiled sweep (compiled, then cached for the run) does, not
        only the model of its parts. Off-device stores are offered half the
        available host memory (none on a CPU backend, whose host memory is the device's) and
        half the free disk space of the temporary directory, measured at the call
        (`mgd.engine.storage.offload_room`). With an explicit ``store`` it picks only the
        policy and leaf mode, counting every held state whichever store holds it.
        ``result.stats`` names the policy, store and leaf mode that ran.
      leaf: how each differentiated block is back-propagated (`mgd.engine.leaf`):
        ``"fused"`` (one VJP of the whole block: every step's residuals kept, fastest),
        ``"remat"`` (the block's states kept, each step's VJP rematerialized: memory ``n``
        states plus one step's residuals), ``"mixed"`` (as ``"remat"`` with mixed-mode
        per-step VJPs, forward-over-reverse; needs a `mgd.engine.GradientStep`, such as
        ``TrainingSetup.step_fn``), or ``"auto"``: the one expected fastest, ``"fused"`` if
        one step's residuals are at most 4 training states (`mgd.engine.memory.fuses_fast`,
        a rule from measurements), else ``"remat"``; with a ``memory_budget``, the fastest
        that fits; without one, that mode if the plan's states and its longest fused block's
        residuals fit in half the device's free memory, else ``"mixed"`` for a
        `mgd.engine.GradientStep` and ``"remat"`` otherwise (`mgd.engine.memory.auto_leaf`).
        All are exact. The resolved policy, store and leaf mode are remembered for the
        process per problem (functions, input shapes, dtypes and shardings, ``num_steps``,
        options; `mgd.engine.memory.resolve`): a repeated call neither checks its inputs nor
        chooses again.

    Returns:
      A `MetagradientResult` with ``value`` (scalar), ``grad`` (structure of ``meta``) and
      ``stats`` (forward steps, VJP steps, peak held states, the policy and store that ran).

    Raises:
      ValueError: ``num_steps < 1``; ``step_fn`` changes the state's structure or a leaf's
        shape; ``objective_fn`` does not return a scalar; ``memory_budget`` is below what
        ``Binomial(1)`` in the leanest leaf mode needs (the message gives its bytes by
        component) or is given with a ``checkpoint``; ``store`` is an unknown name or
        ``DiskStore`` an unwritable directory; ``leaf`` is unknown, or ``"mixed"`` for a step
        that is not a `mgd.engine.GradientStep`.
      TypeError: a ``meta`` leaf is not floating point; ``step_fn`` changes a leaf's dtype;
        the objective is not floating point; ``checkpoint`` is not a policy.
      NonFiniteCotangentError: with ``check_finite``, when the reverse sweep goes non-finite.

    Example:
      >>> import jax.numpy as jnp, mgd
      >>> step = lambda w, lr, t: w - lr * 2 * w        # gradient descent on w**2
      >>> res = mgd.metagradient(step, lambda w, lr: w**2, jnp.float32(1.0),
      ...                        jnp.float32(0.1), num_steps=10)
      >>> float(res.value)  # (0.8 ** 10) ** 2
      0.011529...
    """
    check_num_steps(num_steps)
    memory.check_options(step_fn, checkpoint, memory_budget, leaf)
    fns = _split_fns(step_fn, objective_fn)
    init_state, meta = memory.checked_inputs(
        fns, init_state, meta, num_steps, checkpoint or policies.StoreAll()
    )
    policy, store, mode, _ = memory.resolve(
        fns, init_state, meta, num_steps, checkpoint, store, memory_budget, leaf
    )
    # Built after validation: a disk store makes a directory that only the sweep's `finally`
    # removes.
    store = make_store(store)
    try:
        if memory.runs_compiled(store):
            # Stored states on the device: the sweep is one compiled program, any leaf mode.
            from mgd.engine import compiled  # noqa: PLC0415 (compiled imports this module)

            result, finite = compiled.sweep(
                fns, init_state, meta, num_steps, policy, store.name, mode
            )
        else:  # Off-device or custom stores: one program per block.
            plan = policy.plan(num_steps)
            result, finite = _sweep(fns, init_state, meta, num_steps, policy, plan, store, mode)
        # One device-to-host sync for the whole sweep: per-block checks would stall the
        # dispatch queue after every block. NaN and Inf are rare, so only then is the sweep
        # re-run, checking each block, to name the step.
        if check_finite and not bool(finite):
            store.clear()
            plan = policy.plan(num_steps)
            _sweep(fns, init_state, meta, num_steps, policy, plan, store, mode, locate=True)
            raise NonFiniteCotangentError(_non_finite_message(num_steps, None))
    finally:
        store.clear()
    return result


def _sweep(
    fns, init_state, meta, num_steps, policy, plan, store, mode, *, locate=False
) -> tuple[MetagradientResult, jax.Array]:
    """Executes ``plan`` (``policy``'s) with ``fns``, `_split_fns`'s pair; returns the result
    and whether every block's state cotangent was finite (a bool scalar on the device).

    With ``locate``, checks each block's flag as it comes and raises
    `NonFiniteCotangentError` naming the first non-finite step in reverse order.
    """
    prefetch_at = policies.next_restores(plan)
    grad = jax.tree.map(jnp.zeros_like, meta)
    value = ct_diff = None
    finite = None  # Set by the first block, the run's last (it holds the objective).
    state, t = init_state, 0
    store.put(0, 0, init_state)
    forward = vjp = 0
    peak = held = 1
    for i, action in enumerate(plan):
        match action:
            case policies.Advance(n):
                after = np.bool_(True) if finite is None else finite
                state = _advance(*fns, state, meta, np.int32(t), np.int32(n), after)
                t += n
                forward += n
                peak = max(peak, held + 1)
            case policies.Store(slot):
                store.put(slot, t, state)
                held += 1
                peak = max(peak, held + 1)
            case policies.Restore(slot):
                t, state = store.get(slot)
            case policies.Free(slot):
                store.delete(slot)
                held -= 1
            case policies.Reverse(n):
                if i in prefetch_at:  # Bring the next restored state in during this block.
                    store.prefetch(prefetch_at[i])
                ct_in = ct_diff  # None for the run's last block: seeded by the objective.
                block_value, ct_diff, grad, finite = _reverse(
                    fns, state, meta, t, n, ct_diff, grad, finite, mode
                )
                if ct_in is None:
                    value = block_value
                if locate and not bool(finite):
                    bad = _locate_non_finite(fns, state, meta, t, n, ct_in)
                    raise NonFiniteCotangentError(_non_finite_message(num_steps, bad))
                vjp += n
                peak = max(peak, held + n)
    stats = MetagradientStats(forward + vjp, forward, vjp, peak, repr(policy), store.name, mode)
    return MetagradientResult(value, grad, stats), finite


def _non_finite_message(num_steps: int, t: int | None) -> str:
    if t is None:  # Non-finite in the sweep, not reproduced when re-run block by block.
        where = "in the reverse sweep (not reproduced when re-run to find the step)"
    elif t == num_steps:
        where = f"at the objective (step {t})"
    else:
        where = f"at step {t}"
    return (
        f"the state cotangent became non-finite (NaN or Inf) {where}, the first such step in "
        "reverse order; a common cause is Adam-family optimizers with eps_root=0 where a "
        "gradient is exactly zero (pass e.g. optax.adam(lr, eps_root=1e-8)); else check the "
        "learning rate, the data and the objective, or pass check_finite=False to skip this check"
    )
