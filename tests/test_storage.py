"""State stores: host and disk stores give the same bits as the device store, keep shardings,
clean up their temporary directory on success and on error, and reject bad input early."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_engine import make_problem
from test_engine_errors import nan_at_step

import mgd
from mgd.engine import policies

T = 9
POLICIES = [mgd.KAryTree(3), mgd.Binomial(3)]


def _grad(store, policy):
    problem = make_problem("adam", T, jnp.float32)
    return mgd.metagradient(*problem, T, checkpoint=policy, store=store)


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("store", ["host", "disk", mgd.HostStore(), "host-numpy"])
def test_off_device_stores_give_bit_identical_gradients(store, policy, tmp_path, monkeypatch):
    if store == "host-numpy":  # The fallback for backends without a pinned_host memory kind.
        monkeypatch.setattr(mgd.engine.storage, "_has_host_memory", lambda sharding: False)
        store = mgd.HostStore()
    if store == "disk":
        store = mgd.DiskStore(tmp_path)
    expected = _grad("device", policy)
    res = _grad(store, policy)
    assert (expected.stats.store, res.stats.store) == ("device", getattr(store, "name", store))
    assert dataclasses.replace(res.stats, store="device") == expected.stats
    for a, b in zip(jax.tree.leaves(res.grad), jax.tree.leaves(expected.grad), strict=True):
        np.testing.assert_array_equal(a, b)
    assert res.value == expected.value
    assert list(tmp_path.iterdir()) == []  # The disk store's temporary directory is gone.


class _RecordingDiskStore(mgd.DiskStore):
    def __init__(self, directory):
        super().__init__(directory)
        self.roots, self.prefetches = set(), []

    def put(self, slot, step, state):
        super().put(slot, step, state)
        self.roots.add(self.path)

    def prefetch(self, slot):
        self.prefetches.append(slot)
        super().prefetch(slot)


def test_disk_store_files_exist_during_the_run_and_prefetch_is_used(tmp_path):
    store = _RecordingDiskStore(tmp_path)
    _grad(store, mgd.KAryTree(3))
    (root,) = store.roots
    assert root.parent == tmp_path and not root.exists()
    assert store._pool is None  # The background thread ended with the call.
    # KAryTree(3) at T = 9: the two restores of stored segment starts are announced.
    assert store.prefetches == [3, 0]


def test_disk_store_removed_after_non_finite_error(tmp_path):
    store = _RecordingDiskStore(tmp_path)
    with pytest.raises(mgd.NonFiniteCotangentError, match="at step 2"):
        mgd.metagradient(
            nan_at_step(2), lambda w, m: w**2, jnp.float32(1.0), jnp.float32(0.9), 12,
            checkpoint=mgd.Binomial(3), store=store,
        )  # fmt: skip
    assert store.roots and all(not root.exists() for root in store.roots)
    assert list(tmp_path.iterdir()) == []


def test_host_store_keeps_shardings_and_moves_states_off_device():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:4]), ("data",)), PartitionSpec("data"))
    w = jax.device_put(jnp.arange(8.0), sharding)
    store = mgd.HostStore()
    store.put(1, 5, {"w": w})
    kinds = {leaf.sharding.memory_kind for leaf in store._slots[1][3].result()}
    assert kinds == {"pinned_host"}
    store.prefetch(1)
    step, state = store.get(1)
    assert step == 5 and state["w"].sharding == w.sharding
    np.testing.assert_array_equal(state["w"], w)


def test_bfloat16_and_integer_leaves_round_trip_on_disk(tmp_path):
    state = {"a": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) / 3, "n": jnp.int32(7)}
    store = mgd.DiskStore(tmp_path)
    store.put(0, 0, state)
    _, back = store.get(0)
    assert back["a"].dtype == jnp.bfloat16 and back["n"].shape == ()
    jax.tree.map(np.testing.assert_array_equal, back, state)
    store.clear()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_is_rejected_before_training(tmp_path):
    steps = {"n": 0}

    def step(w, m, t):
        steps["n"] += 1
        return w * m

    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="not a writable directory"):
        mgd.metagradient(step, lambda w, m: w, 1.0, 0.5, 3, store=mgd.DiskStore(missing))
    if os.geteuid() != 0:  # root writes anywhere
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(ValueError, match="not a writable directory"):
                mgd.DiskStore(tmp_path)
        finally:
            tmp_path.chmod(0o700)
    assert steps["n"] == 0


@pytest.mark.parametrize(
    ("store", "error", "match"),
    [("tape", ValueError, "store='tape' is not a known store"), (3, TypeError, "got 3")],
)
def test_unknown_store_is_rejected(store, error, match):
    with pytest.raises(error, match=match):
        mgd.metagradient(lambda w, m, t: w * m, lambda w, m: w, 1.0, 0.5, 3, store=store)


def test_next_restores_hints():
    plan = mgd.KAryTree(3).plan(9)
    # Reverse(3) at index 4 -> Restore(3); index 7 -> Restore(0); the last one has none.
    assert policies.next_restores(plan) == {4: 3, 7: 0}
    # Binomial(2) at T = 4: every Reverse but the last is followed by a Restore of a kept slot.
    assert policies.next_restores(mgd.Binomial(2).plan(4)) == {3: 1, 6: 1, 8: 0}
    assert policies.next_restores([policies.Reverse(1)]) == {}
