"""Metasmoothness: the score's formula, its errors, and metasmooth ResNet-9 beating standard."""

import numpy as np
import optax
import pytest

import mgd
from mgd.train import MetaSpec, metasmoothness, models, sign_agreement


def test_sign_agreement_formula():
    t0 = np.zeros(3)
    assert sign_agreement(t0, np.array([1.0, 1, 1]), np.array([2.0, 2, 2])) == 1.0
    assert sign_agreement(t0, np.array([1.0, 1, 1]), np.array([0.5, 0.5, 0.5])) == -1.0
    assert sign_agreement(t0, t0, t0) == 0.0
    # Weighted by |theta2 - theta0|: the coordinate that moved 3 outweighs the one that moved 1.
    score = sign_agreement(t0[:2], np.array([1.0, 2.0]), np.array([1.0 + 2.0, 1.0]))
    assert score == pytest.approx((3 * 1 + 1 * -1) / 4)


def _digits_setup(config):
    data = mgd.load_digits().subset(np.arange(256))
    return mgd.TrainingSetup(
        models.ResNet9(config),
        optax.sgd(0.05, momentum=0.9, nesterov=True),
        data,
        batch_size=32,
        num_steps=30,
        meta_spec=MetaSpec(data_weights=True),
    )


def test_metasmooth_resnet9_scores_higher_than_standard():
    # Narrow nets (width 1/32) on digits; same width and optimizer, only the model switches
    # differ. Six directions: the standard net's scores scatter (its training is chaotic, and
    # they move by about 0.05 between JAX versions), so three would leave a thin margin.
    standard, smooth = (
        metasmoothness(_digits_setup(config), h=0.2, num_directions=6)
        for config in (
            models.ResNet9Config(width_multiplier=1 / 32),
            models.ResNet9Config.metasmooth(width_multiplier=1 / 32),
        )
    )
    for r in (standard, smooth):
        assert -1 <= r.score <= 1 and r.scores.shape == (6,) and r.stderr >= 0
    assert smooth.score - 2 * smooth.stderr > standard.score + 2 * standard.stderr


def test_metasmoothness_errors():
    data = mgd.make_synthetic(num_train=16)
    setup = mgd.TrainingSetup(models.MLP(), optax.sgd(0.1), data, batch_size=8, num_steps=2)
    with pytest.raises(ValueError, match="no metaparameter"):
        metasmoothness(setup)
    setup = setup.replace(meta_spec=MetaSpec(weight_decay=True))
    with pytest.raises(ValueError, match="keys"):
        metasmoothness(setup, keys=["data_weights"])
    with pytest.raises(ValueError, match="h and num_directions"):
        metasmoothness(setup, h=0.0)
