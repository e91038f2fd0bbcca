"""loop_friendly_conv: the numbers of lax.conv_general_dilated, derivatives of every order."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import mgd
from mgd.train import TrainingSetup, loop_friendly_conv, models

SLICES = functools.partial(loop_friendly_conv, impl="slices")

# (input shape, kernel shape, layout, keyword arguments). The first two are the models' layers
# (flax's NHWC / HWIO, 3x3, SAME, stride 1); the rest cover the other options.
CASES = {
    "3x3-same": ((2, 7, 6, 3), (3, 3, 3, 4), "2d", dict(window_strides=(1, 1), padding="SAME")),
    "1-channel": ((3, 8, 8, 1), (3, 3, 1, 5), "2d", dict(window_strides=(1, 1), padding="SAME")),
    "stride-valid": (
        (2, 9, 8, 3),
        (3, 2, 3, 4),
        "2d",
        dict(window_strides=(2, 1), padding="VALID"),
    ),
    "stride-same": ((2, 9, 8, 3), (3, 3, 3, 4), "2d", dict(window_strides=(2, 2), padding="SAME")),
    "same-lower": (
        (2, 6, 7, 3),
        (2, 2, 3, 4),
        "2d",
        dict(window_strides=(1, 1), padding="SAME_LOWER"),
    ),
    "explicit-dilated": (
        (2, 9, 8, 3),
        (3, 3, 3, 4),
        "2d",
        dict(window_strides=(1, 2), padding=((1, 2), (0, 1)), rhs_dilation=(2, 1)),
    ),
    "lhs-dilation-crop": (
        (2, 5, 6, 3),
        (3, 3, 3, 4),
        "2d",
        dict(window_strides=(1, 1), padding=((2, 2), (1, -1)), lhs_dilation=(2, 1)),
    ),
    "groups": (
        (2, 6, 6, 4),
        (3, 3, 2, 6),
        "2d",
        dict(window_strides=(1, 1), padding="SAME", feature_group_count=2),
    ),
    "depthwise": (
        (2, 6, 6, 3),
        (3, 3, 1, 6),
        "2d",
        dict(window_strides=(2, 1), padding="SAME", feature_group_count=3),
    ),
    "nchw-oihw": ((2, 3, 7, 6), (4, 3, 3, 3), None, dict(window_strides=(1, 1), padding="SAME")),
    "1d": ((2, 9, 3), (3, 3, 4), "1d", dict(window_strides=(2,), padding="SAME")),
    "3d": ((2, 4, 5, 3, 2), (3, 2, 3, 2, 3), "3d", dict(window_strides=(1, 2, 1), padding="SAME")),
}
LAYOUTS = {
    None: None,
    "1d": ("NWC", "WIO", "NWC"),
    "2d": ("NHWC", "HWIO", "NHWC"),
    "3d": ("NDHWC", "DHWIO", "NDHWC"),
}


def _conv_pair(case):
    lhs_shape, rhs_shape, layout, kw = CASES[case]
    kw = dict(kw, dimension_numbers=LAYOUTS[layout])
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=lhs_shape), rng.normal(size=rhs_shape)
    return x, w, functools.partial(lax.conv_general_dilated, **kw), functools.partial(SLICES, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_equal_lax(x64, case):
    x, w, native, slices = _conv_pair(case)
    y, vjp = jax.vjp(native, x, w)
    got, got_vjp = jax.vjp(slices, x, w)
    assert got.shape == y.shape and got.dtype == jnp.float64
    np.testing.assert_allclose(got, y, rtol=0, atol=1e-10 * np.abs(y).max())
    cotangent = np.random.default_rng(1).normal(size=y.shape)
    for expected, actual, name in zip(
        vjp(cotangent), got_vjp(cotangent), ("input", "kernel"), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("case", ["3x3-same", "stride-same", "groups"])
def test_second_order_equals_lax(x64, case):
    # d/d(x, w) of a function of the first derivatives: the terms a metagradient needs.
    x, w, native, slices = _conv_pair(case)

    def grad_norm(conv, x, w):
        g = jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w))))(x, w)
        return sum(jnp.sum(jnp.sin(gi)) for gi in g)

    expected = jax.jit(jax.grad(functools.partial(grad_norm, native), (0, 1)))(x, w)
    got = jax.jit(jax.grad(functools.partial(grad_norm, slices), (0, 1)))(x, w)
    for e, a in zip(expected, got, strict=True):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-10)


def _primitives(fn, *args):
    return {str(e.primitive) for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_auto_uses_slices_on_the_cpu_and_native_is_native():
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 3))
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert jax.default_backend() == "cpu"
    auto = _primitives(functools.partial(loop_friendly_conv, **kw), x, w)
    native = _primitives(functools.partial(loop_friendly_conv, impl="native", **kw), x, w)
    assert "conv_general_dilated" not in auto and "dot_general" in auto
    assert "conv_general_dilated" in native


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(impl="fft"), "impl must be one of"),
        (dict(batch_group_count=2), "batch_group_count must be 1"),
        (dict(padding="FULL"), "padding must be"),
        (dict(padding=((1, 1),)), "one pair per spatial dimension"),
        (dict(padding=3), "padding must be"),
        (dict(lhs_dilation=(2, 2)), "string padding with lhs_dilation"),
        (dict(window_strides=(1,)), "one entry per spatial dimension"),
        (dict(feature_group_count=2), "do not fit feature_group_count"),
        (dict(padding="VALID", rhs_dilation=(4, 4)), "does not fit the padded input"),
    ],
)
def test_unsupported_or_bad_options_raise_one_line_errors(kw, match):
    args = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    args.update(kw)
    with pytest.raises(ValueError, match=match) as info:
        loop_friendly_conv(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 3, 4)), **args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [models.SmallCNNConfig, models.ResNet9Config])
def test_model_configs_check_conv(cls):
    with pytest.raises(ValueError, match="conv must be one of"):
        cls(conv="fast")
    assert cls(conv=SLICES).conv is SLICES


def test_small_cnn_native_and_slices_agree(x64):
    config = models.SmallCNNConfig(num_classes=3, channels=(3, 4), hidden=5, conv="slices")
    slices = models.SmallCNN(config)
    native = models.SmallCNN(dataclasses.replace(config, conv="native"))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)))
    variables = jax.jit(native.init)(jax.random.PRNGKey(0), x)
    expected = jax.jit(native.apply)(variables, x)
    np.testing.assert_allclose(jax.jit(slices.apply)(variables, x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("conv, native", [("auto", False), ("slices", False), ("native", True)])
def test_resnet9_convolutions_follow_the_config(conv, native):
    # Tracing only (compiling ResNet-9 takes long); the numbers are the per-layer tests above.
    model = models.ResNet9(models.ResNet9Config(width_multiplier=1 / 32, conv=conv))
    x = jnp.ones((2, 8, 8, 1))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    prims = _primitives(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
    assert ("conv_general_dilated" in prims) == native


def _cnn_setup(conv):
    data = mgd.make_synthetic(num_train=24, num_val=8, num_test=8, input_shape=(6, 6, 1))
    model = models.SmallCNN(
        models.SmallCNNConfig(num_classes=3, channels=(3,), hidden=4, activation="tanh", conv=conv)
    )
    return TrainingSetup(
        model,
        optax.sgd(0.1, momentum=0.9),
        data,
        batch_size=8,
        num_steps=5,
        dtype=jnp.float64,
        meta_spec=mgd.MetaSpec(data_weights=True, perturb_indices=(0, 5)),
    )


def test_cnn_metagradient_equals_native_unrolled_grad(x64):
    # Second-order terms through a whole training run: the replayed metagradient of the slices
    # CNN against jax.grad of the native CNN's unrolled loop.
    setup, native = _cnn_setup("slices"), _cnn_setup("native")
    rng = np.random.default_rng(0)
    meta = setup.init_meta()
    meta = {
        "data_weights": meta["data_weights"] + 0.5 * rng.uniform(size=meta["data_weights"].shape),
        "perturbations": 0.1 * rng.normal(size=meta["perturbations"].shape),
    }
    res = setup.metagradient(meta, checkpoint=mgd.KAryTree(2))

    def unrolled(meta):
        state = jax.lax.fori_loop(
            0, native.num_steps, lambda t, s: native.step_fn(s, meta, t), native.init_state()
        )
        return native.objective_fn(state, meta)

    value, grad = jax.jit(jax.value_and_grad(unrolled))(meta)
    np.testing.assert_allclose(res.value, value, rtol=1e-12)
    for k in meta:
        assert np.any(np.abs(grad[k]) > 0), k
        np.testing.assert_allclose(res.grad[k], grad[k], rtol=0, atol=1e-10, err_msg=k)
