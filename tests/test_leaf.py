"""Leaf-block modes (fused, rematerialized, mixed-mode) against jax.grad of the unrolled loop.

The problem exercises every path of a mixed-mode step (`mgd.engine.GradientStep`): an integer
step counter, optimizer state (Adam), an auxiliary output of the loss carried in the state (a
running mean of the hidden activations, like batch norm's statistics), and metaparameters that
enter the loss (data weights, input perturbations), the update (learning rates, weight decay)
and the auxiliary output.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import count_compilations

import mgd
from mgd.engine import leaf as leaf_lib
from mgd.train import Augment, MetaSpec, TrainingSetup

N, DIM, HIDDEN, CLASSES, BATCH = 12, 4, 6, 3, 4


@functools.cache
def make_problem(num_steps, opt_name="adam"):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, DIM)))
    y = jnp.asarray(rng.integers(0, CLASSES, N))
    x_val = jnp.asarray(rng.normal(size=(5, DIM)))
    y_val = jnp.asarray(rng.integers(0, CLASSES, 5))
    order = jnp.asarray(np.stack([rng.permutation(N)[:BATCH] for _ in range(num_steps)]))
    opt = {"adam": optax.adam(0.05, eps_root=1e-8), "momentum": optax.sgd(0.2, momentum=0.9)}[
        opt_name
    ]

    def hidden(params, inputs, running):
        h = jnp.tanh(inputs @ params["w1"] + params["b1"])
        return h - 0.5 * running  # The carried statistic enters the forward pass.

    def loss(params, state, meta, t):
        idx = order[t]
        inputs = x[idx] + meta["perturbations"][idx]
        h = hidden(params, inputs, state["running"])
        logits = h @ params["w2"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx])
        running = 0.9 * state["running"] + 0.1 * jnp.mean(h, axis=0)
        return jnp.sum(meta["data_weights"][idx] * losses) / BATCH, {"running": running}

    def update(state, meta, t, grads, aux):
        params = state["params"]
        updates, opt_state = opt.update(grads, state["opt"], params)
        lr = jnp.exp(meta["log_lr"][t])
        updates = jax.tree.map(lambda u, p: lr * (u - meta["weight_decay"] * p), updates, params)
        return {
            "params": optax.apply_updates(params, updates),
            "opt": opt_state,
            "running": aux["running"],
            "count": state["count"] + 1,
        }

    step = mgd.GradientStep(loss=loss, update=update, params=lambda s: s["params"])

    def objective(state, meta):
        h = hidden(state["params"], x_val, state["running"])
        return jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(h @ state["params"]["w2"], y_val)
        )

    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    params = {
        "w1": jax.random.normal(keys[0], (DIM, HIDDEN), jnp.float64) / 2,
        "b1": jnp.zeros(HIDDEN, jnp.float64),
        "w2": jax.random.normal(keys[1], (HIDDEN, CLASSES), jnp.float64) / 2,
    }
    state = {
        "params": params,
        "opt": opt.init(params),
        "running": jnp.zeros(HIDDEN, jnp.float64),
        "count": jnp.zeros((), jnp.int32),
    }
    meta = {
        "data_weights": jnp.asarray(rng.uniform(0.5, 1.5, N)),
        "perturbations": jnp.asarray(rng.normal(scale=0.1, size=(N, DIM))),
        "log_lr": jnp.asarray(rng.normal(scale=0.1, size=num_steps)),
        "weight_decay": jnp.asarray(1e-2),
    }
    return step, objective, state, meta


@functools.cache
def _reference(num_steps, opt_name="adam"):
    step, objective, state, meta = make_problem(num_steps, opt_name)

    def unrolled(m):  # A fori_loop: one compiled step, not num_steps copies.
        return objective(jax.lax.fori_loop(0, num_steps, lambda t, s: step(s, m, t), state), m)

    return jax.jit(jax.value_and_grad(unrolled))(meta)


def max_relative_error(actual, expected):
    return max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True)
    )


T = 7
POLICIES = [mgd.StoreAll(), mgd.KAryTree(3), mgd.Binomial(3)]


@pytest.mark.parametrize("mode", leaf_lib.LEAF_MODES)
@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_every_leaf_mode_matches_jax_grad_float64(x64, policy, mode):
    step, objective, state, meta = make_problem(T)
    value, expected = _reference(T)
    res = mgd.metagradient(step, objective, state, meta, T, checkpoint=policy, leaf=mode)
    assert res.stats.leaf == mode
    assert abs(float(res.value - value)) <= 1e-12 * abs(float(value))
    assert max_relative_error(res.grad, expected) <= 1e-10


@pytest.mark.parametrize("opt_name", ["adam", "momentum"])
def test_mixed_step_vjp_equals_reverse_step_vjp(x64, opt_name):
    step, _, state, meta = make_problem(3, opt_name)
    diff = leaf_lib.partition(state)[0]
    ct = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), diff)
    state = jax.jit(step)(state, meta, jnp.int32(0))  # Non-trivial optimizer state.
    t = jnp.int32(1)
    # Both jitted: one program each, not each operation compiled on its own.
    expected = jax.jit(leaf_lib.reverse_step_vjp, static_argnums=0)(step, state, meta, t, ct)
    actual = jax.jit(leaf_lib.mixed_step_vjp, static_argnums=0)(step, state, meta, t, ct)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_gradient_step_is_a_step_function(x64):
    step, _, state, meta = make_problem(3)
    out = step(state, meta, jnp.int32(0))
    grads, aux = jax.grad(step.loss, has_aux=True)(state["params"], state, meta, jnp.int32(0))
    np.testing.assert_array_equal(out["running"], aux["running"])
    assert int(out["count"]) == 1


def test_auto_leaf_fuses_what_fits_the_device(x64, monkeypatch):
    from mgd.engine import memory, replay

    step, objective, state, meta = make_problem(T)
    policy = mgd.KAryTree(3)
    fns = replay._split_fns(step, objective)
    cost = policy.cost(T)
    fused_peak = cost.peak_states * memory.tree_bytes(state) + max(
        cost.block_lengths
    ) * memory.residual_bytes_per_step(fns, state, meta)
    plain = lambda s, m, t: step(s, m, t)  # The same step, not exposing its gradient.
    for room, leaf, plain_leaf in [
        (fused_peak, "fused", "fused"),
        (fused_peak - 1, "mixed", "remat"),
    ]:
        monkeypatch.setattr(memory, "device_room", lambda room=room: room)
        memory.forget_choices()  # The choice is remembered per problem: measure again.
        run = functools.partial(mgd.metagradient, checkpoint=policy)
        assert run(step, objective, state, meta, T).stats.leaf == leaf
        assert run(plain, objective, state, meta, T).stats.leaf == plain_leaf


def _wide_problem():
    # A 3-vector trained through a 200-unit hidden layer: one step's residuals (the layer's
    # activations) are ~330 states, where rematerializing measured faster than fusing.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(200, 3)))

    def step(w, lr, t):
        grad = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w + 0.1 * t) ** 2))(w)
        return w - lr * grad

    return step, lambda w, lr: jnp.sum(w**2), jnp.asarray([0.5, -1.0, 2.0]), jnp.asarray(0.3)


def test_auto_leaf_rematerializes_steps_with_large_residuals(x64, monkeypatch):
    from mgd.engine import memory, replay

    monkeypatch.setattr(memory, "device_room", lambda: 2**40)  # Everything fits: time decides.
    policy, steps = mgd.KAryTree(3), 7
    wide = _wide_problem()
    small = make_problem(steps)
    for (step, objective, state, meta), expected in [(wide, "remat"), (small, "fused")]:
        fns = replay._split_fns(step, objective)
        ratio = memory.residual_bytes_per_step(fns, state, meta) / memory.tree_bytes(state)
        # The problems lie on either side of the rule's threshold.
        assert (ratio > memory.FUSE_MAX_RESIDUAL_STATES) == (expected == "remat"), ratio
        res = mgd.metagradient(step, objective, state, meta, steps, checkpoint=policy)
        assert res.stats.leaf == expected

        def unrolled(m, step=step, objective=objective, state=state):
            s = state
            for t in range(steps):
                s = step(s, m, jnp.int32(t))
            return objective(s, m)

        value, grad = jax.value_and_grad(unrolled)(meta)
        assert abs(float(res.value - value)) <= 1e-12 * abs(float(value))
        assert max_relative_error(res.grad, grad) <= 1e-10
    # Under a budget, auto tries the faster mode first: remat fits an ample budget first.
    step, objective, state, meta = wide
    res = mgd.metagradient(step, objective, state, meta, steps, memory_budget=2**30)
    assert (res.stats.policy, res.stats.leaf) == ("StoreAll()", "remat")


def test_a_repeated_call_does_not_measure_to_choose(x64, monkeypatch):
    from mgd.engine import memory

    step, objective, state, meta = make_problem(T)
    options = {"memory_budget": 2**30}
    first = mgd.metagradient(step, objective, state, meta, T, **options)

    def no_measuring(*args, **kwargs):
        raise AssertionError("the choice was made already")

    monkeypatch.setattr(memory, "measure_sizes", no_measuring)
    with count_compilations() as compilations:
        again = mgd.metagradient(step, objective, state, meta, T, **options)
        estimate = mgd.estimate_memory(step, objective, state, meta, T, **options)
    assert compilations == 0
    assert again.stats == first.stats
    assert (repr(estimate.policy), estimate.leaf) == (first.stats.policy, first.stats.leaf)
    np.testing.assert_array_equal(again.grad["log_lr"], first.grad["log_lr"])
    memory.forget_choices()
    with pytest.raises(AssertionError, match="the choice was made already"):
        mgd.metagradient(step, objective, state, meta, T, **options)


def test_bad_leaf_options_are_one_line_errors():
    step = lambda w, m, t: w - m * w
    objective = lambda w, m: w**2
    with pytest.raises(ValueError, match="leaf must be 'auto' or one of"):
        mgd.metagradient(step, objective, jnp.float32(1.0), jnp.float32(0.1), 3, leaf="fast")
    with pytest.raises(ValueError, match="needs a step that exposes its loss gradient"):
        mgd.metagradient(step, objective, jnp.float32(1.0), jnp.float32(0.1), 3, leaf="mixed")


class _BatchNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(6)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(x)
        return nn.Dense(3)(jnp.tanh(x))


def test_training_setup_is_exact_in_mixed_mode(x64):
    # Batch norm (its statistics are the loss's auxiliary output), every metaparameter kind, a
    # partial last batch, augmentation: all through the mixed-mode step.
    spec = MetaSpec(
        data_weights=True, lr_knots=(0, 3, 5), perturb_indices=(1, 4), weight_decay=True
    )
    data = mgd.make_synthetic(num_train=20, num_val=6, num_test=6, input_shape=(4, 4, 1))
    setup = TrainingSetup(
        _BatchNormMLP(), optax.adam(0.05, eps_root=1e-8), data, batch_size=8, num_steps=5,
        meta_spec=spec, augment=Augment(crop_padding=1), dtype=jnp.float64,
    )  # fmt: skip
    assert isinstance(setup.step_fn, mgd.GradientStep)
    rng = np.random.default_rng(0)
    meta = jax.tree.map(lambda m: m + 0.1 * rng.normal(size=m.shape), setup.init_meta())

    def unrolled(m):
        state = jax.lax.fori_loop(
            0, setup.num_steps, lambda t, s: setup.step_fn(s, m, t), setup.init_state()
        )
        return setup.objective_fn(state, m)

    value, expected = jax.jit(jax.value_and_grad(unrolled))(meta)
    for leaf in ["mixed", "remat"]:
        res = setup.metagradient(meta, checkpoint=mgd.KAryTree(2), leaf=leaf)
        assert res.stats.leaf == leaf
        np.testing.assert_allclose(res.value, value, rtol=1e-12)
        assert max_relative_error(res.grad, expected) <= 1e-10, leaf
    estimate = setup.estimate_memory(meta, checkpoint=mgd.KAryTree(2), leaf="mixed")
    assert (estimate.policy, estimate.leaf, estimate.store) == (mgd.KAryTree(2), "mixed", "device")
    assert estimate.peak_bytes == sum(estimate.components.values())
