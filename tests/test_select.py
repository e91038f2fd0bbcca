"""Dataset selection end to end: the outer loop, resuming, honest evaluation, the CLI."""

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

import mgd
from mgd.cli import main
from mgd.experiments import DataConfig, load_data
from mgd.outer.selection import budget_exchange, count_descent, evaluate_selection, select_data
from mgd.train.models import MLP, MLPConfig


@pytest.fixture(scope="module")
def setup():
    # One small setup for the module: its functions compile once for all tests.
    data = mgd.make_synthetic(num_train=96, num_val=48, num_test=48, noise=1.5, seed=1)
    return mgd.TrainingSetup(
        MLP(MLPConfig(num_classes=data.num_classes, hidden=(16,))),
        optax.sgd(0.05, momentum=0.9),
        data,
        batch_size=16,
        num_steps=40,
        meta_spec=mgd.MetaSpec(data_weights=True),
    )


class _Stop(Exception):
    pass


def test_killed_run_resumes_to_the_same_selection(tmp_path, setup):

    def run(directory, resume=False, callback=None):
        opt = budget_exchange(num_exchange=6, p=0.7, momentum=0.5, seed=3)
        return select_data(
            setup,
            size=32,
            meta_steps=4,
            optimizer=opt,
            seed=3,
            save_dir=directory,
            resume=resume,
            fingerprint={"run": 1},
            callback=callback,
            progress=False,
        )

    full = run(tmp_path / "a")
    assert len(full.history) == 4
    for h in full.history:  # every meta-step logged, the subset keeps its size
        assert len(h.info["indices"]) == 32 and np.isfinite(h.objective)
        assert h.vjp_steps == setup.num_steps  # an engine metagradient through every step
    assert len(np.unique(full.indices)) == 32
    assert full.history[full.best_step].objective == min(h.objective for h in full.history)

    def stop_after_two(history):
        if len(history) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "b", callback=stop_after_two)
    resumed = run(tmp_path / "b", resume=True)
    np.testing.assert_array_equal(resumed.indices, full.indices)
    np.testing.assert_array_equal(resumed.weights, full.weights)
    report = evaluate_selection(setup, full.indices, seeds=[5], num_random=2, progress=False)
    assert report.selected.size == 32 and report.full.size == setup.data.num_train
    assert len(report.random.accuracies) == 2 and 0 <= report.selected.mean <= 1
    assert "random (x2)" in report.table()
    assert [h.objective for h in resumed.history] == [h.objective for h in full.history]

    with pytest.raises(ValueError, match="different run"):
        select_data(
            setup,
            size=32,
            meta_steps=4,
            seed=3,
            save_dir=tmp_path / "b",
            resume=True,
            fingerprint={"run": 2},
            progress=False,
        )


def test_count_descent_through_the_loop(setup):
    res = select_data(
        setup,
        size=40,
        meta_steps=2,
        optimizer=count_descent(p=0.5),
        fixed_budget=False,
        progress=False,
    )
    assert len(res.indices) == 40
    assert set(np.unique(res.weights)) <= {0.0, 1.0, 2.0, 3.0}


@pytest.mark.slow
def test_noisy_labels_are_avoided_reduced():
    # A statistical claim on one noise draw, so `slow`: test_killed_run_resumes_to_the_same_
    # selection checks the loop and the evaluation exactly. The reduced form of the README's
    # noisy-digits result (which runs the shipped
    # digits_noisy config at full size): 30% wrong labels, select half, fewer steps.
    data, noisy = load_data(DataConfig(label_noise=0.3))
    setup = mgd.TrainingSetup(
        MLP(MLPConfig(hidden=(64,))),
        optax.sgd(0.01, momentum=0.9),
        data,
        batch_size=64,
        num_steps=300,
        meta_spec=mgd.MetaSpec(data_weights=True),
    )
    size = data.num_train // 2
    opt = budget_exchange(num_exchange=size // 5, momentum=0.5)
    res = select_data(setup, size=size, meta_steps=4, optimizer=opt, progress=False)
    assert 1 - noisy[res.indices].mean() >= 0.9
    metrics = evaluate_selection(setup, res.indices, seeds=[7], num_random=2, progress=False)
    assert metrics.selected.mean > metrics.random.mean


def test_label_noise_and_starting_subset_are_independent_draws():
    # With seed 0 and noise_seed 0 the starting subset (default_rng(seed).permutation) held
    # every noisy label when the noise drew from the same stream; now its noisy share is the
    # pool's (30% of 1,078: a binomial spread of about 2 points on a half).
    data, noisy = load_data(DataConfig(label_noise=0.3, noise_seed=0))
    for seed in (0, 1):
        start = np.random.default_rng(seed).permutation(data.num_train)[: data.num_train // 2]
        assert abs(noisy[start].mean() - 0.3) < 0.05


def test_evaluation_refuses_the_selection_seed(setup):
    with pytest.raises(ValueError, match="fresh seeds"):
        evaluate_selection(setup, np.arange(20), seeds=[setup.seed], progress=False)


def test_cli_end_to_end_and_resume(tmp_path, capsys):
    data = mgd.make_synthetic(num_train=96, num_val=48, num_test=48, noise=1.5, seed=1)
    npz = tmp_path / "d.npz"
    np.savez(
        npz,
        x_train=data.x_train,
        y_train=data.y_train,
        x_target=data.x_val,
        y_target=data.y_val,
        x_test=data.x_test,
        y_test=data.y_test,
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "train: {model: {name: mlp, hidden: [16]}, batch_size: 16, num_steps: 30}\n"
        "eval: {num_seeds: 1, num_random: 2}\n"
    )
    out = tmp_path / "run"
    argv = [
        "select",
        "--config",
        str(cfg),
        "--data",
        str(npz),
        "--fraction",
        "0.5",
        "--meta-steps",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "selected" in table and "random (x2)" in table
    selection = json.loads((out / "selection.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(selection["indices"]) == 48 and selection["fraction"] == 0.5
    assert selection["config"]["train"]["num_steps"] == 30
    for key in ("selected", "random", "full"):
        assert 0 <= metrics[key]["accuracy"] <= 1
    assert len(metrics["random"]["accuracies"]) == 2
    assert metrics["eval_seeds"] == [10_000]
    assert (out / "objective.png").stat().st_size > 0
    assert len(json.loads((out / "history.json").read_text())) == 2

    capsys.readouterr()
    # Resuming with another seed would mix two runs: refused, nothing overwritten.
    assert main([*argv[:-3], "--seed", "5", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "different run" in capsys.readouterr().err
    assert json.loads((out / "selection.json").read_text()) == selection

    # Killed before its first checkpoint (config.yaml written, nothing else): --resume starts
    # it over and ends with the uninterrupted run's selection.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text((out / "config.yaml").read_text())
    assert main([*argv[:-3], "--out", str(killed), "--resume", "--quiet"]) == 0
    assert json.loads((killed / "selection.json").read_text()) == selection


def _selection_setup(learning_rate: float):
    """A 20-step cosine-decayed SGD recipe on small synthetic data, with its `TrainConfig`."""
    from mgd.experiments._common import OptimizerConfig, TrainConfig, setup_from_config

    data = mgd.make_synthetic(num_train=64, num_val=32, num_test=32, noise=1.5, seed=2)
    train = TrainConfig(
        model=MLPConfig(hidden=(8,)),
        optimizer=OptimizerConfig(learning_rate=learning_rate, lr_decay="cosine"),
        batch_size=16,
        num_steps=20,
    )
    setup = setup_from_config(train, data, seed=3, meta_spec=mgd.MetaSpec(data_weights=True))
    return data, train, setup


def _flat_params(setup) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(setup.train().params)])


def test_evaluation_models_decay_the_learning_rate_over_their_own_steps():
    # A cosine decay built for the selection's 20 steps would train the last 40 of a 60-step
    # evaluation run at its final rate; the evaluation recipe decays over all 60 steps.
    from mgd.experiments import select

    data, train, setup = _selection_setup(0.1)
    config = select.SelectConfig(train=train, eval=select.EvalConfig(num_steps=60))
    got = select.eval_setup(config, setup)
    assert got.num_steps == 60 and got.seed == 3 and got.meta_spec == setup.meta_spec
    expected = mgd.TrainingSetup(
        MLP(MLPConfig(num_classes=data.num_classes, hidden=(8,))),
        optax.sgd(optax.cosine_decay_schedule(0.1, 60, alpha=0.05), momentum=0.9),
        data,
        batch_size=16,
        num_steps=60,
        seed=3,
    )
    want = expected.train().params
    np.testing.assert_allclose(_flat_params(got), _flat_params(expected), rtol=1e-5, atol=1e-6)
    stale = setup.replace(num_steps=60).train().params
    gap = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(stale), jax.tree.leaves(want), strict=True)
    )
    assert gap > 1e-3
    assert select.eval_setup(dataclasses.replace(config, eval=select.EvalConfig()), setup) is setup


def test_evaluation_models_train_with_the_evaluation_optimizer():
    # eval.optimizer replaces the selection's (smooth) recipe for the evaluation models only: a
    # constant rate of 0.05 over the selection's own 20 steps, same data, seed and weights.
    from mgd.experiments import select
    from mgd.experiments._common import OptimizerConfig

    data, train, setup = _selection_setup(0.01)
    user = OptimizerConfig(learning_rate=0.05, momentum=0.5)
    config = select.SelectConfig(train=train, eval=select.EvalConfig(optimizer=user))
    got = select.eval_setup(config, setup)
    assert got.num_steps == 20 and got.seed == 3 and got.meta_spec == setup.meta_spec
    expected = mgd.TrainingSetup(
        MLP(MLPConfig(num_classes=data.num_classes, hidden=(8,))),
        optax.sgd(0.05, momentum=0.5),
        data,
        batch_size=16,
        num_steps=20,
        seed=3,
    )
    np.testing.assert_allclose(_flat_params(got), _flat_params(expected), rtol=1e-5, atol=1e-6)
    # Read from a config file's mapping, as `mgd select --config` does.
    from mgd.config import config_from_dict

    raw = {"eval": {"optimizer": {"learning_rate": 0.05, "lr_decay": "constant"}}}
    parsed = config_from_dict(raw, select.SelectConfig)
    assert parsed.eval.optimizer == OptimizerConfig(learning_rate=0.05)
