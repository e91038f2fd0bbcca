"""Memory budgets: `policy_for_budget` picks the fastest policy that fits, `metagradient` keeps
its held states within the budget, and a budget too small is rejected before training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mgd
from mgd.engine import policies, replay, storage


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
            continue  # Simulating 100,000 steps takes a second per policy; peak is slots + 1.
        assert policy.cost(T).peak_states * state_bytes <= budget
    assert mgd.policy_for_budget(T, state_bytes, (T + 1) * state_bytes) == mgd.StoreAll()


# T = 100 steps of 1000-byte states. The default tree, KAryTree(10), holds 20 states on the
# device; off it, the device holds a 10-step block plus a prefetched state (11) and the store
# its 10 stored slots (the initial state and the starts of 9 segments).
STATE, TREE = 1000, mgd.KAryTree(10)


@pytest.mark.parametrize(
    ("budget", "host", "disk", "expected"),
    [
        (101 * STATE, None, None, (mgd.StoreAll(), "device")),  # T + 1 states fit exactly
        (101 * STATE - 1, 10**9, 10**9, (TREE, "device")),
        (20 * STATE, 10**9, 10**9, (TREE, "device")),  # the tree's peak fits exactly
        (20 * STATE - 1, 10**9, 10**9, (TREE, "host")),  # host preferred to disk
        (11 * STATE, 10 * STATE, None, (TREE, "host")),  # block + prefetch, slots fit exactly
        (11 * STATE, 10 * STATE - 1, 10 * STATE, (TREE, "disk")),  # host one byte short
        (11 * STATE, None, 10 * STATE, (TREE, "disk")),
        (11 * STATE, None, 10 * STATE - 1, (mgd.Binomial(10), "device")),
        (11 * STATE, 10 * STATE - 1, None, (mgd.Binomial(10), "device")),
        (11 * STATE - 1, 10**9, 10**9, (mgd.Binomial(9), "device")),  # device one byte short
        (11 * STATE, None, None, (mgd.Binomial(10), "device")),  # None: no offloading
        (2 * STATE, 10**9, 10**9, (mgd.Binomial(1), "device")),
    ],
)
def test_choose_for_budget_branches(budget, host, disk, expected):
    choice = mgd.choose_for_budget(100, STATE, budget, host_bytes=host, disk_bytes=disk)
    assert choice == expected
    cost = choice.policy.cost(100)
    if choice.store == "device":
        assert cost.peak_states * STATE <= budget
    else:
        assert (max(cost.block_lengths) + 1) * STATE <= budget
        assert cost.peak_slots * STATE <= {"host": host, "disk": disk}[choice.store]


@pytest.mark.parametrize("T", [1, 7, 100, 1000])
def test_policy_for_budget_is_choose_for_budget_on_the_device(T):
    tree_peak = policies.default_policy(T).cost(T).peak_states
    for states in sorted({2, 3, tree_peak - 1, tree_peak, T + 1} - {0, 1}):
        budget = states * STATE
        choice = mgd.choose_for_budget(T, STATE, budget)
        assert choice == (mgd.policy_for_budget(T, STATE, budget), "device")


def test_choose_for_budget_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="needs 2000 bytes; raise memory_budget"):
        mgd.choose_for_budget(100, STATE, 2 * STATE - 1, host_bytes=10**9, disk_bytes=10**9)
    for kwargs in [{"host_bytes": -1}, {"disk_bytes": 1.5}]:
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be an integer"):
            mgd.choose_for_budget(100, STATE, 11 * STATE, **kwargs)


def test_budget_rule_is_stated_in_the_docstrings():
    for fn in [mgd.policy_for_budget, mgd.choose_for_budget, policies.default_policy,
               mgd.metagradient]:  # fmt: skip
        doc = " ".join(fn.__doc__.split())
        assert "``StoreAll()`` if ``T + 1`` states fit" in doc, fn
        assert "KAryTree(max(2, ceil(sqrt(T))))`` if its peak fits" in doc, fn
        assert "``Binomial(budget // state_bytes - 1)``" in doc, fn
    for fn in [mgd.choose_for_budget, policies.default_policy, mgd.metagradient]:
        doc = " ".join(fn.__doc__.split())
        assert "that tree with its stored states in host memory" in doc, fn
        assert "on disk" in doc, fn


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


@pytest.mark.parametrize(("room", "store"), [((10**6, 10**6), "host"), ((0, 10**6), "disk")])
def test_budget_moves_stored_states_off_the_device(room, store, monkeypatch):
    # T = 30 states of 16 bytes: KAryTree(6) holds 11 on the device, or 7 (a 6-step block and
    # a prefetched state) with its 5 stored slots off it. A 7-state budget picks the tree
    # off the device over Binomial(6) on it.
    monkeypatch.setattr(replay, "offload_room", lambda: room)
    step, objective, w0, meta, _ = _problem()
    expected = mgd.metagradient(step, objective, w0, meta, 30, checkpoint=mgd.KAryTree(6))
    res = mgd.metagradient(step, objective, w0, meta, 30, memory_budget=7 * 16)
    assert (res.stats.policy, res.stats.store) == ("KAryTree(k=6)", store)
    assert (expected.stats.policy, expected.stats.store) == ("KAryTree(k=6)", "device")
    np.testing.assert_array_equal(res.grad, expected.grad)
    assert res.value == expected.value


def test_explicit_store_keeps_the_budget_to_choosing_the_policy(monkeypatch):
    def no_probe():
        raise AssertionError("the store was given: nothing to measure")

    monkeypatch.setattr(replay, "offload_room", no_probe)
    step, objective, w0, meta, _ = _problem()
    res = mgd.metagradient(step, objective, w0, meta, 30, memory_budget=7 * 16, store="host")
    assert (res.stats.policy, res.stats.store) == ("Binomial(slots=6)", "host")
    assert res.stats.peak_states * 16 <= 7 * 16


def test_offload_room_offers_no_host_memory_on_a_cpu_backend():
    host, disk = storage.offload_room()
    assert disk > 0
    if jax.default_backend() == "cpu":
        assert host == 0
