"""Data parallelism: a TrainingSetup on a 4-device mesh splits batches over the data axis and
gives the single-device metagradient up to float rounding; bad meshes fail before training."""

import functools

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import mgd

T, BATCH = 12, 32


def _mesh(shape=(4,), names=("data",)):
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    return Mesh(np.array(jax.devices()[:4]).reshape(shape), names)


@functools.cache
def _setup(**kwargs):
    return mgd.TrainingSetup(
        mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(16,))),
        optax.adam(0.01, eps_root=1e-8),
        mgd.load_digits(),
        batch_size=BATCH,
        num_steps=T,
        meta_spec=mgd.MetaSpec(data_weights=True, lr_knots=(0, T)),
        **kwargs,
    )


def test_metagradient_on_a_mesh_equals_single_device():
    mesh = _mesh()
    single, sharded = _setup(), _setup(mesh=mesh)
    state = sharded.init_state()
    for leaf in jax.tree.leaves(state):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    # The step is data parallel: the compiled step all-reduces the per-shard gradients.
    meta = sharded.init_meta()
    hlo = jax.jit(sharded.step_fn).lower(state, meta, np.int32(0)).compile().as_text()
    assert "all-reduce" in hlo
    expected = single.metagradient(meta, checkpoint=mgd.KAryTree(4))
    res = sharded.metagradient(meta, checkpoint=mgd.KAryTree(4))
    np.testing.assert_allclose(res.value, expected.value, rtol=1e-5)
    for key in meta:
        scale = np.max(np.abs(expected.grad[key]))
        np.testing.assert_allclose(
            res.grad[key], expected.grad[key], atol=1e-4 * scale, err_msg=key
        )


def test_two_dimensional_mesh_uses_the_named_axis():
    mesh = _mesh((2, 2), ("data", "model"))
    setup = _setup(mesh=mesh)
    trained = setup.train()
    expected = _setup().train()
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), trained, expected
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 30}, ValueError, "batch_size=30 is not divisible by the mesh's 'data'"),
        ({"data_axis": "batch"}, ValueError, "data_axis='batch' is not an axis of the mesh"),
        ({"mesh": "cpu"}, TypeError, "mesh must be a jax.sharding.Mesh"),
    ],
)
def test_bad_mesh_is_rejected_before_training(kwargs, error, match):
    kwargs = {"batch_size": BATCH, "mesh": _mesh(), **kwargs}
    with pytest.raises(error, match=match):
        mgd.TrainingSetup(
            mgd.train.models.MLP(), optax.sgd(0.1), mgd.load_digits(), num_steps=T, **kwargs
        )
