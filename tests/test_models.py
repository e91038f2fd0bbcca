"""Models: shapes, metasmooth switches, configs on disk, model adapters, optimizers."""

import dataclasses
from importlib import resources
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import nnx

import mgd
from mgd.train import make_optimizer, model_fns, models

CONFIGS = Path(str(resources.files("mgd") / "configs" / "models"))  # Shipped in the package.
X = jnp.ones((2, 8, 8, 1))


def _count(params):
    return sum(p.size for p in jax.tree.leaves(params))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_build_models_and_optimizers(path):
    cfg = yaml.safe_load(path.read_text())
    model = models.make_model(cfg["model"], num_classes=4)
    assert model.config.num_classes == 4
    make_optimizer(cfg["optimizer"])
    if cfg["model"]["name"] == "resnet9":
        return  # Full width is slow on a CPU; test_resnet9_switches runs a narrow one.
    fns = model_fns(model)
    params, state = jax.jit(fns.init)(jax.random.PRNGKey(0), X)
    logits, new_state = jax.jit(fns.apply, static_argnums=3)(params, state, X, True)
    assert logits.shape == (2, 4)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def _random_variables(model):
    # Random values in the init's shapes: flax's own init compiles slowly for many conv shapes.
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), X)
    return jax.tree.map_with_path(
        lambda path, s: (
            jnp.ones(s.shape)
            if "var" in jax.tree_util.keystr(path)
            else jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype)
        ),
        shapes,
    )


def test_resnet9_switches():
    std = models.ResNet9Config()
    smooth = models.ResNet9Config.metasmooth()
    assert (std.bn_before_activation, std.output_scale, std.pool) == (False, 1.0, "max")
    assert (smooth.bn_before_activation, smooth.output_scale, smooth.pool) == (True, 0.1, "avg")
    assert smooth.widths() == (128, 256, 512, 1024)
    yaml_cfg = yaml.safe_load((CONFIGS / "resnet9_metasmooth.yaml").read_text())["model"]
    assert models.make_model(yaml_cfg).config == smooth
    assert models.make_model({"name": "resnet9", "preset": "metasmooth"}).config == smooth
    # Output scale is a pure factor on the logits.
    small = models.ResNet9Config(width_multiplier=1 / 32, num_classes=3)
    scaled = models.ResNet9(dataclasses.replace(small, output_scale=0.1))
    variables = _random_variables(models.ResNet9(small))
    np.testing.assert_allclose(
        scaled.apply(variables, X), 0.1 * models.ResNet9(small).apply(variables, X), rtol=1e-5
    )
    # BN placement changes the function (with batch statistics), not the parameters.
    before = models.ResNet9(dataclasses.replace(small, bn_before_activation=True))
    shapes = jax.eval_shape(before.init, jax.random.PRNGKey(0), X)
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))

    def train_logits(model):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    assert not np.allclose(train_logits(before), train_logits(models.ResNet9(small)))


def test_mlp_and_small_cnn_shapes():
    mlp = models.MLP(models.MLPConfig(num_classes=5, hidden=(7, 3)))
    cnn = models.SmallCNN(models.SmallCNNConfig(num_classes=5, channels=(4,), hidden=0))
    for model in (mlp, cnn):
        variables = model.init(jax.random.PRNGKey(0), X)
        assert model.apply(variables, X).shape == (2, 5)
    assert _count(mlp.init(jax.random.PRNGKey(0), X)) == 64 * 7 + 7 + 7 * 3 + 3 + 3 * 5 + 5


def test_normalized_mlp_hidden_layers_are_scale_invariant():
    model = models.make_model(
        {"name": "mlp", "hidden": [16, 8], "activation": "tanh", "normalize": True},
        num_classes=5,
    )
    variables = model.init(jax.random.PRNGKey(0), X)
    # Layer norm before each activation: scaling a hidden layer's weights and bias leaves the
    # logits unchanged, so too high a learning rate only lowers the effective one.
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 7.0 if "Dense_0" in jax.tree_util.keystr(path) else x, variables
    )
    np.testing.assert_allclose(model.apply(scaled, X), model.apply(variables, X), rtol=1e-5)
    plain = models.MLP(models.MLPConfig(num_classes=5, hidden=(16, 8), activation="tanh"))
    assert not np.allclose(plain.apply(scaled, X), plain.apply(variables, X), rtol=1e-3)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"name": "vgg"}, "name"),
        ({"name": "mlp", "depth": 3}, "unknown field"),
        ({"name": "mlp", "activation": "swish"}, "activation"),
        ({"name": "mlp", "normalize": "yes"}, "normalize"),
        ({"name": "small_cnn", "pool": "min"}, "pool"),
        ({"name": "resnet9", "width_multiplier": 0}, "width_multiplier"),
        ({"name": "resnet9", "output_scale": -1}, "output_scale"),
        ({"name": "mlp", "preset": "metasmooth"}, "preset"),
        ({"name": "mlp", "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_model_configs(config, match):
    with pytest.raises(ValueError, match=match):
        models.make_model(config)


@pytest.mark.parametrize(
    "config, match",
    [({"name": "rmsprop"}, "name"), ({"name": "sgd", "eps_root": 1e-8}, "unknown field")],
)
def test_bad_optimizer_configs(config, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(config)


class _NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(64, 3, rngs=rngs)

    def __call__(self, x):
        return self.dense(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("kind", ["nnx", "plain_pair", "plain_object"])
def test_other_model_kinds_train(kind):
    data = mgd.make_synthetic(num_train=16, num_val=8, input_shape=(8, 8, 1))
    dense = nn.Dense(3)

    def init(key, x):
        return dense.init(key, x.reshape(x.shape[0], -1))

    def apply(params, x):
        return dense.apply(params, x.reshape(x.shape[0], -1))

    class Plain:
        pass

    plain = Plain()
    plain.init, plain.apply = init, apply
    model = {"nnx": _NNXNet(nnx.Rngs(0)), "plain_pair": (init, apply), "plain_object": plain}[kind]
    setup = mgd.TrainingSetup(model, optax.sgd(0.1), data, batch_size=8, num_steps=4)
    before = setup.evaluate(setup.init_state(), "train")["loss"]
    after = setup.evaluate(setup.train(), "train")["loss"]
    assert after < before
