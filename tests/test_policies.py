"""Checkpoint plans, checked without JAX: exact action order for small cases, costs against
closed forms for many (T, k) and (T, slots), and argument validation."""

import functools
import inspect
import math

import pytest

import mgd
from mgd.engine import policies
from mgd.engine.policies import Advance, Free, Restore, Reverse, Store


def test_kary_tree_plan_is_pinned_for_small_case():
    # T = 9, k = 3: store the starts of 3 segments, then reverse them last to first.
    assert mgd.KAryTree(3).plan(9) == [
        Advance(3), Store(3), Advance(3), Store(6),
        Reverse(3), Free(6),
        Restore(3), Reverse(3), Free(3),
        Restore(0), Reverse(3),
    ]  # fmt: skip


def test_kary_tree_plan_recurses_lazily():
    # T = 10, k = 2: blocks of 8 and 2 at the top; segments are split only when reached.
    plan = mgd.KAryTree(2).plan(10)
    assert plan[:3] == [Advance(8), Store(8), Reverse(2)]
    assert plan[3:9] == [Free(8), Restore(0), Advance(4), Store(4), Advance(2), Store(6)]
    assert policies.simulate(plan, 10).vjp_steps == 10


def test_binomial_plan_is_pinned_for_small_case():
    # T = 4, 2 slots: advance 1 and keep it, sweep the 3 steps after it with the single slot
    # left, then reverse step 0.
    assert mgd.Binomial(2).plan(4) == [
        Advance(1), Store(1),
        Advance(2), Reverse(1),
        Restore(1), Advance(1), Reverse(1),
        Restore(1), Reverse(1), Free(1),
        Restore(0), Reverse(1),
    ]  # fmt: skip


def _kary_forward_closed_form(T, k):
    """Steps outside the last k**j-block of their k**(j+1)-segment, summed over levels."""
    d = policies.ceil_log(T, k)
    total = 0
    for j in range(1, d):
        block, segment = k**j, k ** (j + 1)
        rem = T % segment
        last_of_rem = rem - block * ((rem - 1) // block) if rem else 0
        total += T - (T // segment) * block - last_of_rem
    return total


@pytest.mark.parametrize("k", [2, 3, 4, 7, 10, 32])
def test_kary_tree_costs_match_closed_forms(k):
    for T in list(range(1, 130)) + [999, 1000, 1024, 4097]:
        cost = mgd.KAryTree(k).cost(T)
        d = policies.ceil_log(T, k)
        assert cost.vjp_steps == T
        assert cost.replay_steps == _kary_forward_closed_form(T, k), (T, k)
        assert cost.forward_steps == cost.replay_steps + T
        assert cost.peak_states <= max(d - 1, 0) * (k - 1) + 1 + min(k, T), (T, k)
        assert cost.peak_states <= k * d + 2
        # At most two compiled blocks: full leaves of k steps, and the run's last leaf.
        last_leaf = next(a.n for a in mgd.KAryTree(k).plan(T) if isinstance(a, Reverse))
        assert cost.block_lengths <= {k, last_leaf}


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kary_tree_power_of_k(k, d):
    T = k**d
    cost = mgd.KAryTree(k).cost(T)
    assert cost.replay_steps == (d - 1) * (T - T // k)
    assert cost.peak_states == (d - 1) * (k - 1) + 1 + k


@functools.cache
def _revolve_dp(n, s):
    """Fewest forward steps to reverse n steps with s stored states, by exhaustive search."""
    if n <= 1:
        return 0
    if s < 1:
        return math.inf
    return min(m + (0 if n - m == 1 else _revolve_dp(n - m, s - 1)) + _revolve_dp(m, s)
               for m in range(1, n))  # fmt: skip


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 6, 9])
def test_binomial_is_optimal(slots):
    for T in range(1, 80):
        cost = mgd.Binomial(slots).cost(T)
        assert (
            cost.replay_steps == policies.binomial_replay_steps(T, slots) == _revolve_dp(T, slots)
        ), (T, slots)
        assert cost.peak_states <= slots + 1
        assert cost.vjp_steps == T


def test_binomial_one_slot_plan_is_the_general_recursion_in_linear_time():
    for T in range(1, 61):
        general: list = []
        mgd.Binomial(1)._segment(0, T, 1, general)
        assert mgd.Binomial(1).plan(T) == general, T
    T = 100_000  # The general recursion takes minutes here.
    plan = mgd.Binomial(1).plan(T)
    assert plan[:4] == [Advance(T - 1), Reverse(1), Restore(0), Advance(T - 2)]
    assert plan[-4:] == [Advance(1), Reverse(1), Restore(0), Reverse(1)]
    assert policies.simulate(plan, T).replay_steps == T * (T - 1) // 2


def test_binomial_closed_form_at_scale():
    for T, s in [(1000, 5), (10_000, 10), (100_000, 20)]:
        assert mgd.Binomial(s).cost(T).replay_steps == policies.binomial_replay_steps(T, s)


@pytest.mark.parametrize("T", [50, 100, 1000, 4096])
@pytest.mark.parametrize("k", [2, 3, 8, 16])
def test_binomial_never_replays_more_than_kary_tree_at_equal_storage(T, k):
    # Compare in Revolve's cost model, where reversing a step needs that step's input state:
    # a tree leaf Reverse(n) then also costs the n - 1 advances that produce its inputs.
    tree_plan = mgd.KAryTree(k).plan(T)
    tree = policies.simulate(tree_plan, T)
    leaf_advances = sum(a.n - 1 for a in tree_plan if isinstance(a, Reverse))
    binomial = mgd.Binomial(tree.peak_states - 1).cost(T)
    assert binomial.peak_states <= tree.peak_states
    assert binomial.replay_steps <= tree.replay_steps + leaf_advances


def test_store_all_cost():
    assert mgd.StoreAll().cost(100) == policies.PlanCost(100, 0, 100, 101, 1, frozenset({100}))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: mgd.KAryTree(1), r"KAryTree\(k=1\): k must be an integer >= 2"),
        (lambda: mgd.KAryTree(2.5), r"KAryTree\(k=2.5\)"),
        (lambda: mgd.KAryTree(True), r"KAryTree\(k=True\)"),
        (lambda: mgd.Binomial(0), r"Binomial\(slots=0\): slots must be an integer >= 1"),
    ],
)
def test_policy_arguments_are_validated(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_policies_are_hashable_values():
    assert mgd.KAryTree(4) == mgd.KAryTree(4)
    assert len({mgd.KAryTree(4), mgd.KAryTree(4), mgd.Binomial(4), mgd.StoreAll()}) == 3


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 99, 100, 101, 10_000])
def test_default_policy_matches_its_documentation(T):
    doc = inspect.getdoc(policies.default_policy)
    assert "KAryTree(max(2, ceil(sqrt(T))))" in doc
    assert "KAryTree(max(2, ceil(sqrt(T))))" in inspect.getdoc(mgd.metagradient)
    # With a memory budget the rule is choose_for_budget's (tests/test_budget.py checks it).
    assert "choose_for_budget" in doc and "choose_for_budget" in inspect.getdoc(mgd.metagradient)
    assert policies.default_policy(T) == mgd.KAryTree(max(2, math.ceil(math.sqrt(T))))


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ([Restore(5), Reverse(3)], "slot 5 is empty"),
        ([Advance(1), Reverse(1)], "the sweep is at step 3"),
        ([Advance(1), Store(0)], "slot 0 is taken"),
        ([Advance(2), Reverse(1)], r"steps \[0, 2\) not reversed"),
    ],
)
def test_simulate_rejects_inconsistent_plans(plan, match):
    with pytest.raises(ValueError, match=match):
        policies.simulate(plan, 3)
