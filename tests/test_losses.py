"""Per-example losses and metrics: regression end to end, the classification default, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import unrolled_objective

import mgd
from mgd.train import MetaSpec, TrainingSetup, models

ALL_META = MetaSpec(
    data_weights=True, lr_knots=(0, 3, 7), perturb_indices=(1, 4, 9), weight_decay=True
)


def _regression_data(d=3, seed=0):
    # Noisy linear targets y = x W + e: shape (n, d), or (n,) for d=None.
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, d or 1))

    def split(n):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        y = (x @ w + 0.1 * rng.normal(size=(n, d or 1))).astype(np.float32)
        return x, y if d else y[:, 0]

    return mgd.Dataset(*split(30), *split(12), *split(12))


def _setup(**kw):
    base = dict(
        model=models.MLP(models.MLPConfig(num_classes=3, hidden=(8,), activation="tanh")),
        optimizer=optax.adam(0.05, eps_root=1e-8),
        data=_regression_data(),
        batch_size=8,
        num_steps=7,
        meta_spec=ALL_META,
        loss=mgd.train.squared_error,
        metric=mgd.train.absolute_error,
    )
    base.update(kw)
    return TrainingSetup(base.pop("model"), base.pop("optimizer"), base.pop("data"), **base)


def _random_meta(setup, seed=0):
    rng = np.random.default_rng(seed)
    meta = setup.init_meta()
    return {
        "data_weights": meta["data_weights"] + 0.5 * rng.uniform(size=meta["data_weights"].shape),
        "log_lr": meta["log_lr"] + 0.3 * rng.normal(size=meta["log_lr"].shape),
        "perturbations": 0.1 * rng.normal(size=meta["perturbations"].shape),
        "weight_decay": jnp.asarray(0.01, setup.dtype),
    }


# An MLP with 3 outputs for (n, 3) targets; one Dense unit, output (b, 1), for (n,) targets.
@pytest.mark.parametrize(
    "model, d", [(None, 3), (nn.Dense(1), None)], ids=["mlp_d3", "dense_scalar"]
)
def test_regression_trains_and_evaluates_with_its_metric(model, d):
    setup = _setup(data=_regression_data(d), meta_spec=MetaSpec(), num_steps=60)
    if model is not None:
        setup = setup.replace(model=model)
    before = setup.evaluate(setup.init_state(), "test")
    state = setup.train()
    after = setup.evaluate(state, "test")
    assert set(after) == {"loss", "absolute_error"}
    assert after["loss"] < 0.2 * before["loss"], (before, after)
    # The reported figures are the mean squared and absolute errors of the model's outputs.
    x, y = setup.data.split("test")
    model = setup.model
    out = np.asarray(model.apply({"params": state.params}, x)).reshape(len(x), -1)
    err = out - y.reshape(len(y), -1)
    np.testing.assert_allclose(after["loss"], np.mean(np.sum(err**2, 1)), rtol=1e-5)
    np.testing.assert_allclose(after["absolute_error"], np.mean(np.sum(np.abs(err), 1)), rtol=1e-5)
    r = mgd.train.retrain_and_evaluate(setup, seeds=[3, 4])
    assert set(r) == {"loss", "absolute_error"} and r["loss"].shape == (2,)


def test_regression_metagradient_matches_unrolled_grad(x64):
    setup = _setup(dtype=jnp.float64)
    meta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _random_meta(setup))
    res = setup.metagradient(meta, checkpoint=mgd.KAryTree(2))
    value, grad = jax.value_and_grad(unrolled_objective(setup))(meta)
    np.testing.assert_allclose(res.value, value, rtol=1e-12)
    for k in meta:
        assert res.grad[k].dtype == jnp.float64
        assert np.any(np.abs(grad[k]) > 0), k
        np.testing.assert_allclose(res.grad[k], grad[k], rtol=1e-10, atol=1e-14, err_msg=k)


def test_regression_metagradient_equals_a_hand_written_training_loop(x64):
    # A linear model, plain SGD, weighted squared error written out by hand: the setup's
    # training objective and its data-weight metagradient must be exactly these.
    def init(key, x):
        return {"w": jax.random.normal(key, (x.shape[1],)), "b": jnp.zeros(())}

    def apply(params, x):
        return x @ params["w"] + params["b"]

    lr = 0.1
    setup = TrainingSetup(
        (init, apply),
        optax.sgd(lr),
        _regression_data(d=None),
        batch_size=8,
        num_steps=9,
        meta_spec=MetaSpec(data_weights=True),
        loss=mgd.train.squared_error,
        dtype=jnp.float64,
    )
    x, y = (jnp.asarray(a, jnp.float64) for a in (setup.data.x_train, setup.data.y_train))
    x_val, y_val = (jnp.asarray(a, jnp.float64) for a in (setup.data.x_val, setup.data.y_val))
    batches = setup._batches
    params0 = setup.init_state().params

    def by_hand(weights):
        params = params0
        for t in range(setup.num_steps):
            i = batches.index[t]
            w = batches.mask[t] * weights[i]

            def loss(p, i=i, w=w, t=t):
                return jnp.sum(w * (apply(p, x[i]) - y[i]) ** 2) / batches.count[t]

            params = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(loss)(params))
        return jnp.mean((apply(params, x_val) - y_val) ** 2)

    weights = jnp.linspace(0.5, 1.5, setup.data.num_train)
    res = setup.metagradient({"data_weights": weights})
    value, grad = jax.value_and_grad(by_hand)(weights)
    np.testing.assert_allclose(res.value, value, rtol=1e-12)
    assert np.any(np.abs(grad) > 0)
    np.testing.assert_allclose(res.grad["data_weights"], grad, rtol=1e-10, atol=1e-14)


def test_classification_default_is_cross_entropy_and_accuracy():
    data = mgd.make_synthetic(num_train=30, num_val=12, num_test=12)
    model = models.MLP(models.MLPConfig(num_classes=3, hidden=(8,)))
    setup = TrainingSetup(model, optax.sgd(0.1), data, batch_size=8, num_steps=5)
    explicit = setup.replace(loss=mgd.train.softmax_cross_entropy, metric=mgd.train.accuracy)
    state = setup.train()
    jax.tree.map(np.testing.assert_array_equal, state, explicit.train())
    got = setup.evaluate(state, "test")
    assert got == explicit.evaluate(state, "test")
    logits = model.apply({"params": state.params}, data.x_test)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, data.y_test)
    np.testing.assert_allclose(got["loss"], np.mean(ce), rtol=1e-6)
    assert got["accuracy"] == np.mean(np.argmax(logits, 1) == data.y_test)


def _huber(outputs, targets):
    return optax.huber_loss(outputs, targets).sum(axis=1)


def test_user_loss_and_program_sharing():
    setup = _setup(loss=_huber, metric=None, meta_spec=MetaSpec(data_weights=True))
    assert set(setup.evaluate(setup.train())) == {"loss"}  # No metric unless given.
    # Data and seed changes share the compiled programs; a change of loss or metric does not.
    assert setup.replace(data=setup.data.subset(np.arange(20)), seed=2)._jitted is setup._jitted
    squared = setup.replace(loss=mgd.train.squared_error)
    assert squared._jitted is not setup._jitted
    assert setup.replace(metric=mgd.train.absolute_error)._jitted is not setup._jitted
    meta = {"data_weights": jnp.linspace(0.5, 1.5, 30)}
    got = setup.metagradient(meta)
    value, grad = jax.value_and_grad(unrolled_objective(setup))(meta)
    np.testing.assert_allclose(got.value, value, rtol=1e-5)
    np.testing.assert_allclose(got.grad["data_weights"], grad["data_weights"], rtol=1e-4)
    # The engine compiles the other loss's step afresh rather than reusing the first one's.
    other = squared.metagradient(meta)
    assert not np.allclose(other.value, got.value)
    assert not np.allclose(other.grad["data_weights"], got.grad["data_weights"])


def _scalar_loss(outputs, targets):
    return jnp.sum((outputs - targets) ** 2)


def _int_loss(outputs, targets):
    return jnp.argmax(outputs, axis=1)


class _Unhashable:
    __hash__ = None

    def __call__(self, outputs, targets):
        return jnp.sum(outputs, axis=1)


# Errors found at construction: plain-Python checks of the fields.
@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(loss=mgd.train.softmax_cross_entropy), ValueError, "loss=mgd.train.squared_error"),
        (dict(objective="val_margin"), ValueError, "val_margin.*integer class labels"),
        (dict(objective="val_error"), ValueError, "val_error.*integer class labels"),
        (dict(loss="mse"), TypeError, "loss must be a function"),
        (dict(loss=_Unhashable()), TypeError, "loss must be hashable"),
        (dict(metric=lambda o, t: o), ValueError, "metric needs a name"),
        (dict(metric=3), TypeError, "metric must be a function"),
    ],
)
def test_bad_loss_or_metric_at_construction(changes, error, match):
    with pytest.raises(error, match=match):
        _setup(**changes)


# Errors found when the functions are first traced (shapes and dtypes are known only then).
@pytest.mark.parametrize(
    "setup_kw, run, match",
    [
        (dict(loss=_scalar_loss), "train", r"one float per example, shape \(8,\), got \(\)"),
        (dict(loss=_scalar_loss), "metagradient", r"one float per example"),
        (dict(loss=_int_loss), "train", r"one float per example.*int"),
        (dict(model=nn.Dense(2)), "train", r"outputs of the targets' shape \(8, 3\)"),
        (dict(metric=mgd.train.accuracy), "evaluate", "accuracy needs integer class labels"),
        (
            dict(data=mgd.make_synthetic(num_train=30)),
            "train",
            "squared_error needs float regression targets",
        ),
    ],
)
def test_bad_loss_or_metric_at_trace_time(setup_kw, run, match):
    setup = _setup(meta_spec=MetaSpec(), **setup_kw)
    with pytest.raises((ValueError, TypeError), match=match):
        if run == "train":
            setup.train()
        elif run == "metagradient":
            setup.metagradient()
        else:
            setup.evaluate(setup.init_state())


@pytest.mark.parametrize("d", [None, 2])
def test_loss_from_config_reaches_the_setup_and_fits_regression(d):
    # The config's `loss:`/`metric:` names become the setup's functions; the model gets one
    # output per target dimension, and training lowers the held-out squared error.
    from mgd.experiments import OptimizerConfig, TrainConfig, setup_from_config

    cfg = TrainConfig(
        model={"name": "mlp", "hidden": [8]},
        optimizer=OptimizerConfig(name="adam", learning_rate=0.05),
        batch_size=8,
        num_steps=40,
        loss="squared_error",
        metric="absolute_error",
    )
    setup = setup_from_config(cfg, _regression_data(d))
    assert setup.loss is mgd.train.squared_error and setup.metric is mgd.train.absolute_error
    assert setup.model.config.num_classes == (d or 1)
    before = setup.evaluate(setup.init_state(), split="test")
    after = setup.evaluate(setup.train(), split="test")
    assert set(after) == {"loss", "absolute_error"}
    assert after["loss"] < 0.5 * before["loss"]
