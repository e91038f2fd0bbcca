"""The selection baselines against noisy labels (small-loss, EL2N): scores exactly as defined,
computed independently from the same trained models, and kept indices the smallest scores."""

import numpy as np
import optax
import pytest

import mgd
from mgd.outer.selection import el2n_selection, evaluate_selection, small_loss_selection
from mgd.train.models import MLP, MLPConfig

_NOISE = 0.3
_STEPS = 20


@pytest.fixture(scope="module")
def noisy():
    # Well separated clusters; 30% of the pool relabelled with a wrong class. A plain setup of
    # _STEPS steps: the baselines train it as it is, so all tests share its compilation.
    data = mgd.make_synthetic(num_train=120, num_val=40, num_test=40, noise=0.5, seed=2)
    rng = np.random.default_rng(0)
    flipped = np.zeros(data.num_train, bool)
    flipped[rng.permutation(data.num_train)[: round(_NOISE * data.num_train)]] = True
    y = data.y_train.copy()
    y[flipped] = (y[flipped] + rng.integers(1, data.num_classes, flipped.sum())) % 3
    setup = mgd.TrainingSetup(
        MLP(MLPConfig(num_classes=data.num_classes, hidden=(16,))),
        optax.sgd(0.05, momentum=0.9),
        data.replace(y_train=y),
        batch_size=16,
        num_steps=_STEPS,
        seed=5,
        eval_batch_size=50,  # chunks of the pool, the last one padded
    )
    return setup, flipped


def _logits(setup, seeds):
    # The same models as the baselines train, scored on the whole pool at once (no chunks).
    fns = mgd.train.model_fns(setup.model)
    states = [setup.train(seed=s) for s in seeds]
    return [
        np.asarray(fns.apply(st.params, st.model_state, setup.data.x_train, False)[0], np.float64)
        for st in states
    ]


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_small_loss_scores_are_the_training_losses(noisy):
    setup, flipped = noisy
    sel = small_loss_selection(setup, 60, num_steps=_STEPS)
    (logits,) = _logits(setup, [5])  # setup.seed by default
    p = _softmax(logits)
    expected = -np.log(p[np.arange(setup.data.num_train), setup.data.y_train])
    np.testing.assert_allclose(sel.scores, expected, rtol=1e-4, atol=1e-6)
    assert sel.name == "small_loss" and sel.scores.shape == (setup.data.num_train,)
    np.testing.assert_array_equal(sel.indices, np.sort(np.argsort(sel.scores)[:60]))
    # Noisy labels have the larger losses early in training: the kept half is mostly clean.
    assert flipped[sel.indices].mean() < 0.5 * _NOISE
    other = small_loss_selection(setup, 60, num_steps=_STEPS, seed=6)
    np.testing.assert_allclose(
        other.scores,
        -np.log(_softmax(_logits(setup, [6])[0]))[
            np.arange(setup.data.num_train), setup.data.y_train
        ],
        rtol=1e-4,
        atol=1e-6,
    )


def test_el2n_scores_average_the_error_norms(noisy):
    setup, flipped = noisy
    sel = el2n_selection(setup, 60, num_steps=_STEPS, seeds=[7, 8, 9])
    onehot = np.eye(3)[setup.data.y_train]
    norms = [np.linalg.norm(_softmax(z) - onehot, axis=1) for z in _logits(setup, [7, 8, 9])]
    np.testing.assert_allclose(sel.scores, np.mean(norms, axis=0), rtol=1e-5, atol=1e-6)
    assert sel.name == "el2n"
    np.testing.assert_array_equal(sel.indices, np.sort(np.argsort(sel.scores)[:60]))
    assert flipped[sel.indices].mean() < 0.5 * _NOISE


def test_defaults_train_a_tenth_of_the_run_and_el2n_four_seeds(noisy):
    setup, _ = noisy
    long = setup.replace(num_steps=10 * _STEPS)
    default = el2n_selection(long, 60)
    onehot = np.eye(3)[setup.data.y_train]
    norms = [np.linalg.norm(_softmax(z) - onehot, axis=1) for z in _logits(setup, [5, 6, 7, 8])]
    np.testing.assert_allclose(default.scores, np.mean(norms, axis=0), rtol=1e-5, atol=1e-6)


def test_ties_keep_the_lower_index(noisy):
    setup, _ = noisy
    # Each example twice: equal scores in pairs (2i, 2i + 1); keeping an odd number splits one
    # pair, and the stable order keeps its lower index.
    twins = setup.replace(data=setup.data.subset(np.repeat(np.arange(4), 2)), batch_size=4)
    sel = small_loss_selection(twins, 3, num_steps=1)
    np.testing.assert_array_equal(sel.scores[::2], sel.scores[1::2])
    kept = np.bincount(sel.indices // 2, minlength=4)
    (split,) = np.flatnonzero(kept == 1)
    assert 2 * split in sel.indices


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, r"size must be an int in \[1, 120\]"),
        ({"size": 121}, r"size must be an int in \[1, 120\]"),
        ({"size": 10, "num_steps": 0}, "num_steps must be an int >= 1"),
    ],
)
def test_bad_arguments(noisy, kwargs, match):
    setup, _ = noisy
    for fn in (small_loss_selection, el2n_selection):
        with pytest.raises(ValueError, match=match):
            fn(setup, **kwargs)


def test_el2n_refuses_regression_targets_and_no_seeds(noisy):
    setup, _ = noisy
    with pytest.raises(ValueError, match="seeds is empty"):
        el2n_selection(setup, 10, seeds=[])
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    data = mgd.Dataset(x, x[:, :2], x, x[:, :2], x, x[:, :2])
    regression = setup.replace(data=data, loss=mgd.train.squared_error, batch_size=4)
    with pytest.raises(ValueError, match="EL2N needs integer class labels"):
        el2n_selection(regression, 5)


def test_evaluation_reports_baselines_with_every_seed(noisy):
    setup, _ = noisy
    sel = small_loss_selection(setup, 60, num_steps=_STEPS)
    report = evaluate_selection(
        setup,
        np.arange(60),
        seeds=[11, 12],
        num_random=1,
        baselines={"small_loss": sel.indices},
        progress=False,
    )
    (b,) = report.baselines
    on_subset = setup.replace(data=setup.data.subset(sel.indices))
    expected = mgd.train.retrain_and_evaluate(on_subset, seeds=[11, 12], split="test")
    np.testing.assert_allclose(b.accuracies, expected["accuracy"])
    assert (b.name, b.size) == ("small_loss", 60)
    assert "small_loss" in report.table()
    assert report.to_dict()["baselines"]["small_loss"]["accuracies"] == b.accuracies.tolist()
