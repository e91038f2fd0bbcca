"""Memory budgets: `policy_for_budget` picks the fastest policy that fits, `metagradient` keeps
its held states within the budget, and a budget too small is rejected before training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mgd
from mgd.engine import memory, policies, replay, storage


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


_RUNS = {"n": 0}


def _count(_):
    _RUNS["n"] += 1


def _step(w, m, t):
    jax.debug.callback(_count, t)  # Counts executed steps, not traces.
    return w - m * jnp.sin(w)


def _objective(w, m):
    return jnp.sum(w**2)


def _problem():
    """One step and objective for every test (so they share compiled programs), with the count
    of steps executed since this call."""
    _RUNS["n"] = 0
    w0 = jnp.linspace(0.0, 3.0, 4096, dtype=jnp.float32)
    return _step, _objective, w0, jnp.float32(0.1), _RUNS


def _sizes(step, objective, w0, meta, modes=("fused", "remat")):
    fns = replay._split_fns(step, objective)
    return memory.measure_sizes(fns, w0, meta, modes)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_metagradient_runs_the_plan_its_budget_picks(fraction):
    step, objective, w0, meta, _ = _problem()
    T = 30
    sizes = _sizes(step, objective, w0, meta)
    everything = policies.sweep_peak(mgd.StoreAll().plan(T), sizes, "fused").bytes
    budget = int(everything * fraction)
    fns = replay._split_fns(step, objective)
    # The model proposes, the compiled sweep's memory analysis decides.
    measure = lambda policy, _, leaf: memory.compiled_sweep_peak(fns, w0, meta, T, policy, leaf)
    expected_choice = policies.choose_plan(T, sizes, budget, measure=measure)
    estimate = mgd.estimate_memory(
        step, objective, w0, meta, T, memory_budget=budget, store="device"
    )
    res = mgd.metagradient(step, objective, w0, meta, T, memory_budget=budget, store="device")
    assert (res.stats.policy, res.stats.leaf) == (
        repr(expected_choice.policy),
        expected_choice.leaf,
    )
    assert (estimate.policy, estimate.leaf) == (expected_choice.policy, expected_choice.leaf)
    assert estimate.peak_bytes == expected_choice.peak.bytes <= budget
    assert estimate.peak_bytes == sum(estimate.components.values())
    reference = mgd.metagradient(step, objective, w0, meta, T, checkpoint=mgd.StoreAll())
    np.testing.assert_allclose(res.grad, reference.grad, rtol=1e-5)


def test_budget_below_the_leanest_plan_is_a_one_line_error_by_component():
    step, objective, w0, meta, runs = _problem()
    with pytest.raises(ValueError) as info:
        mgd.metagradient(step, objective, w0, meta, 30, memory_budget=4 * w0.nbytes)
    message = str(info.value)
    assert "\n" not in message
    assert "the leanest plan, Binomial(1)" in message
    needed = int(message.split(" needs ")[1].split(" bytes")[0])
    assert needed > 4 * w0.nbytes
    # The compiled sweep's own program, by its parts (the inputs, without fn_arrays here).
    for part in ("stored_states", "sweep_temporaries", "init_state", "meta"):
        assert part in message
    assert f"raise memory_budget to at least {needed}" in message
    assert runs["n"] == 0  # Measured by compiling, not by running steps.
    assert (
        mgd.estimate_memory(step, objective, w0, meta, 30, memory_budget=needed).peak_bytes
        <= needed
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory_budget": 100, "checkpoint": mgd.KAryTree(2)}, "not both"),
        ({"memory_budget": 2.5e6}, "memory_budget must be an integer"),
    ],
)
def test_bad_budget_is_rejected_before_training(kwargs, match):
    step, objective, w0, meta, runs = _problem()
    with pytest.raises(ValueError, match=match):
        mgd.metagradient(step, objective, w0, meta, 30, **kwargs)
    assert runs["n"] == 0


@pytest.mark.parametrize(("room", "store"), [((10**9, 10**9), "host"), ((0, 10**9), "disk")])
def test_budget_moves_stored_states_off_the_device(room, store, monkeypatch):
    # T = 30: KAryTree(6) holds its 5 stored slots and a 6-step block on the device, or, off
    # it, one prefetched state and the block. A budget of exactly the latter picks the tree
    # off the device.
    monkeypatch.setattr(memory, "offload_room", lambda: room)
    step, objective, w0, meta, _ = _problem()
    sizes = _sizes(step, objective, w0, meta, ("fused",))
    plan = mgd.KAryTree(6).plan(30)
    budget = policies.sweep_peak(plan, sizes, "fused", offloaded=True).bytes
    assert policies.sweep_peak(plan, sizes, "fused").bytes > budget
    expected = mgd.metagradient(step, objective, w0, meta, 30, checkpoint=mgd.KAryTree(6))
    res = mgd.metagradient(step, objective, w0, meta, 30, memory_budget=budget, leaf="fused")
    assert (res.stats.policy, res.stats.store) == ("KAryTree(k=6)", store)
    assert (expected.stats.policy, expected.stats.store) == ("KAryTree(k=6)", "device")
    np.testing.assert_array_equal(res.grad, expected.grad)
    assert res.value == expected.value


def test_explicit_store_keeps_the_budget_to_choosing_the_policy(monkeypatch):
    def no_probe():
        raise AssertionError("the store was given: nothing to measure")

    monkeypatch.setattr(memory, "offload_room", no_probe)
    step, objective, w0, meta, _ = _problem()
    sizes = _sizes(step, objective, w0, meta)
    budget = policies.sweep_peak(mgd.KAryTree(6).plan(30), sizes, "fused").bytes - 1
    res = mgd.metagradient(step, objective, w0, meta, 30, memory_budget=budget, store="host")
    choice = policies.choose_plan(30, sizes, budget)
    assert (res.stats.policy, res.stats.store, res.stats.leaf) == (
        repr(choice.policy),
        "host",
        choice.leaf,
    )


def test_sweep_peak_walks_the_plan():
    # KAryTree(3) over 9 steps: 3 slots stored (0, 3, 6) while reversing the last leaf.
    leaf = policies.LeafCost((("fixed", 7),), 100, "block_states")
    sizes = policies.MemorySizes(1000, 50, (("remat", leaf),), (("meta", 3),))
    peak = policies.sweep_peak(mgd.KAryTree(3).plan(9), sizes, "remat")
    assert peak.components == {"stored_states": 3000, "block_states": 300, "fixed": 7, "meta": 3}
    assert peak.bytes == 3310
    offloaded = policies.sweep_peak(mgd.KAryTree(3).plan(9), sizes, "remat", offloaded=True)
    assert offloaded.bytes == 1310
    # The states-only model is `simulate`'s peak_states.
    for policy in [mgd.StoreAll(), mgd.KAryTree(3), mgd.Binomial(3)]:
        plan = policy.plan(20)
        states = policies.sweep_peak(plan, policies.MemorySizes.states_only(8), "fused").bytes
        assert states == 8 * policies.simulate(plan, 20).peak_states


def test_choose_plan_prefers_a_rematerialized_leaf_to_replaying():
    # Fused blocks keep 5 states' worth of residuals per step, rematerialized ones one state.
    fused = policies.LeafCost((), 5000, "block_residuals")
    remat = policies.LeafCost((("step_vjp", 5000),), 1000, "block_states")
    sizes = policies.MemorySizes(1000, 2000, (("fused", fused), ("remat", remat)))
    T = 100
    storeall_remat = 1000 + 100 * 1000 + 5000  # The initial state and the 100-step block.
    choice = policies.choose_plan(T, sizes, storeall_remat)
    assert (choice.policy, choice.leaf, choice.peak.bytes) == (
        mgd.StoreAll(),
        "remat",
        storeall_remat,
    )
    tree_fused = 10 * 1000 + 10 * 5000  # 10 stored slots and a 10-step fused block.
    choice = policies.choose_plan(T, sizes, tree_fused)
    assert (choice.policy, choice.leaf, choice.peak.bytes) == (
        mgd.KAryTree(10),
        "fused",
        tree_fused,
    )
    choice = policies.choose_plan(T, sizes, 20_000)  # 15 slots and a one-step fused block.
    assert (choice.policy, choice.leaf, choice.peak.bytes) == (mgd.Binomial(15), "fused", 20_000)
    with pytest.raises(
        ValueError, match=r"needs 6000 bytes \(stored_states 1000, block_residuals 5000\)"
    ):
        policies.choose_plan(T, sizes, 5999)


def test_offload_room_offers_no_host_memory_on_a_cpu_backend():
    host, disk = storage.offload_room()
    assert disk > 0
    if jax.default_backend() == "cpu":
        assert host == 0


def test_choose_plan_moves_on_when_what_would_run_does_not_fit():
    # The model fits StoreAll, the tree and Binomial(15) in 20,000 bytes; the measure says
    # each really needs 3,000 bytes more, so the pick is the Binomial 3 slots smaller.
    leaf = policies.LeafCost((), 5000, "block_residuals")
    sizes = policies.MemorySizes(1000, 2000, (("fused", leaf),))
    asked = []

    def measure(policy, store, mode):
        asked.append(policy)
        model = policies.sweep_peak(policy.plan(100), sizes, mode)
        return policies.SweepPeak(model.bytes + 3000, {"measured": model.bytes + 3000})

    big = policies.choose_plan(100, sizes, 10**9, measure=measure)
    assert (big.policy, big.peak.bytes) == (mgd.StoreAll(), 1000 + 100 * 5000 + 3000)
    asked.clear()
    choice = policies.choose_plan(100, sizes, 20_000, measure=measure)
    assert (choice.policy, choice.peak.bytes) == (mgd.Binomial(12), 20_000)
    assert asked == [mgd.Binomial(15), mgd.Binomial(12)]  # Only candidates the model fits.
    with pytest.raises(ValueError, match=r"Binomial\(1\) .* needs 9000 bytes \(measured 9000\)"):
        policies.choose_plan(100, sizes, 8999, measure=measure)
    with pytest.raises(ValueError, match=r"needs 9000 bytes \(measured 9000\)"):
        policies.choose_plan(100, sizes, 5999, measure=measure)  # Not even the model fits.


def test_device_estimate_is_the_compiled_sweeps_program():
    step, objective, w0, meta, runs = _problem()
    policy = mgd.KAryTree(6)
    est = mgd.estimate_memory(step, objective, w0, meta, 30, checkpoint=policy, leaf="remat")
    # The sweep's buffer: a row per slot the plan holds at once (the initial state's
    # included) and a scratch row; the remat block keeps its 6 input states besides.
    assert est.components["stored_states"] == (policy.cost(30).peak_slots + 1) * w0.nbytes
    assert est.components["sweep_temporaries"] >= 6 * w0.nbytes
    assert est.components["init_state"] == w0.nbytes
    assert est.peak_bytes == sum(est.components.values())
    assert runs["n"] == 0  # Compiled, not run.
    # Off the device the driver runs: the model of its programs, with its own components.
    host = mgd.estimate_memory(
        step, objective, w0, meta, 30, checkpoint=policy, leaf="remat", store="host"
    )
    assert {"block_states", "step_vjp", "cotangents"} <= set(host.components)
