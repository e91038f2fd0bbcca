"""mgd.replay_loop: a JAX function whose checkpointed reverse mode equals jax.grad of the
unrolled loop, composing with grad, value_and_grad, jit and vmap; and mgd.metagradient's
compiled sweep against the Python driver."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_leaf
from test_engine import (
    OPTIMIZERS,
    POLICIES,
    T_SMALL,
    _reference_grad,
    make_problem,
    max_relative_error,
    scanned_objective,
)

import mgd
from mgd.engine.leaf import LEAF_MODES


def _objective_after_loop(problem, policy, num_steps=T_SMALL):
    """``meta -> objective(replay_loop(...), meta)``: the user's objective after the loop."""
    step_fn, objective_fn, state, _ = problem
    return lambda meta: objective_fn(
        mgd.replay_loop(step_fn, state, meta, num_steps, checkpoint=policy), meta
    )


# Each optimizer once and each policy with two of them, one keeping an integer step count:
# the plan's execution does not depend on the optimizer, whose state is a pytree like any other
# (test_engine runs the whole product through mgd.metagradient's same compiled plan, and
# test_integer_leaves_and_init_state_cotangent below every policy with integer leaves).
OPTIMIZER_POLICY = [
    ("sgd", mgd.StoreAll()),
    ("momentum", mgd.KAryTree(2)),
    ("nesterov", mgd.Binomial(3)),
    ("adam", mgd.KAryTree(2)),
    ("adamw", mgd.Binomial(3)),
    ("mgd_adam", mgd.StoreAll()),
]
assert {p for _, p in OPTIMIZER_POLICY} == set(POLICIES)
assert {o for o, _ in OPTIMIZER_POLICY} == {*OPTIMIZERS, "mgd_adam"}


@pytest.mark.parametrize(("opt_name", "policy"), OPTIMIZER_POLICY, ids=str)
def test_grad_equals_jax_grad_of_unrolled_loop_float64(x64, opt_name, policy):
    problem = make_problem(opt_name, T_SMALL)
    value, expected = _reference_grad(opt_name, T_SMALL)
    got_value, grad = jax.jit(jax.value_and_grad(_objective_after_loop(problem, policy)))(
        problem[3]
    )
    assert max_relative_error(grad, expected) <= 1e-10
    np.testing.assert_allclose(got_value, value, rtol=1e-12)


# Each leaf mode once and each policy once: replay_loop's passes are mgd.metagradient's
# (`_forward`, `_backward`), which test_leaf runs for the product of policies and modes.
POLICY_MODE = [
    (test_leaf.POLICIES[0], "remat"),
    (test_leaf.POLICIES[1], "mixed"),
    (test_leaf.POLICIES[2], "fused"),
]
assert {m for _, m in POLICY_MODE} == set(LEAF_MODES)
assert [p for p, _ in POLICY_MODE] == test_leaf.POLICIES


@pytest.mark.parametrize(("policy", "mode"), POLICY_MODE, ids=str)
def test_every_leaf_mode_equals_jax_grad_float64(x64, policy, mode):
    # A mixed-mode step (mgd.GradientStep: Adam, an integer counter, an auxiliary statistic in
    # the state, metaparameters in the loss and the update); its objective after the loop.
    step, objective, state, meta = test_leaf.make_problem(test_leaf.T)
    value, expected = test_leaf._reference(test_leaf.T)

    def loss(m):
        return objective(
            mgd.replay_loop(step, state, m, test_leaf.T, checkpoint=policy, leaf=mode), m
        )

    got_value, grad = jax.jit(jax.value_and_grad(loss))(meta)
    assert max_relative_error(grad, expected) <= 1e-10
    np.testing.assert_allclose(got_value, value, rtol=1e-12)


def test_bad_leaf_mode_is_rejected():
    step = lambda w, m, t: w * m
    with pytest.raises(ValueError, match="replay_loop's leaf must be one of"):
        mgd.replay_loop(step, 1.0, 0.5, 3, leaf="auto")
    with pytest.raises(ValueError, match="leaf must be 'auto' or one of"):
        mgd.replay_loop(step, 1.0, 0.5, 3, leaf="fast")
    with pytest.raises(ValueError, match="needs a step that exposes its loss gradient"):
        mgd.replay_loop(step, 1.0, 0.5, 3, leaf="mixed")


def test_forward_is_the_training_run(x64):
    step_fn, _, state, meta = problem = make_problem("adam", T_SMALL)
    final = mgd.replay_loop(step_fn, state, meta, T_SMALL, checkpoint=mgd.KAryTree(2))
    step = jax.jit(step_fn)  # One compiled step, not each operation compiled on its own.
    for t in range(T_SMALL):
        state = step(state, meta, jnp.int32(t))
    assert jax.tree.structure(final) == jax.tree.structure(state)
    assert max_relative_error(final, state) <= 1e-12
    assert problem  # The cached problem is not mutated.


@functools.cache
def _with_extra_leaves():
    """Adam's problem with a counter and a meta-independent float leaf of our own in the state,
    an objective using both, and the reference ``jax.grad`` of the unrolled loop with respect to
    the initial state and meta (computed once for the policies below)."""
    step_fn, objective_fn, state, meta = make_problem("adam", T_SMALL)
    wrapped_step = lambda s, m, t: (step_fn(s[0], m, t), s[1] + 1, s[2] * 2.0)

    def user_objective(s, m):  # Uses the integer counter and the extra float leaf.
        return objective_fn(s[0], m) * (1.0 + s[2] / 1000.0) + s[1].astype(s[2].dtype)

    state = (state, jnp.int32(0), jnp.float64(1.0))

    def unrolled(s0, m):
        for t in range(T_SMALL):
            s0 = wrapped_step(s0, m, jnp.int32(t))
        return user_objective(s0, m)

    expected = jax.jit(jax.grad(unrolled, argnums=(0, 1), allow_int=True))(state, meta)
    return wrapped_step, user_objective, state, meta, expected


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_integer_leaves_and_init_state_cotangent(x64, policy):
    # Adam's int32 step counter plus a counter and a meta-independent float leaf of our own;
    # the cotangent of the initial state's floating leaves too (argnums=(0, 1)).
    wrapped_step, user_objective, state, meta, expected = _with_extra_leaves()

    def via_replay(s0, m):
        final = mgd.replay_loop(wrapped_step, s0, m, T_SMALL, checkpoint=policy)
        assert final[1].dtype == jnp.int32
        return user_objective(final, m)

    float_part = lambda s: (s[0][0], s[2])  # params and the extra float leaf
    got = jax.jit(jax.grad(via_replay, argnums=(0, 1), allow_int=True))(state, meta)
    assert max_relative_error(got[1], expected[1]) <= 1e-10
    assert max_relative_error(float_part(got[0]), float_part(expected[0])) <= 1e-10
    assert got[0][1].dtype == jax.dtypes.float0  # No cotangent for the integer counter.


def test_vmap_over_four_metaparameter_sets_equals_separate_calls(x64):
    problem = make_problem("momentum", T_SMALL)
    grad_fn = jax.grad(_objective_after_loop(problem, mgd.KAryTree(2)))
    rng = np.random.default_rng(3)
    metas = [
        jax.tree.map(lambda x: x * (1 + 0.1 * rng.normal(size=np.shape(x))), problem[3])
        for _ in range(4)
    ]
    batched = jax.jit(jax.vmap(grad_fn))(jax.tree.map(lambda *xs: jnp.stack(xs), *metas))
    # Compiled once for the four calls.
    separate_fn = jax.jit(grad_fn)
    expected_fn = jax.jit(jax.grad(lambda m: scanned_objective(problem, T_SMALL, m)))
    for i, meta in enumerate(metas):
        separate = separate_fn(meta)
        expected = expected_fn(meta)
        assert max_relative_error(jax.tree.map(lambda x, i=i: x[i], batched), separate) <= 1e-12
        assert max_relative_error(separate, expected) <= 1e-10


def test_vmap_over_init_states(x64):
    step_fn, objective_fn, state, meta = make_problem("sgd", T_SMALL)
    states = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x, -x]), state)

    def final_loss(s0, m, replay):
        if replay:
            return objective_fn(mgd.replay_loop(step_fn, s0, m, T_SMALL), m)
        for t in range(T_SMALL):
            s0 = step_fn(s0, m, jnp.int32(t))
        return objective_fn(s0, m)

    def batched_grad(replay):  # Jitted: one program, not each operation compiled on its own.
        loss = functools.partial(final_loss, replay=replay)
        return jax.jit(jax.vmap(jax.grad(loss, argnums=1), (0, None)))(states, meta)

    got, expected = batched_grad(True), batched_grad(False)
    assert max_relative_error(got, expected) <= 1e-10


def test_jitted_meta_step_equals_metagradient_and_optax_update(x64):
    step_fn, objective_fn, state, meta = make_problem("adam", T_SMALL)
    outer = optax.adam(0.01)
    opt_state = outer.init(meta)
    policy = mgd.Binomial(3)
    new_meta, new_opt_state, value = mgd.meta_step(
        step_fn, objective_fn, state, meta, opt_state, T_SMALL, outer, checkpoint=policy
    )
    res = mgd.metagradient(step_fn, objective_fn, state, meta, T_SMALL, checkpoint=policy)
    updates, expected_state = outer.update(res.grad, opt_state, meta)
    np.testing.assert_allclose(value, res.value, rtol=1e-12)
    assert max_relative_error(new_meta, optax.apply_updates(meta, updates)) <= 1e-10
    assert max_relative_error(new_opt_state[0].mu, expected_state[0].mu) <= 1e-10


def test_differentiating_step_fn_arrays_is_an_error():
    def step(data, w, m, t):
        return w - m * (w - data[t % 3])

    data = jnp.arange(3.0)

    def loss(d):
        final = mgd.replay_loop(jax.tree_util.Partial(step, d), jnp.float32(0.0), 0.5, 4)
        return final**2

    with pytest.raises(ValueError, match="not the arrays held by step_fn; pass those as"):
        jax.grad(loss)(data)
    # Not differentiated with respect to them: a Partial's traced arrays are fine.
    assert np.isfinite(jax.jit(loss)(data))


def test_bad_input_is_rejected():
    step = lambda w, m, t: w * m
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        mgd.replay_loop(step, 1.0, 0.5, 0)
    with pytest.raises(TypeError, match="checkpoint must be a policy"):
        mgd.replay_loop(step, 1.0, 0.5, 3, checkpoint="tree")
    with pytest.raises(TypeError, match="step_fn must be a callable"):
        mgd.replay_loop(None, 1.0, 0.5, 3)
    with pytest.raises(ValueError, match="step_fn changes the shape"):
        mgd.replay_loop(lambda w, m, t: jnp.stack([w, w]), jnp.float32(1.0), 0.5, 3)


class _DriverStore(mgd.DeviceStore):
    """Device memory through the Python driver: stores other than DeviceStore keep it."""


@pytest.mark.parametrize("policy", [*POLICIES, mgd.KAryTree(3), None], ids=repr)
def test_metagradient_compiled_sweep_equals_the_driver(x64, policy):
    problem = make_problem("nesterov", T_SMALL)
    compiled = mgd.metagradient(*problem, T_SMALL, checkpoint=policy, leaf="fused")
    driver = mgd.metagradient(
        *problem, T_SMALL, checkpoint=policy, store=_DriverStore(), leaf="fused"
    )
    assert dataclasses.replace(driver.stats, store="device") == compiled.stats
    assert max_relative_error(compiled.grad, driver.grad) <= 1e-12
    np.testing.assert_allclose(compiled.value, driver.value, rtol=1e-14)


@pytest.mark.parametrize("mode", ["remat", "mixed"])
@pytest.mark.parametrize("policy", test_leaf.POLICIES, ids=repr)
def test_metagradient_compiled_sweep_runs_every_leaf_mode(x64, policy, mode):
    problem = test_leaf.make_problem(test_leaf.T)
    compiled = mgd.metagradient(*problem, test_leaf.T, checkpoint=policy, leaf=mode)
    driver = mgd.metagradient(
        *problem, test_leaf.T, checkpoint=policy, store=_DriverStore(), leaf=mode
    )
    assert compiled.stats.leaf == mode
    assert dataclasses.replace(driver.stats, store="device") == compiled.stats
    assert max_relative_error(compiled.grad, driver.grad) <= 1e-12
    np.testing.assert_allclose(compiled.value, driver.value, rtol=1e-14)


def test_metagradient_compiles_once_per_plan_shape():
    from mgd.engine import compiled

    step_fn, objective_fn, state, meta = make_problem("sgd", 30, jnp.float32)
    policy = mgd.KAryTree(4)
    mgd.metagradient(step_fn, objective_fn, state, meta, 30, checkpoint=policy)
    programs = compiled._metagradient_program._cache_size()
    for scale in [1.01, 0.99]:  # New meta values: no new program.
        meta = jax.tree.map(lambda m, s=scale: m * s, meta)
        mgd.metagradient(step_fn, objective_fn, state, meta, 30, checkpoint=policy)
    assert compiled._metagradient_program._cache_size() == programs


def test_step_fn_is_traced_once_per_problem_not_per_step_or_call():
    """Compilation once per problem and plan shape: ``step_fn`` is traced a few times on the
    first call, no more for a longer run (the plan is data, not code), and never again for new
    metaparameter values, under ``metagradient``, ``jax.grad`` and ``jax.jit``."""
    traces = [0]

    def counted(w, m, t):  # Gradient descent on w**2 with a per-step learning rate.
        traces[0] += 1
        return w - m[t] * 2 * w

    objective_fn, state, meta = lambda w, m: w**2, jnp.float32(1.0), jnp.full(60, 0.1)

    policy = mgd.KAryTree(4)
    loss = lambda T: (
        lambda m: objective_fn(mgd.replay_loop(counted, state, m, T, checkpoint=policy), m)
    )
    calls = {
        "metagradient": lambda T, m: (
            mgd.metagradient(counted, objective_fn, state, m, T, checkpoint=policy).grad
        ),
        "grad": lambda T, m: jax.grad(loss(T))(m),
        "jit(grad)": lambda T, m: jax.jit(jax.grad(loss(T)))(m),
    }
    first = []
    for T in (20, 60):  # Three and four tree levels.
        for name, call in calls.items():
            before = traces[0]
            jax.block_until_ready(call(T, meta))
            first.append(traces[0] - before)
            for scale in (1.01, 0.99):  # New values, same shapes: nothing traced again.
                before = traces[0]
                jax.block_until_ready(call(T, jax.tree.map(lambda m, s=scale: m * s, meta)))
                assert traces[0] == before, (name, T)
    assert 0 < sum(first[3:]) <= sum(first[:3]) <= 10, first


def _whole(base, params):
    """`outer_update`'s ``embed`` when every metaparameter is optimized."""
    return params


def test_outer_update_equals_metagradient_then_the_update(x64):
    from mgd.engine import compiled

    step_fn, objective_fn, state, meta = make_problem("adam", T_SMALL)
    policy = mgd.KAryTree(3)
    outer = optax.with_extra_args_support(optax.adam(0.05))
    update, stats = compiled.outer_update(
        step_fn, objective_fn, state, None, meta, T_SMALL, embed=_whole, checkpoint=policy
    )
    opt_state = outer.init(meta)
    # Other tests in the same process may have compiled their own programs: count new ones.
    programs = compiled._update_program._cache_size()
    for _ in range(2):
        res = mgd.metagradient(step_fn, objective_fn, state, meta, T_SMALL, checkpoint=policy)
        expected, expected_state = outer.update(res.grad, opt_state, meta, value=res.value)
        value, grad, finite, updates, opt_state = update(meta, opt_state, outer)
        assert bool(finite) and stats == res.stats
        np.testing.assert_allclose(value, res.value, rtol=1e-12)
        assert max_relative_error(grad, res.grad) <= 1e-12
        assert max_relative_error(updates, expected) <= 1e-10
        assert max_relative_error(opt_state[0].nu, expected_state[0].nu) <= 1e-10
        meta = optax.apply_updates(meta, updates)
    assert compiled._update_program._cache_size() - programs == 1  # one for both steps


def test_outer_update_marks_a_diverged_run_and_keeps_off_device_stores():
    from test_engine_errors import nan_at_step

    from mgd.engine import compiled

    step, objective = nan_at_step(7), lambda w, m: w**2
    args = (jnp.float32(1.0), None, jnp.float32(0.9), 20)
    with pytest.raises(mgd.NonFiniteCotangentError, match="at step 7"):
        mgd.metagradient(step, objective, args[0], args[2], 20)
    update, _ = compiled.outer_update(step, objective, *args, embed=_whole)
    outer = optax.with_extra_args_support(optax.sgd(0.1))
    value, grad, finite, _, _ = update(args[2], outer.init(args[2]), outer)
    assert not bool(finite) and np.isnan(value) and np.isnan(grad)
    assert compiled.outer_update(step, objective, *args, embed=_whole, store="host") is None
