"""Schedule parametrization, grid families and the outer optimizer: pure parts, no training."""

import jax.numpy as jnp
import numpy as np
import pytest

from mgd.outer.lr._grid import (
    cosine_rates,
    lr_schedule_grid,
    one_cycle_rates,
    step_decay_rates,
)
from mgd.outer.lr._schedule import PiecewiseLinearSchedule
from mgd.outer.lr._update import log_lr_adam

# --- PiecewiseLinearSchedule ---------------------------------------------------------------


def test_interpolates_in_log_space_and_clamps():
    s = PiecewiseLinearSchedule.from_lr([10, 50, 90], [0.01, 1.0, 0.1], num_steps=100)
    np.testing.assert_allclose(s([10, 30, 50, 70, 90]), [0.01, 0.1, 1.0, 10**-0.5, 0.1])
    # Constant outside the knots.
    np.testing.assert_allclose(s([0, 5, 95, 100]), [0.01, 0.01, 0.1, 0.1])
    assert s.rates().shape == (100,)
    assert np.all(s.rates() > 0)


def test_json_round_trip():
    s = PiecewiseLinearSchedule.from_lr([0, 7, 20], [3e-3, 0.2, 1e-4], num_steps=20)
    again = PiecewiseLinearSchedule.from_json(s.to_json())
    assert again.knots == s.knots and again.num_steps == s.num_steps
    np.testing.assert_allclose(again.log_lr, s.log_lr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(again.rates(), s.rates(), rtol=1e-12)
    assert s.to_dict()["lr"] == pytest.approx([3e-3, 0.2, 1e-4])


def test_per_step_hits_every_rate():
    rates = np.geomspace(1.0, 1e-3, 13)
    s = PiecewiseLinearSchedule.per_step(rates)
    np.testing.assert_allclose(s.rates(), rates, rtol=1e-12)


@pytest.mark.parametrize(
    ("knots", "lr", "num_steps", "match"),
    [
        ([0, 5, 3], 0.1, 10, "strictly increasing"),
        ([0, 5, 5], 0.1, 10, "strictly increasing"),
        ([0, 11], 0.1, 10, r"outside \[0, num_steps=10\]"),
        ([-1, 5], 0.1, 10, "outside"),
        ([0, 2.5], 0.1, 10, "integer"),
        ([], 0.1, 10, "non-empty"),
        ([0, 5], [0.1, 0.0], 10, "positive and finite"),
        ([0, 5], [0.1, -1.0], 10, "positive and finite"),
        ([0, 5], [0.1, np.inf], 10, "positive and finite"),
        ([0, 5], 0.1, 0, "num_steps must be a positive int"),
    ],
)
def test_bad_schedules(knots, lr, num_steps, match):
    with pytest.raises(ValueError, match=match):
        PiecewiseLinearSchedule.from_lr(knots, lr, num_steps=num_steps)


def test_bad_json():
    with pytest.raises(ValueError, match="expected format"):
        PiecewiseLinearSchedule.from_dict({"knots": [0], "lr": [0.1], "num_steps": 3})
    with pytest.raises(ValueError, match="one log learning rate per knot"):
        PiecewiseLinearSchedule((0, 1), np.zeros(3), 2)


# --- grid families --------------------------------------------------------------------------


def test_one_cycle_shape():
    r = one_cycle_rates(1.0, 0.25, 0.01, 101)
    assert r[0] == pytest.approx(1.0 / 25)
    assert r.argmax() == 25 and r.max() == pytest.approx(1.0)
    assert r[-1] == pytest.approx(0.01)
    assert np.all(np.diff(r[:26]) > 0) and np.all(np.diff(r[25:]) < 0)
    # No warm-up: starts at the peak.
    assert one_cycle_rates(1.0, 0.0, 0.01, 101)[0] == pytest.approx(1.0)


def test_cosine_and_step_decay():
    c = cosine_rates(1.0, 0.001, 50)
    assert c[0] == pytest.approx(1.0) and c[-1] == pytest.approx(0.001)
    assert np.all(np.diff(c) <= 0)
    s = step_decay_rates(1.0, 0.1, 2, 90)
    np.testing.assert_allclose(s[[0, 29, 30, 59, 60, 89]], [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_default_grid_size_and_families():
    grid = lr_schedule_grid(60)
    families = [g.family for g in grid]
    assert families.count("one_cycle") >= 300
    assert {"constant", "cosine", "step_decay"} <= set(families)
    assert all(g.schedule.num_steps == 60 and np.all(g.schedule.rates() > 0) for g in grid)
    assert "peak_lr=" in grid[0].label()


def test_bad_grid():
    with pytest.raises(ValueError, match="lr_range"):
        lr_schedule_grid(10, lr_range=(1.0, 0.1))
    with pytest.raises(ValueError, match="warmup"):
        one_cycle_rates(1.0, 1.0, 0.1, 10)


# --- log_lr_adam ----------------------------------------------------------------------------


def test_adam_minimizes_quadratic_with_bounded_steps():
    opt = log_lr_adam(0.3, max_step=0.2)
    x = jnp.array([3.0, -2.0])
    state = opt.init(x)
    for _ in range(200):
        g = 2 * x
        u, state = opt.update(g, state, x, value=jnp.sum(x**2))
        assert float(jnp.max(jnp.abs(u))) <= 0.2 + 1e-6
        x = x + u
    np.testing.assert_allclose(x, 0.0, atol=0.05)
    assert int(state.rejections) == 0


def test_adam_step_size_schedule_is_read_at_the_accepted_step_count():
    # A schedule's step k equals the constant-rate optimizer's with rate schedule(k): the
    # moments do not depend on the rate, so both see the same m_hat / sqrt(v_hat).
    schedule = lambda count: 0.2 / (1.0 + count)
    opt = log_lr_adam(schedule, max_step=1.0)
    x = jnp.array([0.5, -1.0, 2.0])
    grads = [jnp.array([1.0, -2.0, 0.5]), jnp.array([-0.3, -1.0, 2.0])]
    state = opt.init(x)
    for k, g in enumerate(grads):
        u, state = opt.update(g, state, x, value=jnp.float32(1.0))
        fixed = log_lr_adam(schedule(k), max_step=1.0)
        f_state = fixed.init(x)
        for h in grads[:k]:
            _, f_state = fixed.update(h, f_state, x, value=jnp.float32(1.0))
        want, _ = fixed.update(g, f_state, x, value=jnp.float32(1.0))
        np.testing.assert_allclose(u, want, rtol=1e-6)
    with pytest.raises(ValueError, match="learning_rate"):
        log_lr_adam(0.0)


def test_non_finite_rejects_and_shrinks():
    opt = log_lr_adam(0.1, shrink=0.5)
    x0 = jnp.zeros(2)
    state = opt.init(x0)
    u1, state = opt.update(jnp.array([1.0, -1.0]), state, x0, value=jnp.float32(1.0))
    x1 = x0 + u1
    mu_before = state.mu
    # The run at x1 diverged: the step is retracted to half its length, the moments are kept.
    u2, state = opt.update(jnp.array([jnp.nan, 0.0]), state, x1, value=jnp.float32(jnp.nan))
    x2 = x1 + u2
    np.testing.assert_allclose(x2, x0 + 0.5 * u1, rtol=1e-6)
    np.testing.assert_array_equal(state.mu, mu_before)
    assert int(state.rejections) == 1 and float(state.step_scale) == 0.5
    assert int(state.count) == 1
    # A second rejection halves again; an infinite value alone (finite gradient) also rejects.
    u3, state = opt.update(jnp.zeros(2), state, x2, value=jnp.float32(jnp.inf))
    np.testing.assert_allclose(x2 + u3, x0 + 0.25 * u1, rtol=1e-6)
    # Later accepted steps are bounded by the shrunk scale.
    u4, state = opt.update(jnp.array([5.0, -5.0]), state, x2 + u3, value=jnp.float32(0.5))
    assert float(jnp.max(jnp.abs(u4))) <= 0.5 * 0.25 + 1e-6
    assert int(state.count) == 2 and int(state.rejections) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"max_step": -1.0}, "max_step"),
        ({"shrink": 1.0}, "shrink"),
        ({"b1": 1.0}, "b1"),
    ],
)
def test_bad_optimizer_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_lr_adam(**kwargs)


def test_chaotic_run_lowers_every_rate_and_keeps_moments():
    opt = log_lr_adam(0.1, max_step=0.5, unstable_ratio=1e3)
    x = jnp.zeros(3)
    state = opt.init(x)
    u, state = opt.update(jnp.array([1.0, -1.0, 2.0]), state, x, value=jnp.float32(1.0))
    mu, nu = state.mu, state.nu
    # One exploded coordinate (|g| / |L| = 1e6): the whole schedule steps down by the bound.
    u, state = opt.update(jnp.array([1e6, -0.5, 0.1]), state, x + u, value=jnp.float32(1.0))
    np.testing.assert_allclose(u, -0.5)
    np.testing.assert_array_equal(state.mu, mu)
    np.testing.assert_array_equal(state.nu, nu)
    assert bool(jnp.all(state.unstable)) and int(state.rejections) == 0
    # A well-behaved gradient afterwards is followed again, unfrozen by the 1e6.
    u, state = opt.update(jnp.array([1.0, -1.0, 2.0]), state, x, value=jnp.float32(1.0))
    assert not bool(jnp.any(state.unstable))
    assert float(jnp.min(jnp.abs(u))) > 0.05
    # With the rule off, the same gradient is an ordinary (bounded) Adam step.
    off = log_lr_adam(0.1, unstable_ratio=None)
    u, _ = off.update(jnp.array([1e6, -0.5, 0.1]), off.init(x), x, value=jnp.float32(1.0))
    np.testing.assert_allclose(u, [-0.1, 0.1, -0.1], rtol=1e-4)
