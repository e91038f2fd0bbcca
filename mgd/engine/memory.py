"""Device memory of a metagradient, measured before running: `estimate_memory` and the choice
a ``memory_budget`` makes.

The sizes come from the engine's own compiled programs (``compiled.memory_analysis()``), so
nothing runs. With the stored states on the device the sweep is one program
(`mgd.engine.compiled`), and its memory analysis is the estimate (`compiled_sweep_peak`).
For choosing under a ``memory_budget``, and for the driver of off-device stores, the
temporaries XLA assigns to a training step and to a differentiated block, with
``jax.eval_shape`` of a block's residuals per step, make a model that
`mgd.engine.policies` turns into the peak of any plan (`mgd.engine.policies.sweep_peak`);
the compiled sweep's own analysis then confirms the pick.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mgd.engine import leaf as leaf_lib
from mgd.engine import policies
from mgd.engine.storage import AbstractStateStore, DeviceStore, device_room, offload_room
from mgd.engine.validation import check_inputs, check_num_steps

PyTree = Any


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """What `mgd.estimate_memory` returns: the plan that would run and its peak device bytes.

    Attributes:
      peak_bytes: device bytes at the sweep's peak (stored states, the running action's
        working memory, the inputs), from the compiled programs' memory analysis.
      policy: the checkpoint policy that would run, as `mgd.metagradient` chooses it.
      store: where its stored states would live: ``"device"``, ``"host"``, ``"disk"`` (or a
        custom store's name).
      leaf: the leaf mode that would run (``"fused"``, ``"remat"`` or ``"mixed"``).
      components: ``peak_bytes`` by name. With the stored states on the device (the
        compiled sweep, one program): ``stored_states`` (its buffer of states),
        ``sweep_temporaries`` (everything else the program allocates: a block's residuals or
        states, VJPs, cotangents, the meta gradient), ``outputs``, and the inputs
        ``init_state``, ``meta``, ``fn_arrays`` (the arrays of ``step_fn`` and
        ``objective_fn``). Off the device (the driver, one program per action, summed by
        `mgd.engine.policies.sweep_peak`): ``stored_states``, ``block_residuals`` (a fused
        block's residuals) or ``block_states`` (a rematerialized block's states),
        ``step_vjp`` (one step's VJP temporaries), ``objective_vjp``, ``cotangents``,
        ``meta_grad``, ``input_state``, ``meta``, ``fn_arrays``, or ``step`` when the peak
        is in a forward replay.
      state_bytes: one training state.
      step_peak_bytes: training's own peak: a state plus one step's temporaries (the unit to
        compare ``peak_bytes`` with).
    """

    peak_bytes: int
    policy: policies.AbstractCheckpointPolicy
    store: str
    leaf: str
    components: dict[str, int]
    state_bytes: int
    step_peak_bytes: int


def tree_bytes(tree: PyTree) -> int:
    """Bytes of a pytree's array leaves (or ``ShapeDtypeStruct``\\ s)."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnames=("fns", "length"))
def _fused_pullback(fns, fn_arrays, state, meta, *, length: int):
    # Only ever traced (`.eval_shape`): the residuals of a fused block, as the leaves of its
    # pullback. Jitted so that a problem is traced once, not on every call.
    step_fn = _join((fns, fn_arrays))[0]
    return leaf_lib.block_vjp(step_fn, state, meta, jnp.int32(0), length=length, mode="fused")[1]


@functools.partial(jax.jit, static_argnames=("fns",))
def _objective_vjp(fns, fn_arrays, state, meta):
    # Only compiled, for its memory analysis. Jitted here, not per call, so that a problem
    # compiles it once (a fresh closure per call compiled it again on every call, in
    # process memory, which on a CPU is the device's: 127-135 MiB on top of a 176 MiB budget
    # for ResNet-9 at width 1/16, docs/benchmarks.md).
    objective_fn = _join((fns, fn_arrays))[1]
    d, r = leaf_lib.partition(state)
    return jax.value_and_grad(lambda d, m: objective_fn(leaf_lib.combine(d, r), m), (0, 1))(d, meta)


def residual_bytes_per_step(fns, state, meta) -> int:
    """Bytes one more step adds to a fused block's residuals (traced, nothing compiled).

    ``fns`` is `mgd.engine.replay`'s split ``(step_fn, objective_fn)`` pair.
    """
    one, two = (tree_bytes(_fused_pullback.eval_shape(*fns, state, meta, length=n)) for n in (1, 2))
    return max(0, two - one)


# `leaf="auto"` fuses a block only if one step's residuals are at most this many training
# states. Measured (docs/benchmarks.md, "Engine at the paper's scale"): residuals over state,
# then the metagradient's time over training's, fused against remat, in one process each:
# the digits MLP 1.3 (fused 2.39x and 3.33x, remat 2.92x and 2.95x in two runs: neither
# clearly faster), the linear regression of `scripts/profile_reverse.py` 17 (T = 100,000:
# fused 11.2x and 15.95x, remat 10.7x and 11.74x), ResNet-9 at width 1/16, batch 16, 29
# (remat 4.4-5.2x in every run, fused 4.6-13.2x swinging with the machine's load: faster
# only in the quietest run, by 9%; `scripts/leaf_speed.py`). A fused block writes every
# step's residuals and reads them back; remat instead runs each step forward once more and
# keeps only its input state, which wins once the residuals are several states' worth.
FUSE_MAX_RESIDUAL_STATES = 4


def fuses_fast(per_step_residual_bytes: int, state_bytes: int) -> bool:
    """Whether a fused block is expected faster than a rematerialized one: one step's residuals
    (``per_step_residual_bytes``, `residual_bytes_per_step`) are at most
    `FUSE_MAX_RESIDUAL_STATES` training states of ``state_bytes``."""
    return per_step_residual_bytes <= FUSE_MAX_RESIDUAL_STATES * state_bytes


def leaf_order(fns, state, meta) -> tuple[str, ...]:
    """The leaf modes ``leaf="auto"`` tries under a ``memory_budget``, fastest first.

    ``"fused"`` first if `fuses_fast`, else ``"remat"`` first; then the other of the two, then
    ``"mixed"`` for a `mgd.engine.GradientStep`, the leanest (it measured slower than remat on
    the CPU, docs/benchmarks.md).
    """
    per_step = residual_bytes_per_step(fns, state, meta)
    order = ("fused", "remat") if fuses_fast(per_step, tree_bytes(state)) else ("remat", "fused")
    return tuple(dict.fromkeys((*order, per_step_leaf(_join(fns)[0]))))


def auto_leaf(fns, state, meta, plan_cost: policies.PlanCost, state_bytes: int) -> str:
    """The leaf mode ``leaf="auto"`` runs without a ``memory_budget``.

    If the plan's ``peak_states`` states plus its longest block's residuals (``n`` times one
    step's, by `jax.eval_shape`) fit in half the device's free memory
    (`mgd.engine.storage.device_room`): ``"fused"`` if one step's residuals are small
    (`fuses_fast`: at most `FUSE_MAX_RESIDUAL_STATES` states), else ``"remat"``, which is then
    faster. Otherwise the leanest: ``"mixed"`` for a `mgd.engine.GradientStep`, ``"remat"``
    otherwise (their blocks hold ``n`` states and one step's residuals).
    """
    longest = max(plan_cost.block_lengths)
    per_step = residual_bytes_per_step(fns, state, meta)
    if plan_cost.peak_states * state_bytes + longest * per_step <= device_room():
        return "fused" if fuses_fast(per_step, state_bytes) else "remat"
    return per_step_leaf(_join(fns)[0])


def per_step_leaf(step_fn) -> str:
    """The rematerializing mode a step allows: ``"mixed"`` for a `GradientStep`, else
    ``"remat"``."""
    return "mixed" if isinstance(step_fn, leaf_lib.GradientStep) else "remat"


def _analysis(compiled) -> tuple[int, int]:
    stats = compiled.memory_analysis()
    return int(stats.temp_size_in_bytes), int(stats.output_size_in_bytes)


def step_program_bytes(fns, init_state, meta) -> int:
    """What a forward step adds to its input state: its temporaries and its output state, from
    the compiled (not run) program; ``fns`` is `mgd.engine.replay`'s split pair."""
    from mgd.engine import replay

    program = replay._advance.lower(
        *fns, init_state, meta, np.int32(0), np.int32(1), np.bool_(True)
    ).compile()
    return sum(_analysis(program))


def runs_compiled(store) -> bool:
    """Whether `mgd.metagradient` runs the compiled sweep (`mgd.engine.compiled`, one program)
    for ``store`` (a name, a store or ``None``): stored states on the device, in a plain
    `DeviceStore`. Other stores run the driver of `mgd.engine.replay`, one program per action.
    """
    return store is None or store == "device" or type(store) is DeviceStore


def compiled_sweep_peak(fns, init_state, meta, num_steps, policy, mode) -> policies.SweepPeak:
    """Device bytes at the peak of the compiled sweep, from XLA's memory analysis of its one
    program (compiled, not run; the compilation is cached for the call that runs it).

    The program's temporaries are the stored states' buffer (a row per slot the plan holds at
    once, plus a scratch row) and the working memory of its actions (a block's residuals or
    states, the step and objective VJPs, cotangents, the meta gradient), which XLA's buffer
    assignment overlaps where their lifetimes allow: a sum of per-action parts
    (`mgd.engine.policies.sweep_peak`) over- or under-counts it.

    Args:
      fns: `mgd.engine.replay`'s split ``(step_fn, objective_fn)`` pair.
      init_state, meta: the inputs (arrays, validated).
      num_steps, policy, mode: the run's ``T``, checkpoint policy and leaf mode.

    Returns:
      A `mgd.engine.policies.SweepPeak`, components ``stored_states``,
      ``sweep_temporaries``, ``outputs`` and the inputs ``init_state``, ``meta``,
      ``fn_arrays`` (on the device before the call; all of them, used or not).
    """
    from mgd.engine import compiled  # It imports this module.

    shape, tables, _ = compiled._tables(policy, num_steps)
    program = compiled._metagradient_program.lower(
        fns[0], shape, mode, fns[1], tables, init_state, meta
    ).compile()
    temps, out = _analysis(program)
    buffer = min(temps, (shape.num_slots + 1) * tree_bytes(init_state))
    components = {
        "stored_states": buffer,
        "sweep_temporaries": temps - buffer,
        "outputs": out,
        "init_state": tree_bytes(init_state),
        "meta": tree_bytes(meta),
        "fn_arrays": tree_bytes([a for a in fns[1] if a is not None]),
    }
    return policies.SweepPeak(sum(components.values()), components)


def measure_sizes(fns, init_state, meta, modes, lengths=None) -> policies.MemorySizes:
    """Compiles (without running) the engine's step and block programs; their sizes.

    Args:
      fns: `mgd.engine.replay`'s split ``(step_fn, objective_fn)`` pair.
      init_state: the state at step 0 (arrays).
      meta: the metaparameters (arrays).
      modes: the leaf modes to measure, in order of preference.
      lengths: ``{mode: n}``, a block length to compile for a mode instead of extrapolating
        from one step (`mgd.engine.policies.LeafCost`); ``None``: one step for every mode.

    Returns:
      `mgd.engine.policies.MemorySizes`: a state, a forward step (temporaries and output), and
      per mode a `LeafCost` (``fixed``: the input state, cotangents in and out, meta gradient
      in and out, one step's VJP temporaries and the objective's; ``per_step``: a fused step's
      residuals or a rematerialized block's state).
    """
    from mgd.engine import replay  # The programs live with the sweep that runs them.

    lengths = lengths or {}
    state_bytes = tree_bytes(init_state)
    diff_bytes = tree_bytes(leaf_lib.partition(init_state)[0])
    meta_bytes = tree_bytes(meta)
    t0 = np.int32(0)
    step_bytes = step_program_bytes(fns, init_state, meta)
    objective_vjp = _analysis(_objective_vjp.lower(*fns, init_state, meta).compile())[0]
    ct = jax.tree.map(jnp.zeros_like, leaf_lib.partition(init_state)[0])
    grad = jax.tree.map(jnp.zeros_like, meta)
    per_fused = residual_bytes_per_step(fns, init_state, meta)
    leaves = []
    for mode in modes:
        n = lengths.get(mode, 1)
        program = replay._reverse_block.lower(
            *fns, init_state, meta, t0, ct, grad, np.bool_(True), np.bool_(True),
            length=n, mode=mode,
        )  # fmt: skip
        temps = _analysis(program.compile())[0]
        if mode == "fused":
            per_step, name = per_fused, "block_residuals"
        else:
            per_step, name = state_bytes, "block_states"
        # What the n-step program holds beyond its n per-step parts: one step's VJP working
        # memory, of which the objective's VJP (run in the same program) is reported apart.
        rest = max(0, temps - n * per_step)
        objective_part = min(objective_vjp, rest)
        fixed = (
            ("input_state", state_bytes),
            ("cotangents", 2 * diff_bytes),
            ("meta_grad", 2 * meta_bytes),
            ("step_vjp", rest - objective_part),
            ("objective_vjp", objective_part),
        )
        leaves.append((mode, policies.LeafCost(fixed, per_step, name)))
    fn_arrays = tree_bytes([a for a in fns[1] if a is not None])
    resident = (("meta", meta_bytes), ("fn_arrays", fn_arrays))
    return policies.MemorySizes(state_bytes, step_bytes, tuple(leaves), resident)


def _store_name(store) -> str | None:
    if store is None or isinstance(store, str):
        return store
    return store.name if isinstance(store, AbstractStateStore) else None


def check_options(step_fn, checkpoint, memory_budget, leaf) -> None:
    """Validates `mgd.metagradient`'s engine options in plain Python, before any tracing."""
    if leaf != "auto" and leaf not in leaf_lib.LEAF_MODES:
        raise ValueError(f"leaf must be 'auto' or one of {leaf_lib.LEAF_MODES}, got {leaf!r}")
    if leaf == "mixed" and not isinstance(step_fn, leaf_lib.GradientStep):
        raise ValueError(
            "leaf='mixed' needs a step that exposes its loss gradient, an "
            "mgd.engine.GradientStep (TrainingSetup.step_fn is one); pass leaf='remat' instead"
        )
    if memory_budget is None:
        return
    if checkpoint is not None:
        raise ValueError("pass either checkpoint or memory_budget, not both")
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise ValueError(
            f"memory_budget must be an integer number of bytes >= 0, got {memory_budget!r}"
        )


# What was checked and chosen for recent problems, most recent last (`checked_inputs`,
# `resolve`). Choosing under a budget traces and compiles candidates' programs, and on a CPU
# that is process memory; a repeated call reuses the choice, so it neither measures again nor
# exceeds the budget by choosing, and a problem keeps its plan (and so its compiled sweep)
# even as free memory varies. Validation traces ``step_fn`` and ``objective_fn`` (a second
# or more for a ResNet-9 step), which a repeated call skips too.
_REMEMBERED: collections.OrderedDict = collections.OrderedDict()
_MAX_REMEMBERED = 64


def _signature(tree: PyTree) -> tuple:
    # Shardings too: the programs, hence their memory, are per device.
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (
            tuple(x.shape),
            jnp.dtype(x.dtype).name,
            bool(getattr(x, "weak_type", False)),
            getattr(x, "sharding", None),
        )
        for x in leaves
    )


def _remembered(key: tuple, compute):
    if key in _REMEMBERED:
        _REMEMBERED.move_to_end(key)
        return _REMEMBERED[key]
    value = compute()  # Not remembered if it raises.
    _REMEMBERED[key] = value
    if len(_REMEMBERED) > _MAX_REMEMBERED:
        _REMEMBERED.popitem(last=False)
    return value


def _problem_key(fns, init_state, meta, num_steps) -> tuple:
    # The functions (the same objects: `_split_fns`'s static half), the shapes, dtypes and
    # shardings of everything passed to them, T, and the dtype mode, which changes what
    # tracing makes.
    return (
        fns[0], _signature(fns[1]), _signature(init_state), _signature(meta), num_steps,
        jax.config.jax_enable_x64,
    )  # fmt: skip


def forget_choices() -> None:
    """Drops what `checked_inputs` and `resolve` remember, so the next call checks and
    measures again (e.g. after the free memory changed)."""
    _REMEMBERED.clear()


def checked_inputs(fns, init_state, meta, num_steps, policy):
    """`mgd.engine.validation.check_inputs` of ``fns`` (`mgd.engine.replay`'s split pair),
    remembered as `resolve` remembers its choice: a repeated call converts the inputs to
    arrays and traces nothing.

    Returns:
      ``(init_state, meta)`` as arrays.

    Raises:
      ValueError, TypeError: as `check_inputs`.
    """
    from mgd.engine import replay

    joined = replay._join_fns(*fns)
    if not isinstance(policy, policies.AbstractCheckpointPolicy):
        return check_inputs(*joined, init_state, meta, num_steps, policy)  # Raises.
    arrays = jax.tree.map(jnp.asarray, (init_state, meta))
    key = ("inputs", *_problem_key(fns, *arrays, num_steps), policy)

    def check():
        check_inputs(*joined, *arrays, num_steps, policy)
        return True  # Only that it passed is remembered: the arrays are this call's.

    _remembered(key, check)
    return arrays


def resolve(fns, init_state, meta, num_steps, checkpoint, store, memory_budget, leaf):
    """What a `mgd.metagradient` call runs: ``(policy, store, leaf_mode, peak)``.

    Under a ``memory_budget``, ``peak`` is the chosen plan's `mgd.engine.policies.SweepPeak`
    (for the compiled sweep, its program's, which is then compiled and cached); else
    ``None``. The options are checked by `check_options`, the inputs by `check_inputs`.

    The choice is remembered for the process (with `checked_inputs`, the 64 most recent),
    keyed by the functions, the shapes, dtypes and shardings of the inputs and of the
    functions' arrays, ``num_steps`` and the options: a repeated call traces and compiles
    nothing to choose, and sees the free memory of the first (`forget_choices` drops them). A
    custom store object is not remembered.
    """
    args = (fns, init_state, meta, num_steps, checkpoint, store, memory_budget, leaf)
    if store is not None and not isinstance(store, str):
        return _resolve(*args)
    key = ("choice", *_problem_key(fns, init_state, meta, num_steps))
    return _remembered((*key, checkpoint, store, memory_budget, leaf), lambda: _resolve(*args))


def _resolve(fns, init_state, meta, num_steps, checkpoint, store, memory_budget, leaf):
    if memory_budget is None:
        policy = policies.default_policy(num_steps) if checkpoint is None else checkpoint
        if leaf == "auto":
            state_bytes = tree_bytes(init_state)
            leaf = auto_leaf(fns, init_state, meta, policy.cost(num_steps), state_bytes)
        return policy, store, leaf, None
    modes = leaf_order(fns, init_state, meta) if leaf == "auto" else (leaf,)
    sizes = measure_sizes(fns, init_state, meta, modes)

    def measure(policy, candidate_store, mode):
        # The model picks candidates; the compiled sweep's own program has the last word.
        if runs_compiled(candidate_store if store is None else store):
            return compiled_sweep_peak(fns, init_state, meta, num_steps, policy, mode)
        return None

    if store is None:
        host_bytes, disk_bytes = offload_room()
        choice = policies.choose_plan(
            num_steps, sizes, memory_budget, host_bytes=host_bytes, disk_bytes=disk_bytes,
            measure=measure,
        )  # fmt: skip
        return choice.policy, choice.store, choice.leaf, choice.peak
    # An explicit store: every held state is counted, wherever it lives.
    choice = policies.choose_plan(num_steps, sizes, memory_budget, measure=measure)
    return choice.policy, store, choice.leaf, choice.peak


def _join(fns):
    from mgd.engine import replay

    return replay._join_fns(*fns)


def estimate_memory(
    step_fn,
    objective_fn,
    init_state: PyTree,
    meta: PyTree,
    num_steps: int,
    *,
    checkpoint: policies.AbstractCheckpointPolicy | None = None,
    store: AbstractStateStore | str | None = None,
    memory_budget: int | None = None,
    leaf: str = "auto",
) -> MemoryEstimate:
    """Peak device memory of ``mgd.metagradient`` with the same arguments, without running it.

    Resolves the policy, store and leaf mode exactly as `mgd.metagradient` does and compiles
    (without running any step) what would run. With the stored states on the device, that is
    the whole sweep, one program, and the peak is its memory analysis (arguments,
    temporaries, outputs; the compilation is cached, so a later `mgd.metagradient` call
    with the same arguments does not compile again). Off the device, the driver's programs
    (a forward step, the plan's longest differentiated block in that mode, the objective's
    VJP), and `mgd.engine.policies.sweep_peak` walks the plan. The result counts the inputs
    (``init_state``, ``meta``, the functions' arrays) and everything the sweep allocates on
    the device.

    Args:
      step_fn, objective_fn, init_state, meta, num_steps, checkpoint, store, memory_budget,
        leaf: as for `mgd.metagradient`.

    Returns:
      A `MemoryEstimate`: ``peak_bytes``, ``policy``, ``store``, ``leaf``, ``components``.

    Raises:
      ValueError, TypeError: as `mgd.metagradient` for the same arguments (bad inputs, a
        budget that nothing fits, with its bytes by component).

    Example:
      >>> est = mgd.estimate_memory(step, objective, w0, lr, 1000)  # doctest: +SKIP
      >>> est.peak_bytes, est.policy, est.leaf  # doctest: +SKIP
    """
    from mgd.engine import replay

    check_num_steps(num_steps)
    check_options(step_fn, checkpoint, memory_budget, leaf)
    fns = replay._split_fns(step_fn, objective_fn)
    init_state, meta = checked_inputs(
        fns, init_state, meta, num_steps, checkpoint or policies.StoreAll()
    )
    policy, store, mode, peak = resolve(
        fns, init_state, meta, num_steps, checkpoint, store, memory_budget, leaf
    )
    store_name = _store_name(store) or "device"
    if runs_compiled(store):
        # One program: its own memory analysis, not a model of its parts.
        if peak is None:
            peak = compiled_sweep_peak(fns, init_state, meta, num_steps, policy, mode)
        step_bytes = step_program_bytes(fns, init_state, meta)
    else:
        plan = policy.plan(num_steps)
        cost = policies.simulate(plan, num_steps)
        # The exact program of the plan's longest block, not an extrapolation from one step.
        sizes = measure_sizes(fns, init_state, meta, (mode,), {mode: max(cost.block_lengths)})
        peak = policies.sweep_peak(plan, sizes, mode, offloaded=store_name != "device")
        step_bytes = sizes.step_bytes
    state_bytes = tree_bytes(init_state)
    return MemoryEstimate(
        peak.bytes, policy, store_name, mode, peak.components, state_bytes, state_bytes + step_bytes
    )
