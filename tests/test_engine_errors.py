"""Bad input to the engine: clear errors naming the argument or leaf, raised before training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mgd

STATE = {"w": jnp.ones(3), "count": jnp.int32(0)}
META = {"lr": jnp.float32(0.1)}


def good_step(s, m, t):
    return {"w": s["w"] - m["lr"] * s["w"], "count": s["count"] + 1}


def objective(s, m):
    return jnp.sum(s["w"] ** 2)


def call(step=good_step, obj=objective, state=STATE, meta=META, num_steps=5, **kwargs):
    return mgd.metagradient(step, obj, state, meta, num_steps, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": lambda s, m, t: {"w": s["w"]}}, ValueError, "structure of init_state"),
        (
            {"step": lambda s, m, t: {"w": s["w"][:2], "count": s["count"]}},
            ValueError,
            r"shape of state\['w'\] from \(3,\) to \(2,\)",
        ),
        (
            {"step": lambda s, m, t: {"w": s["w"], "count": s["count"] + 0.5}},
            TypeError,
            r"dtype of state\['count'\] from int32 to float32",
        ),
        ({"obj": lambda s, m: s["w"]}, ValueError, r"must return a scalar, got shape \(3,\)"),
        ({"obj": lambda s, m: s["count"]}, TypeError, "floating-point scalar, got int32"),
        ({"num_steps": 0}, ValueError, "num_steps must be >= 1, got 0"),
        ({"num_steps": -3}, ValueError, "num_steps must be >= 1, got -3"),
        ({"num_steps": 2.0}, TypeError, "num_steps must be a Python int"),
        ({"meta": {"lr": jnp.int32(1)}}, TypeError, r"meta leaf meta\['lr'\] has dtype int32"),
        ({"checkpoint": 4}, TypeError, "checkpoint must be a policy"),
    ],
)
def test_bad_input_is_rejected_before_training(kwargs, error, match):
    steps = {"n": 0}
    step = kwargs.pop("step", good_step)

    def counted(s, m, t):
        steps["n"] += 1
        return step(s, m, t)

    with pytest.raises(error, match=match):
        call(step=counted, **kwargs)
    assert steps["n"] <= 1  # At most the shape check traced it; nothing was trained.


def test_k_below_two_is_rejected():
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        call(checkpoint=mgd.KAryTree(1))


def _nan_step(bad_step, w, m, t):
    # d sqrt(u)/du is infinite at u = 0, and du/dw = 1 - 1 = 0: NaN in reverse mode only.
    return jax.lax.cond(t == bad_step, lambda w: w * m + jnp.sqrt(w - w), lambda w: w * m, w)


def nan_at_step(bad_step):
    """A step whose VJP turns the cotangent into NaN at `bad_step` only. The step holds
    `bad_step` as an array (a `Partial`), so that the steps of every `bad_step` share the
    engine's compiled programs."""
    return jax.tree_util.Partial(_nan_step, jnp.int32(bad_step))


def square(w, m):
    """The objective of the `nan_at_step` runs (one function: its programs are shared too)."""
    return w**2


@pytest.mark.parametrize(
    "policy", [mgd.KAryTree(4), mgd.Binomial(3), mgd.StoreAll(), None], ids=repr
)
@pytest.mark.parametrize("bad_step", [0, 7, 19])
def test_non_finite_cotangent_names_the_step(policy, bad_step):
    step = nan_at_step(bad_step)
    with pytest.raises(mgd.NonFiniteCotangentError, match=rf"non-finite .* at step {bad_step},"):
        mgd.metagradient(step, square, jnp.float32(1.0), jnp.float32(0.9), 20,
                         checkpoint=policy)  # fmt: skip


def test_non_finite_objective_gradient_is_named():
    with pytest.raises(mgd.NonFiniteCotangentError, match=r"at the objective \(step 6\)"):
        mgd.metagradient(lambda w, m, t: w * m, lambda w, m: jnp.sqrt(w - w), jnp.float32(1.0),
                         jnp.float32(0.9), 6)  # fmt: skip


def test_check_finite_can_be_turned_off():
    res = mgd.metagradient(nan_at_step(3), square, jnp.float32(1.0), jnp.float32(0.9),
                           8, check_finite=False)  # fmt: skip
    assert np.isnan(res.grad)
