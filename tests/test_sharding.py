"""Several devices: a TrainingSetup on a 4-device mesh splits batches over the data axis and,
with param_axis, shards the state (FSDP); either way it gives the single-device metagradient up to
float rounding; bad meshes fail before training."""

import functools

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import mgd

T, BATCH = 12, 32
# Hidden width 8: the MLP's kernels (64, 8) and (8, 10) and biases (8,) and (10,) cover every
# case of the parameter-sharding rule on 4- and 2-way axes (see test_param_axis_shards_the_state).
HIDDEN = 8


def _mesh(shape=(4,), names=("data",)):
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    return Mesh(np.array(jax.devices()[:4]).reshape(shape), names)


@functools.cache
def _setup(**kwargs):
    return mgd.TrainingSetup(
        mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(HIDDEN,))),
        optax.adam(0.01, eps_root=1e-8),
        mgd.load_digits(),
        batch_size=BATCH,
        num_steps=T,
        meta_spec=mgd.MetaSpec(data_weights=True, lr_knots=(0, T)),
        **kwargs,
    )


@functools.cache
def _single_device_metagradient():
    setup = _setup()
    return setup.metagradient(setup.init_meta(), checkpoint=mgd.KAryTree(4))


def _assert_single_device_metagradient(setup):
    # float32 sums over shards and devices run in another order than on one device, and Adam's
    # division by sqrt(nu) amplifies the difference over the steps: ~5e-6 of each gradient's
    # scale is measured, so 1e-4 of the scale is rounding while any real error is O(scale).
    expected = _single_device_metagradient()
    res = setup.metagradient(setup.init_meta(), checkpoint=mgd.KAryTree(4))
    np.testing.assert_allclose(res.value, expected.value, rtol=1e-5)
    for key, grad in expected.grad.items():
        scale = np.max(np.abs(grad))
        np.testing.assert_allclose(res.grad[key], grad, atol=1e-4 * scale, err_msg=key)


def test_metagradient_on_a_mesh_equals_single_device():
    sharded = _setup(mesh=_mesh())
    state = sharded.init_state()
    for leaf in jax.tree.leaves(state):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    # The step is data parallel: the compiled step all-reduces the per-shard gradients.
    meta = sharded.init_meta()
    hlo = jax.jit(sharded.step_fn).lower(state, meta, np.int32(0)).compile().as_text()
    assert "all-reduce" in hlo
    _assert_single_device_metagradient(sharded)


def test_two_dimensional_mesh_uses_the_named_axis():
    mesh = _mesh((2, 2), ("data", "model"))
    setup = _setup(mesh=mesh)
    trained = setup.train()
    expected = _setup().train()
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), trained, expected
    )


# Per-device shapes of the MLP's parameters: each is split along its largest dimension that the
# param axis divides, and replicated if none does ((10,) on 4 devices).
_FSDP_SHARDS = {("Dense_0", "kernel"): (16, 8), ("Dense_0", "bias"): (2,)}
_FSDP_SHARDS |= {("Dense_1", "kernel"): (2, 10), ("Dense_1", "bias"): (10,)}
_MODEL_AXIS_SHARDS = {("Dense_0", "kernel"): (32, 8), ("Dense_0", "bias"): (4,)}
_MODEL_AXIS_SHARDS |= {("Dense_1", "kernel"): (8, 5), ("Dense_1", "bias"): (5,)}


def _assert_sharded(state, shards):
    for (layer, name), shape in shards.items():
        leaf = state.params[layer][name]
        assert len(leaf.sharding.device_set) == 4, (layer, name)
        assert {s.data.shape for s in leaf.addressable_shards} == {shape}, (layer, name)
    # Adam's mu and nu mirror the parameters, so they get the parameters' layout.
    for moments in (state.opt_state[0].mu, state.opt_state[0].nu):
        specs = jax.tree.map(lambda p, m: p.sharding.spec == m.sharding.spec, state.params, moments)
        assert all(jax.tree.leaves(specs))


@pytest.mark.parametrize(
    ("shape", "names", "param_axis", "shards"),
    [
        pytest.param((4,), ("data",), "data", _FSDP_SHARDS, id="fsdp-1d"),
        pytest.param((2, 2), ("data", "model"), "model", _MODEL_AXIS_SHARDS, id="data-x-model"),
    ],
)
def test_param_axis_shards_the_state(shape, names, param_axis, shards):
    setup = _setup(mesh=_mesh(shape, names), param_axis=param_axis)
    _assert_sharded(setup.init_state(), shards)
    trained = setup.train()
    _assert_sharded(trained, shards)
    expected = _setup().train()
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), trained, expected
    )
    _assert_single_device_metagradient(setup)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 30}, ValueError, "batch_size=30 is not divisible by the mesh's 'data'"),
        ({"data_axis": "batch"}, ValueError, "data_axis='batch' is not an axis of the mesh"),
        ({"mesh": "cpu"}, TypeError, "mesh must be a jax.sharding.Mesh"),
        ({"param_axis": "model"}, ValueError, "param_axis='model' is not an axis of the mesh"),
        ({"mesh": None, "param_axis": "data"}, ValueError, "param_axis='data' needs a mesh"),
    ],
)
def test_bad_mesh_is_rejected_before_training(kwargs, error, match):
    kwargs = {"batch_size": BATCH, "mesh": _mesh(), **kwargs}
    with pytest.raises(error, match=match):
        mgd.TrainingSetup(
            mgd.train.models.MLP(), optax.sgd(0.1), mgd.load_digits(), num_steps=T, **kwargs
        )


def test_training_on_a_mesh_inside_a_users_vmap():
    # Outer code (the LR grid) vmaps `train` over metaparameters: inside the trace the setup
    # leaves the tracers to that program instead of placing them on the mesh.
    setup = _setup(mesh=_mesh())
    meta = setup.init_meta()
    log_lr = np.stack([np.zeros(2, np.float32), np.full(2, -1.0, np.float32)])
    trained = jax.vmap(lambda lr: setup.train({**meta, "log_lr": lr}))(log_lr)
    for i in range(2):
        expected = setup.train({**meta, "log_lr": log_lr[i]})
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),
            trained,
            expected,
        )
