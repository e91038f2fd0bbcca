"""The replay engine against jax.grad of the unrolled loop and central finite differences.

One shared toy problem (a small MLP classifier trained by an optax optimizer on fixed
minibatches) with all metaparameter kinds live at once: per-example data weights on the loss,
a per-step learning-rate schedule, per-example additive input perturbations, and weight decay.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import count_compilations

import mgd
from mgd.engine import memory

N, DIM, HIDDEN, CLASSES, BATCH = 16, 5, 8, 3, 4
PERTURBED = np.array([1, 4, 9], dtype=np.int32)


def _optimizer(name):
    # Weight decay: AdamW takes it through optax.inject_hyperparams (set from meta each step);
    # the others get it decoupled in the step below.
    return {
        "sgd": optax.sgd(0.3),
        "momentum": optax.sgd(0.2, momentum=0.9),
        "nesterov": optax.sgd(0.2, momentum=0.9, nesterov=True),
        "adam": optax.adam(0.05),
        "adamw": optax.inject_hyperparams(optax.adamw)(learning_rate=0.05, weight_decay=0.0),
        "mgd_adam": mgd.train.adam(0.05),  # optax's Adam with a hand-written reverse pass
    }[name]


@functools.cache
def make_problem(opt_name, num_steps, dtype=jnp.float64):
    """Returns (step_fn, objective_fn, init_state, meta) for a small MLP classifier."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, DIM)), dtype)
    y = jnp.asarray(rng.integers(0, CLASSES, N))
    x_val = jnp.asarray(rng.normal(size=(8, DIM)), dtype)
    y_val = jnp.asarray(rng.integers(0, CLASSES, 8))
    order = jnp.asarray(np.stack([rng.permutation(N)[:BATCH] for _ in range(num_steps)]))
    opt = _optimizer(opt_name)
    decoupled_wd = opt_name != "adamw"

    def apply(params, inputs):
        return jnp.tanh(inputs @ params["w1"] + params["b1"]) @ params["w2"]

    def per_example_loss(params, inputs, labels):
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, inputs), labels)

    def step_fn(state, meta, t):
        params, opt_state = state
        idx = order[t]
        shift = jnp.zeros_like(x).at[PERTURBED].set(meta["perturbations"])
        inputs = x[idx] + shift[idx]

        def loss(p):
            return jnp.sum(meta["data_weights"][idx] * per_example_loss(p, inputs, y[idx])) / BATCH

        grads = jax.grad(loss)(params)
        if not decoupled_wd:
            hyperparams = {**opt_state.hyperparams, "weight_decay": meta["weight_decay"]}
            opt_state = opt_state._replace(hyperparams=hyperparams)
        updates, opt_state = opt.update(grads, opt_state, params)
        lr = jnp.exp(meta["log_lr"][t])
        updates = jax.tree.map(lambda u: lr * u, updates)
        if decoupled_wd:
            updates = jax.tree.map(lambda u, p: u - lr * meta["weight_decay"] * p, updates, params)
        return optax.apply_updates(params, updates), opt_state

    def objective_fn(state, meta):
        return jnp.mean(per_example_loss(state[0], x_val, y_val))

    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    params = {
        "w1": jax.random.normal(keys[0], (DIM, HIDDEN), dtype) / np.sqrt(DIM),
        "b1": jnp.zeros(HIDDEN, dtype),
        "w2": jax.random.normal(keys[1], (HIDDEN, CLASSES), dtype) / np.sqrt(HIDDEN),
    }
    state = (params, opt.init(params))
    meta = {
        "data_weights": jnp.asarray(rng.uniform(0.5, 1.5, N), dtype),
        "log_lr": jnp.asarray(rng.normal(scale=0.1, size=num_steps), dtype),
        "perturbations": jnp.asarray(rng.normal(scale=0.1, size=(len(PERTURBED), DIM)), dtype),
        "weight_decay": jnp.asarray(1e-2, dtype),
    }
    return step_fn, objective_fn, state, meta


def scanned_objective(problem, num_steps, meta):
    """The objective after the plain training loop, a lax.scan: the reference that jax.grad
    differentiates directly (reverse mode through it stores every step's residuals). One
    compiled step, not T copies as a loop unrolled in Python would compile."""
    step_fn, objective_fn, state, _ = problem
    state = jax.lax.scan(
        lambda s, t: (step_fn(s, meta, t), None), state, jnp.arange(num_steps, dtype=jnp.int32)
    )[0]
    return objective_fn(state, meta)


def max_relative_error(actual, expected):
    """Largest leaf-wise error, relative to the leaf's largest entry."""
    return max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True)
    )


OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "adamw"]
# One policy of each kind; the tree with k = 2 (truncated last leaf at odd T) and replays at
# several levels. The default policy and larger k are covered by the tests further down.
POLICIES = [mgd.StoreAll(), mgd.KAryTree(2), mgd.Binomial(3)]
T_SMALL = 7  # Odd. Shared by the tests below so that they reuse the compiled blocks.


@functools.cache
def _jitted_objective(opt_name, num_steps):
    problem = make_problem(opt_name, num_steps)
    return jax.jit(lambda m: scanned_objective(problem, num_steps, m))


@functools.cache
def _reference_grad(opt_name, num_steps):
    problem = make_problem(opt_name, num_steps)
    return jax.jit(jax.value_and_grad(lambda m: scanned_objective(problem, num_steps, m)))(
        problem[3]
    )


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_matches_jax_grad_of_unrolled_loop_float64(x64, opt_name, policy):
    T = T_SMALL
    problem = make_problem(opt_name, T)
    value, expected = _reference_grad(opt_name, T)
    res = mgd.metagradient(*problem, T, checkpoint=policy)
    assert max_relative_error(res.grad, expected) <= 1e-10
    np.testing.assert_allclose(res.value, value, rtol=1e-12)
    assert res.stats.vjp_steps == T
    cost = policy.cost(T)
    assert (res.stats.forward_steps, res.stats.replay_steps, res.stats.peak_states) == (
        cost.forward_steps,
        cost.replay_steps,
        cost.peak_states,
    )


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_matches_central_finite_differences(x64, opt_name):
    T = T_SMALL
    problem = make_problem(opt_name, T)
    meta = problem[3]
    res = mgd.metagradient(*problem, T, checkpoint=mgd.KAryTree(2))
    objective = _jitted_objective(opt_name, T)
    rng = np.random.default_rng(7)
    for kind in meta:  # One direction per metaparameter kind, so each is checked on its own.
        direction = {k: jnp.zeros_like(v) for k, v in meta.items()}
        direction[kind] = jnp.asarray(rng.normal(size=np.shape(meta[kind])))
        h = 1e-5
        shift = lambda scale, d=direction: jax.tree.map(lambda a, b: a + scale * b, meta, d)
        fd = (objective(shift(h)) - objective(shift(-h))) / (2 * h)
        analytic = sum(jnp.vdot(res.grad[k], direction[k]) for k in meta)
        np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-10, err_msg=kind)


def test_float32_matches_jax_grad():
    T = 40
    problem = make_problem("adam", T, jnp.float32)
    # The scanned loop: the same reverse mode as the unrolled one, far cheaper to compile.
    expected = jax.jit(jax.grad(lambda m: scanned_objective(problem, T, m)))(problem[3])
    for policy in [mgd.KAryTree(7), mgd.Binomial(4)]:
        res = mgd.metagradient(*problem, T, checkpoint=policy)
        assert res.grad["log_lr"].dtype == jnp.float32
        assert max_relative_error(res.grad, expected) <= 1e-5, policy


@pytest.mark.parametrize("policy", [None, mgd.KAryTree(10), mgd.Binomial(8)], ids=repr)
def test_long_run_t1000_matches_jax_grad(x64, policy):
    T = 1000
    problem = make_problem("adam", T)
    expected = jax.jit(jax.grad(lambda m: scanned_objective(problem, T, m)))(problem[3])
    res = mgd.metagradient(*problem, T, checkpoint=policy)
    assert max_relative_error(res.grad, expected) <= 1e-10
    policy = mgd.KAryTree(32) if policy is None else policy  # The documented default.
    assert res.stats.peak_states == policy.cost(T).peak_states


@pytest.mark.parametrize("T", [1, 2, 3])
def test_fewer_steps_than_k(x64, T):
    problem = make_problem("momentum", T)
    expected = jax.jit(jax.grad(lambda m: scanned_objective(problem, T, m)))(problem[3])
    res = mgd.metagradient(*problem, T, checkpoint=mgd.KAryTree(8))
    assert max_relative_error(res.grad, expected) <= 1e-10
    assert res.stats.replay_steps == 0 and res.stats.forward_steps == T
    assert res.stats.peak_states == T + 1


def test_result_is_a_pytree_of_value_and_grad(x64):
    # So that jax.block_until_ready(result) waits for the whole sweep (benchmarks rely on it).
    problem = make_problem("sgd", T_SMALL)
    res = jax.block_until_ready(mgd.metagradient(*problem, T_SMALL))
    leaves = jax.tree.leaves(res)
    assert len(leaves) == 1 + len(jax.tree.leaves(res.grad))
    assert leaves[0] is res.value
    rebuilt = jax.tree.map(lambda x: x, res)
    assert rebuilt.stats == res.stats


def test_integer_and_meta_independent_state_leaves(x64):
    # Adam's state holds an int32 step counter; the extra leaves do not depend on meta.
    step_fn, objective_fn, state, meta = make_problem("adam", T_SMALL)
    wrapped_step = lambda s, m, t: (step_fn(s[0], m, t), s[1] + 1, s[2] * 2.0)
    wrapped_objective = lambda s, m: objective_fn(s[0], m)
    state = (state, jnp.int32(0), jnp.float64(1.0))
    res = mgd.metagradient(wrapped_step, wrapped_objective, state, meta, T_SMALL)
    expected = _reference_grad("adam", T_SMALL)[1]
    assert max_relative_error(res.grad, expected) <= 1e-10


def test_compiles_once_per_problem(monkeypatch):
    traces = {"step": 0}
    step_fn, objective_fn, state, meta = make_problem("sgd", 200, jnp.float32)

    def counting_step(s, m, t):
        traces["step"] += 1  # Python side effect: runs once per trace, not per step.
        return step_fn(s, m, t)

    policy = mgd.KAryTree(6)  # 200 steps: 34 leaves, 2 levels of replay.
    run = functools.partial(mgd.metagradient, checkpoint=policy, leaf="fused")
    run(counting_step, objective_fn, state, meta, 200)
    first = traces["step"]
    # Validation traces once; then one trace for the replay loop and one for the step that
    # every block program shares, whatever its length (full leaves of 6 steps, the last leaf
    # of 2) — never per segment or per step.
    assert policy.cost(200).block_lengths == {6, 2}
    assert first == 1 + 1 + 1
    meta2 = jax.tree.map(lambda m: m * 1.01, meta)
    run(counting_step, objective_fn, state, meta2, 200)
    assert traces["step"] == first  # Nothing is traced again, not even the validation.
    # leaf="auto" traces a one- and a two-step block once to size their residuals. (Its time
    # rule would rematerialize this step, whose residuals are large: made to fuse, so that it
    # reuses the program compiled above.)
    monkeypatch.setattr(memory, "FUSE_MAX_RESIDUAL_STATES", 10**6)
    auto = functools.partial(mgd.metagradient, checkpoint=policy)
    assert auto(counting_step, objective_fn, state, meta, 200).stats.leaf == "fused"
    second = traces["step"]
    assert second == first + 2
    auto(counting_step, objective_fn, state, meta2, 200)
    assert traces["step"] == second


def test_last_block_shares_the_compiled_block_program():
    traces = {"step": 0}
    step_fn, objective_fn, state, meta = make_problem("sgd", 216, jnp.float32)

    def counting_step(s, m, t):
        traces["step"] += 1
        return step_fn(s, m, t)

    policy = mgd.KAryTree(6)  # 216 = 6**3: every leaf, the run's last included, has 6 steps.
    assert policy.cost(216).block_lengths == {6}
    res = mgd.metagradient(
        counting_step, objective_fn, state, meta, 216, checkpoint=policy, leaf="fused"
    )
    # Validation, the replay loop, and one block program that also seeds from the objective.
    assert traces["step"] == 3
    problem = (step_fn, objective_fn, state, meta)
    expected = jax.jit(jax.grad(lambda m: scanned_objective(problem, 216, m)))(meta)
    assert max_relative_error(res.grad, expected) <= 1e-5


def test_partial_step_fn_passes_its_arrays_without_recompiling():

    def step(data, w, m, t):  # Gradient descent on sum((w - data[t % 4])**2), rate m.
        return w - m * 2 * (w - data[t % 4])

    objective = jax.tree_util.Partial(lambda target, w, m: jnp.sum((w - target) ** 2))
    w0, lr = jnp.zeros(3), jnp.float32(0.1)

    def reference(data, target):
        def run(m):
            w = w0
            for t in range(10):
                w = step(data, w, m, t)
            return jnp.sum((w - target) ** 2)

        return jax.grad(run)(lr)

    rng = np.random.default_rng(0)
    for i in range(2):  # New data of the same shapes: compiled once, right numbers each time.
        data, target = np.asarray(rng.normal(size=(2, 4, 3)), np.float32)
        data = jnp.asarray(data) if i == 0 else data  # A NumPy array works alike.
        with count_compilations() as compiled:
            res = mgd.metagradient(
                jax.tree_util.Partial(step, data),
                jax.tree_util.Partial(objective.func, target),
                w0,
                lr,
                10,
                checkpoint=mgd.KAryTree(3),
            )
        np.testing.assert_allclose(res.grad, reference(data, target), rtol=1e-5)
        # The first data set compiles the engine's programs; the second compiles nothing.
        assert compiled if i == 0 else compiled == 0


def test_sharded_states_stay_sharded():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices()[:4])
    if devices.size < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    mesh = Mesh(devices, ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    seen = []

    class RecordingStore(mgd.engine.storage.DeviceStore):
        def put(self, slot, step, state):
            seen.append(state.sharding)
            super().put(slot, step, state)

    w0 = jax.device_put(jnp.arange(8.0), sharding)
    step = lambda w, m, t: w - m * jnp.sin(w)
    res = mgd.metagradient(
        step,
        lambda w, m: jnp.sum(w**2),
        w0,
        jnp.float32(0.1),
        12,
        checkpoint=mgd.KAryTree(3),
        store=RecordingStore(),
    )
    assert len(seen) > 1 and all(s.is_equivalent_to(sharding, 1) for s in seen)
    expected = jax.grad(
        lambda m: jnp.sum(
            jax.lax.fori_loop(0, 12, lambda t, w: step(w, m, t), jnp.arange(8.0)) ** 2
        )
    )(jnp.float32(0.1))
    np.testing.assert_allclose(res.grad, expected, rtol=1e-5)
