"""Memory budgets: `policy_for_budget` picks the fastest policy that fits, `metagradient` keeps
its held states within the budget, and a budget too small is rejected before training."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import mgd
from mgd.engine import policies


def _expected(T, state_bytes, budget):
    """The documented rule, written out independently of the implementation."""
    fits = budget // state_bytes
    if T + 1 <= fits:
        return mgd.StoreAll()
    tree = mgd.KAryTree(max(2, math.ceil(math.sqrt(T))))
    if tree.cost(T).peak_states <= fits:
        return tree
    return mgd.Binomial(fits - 1)


@pytest.mark.parametrize("T", [1, 7, 100, 1000, 100_000])
def test_policy_for_budget_follows_its_documented_rule(T):
    state_bytes = 1000
    tree_peak = policies.default_policy(T).cost(T).peak_states
    for states in sorted({2, 3, tree_peak - 1, tree_peak, T, T + 1, T + 5} - {0, 1}):
        budget = states * state_bytes + state_bytes // 2
        policy = mgd.policy_for_budget(T, state_bytes, budget)
        assert policy == _expected(T, state_bytes, budget), (T, states)
        if isinstance(policy, mgd.Binomial) and T > 1000:
            continue  # Simulating few slots over 100,000 steps takes minutes; peak is slots + 1.
        assert policy.cost(T).peak_states * state_bytes <= budget
    assert mgd.policy_for_budget(T, state_bytes, (T + 1) * state_bytes) == mgd.StoreAll()


def test_budget_rule_is_stated_in_the_docstrings():
    for fn in [mgd.policy_for_budget, policies.default_policy, mgd.metagradient]:
        doc = " ".join(fn.__doc__.split())
        assert "``StoreAll()`` if ``T + 1`` states fit" in doc, fn
        assert "KAryTree(max(2, ceil(sqrt(T))))`` if its peak fits" in doc, fn
        assert "``Binomial(budget // state_bytes - 1)``" in doc, fn


def test_budget_too_small_says_how_much_is_needed():
    with pytest.raises(ValueError, match="needs 2000 bytes; raise memory_budget"):
        mgd.policy_for_budget(100, 1000, 1999)
    with pytest.raises(ValueError, match="budget_bytes must be an integer"):
        mgd.policy_for_budget(100, 1000, 2.5e6)


def _problem():
    steps = {"n": 0}

    def step(w, m, t):
        steps["n"] += 1
        return w - m * jnp.sin(w)

    return step, lambda w, m: jnp.sum(w**2), jnp.arange(4.0), jnp.float32(0.1), steps


def test_metagradient_stays_within_the_budget():
    step, objective, w0, meta, _ = _problem()
    state_bytes = w0.nbytes  # 16
    expected = mgd.metagradient(step, objective, w0, meta, 30, checkpoint=mgd.StoreAll())
    for budget, policy in [(31 * 16, mgd.StoreAll()), (12 * 16, mgd.KAryTree(6)),
                           (5 * 16 + 7, mgd.Binomial(4))]:  # fmt: skip
        res = mgd.metagradient(step, objective, w0, meta, 30, memory_budget=budget)
        assert res.stats.peak_states * state_bytes <= budget
        assert res.stats.forward_steps == policy.cost(30).forward_steps, policy
        np.testing.assert_allclose(res.grad, expected.grad, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory_budget": 31}, "needs 32 bytes"),
        ({"memory_budget": 100, "checkpoint": mgd.KAryTree(2)}, "not both"),
    ],
)
def test_bad_budget_is_rejected_before_training(kwargs, match):
    step, objective, w0, meta, steps = _problem()
    with pytest.raises(ValueError, match=match):
        mgd.metagradient(step, objective, w0, meta, 30, **kwargs)
    assert steps["n"] == 0
