"""The poisoning attack's outer update: projection onto the constraint set and projected ascent."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgd.outer.poison._update import poison_ascent, project_perturbations


def _brute_force_projection(delta, x, lower, upper, bound):
    # Minimizes |d - delta|^2 coordinate-wise over a fine grid of the feasible interval.
    out = np.empty_like(delta)
    for i in np.ndindex(delta.shape):
        lo, hi = lower - x[i], upper - x[i]
        if bound is not None:
            lo, hi = max(lo, -bound), min(hi, bound)
        grid = np.linspace(lo, hi, 20001)
        out[i] = grid[np.argmin((grid - delta[i]) ** 2)]
    return out


@pytest.mark.parametrize("bound", [None, 0.2])
def test_projection_is_the_euclidean_projection(bound):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(3, 4)).astype(np.float32)
    delta = rng.normal(scale=0.5, size=(3, 4)).astype(np.float32)
    got = project_perturbations(
        jnp.asarray(delta), jnp.asarray(x), lower=0.0, upper=1.0, bound=bound
    )
    want = _brute_force_projection(delta, x, 0.0, 1.0, bound)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.all(x + np.asarray(got) >= -1e-6) and np.all(x + np.asarray(got) <= 1 + 1e-6)


def test_projection_per_channel_range():
    x = jnp.zeros((1, 2, 2, 3))
    lower = jnp.array([-1.0, -2.0, -3.0])
    upper = jnp.array([1.0, 2.0, 3.0])
    got = project_perturbations(jnp.full_like(x, 10.0), x, lower=lower, upper=upper)
    np.testing.assert_allclose(got[0, 0, 0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("rule", ["sign", "normalized"])
def test_ascent_increases_a_concave_objective_and_stays_feasible(rule):
    # Maximize -|x + delta - target|^2; the constrained optimum is the target clipped to the set.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0, 1, size=(4, 5)), jnp.float32)
    target = jnp.asarray(rng.uniform(-0.5, 1.5, size=(4, 5)), jnp.float32)
    bound = 0.3
    opt = poison_ascent(
        optax.linear_schedule(0.05, 0.001, 200),
        clean_inputs=x,
        lower=0.0,
        upper=1.0,
        bound=bound,
        rule=rule,
    )
    delta = jnp.zeros_like(x)
    state = opt.init(delta)
    for _ in range(200):
        grad = -2 * (x + delta - target)
        updates, state = opt.update(grad, state, delta)
        delta = optax.apply_updates(delta, updates)
        assert float(jnp.max(jnp.abs(delta))) <= bound + 1e-6
        assert float(jnp.min(x + delta)) >= -1e-6 and float(jnp.max(x + delta)) <= 1 + 1e-6
    optimum = project_perturbations(target - x, x, lower=0.0, upper=1.0, bound=bound)
    np.testing.assert_allclose(delta, optimum, atol=0.02 if rule == "sign" else 0.05)
    assert int(state.count) == 200


def test_sign_step_moves_each_coordinate_by_the_step_size():
    x = jnp.full((2, 3), 0.5)
    opt = poison_ascent(0.1, clean_inputs=x, lower=0.0, upper=1.0)
    g = jnp.array([[1e-9, -5.0, 0.0], [2.0, -1e-12, 3.0]])
    updates, _ = opt.update(g, opt.init(x), jnp.zeros_like(x))
    np.testing.assert_allclose(updates, 0.1 * np.sign(g), atol=1e-7)


def test_normalized_step_leaves_zero_gradient_examples_in_place():
    x = jnp.full((2, 3), 0.5)
    opt = poison_ascent(0.1, clean_inputs=x, lower=0.0, upper=1.0, rule="normalized")
    g = jnp.array([[0.0, 0.0, 0.0], [3.0, 0.0, -3.0]])
    updates, _ = opt.update(g, opt.init(x), jnp.zeros_like(x))
    assert np.all(np.isfinite(updates))
    np.testing.assert_allclose(updates[0], 0.0)
    # Unit root-mean-square entry: (3, 0, -3) / sqrt(6).
    np.testing.assert_allclose(updates[1], 0.1 * np.array([3, 0, -3]) / np.sqrt(6), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bound=-0.1), "bound must be a finite"),
        (dict(bound=0.0), "bound must be a finite"),
        (dict(rule="adam"), "rule must be"),
        (dict(lower=1.0, upper=0.0), "lower < upper"),
    ],
)
def test_bad_options_are_rejected(kwargs, match):
    options = dict(clean_inputs=jnp.zeros((1, 2)), lower=0.0, upper=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        poison_ascent(0.1, **options)


def test_bad_step_size_and_missing_params_are_rejected():
    with pytest.raises(ValueError, match="step_size must be > 0"):
        poison_ascent(0.0, clean_inputs=jnp.zeros((1, 2)), lower=0.0, upper=1.0)
    opt = poison_ascent(0.1, clean_inputs=jnp.zeros((1, 2)), lower=0.0, upper=1.0)
    with pytest.raises(ValueError, match="needs the current perturbations"):
        opt.update(jnp.ones((1, 2)), opt.init(jnp.zeros((1, 2))))
