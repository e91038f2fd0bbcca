"""TrainingSetup: exact metagradients, batch order, metaparameter semantics, errors."""

import hashlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import count_compilations, unrolled_objective

import mgd
from mgd.train import Augment, MetaSpec, TrainingSetup, models

ALL_META = MetaSpec(
    data_weights=True, lr_knots=(0, 3, 7), perturb_indices=(1, 4, 9), weight_decay=True
)


def _image_data():
    # 30 examples with batch 8: epochs of 4 batches, the last one partial (6 real).
    return mgd.make_synthetic(num_train=30, num_val=12, num_test=12, input_shape=(5, 5, 1))


def _setup(**kw):
    base = dict(
        model=models.MLP(models.MLPConfig(num_classes=3, hidden=(8,), activation="tanh")),
        optimizer=optax.adam(0.05, eps_root=1e-8),
        data=_image_data(),
        batch_size=8,
        num_steps=7,
        meta_spec=ALL_META,
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
        "weight_decay": jnp.asarray(0.01),
    }


class _BatchNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(6)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(x)
        return nn.Dense(3)(jnp.tanh(x))


# The plain run trains a batch-norm model (state beyond params); the augmented run replays
# (k-ary tree): replays must see the same batches and crops.
@pytest.mark.parametrize(
    "model, augment, policy",
    [
        (_BatchNormMLP(), False, mgd.StoreAll()),
        (None, Augment(crop_padding=1), mgd.KAryTree(2)),
    ],
    ids=["batchnorm", "augment"],
)
def test_metagradient_matches_unrolled_grad(x64, model, augment, policy):
    setup = _setup(augment=augment, dtype=jnp.float64)
    if model is not None:
        setup = setup.replace(model=model)
    meta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _random_meta(setup))
    res = setup.metagradient(meta, checkpoint=policy)
    value, grad = jax.value_and_grad(unrolled_objective(setup))(meta)
    np.testing.assert_allclose(res.value, value, rtol=1e-12)
    for k in meta:
        assert res.grad[k].dtype == jnp.float64
        assert np.any(np.abs(grad[k]) > 0), k
        np.testing.assert_allclose(res.grad[k], grad[k], rtol=1e-8, atol=1e-12, err_msg=k)


def test_train_equals_step_fn_loop():
    setup = _setup(augment=Augment(crop_padding=2))
    meta = _random_meta(setup)
    state = setup.init_state()
    step = jax.jit(setup.step_fn)
    for t in range(setup.num_steps):
        state = step(state, meta, jnp.int32(t))
    trained = setup.train(meta)
    assert int(trained.step) == setup.num_steps
    jax.tree.map(np.testing.assert_array_equal, trained, state)


def test_step_fn_first_used_inside_jit_leaks_no_tracer():
    # The setup builds its batch order and data arrays lazily; a first access from inside a
    # user's jitted function must not cache tracers of that trace.
    setup = _setup(augment=Augment(crop_padding=2))
    meta = _random_meta(setup)
    state = setup.init_state()
    one_step = jax.jit(lambda s, m: setup.objective_fn(setup.step_fn(s, m, jnp.int32(0)), m))
    inside = one_step(state, meta)
    # Another program (compiled as a whole, not operation by operation): a tracer cached by
    # the first trace would be an escaped tracer here.
    again = jax.jit(lambda s, m: setup.objective_fn(setup.step_fn(s, m, jnp.int32(0)), m))
    outside = again(state, meta)
    np.testing.assert_allclose(inside, outside, rtol=1e-6)
    assert isinstance(setup.metagradient(meta).value, jax.Array)


def test_train_new_seed_changes_run_without_recompiling():
    setup = _setup()
    a = setup.train()
    with count_compilations() as compiled:
        b = setup.train(seed=1)
        c = setup.train(seed=1)
    assert compiled == 0
    jax.tree.map(np.testing.assert_array_equal, b, c)
    assert not np.allclose(a.params["Dense_0"]["kernel"], b.params["Dense_0"]["kernel"])


def test_replace_data_or_seed_shares_compiled_functions_and_matches_a_fresh_setup():
    setup = _setup(meta_spec=MetaSpec())
    copies = [setup.replace(data=setup.data.subset(np.arange(20)))]
    copies.append(setup.replace(data=setup.data.subset(np.arange(10, 30))))
    copies.append(setup.replace(data=setup.data.subset(np.arange(5, 25)), seed=3))
    copies[0].train()  # Compiles training on 20 examples.
    with count_compilations() as compiled:
        for copy in copies[1:]:
            copy.train()
    assert compiled == 0  # Other 20-example subsets, another seed: nothing compiled.
    with count_compilations() as compiled:
        setup.train()  # The 30-example pool: a second shape.
    assert compiled
    for copy in copies:
        assert copy._jitted is setup._jitted
        fresh = _setup(meta_spec=MetaSpec(), data=copy.data, seed=copy.seed)
        jax.tree.map(np.testing.assert_array_equal, copy._batches, fresh._batches)
        jax.tree.map(np.testing.assert_array_equal, copy.init_state(), fresh.init_state())
        trained = copy.train()
        jax.tree.map(np.testing.assert_array_equal, trained, fresh.train())
        assert copy.evaluate(trained) == fresh.evaluate(trained)
    assert setup.replace(num_steps=5)._jitted is not setup._jitted  # Other fields: afresh.


def test_replace_seed_shares_the_data_arrays_and_trains_like_a_fresh_setup():
    # One copy per crafting seed must not hold its own copy of the data set.
    setup = _setup(meta_spec=MetaSpec())
    reseeded = setup.replace(seed=4)
    assert reseeded._arrays is setup._arrays
    assert setup.replace(data=setup.data.subset(np.arange(20)))._arrays is not setup._arrays
    fresh = _setup(meta_spec=MetaSpec(), seed=4)
    jax.tree.map(np.testing.assert_array_equal, reseeded.train(), fresh.train())


def test_batch_order_is_epochwise_permutation_with_masked_fill():
    setup = _setup(num_steps=9)
    index = np.asarray(setup._batches.index)
    mask = np.asarray(setup._batches.mask)
    np.testing.assert_array_equal(np.asarray(setup._batches.count), [8, 8, 8, 6] * 2 + [8])
    for epoch in range(2):
        rows = slice(4 * epoch, 4 * epoch + 4)
        real = index[rows][mask[rows] > 0]
        np.testing.assert_array_equal(np.sort(real), np.arange(30))
        # The fill slots repeat the epoch's first examples.
        np.testing.assert_array_equal(index[rows][mask[rows] == 0], index[4 * epoch, :2])
    assert not np.array_equal(index[:4], index[4:8])


_ORDER_SCRIPT = """
import hashlib, numpy as np, optax, mgd
data = mgd.make_synthetic(num_train=30, num_val=12, num_test=12, input_shape=(5, 5, 1))
setup = mgd.TrainingSetup(mgd.train.models.MLP(), optax.sgd(0.1), data, batch_size=8,
                          num_steps=9, seed=3, augment=True)
x = np.stack([np.asarray(setup._batches.index)]).tobytes()
print(hashlib.sha256(x).hexdigest())
"""


def test_batch_order_identical_across_processes():
    out = subprocess.run(
        [sys.executable, "-c", _ORDER_SCRIPT], capture_output=True, text=True, check=True
    )
    data = mgd.make_synthetic(num_train=30, num_val=12, num_test=12, input_shape=(5, 5, 1))
    setup = TrainingSetup(
        models.MLP(), optax.sgd(0.1), data, batch_size=8, num_steps=9, seed=3, augment=True
    )
    here = hashlib.sha256(np.stack([np.asarray(setup._batches.index)]).tobytes()).hexdigest()
    assert out.stdout.strip() == here


def test_weights_normalize_like_the_learning_rate():
    # Loss is sum_i w_i loss_i / n_t, so doubling every weight doubles SGD's step exactly.
    setup = _setup(
        optimizer=optax.sgd(0.1), meta_spec=MetaSpec(data_weights=True, per_step_lr=True)
    )
    meta = setup.init_meta()
    doubled = setup.train({**meta, "data_weights": 2 * meta["data_weights"]})
    faster = setup.train({**meta, "log_lr": meta["log_lr"] + jnp.log(2.0)})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), doubled, faster)


def test_zero_weight_removes_example():
    # With weight 0, what example 3 holds (input and label) cannot change training.
    setup = _setup(optimizer=optax.sgd(0.1), meta_spec=MetaSpec(data_weights=True))
    weights = {"data_weights": setup.init_meta()["data_weights"].at[3].set(0.0)}
    x, y = np.array(setup.data.x_train), np.array(setup.data.y_train)
    x[3], y[3] = 5.0, (y[3] + 1) % 3
    other = setup.replace(data=setup.data.replace(x_train=x, y_train=y))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        setup.train(weights),
        other.train(weights),
    )
    assert not np.allclose(
        setup.train().params["Dense_0"]["kernel"], other.train().params["Dense_0"]["kernel"]
    )


def test_perturbation_clips_to_valid_range():
    data = _image_data()
    setup = _setup(optimizer=optax.sgd(0.1), meta_spec=MetaSpec(perturb_indices=(2,)))
    huge = {"perturbations": jnp.full((1, 5, 5, 1), 1e3)}
    x_at_high = np.array(data.x_train)
    x_at_high[2] = data.x_range[1]
    clipped_data = setup.replace(
        data=data.replace(x_train=x_at_high, x_range=data.x_range), meta_spec=MetaSpec()
    )
    a = setup.train(huge)
    b = clipped_data.train()
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_lr_knots_interpolate_in_log_space():
    setup = _setup(meta_spec=MetaSpec(lr_knots=(0, 4)), num_steps=7)
    lrs = setup.learning_rates({"log_lr": jnp.log(jnp.array([1.0, 16.0]))})
    np.testing.assert_allclose(lrs, [1, 2, 4, 8, 16, 16, 16], rtol=1e-5)


def test_evaluate_and_retrain_and_evaluate():
    setup = _setup(meta_spec=MetaSpec())
    m = setup.evaluate(setup.train(), "val")
    assert set(m) == {"loss", "accuracy"} and 0 <= m["accuracy"] <= 1
    r = mgd.train.retrain_and_evaluate(setup, seeds=[5, 6, 7])
    assert r["accuracy"].shape == (3,) and r["loss"].shape == (3,)
    np.testing.assert_allclose(r["loss"][0], setup.evaluate(setup.train(seed=5))["loss"])


def test_objectives():
    a = _setup(objective="val_margin", meta_spec=MetaSpec())
    b = _setup(objective=lambda logits, y: -jnp.mean(logits[jnp.arange(len(y)), y]))
    state = a.train()
    assert np.isfinite(a.objective_fn(state, {}))
    assert np.isfinite(b.objective_fn(b.train(b.init_meta()), b.init_meta()))


def test_val_error_is_expected_softmax_error():
    setup = _setup(objective="val_error", meta_spec=MetaSpec())
    state = setup.train()
    logits, _ = setup._model.apply(state.params, state.model_state, setup.data.x_val, False)
    probs = jax.nn.softmax(logits)
    expected = 1 - np.mean(np.take_along_axis(np.asarray(probs), setup.data.y_val[:, None], 1))
    np.testing.assert_allclose(setup.objective_fn(state, {}), expected, rtol=1e-5)
    chunked = setup.replace(eval_batch_size=5).objective_fn(state, {})
    np.testing.assert_allclose(chunked, expected, rtol=1e-5)


def test_objective_chunks_equal_whole():
    setup = _setup(meta_spec=MetaSpec())
    state = setup.train()
    chunked = setup.replace(eval_batch_size=5)
    np.testing.assert_allclose(
        chunked.objective_fn(state, {}), setup.objective_fn(state, {}), rtol=1e-6
    )
    np.testing.assert_allclose(
        chunked.evaluate(state)["loss"], setup.evaluate(state)["loss"], rtol=1e-6
    )


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(batch_size=31), ValueError, "batch_size"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(num_steps=0), ValueError, "num_steps"),
        (dict(num_steps=2.5), TypeError, "num_steps"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(objective="accuracy"), ValueError, "objective"),
        (dict(augment="yes"), TypeError, "augment"),
        (dict(augment=Augment(crop_padding=5)), ValueError, "crop_padding"),
        (dict(data=mgd.make_synthetic(num_train=30), augment=True), ValueError, "image"),
        (dict(meta_spec=MetaSpec(lr_knots=(0, 8))), ValueError, "lr_knots"),
        (dict(meta_spec=MetaSpec(perturb_indices=(30,))), ValueError, "perturb_indices"),
        (dict(model="mlp"), TypeError, "model"),
        (dict(optimizer=optax.sgd), TypeError, "optimizer"),
        (dict(data=np.zeros(3)), TypeError, "data"),
        (dict(dtype=jnp.int32), ValueError, "dtype"),
    ],
)
def test_bad_setup_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        _setup(**changes)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr_knots=(3, 1)), "increasing"),
        (dict(lr_knots=(0, 4), per_step_lr=True), "not both"),
        (dict(perturb_indices=(1, 1)), "distinct"),
        (dict(perturb_indices=(0.5,)), "integers"),
    ],
)
def test_bad_meta_spec(kw, match):
    with pytest.raises(ValueError, match=match):
        MetaSpec(**kw)


def test_bad_meta_and_seed_in_train():
    setup = _setup()
    with pytest.raises(ValueError, match="keys"):
        setup.train({"data_weights": jnp.ones(30)})
    meta = setup.init_meta()
    with pytest.raises(ValueError, match=r'meta\["data_weights"\] must have shape'):
        setup.train({**meta, "data_weights": jnp.ones(29)})
    with pytest.raises(ValueError, match="seed"):
        setup.train(seed=-3)
    with pytest.raises(ValueError, match="split"):
        setup.evaluate(setup.init_state(), "dev")


def test_engine_gets_the_data_as_arguments_and_same_shaped_copies_reuse_its_programs():
    import re

    from mgd.engine import replay

    spec = MetaSpec(data_weights=True, perturb_indices=(1, 4))
    setup = _setup(optimizer=optax.sgd(0.1), meta_spec=spec, num_steps=3)
    # step_fn and objective_fn hold the data as pytree leaves, which the engine passes to its
    # programs as arguments instead of compiling them in as constants.
    assert any(x is setup._arrays.x_train for x in jax.tree.leaves(setup.step_fn))
    assert any(x is setup._arrays.x_val for x in jax.tree.leaves(setup.objective_fn))
    state = setup.init_state()
    meta = {
        "data_weights": jnp.linspace(0.5, 1.5, 30),
        "perturbations": jnp.full((2, 5, 5, 1), 0.1),
    }
    hlo = replay._reverse_block.lower(
        *replay._split_fns(setup.step_fn, setup.objective_fn),
        state,
        meta,
        np.int32(0),
        jax.tree.map(jnp.zeros_like, replay._partition(state)[0]),
        meta,
        np.bool_(True),
        np.bool_(True),
        length=3,
        mode="fused",
    ).as_text()
    assert "tensor<30x5x5x1xf32>" in hlo  # x_train, an argument.
    assert max(map(len, re.findall(r'dense<"0x([0-9A-F]*)">', hlo)), default=0) < 1000

    first = setup.metagradient(meta, checkpoint=mgd.KAryTree(2))
    data = setup.data
    other = setup.replace(data=data.replace(x_train=data.x_train[::-1].copy()))
    with count_compilations() as compiled:
        got = other.metagradient(meta, checkpoint=mgd.KAryTree(2))
    # The same shapes: the engine's programs are reused, with the copy's own data.
    assert compiled == 0
    fresh = _setup(optimizer=optax.sgd(0.1), meta_spec=spec, num_steps=3, data=other.data)
    expected = jax.value_and_grad(unrolled_objective(fresh))(meta)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got.grad["data_weights"], first.grad["data_weights"])
