"""mgd.train.adam: optax.adam's training, bit for bit, with a hand-written reverse pass."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mgd
from mgd.train import MetaSpec, TrainingSetup, make_optimizer, models

SHAPES = {"kernel": (6, 5), "bias": (5,), "scalar": ()}


def _params(rng, dtype):
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in SHAPES.items()}


def _run(optimizer, params, grads):
    # Several updates from a fresh state: returns the final (updates, state).
    state = optimizer.init(params)
    for g in grads:
        updates, state = optimizer.update(g, state, params)
    return updates, state


def _grads(rng, dtype, n=4):
    # Includes exact zeros, where eps_root keeps the reverse pass finite.
    grads = [_params(rng, dtype) for _ in range(n)]
    grads[1]["bias"] = grads[1]["bias"].at[2].set(0.0)
    return grads


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_updates_and_state_equal_optax_bit_for_bit_under_jit(dtype):
    rng = np.random.default_rng(0)
    params, grads = _params(rng, dtype), _grads(rng, dtype)
    kw = dict(b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8)
    ours = jax.jit(lambda g: _run(mgd.train.adam(0.01, **kw), params, g))(grads)
    ref = jax.jit(lambda g: _run(optax.adam(0.01, **kw), params, g))(grads)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    jax.tree.map(np.testing.assert_array_equal, ours, ref)


def test_vjp_equals_optax_vjp_float64(x64):
    rng = np.random.default_rng(1)
    params, grads = _params(rng, jnp.float64), _grads(rng, jnp.float64)

    def final(optimizer, grads, mu0):
        # Differentiate w.r.t. the gradients of every step and the initial first moment.
        state = optimizer.init(params)
        state = (state[0]._replace(mu=mu0), *state[1:])
        for g in grads:
            updates, state = optimizer.update(g, state, params)
        return updates, state[0].mu, state[0].nu

    mu0 = _params(rng, jnp.float64)
    cotangent = (_params(rng, jnp.float64), _params(rng, jnp.float64), _params(rng, jnp.float64))
    kw = dict(eps_root=1e-8)
    ours = jax.vjp(lambda g, m: final(mgd.train.adam(0.1, **kw), g, m), grads, mu0)[1](cotangent)
    ref = jax.vjp(lambda g, m: final(optax.adam(0.1, **kw), g, m), grads, mu0)[1](cotangent)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300), ours, ref)


def test_metagradient_equals_optax_training_and_jax_grad(x64):
    data = mgd.make_synthetic(num_train=24, num_val=8, num_test=8, input_shape=(4,))
    spec = MetaSpec(data_weights=True, lr_knots=(0, 9))
    model = models.MLP(models.MLPConfig(num_classes=3, hidden=(8,), activation="tanh"))

    def setup(optimizer):
        return TrainingSetup(
            model, optimizer, data, batch_size=8, num_steps=9, meta_spec=spec, dtype=jnp.float64
        )

    ours, ref = setup(mgd.train.adam(0.05, eps_root=1e-8)), setup(optax.adam(0.05, eps_root=1e-8))
    meta = ours.init_meta()
    meta["data_weights"] = meta["data_weights"] * jnp.linspace(0.5, 1.5, 24)
    jax.tree.map(np.testing.assert_array_equal, ours.train(meta), ref.train(meta))
    res = ours.metagradient(meta, checkpoint=mgd.KAryTree(3))

    def unrolled(m):
        step = lambda t, s: ours.step_fn(s, m, t)
        return ours.objective_fn(jax.lax.fori_loop(0, 9, step, ours.init_state()), m)

    expected = jax.grad(unrolled)(meta)
    reference = ref.metagradient(meta, checkpoint=mgd.KAryTree(3)).grad
    for grads in (expected, reference):
        for k in meta:
            np.testing.assert_allclose(res.grad[k], grads[k], rtol=1e-10, atol=1e-14)


def test_make_optimizer_builds_it_for_adam():
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.asarray([0.5, -1.0, 0.0])}
    config = {"name": "adam", "learning_rate": 0.1, "eps_root": 1e-8}
    ours = jax.jit(lambda: _run(make_optimizer(config), params, [grads]))()
    ref = jax.jit(lambda: _run(optax.adam(0.1, eps_root=1e-8), params, [grads]))()
    jax.tree.map(np.testing.assert_array_equal, ours, ref)
    nesterov = make_optimizer({**config, "nesterov": True})
    assert nesterov.update(grads, nesterov.init(params), params)[0]["w"].shape == (3,)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(b1=1.0), "b1 must be in"),
        (dict(b2=float("nan")), "b2 must be in"),
        (dict(eps_root=-1e-8), "eps_root must be finite"),
        (dict(eps=float("inf")), "eps must be finite"),
        (dict(b1="x"), "b1 must be a float"),
    ],
)
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        mgd.train.adam(1e-3, **kw)
