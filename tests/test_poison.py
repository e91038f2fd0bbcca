"""The MGD poisoning attack, its baselines, evaluation, experiment runner, script and configs."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import count_compilations

from mgd.cli import main
from mgd.experiments import DataConfig, TrainConfig, read_config
from mgd.experiments._common import prepare_out
from mgd.experiments.poison import (
    GradientCancelingConfig,
    PoisonAttackConfig,
    PoisonConfig,
    run,
)
from mgd.outer.poison import (
    choose_poison_indices,
    evaluate_poisons,
    gradient_canceling_poison,
    influential_poison_indices,
    label_flip_poison,
    other_class_start,
    poison_attack,
    random_noise_poison,
)
from mgd.outer.poison._attack import (
    _rescaled_cross_entropy,
    _shift_images,
    _target_shifts,
    apply_perturbations,
)
from mgd.train import TrainingSetup, make_synthetic, models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    # Inputs in a known valid range, so the range constraint is exercised.
    d = make_synthetic(num_train=64, num_val=32, num_test=32, input_shape=(6,), noise=0.7)
    return d.replace(x_range=(-3.0, 3.0), x_train=np.clip(d.x_train, -3, 3))


@pytest.fixture(scope="module")
def setup(data):
    model = models.MLP(models.MLPConfig(num_classes=3, hidden=(8,)))
    return TrainingSetup(model, optax.sgd(0.2), data, batch_size=16, num_steps=12)


def _val_loss(setup, data, seed):
    victim = setup.replace(data=data)
    return victim.evaluate(victim.train(seed=seed), "val")["loss"]


def test_attack_raises_the_crafting_objective_and_stays_feasible(setup, data):
    res = poison_attack(
        setup,
        fraction=0.25,
        meta_steps=6,
        step_size=0.05,
        bound=0.2,
        craft_seeds=(0,),
        progress=False,
    )
    assert res.name == "mgd" and res.craft_seeds == (0,)
    assert [h.step for h in res.history] == list(range(6))
    assert _val_loss(setup, res.data, 0) > _val_loss(setup, data, 0)
    # Only the poisoned inputs move, within the bound (a fraction of the range width 6) and
    # the valid range; labels and held-out splits are untouched.
    moved = np.any(res.data.x_train != data.x_train, axis=1)
    assert set(np.flatnonzero(moved)) <= set(res.indices)
    assert np.abs(res.perturbations).max() <= 0.2 * 6 + 1e-5
    assert res.data.x_train.min() >= -3 and res.data.x_train.max() <= 3
    np.testing.assert_array_equal(res.data.y_train, data.y_train)
    np.testing.assert_array_equal(res.data.x_val, data.x_val)
    np.testing.assert_allclose(
        res.perturbations, res.data.x_train[res.indices] - data.x_train[res.indices]
    )


def test_attack_on_val_and_clean_maximizes_the_loss_on_the_unpoisoned_pool_too(setup, data):
    kwargs = dict(fraction=0.25, meta_steps=2, step_size=0.05, craft_seeds=(0,), progress=False)
    res = poison_attack(setup, target="val_and_clean", **kwargs)
    clean = np.setdiff1d(np.arange(data.num_train), res.indices)
    both = data.replace(
        x_val=np.concatenate([data.x_val, data.x_train[clean]]),
        y_val=np.concatenate([data.y_val, data.y_train[clean]]),
    )
    # The first meta-step's objective is before any update: plain training, on the larger split.
    victim = setup.replace(data=both)
    expected = victim.objective_fn(victim.train(seed=0), {})
    np.testing.assert_allclose(res.history[0].objective, expected, rtol=1e-5)
    assert res.history[1].objective > res.history[0].objective
    # The poisoned pool keeps the clean data's held-out splits.
    np.testing.assert_array_equal(res.data.x_val, data.x_val)
    with pytest.raises(ValueError, match="target must be 'val' or 'val_and_clean'"):
        poison_attack(setup, target="test", **kwargs)


def _shifted_by_hand(images, shifts):
    # Output pixel (r, c) is input pixel (r - down, c - right), clipped to the image.
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    for i, (down, right) in enumerate(shifts):
        for r in range(h):
            for c in range(w):
                out[i, r, c] = images[
                    i, min(max(r - down, 0), h - 1), min(max(c - right, 0), w - 1)
                ]
    return out


def test_target_augment_maximizes_the_loss_on_target_images_shifted_every_meta_step():
    # 4x4 grey images, flattened as Fashion-MNIST's for an MLP.
    d = make_synthetic(num_train=64, num_val=32, num_test=32, input_shape=(16,), noise=0.7)
    model = models.MLP(models.MLPConfig(num_classes=3, hidden=(8,)))
    setup = TrainingSetup(model, optax.sgd(0.2), d, batch_size=16, num_steps=12)
    kwargs = dict(fraction=0.25, step_size=0.05, craft_seeds=(0, 1), seed=3, progress=False)
    one = poison_attack(setup, meta_steps=1, target_augment=1, **kwargs)
    two = poison_attack(setup, meta_steps=2, target_augment=1, **kwargs)
    shifts = [_target_shifts(32, 1, seed=3, step=k) for k in range(2)]
    assert not np.array_equal(shifts[0], shifts[1])  # a new draw every meta-step
    assert set(np.unique(shifts[0])) == {-1, 0, 1}
    # Meta-step k's objective: the crafting run (seed k, the pool poisoned so far) on the
    # target images shifted by that step's draw.
    for k, pool in enumerate((d, one.data)):
        by_hand = _shifted_by_hand(d.x_val.reshape(32, 4, 4), shifts[k]).reshape(32, 16)
        victim = setup.replace(data=pool.replace(x_val=by_hand))
        expected = victim.objective_fn(victim.train(seed=k), {})
        np.testing.assert_allclose(two.history[k].objective, expected, rtol=1e-5)
    plain = poison_attack(setup, meta_steps=1, **kwargs)
    assert abs(plain.history[0].objective - two.history[0].objective) > 1e-4
    # Colour images keep their layout: each channel shifts alike.
    x = np.random.default_rng(0).normal(size=(6, 4, 3, 2)).astype(np.float32)
    s = np.random.default_rng(1).integers(-2, 3, size=(6, 2))
    np.testing.assert_array_equal(_shift_images(x, s, (4, 3, 2)), _shifted_by_hand(x, s))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="target_augment must be None"):
            poison_attack(setup, meta_steps=1, target_augment=bad, **kwargs)
    six = make_synthetic(num_train=64, num_val=32, num_test=32, input_shape=(6,))
    with pytest.raises(ValueError, match=r"needs inputs of shape \(H, W, C\)"):
        poison_attack(setup.replace(data=six), meta_steps=1, target_augment=1, **kwargs)
    with pytest.raises(ValueError, match="attack: target_augment must be None"):
        PoisonAttackConfig(target_augment=0)


def _margin_and_rescaled_ce(logits, y, tau):
    # References in numpy: the logit margin (logsumexp of the wrong logits minus the right one)
    # and the cross-entropy of logits centred and rescaled to RMS tau.
    right = logits[np.arange(y.size), y]
    wrong = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits)
    margin = np.log(np.exp(wrong).sum(axis=1)) - right
    z = logits - logits.mean(axis=1, keepdims=True)
    z = tau * z / np.sqrt(np.mean(z**2, axis=1, keepdims=True))
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(y.size), y]
    return margin, ce


@pytest.mark.parametrize("option", ["margin_clip", "logit_scale"])
def test_attack_maximizes_the_chosen_objective(setup, data, option):
    kwargs = dict(fraction=0.25, meta_steps=2, step_size=0.05, craft_seeds=(0,), progress=False)
    res = poison_attack(setup, **{option: 0.5}, **kwargs)
    # The first meta-step's objective is before any update: plain training.
    state = setup.train(seed=0)
    logits = np.asarray(setup._model.apply(state.params, state.model_state, data.x_val, False)[0])
    margin, ce = _margin_and_rescaled_ce(logits.astype(np.float64), data.y_val, 0.5)
    if option == "margin_clip":
        assert np.any(margin > 0.5) and np.any(margin < 0.5)  # the clip is active on some
        expected = np.minimum(margin, 0.5).mean()
    else:
        # Invariant to the logits' scale: 3x the logits give the same objective.
        objective = _rescaled_cross_entropy(0.5)
        np.testing.assert_allclose(
            objective(3 * logits, data.y_val), objective(logits, data.y_val), rtol=1e-6
        )
        expected = ce.mean()
    np.testing.assert_allclose(res.history[0].objective, expected, rtol=1e-5, atol=1e-6)
    assert res.history[1].objective > res.history[0].objective
    with pytest.raises(ValueError, match=f"{option} must be a finite number"):
        poison_attack(setup, **{option: float("inf")}, **kwargs)
    with pytest.raises(ValueError, match="at most one of margin_clip and logit_scale"):
        poison_attack(setup, margin_clip=0.5, logit_scale=0.5, **kwargs)


class _Killed(Exception):
    pass


def _kill_after(n):
    def callback(history):
        if len(history) == n:
            raise _Killed

    return callback


def test_attack_resumes_where_it_stopped(setup, tmp_path):
    kwargs = dict(fraction=0.1, step_size=0.05, craft_seeds=(0, 1), progress=False)
    full = poison_attack(setup, meta_steps=3, **kwargs)
    with pytest.raises(_Killed):
        poison_attack(setup, meta_steps=3, save_dir=tmp_path, callback=_kill_after(1), **kwargs)
    resumed = poison_attack(setup, meta_steps=3, save_dir=tmp_path, resume=True, **kwargs)
    np.testing.assert_array_equal(resumed.perturbations, full.perturbations)
    assert [h.objective for h in resumed.history] == [h.objective for h in full.history]
    assert [h.info["craft_seed"] for h in resumed.history] == [0, 1, 0]


@pytest.mark.parametrize(
    "change",
    [
        dict(seed=1),
        dict(craft_seeds=(1, 0)),
        dict(bound=0.1),
        dict(step_size=0.1),
        dict(target="val_and_clean"),
        dict(init="other_class"),
    ],
)
def test_attack_resumed_with_changed_arguments_is_refused(setup, tmp_path, change):
    # Same fraction, so perturbations of the right shape would restore onto other examples.
    kwargs = dict(fraction=0.1, step_size=0.05, craft_seeds=(0, 1), seed=0, progress=False)
    poison_attack(setup, meta_steps=1, save_dir=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="different run"):
        poison_attack(setup, meta_steps=2, save_dir=tmp_path, resume=True, **{**kwargs, **change})
    with pytest.raises(ValueError, match="resume=True"):
        poison_attack(setup, meta_steps=2, save_dir=tmp_path, **kwargs)


def test_crafting_over_several_seeds_compiles_each_program_once(data):
    # Fresh setups compile their own programs; six meta-steps on one crafting seed, then on
    # three: the seeds add no compilation. (A first run compiles what all setups share.)
    model = models.MLP(models.MLPConfig(num_classes=3, hidden=(7,)))
    kwargs = dict(fraction=0.25, step_size=0.05, meta_steps=6, progress=False)
    counts = []
    for seeds in [(0,), (0,), (0, 1, 2)]:
        fresh = TrainingSetup(model, optax.sgd(0.2), data, batch_size=16, num_steps=9)
        with count_compilations() as count:
            poison_attack(fresh, craft_seeds=seeds, **kwargs)
        counts.append(count.value)
    assert counts[1] > 0 and counts[2] == counts[1]


def test_influential_indices_have_the_largest_first_order_gain(x64, setup):
    # Reference: jax.grad of the unrolled training run w.r.t. every example's perturbation, and
    # the attack's first projected step from zero (sign: eta per coordinate; normalized: unit
    # RMS per example), clipped to the valid range [-3, 3] (some inputs sit on its edge); over
    # two seeds, the geometric mean of the gains.
    s = setup.replace(dtype=jnp.float64)
    x = jnp.asarray(s.data.x_train, jnp.float64)
    spec = dataclasses.replace(s.meta_spec, perturb_indices=tuple(range(s.data.num_train)))
    every = s.replace(meta_spec=spec)

    def objective(delta, seed):
        meta = {"perturbations": delta}
        return every.objective_fn(every.train(meta, seed=seed), meta)

    grads = [jax.grad(objective)(jnp.zeros_like(x), seed) for seed in (0, 1)]
    for rule in ("sign", "normalized"):
        gains = []
        for g in grads:
            if rule == "sign":
                direction = jnp.sign(g)
            else:
                direction = g / jnp.sqrt(jnp.mean(g**2, axis=1, keepdims=True))
            step = jnp.clip(0.05 * 6 * direction, -3 - x, 3 - x)
            gains.append(np.asarray(jnp.sum(g * step, axis=1)))
        # One seed with the sign, the geometric mean over two with the normalized rule.
        seeds, gain = ((0,), gains[0]) if rule == "sign" else ((0, 1), np.sqrt(gains[0] * gains[1]))
        idx = influential_poison_indices(s, 0.25, step_size=0.05, rule=rule, seeds=seeds)
        assert idx.shape == (16,) and np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(idx, np.sort(np.argsort(-gain)[:16]), err_msg=rule)
        # Not a near-tie: the 16th gain clears the 17th.
        ranked = np.sort(gain)[::-1]
        assert ranked[15] - ranked[16] > 1e-8 * ranked[0]
        if rule == "sign":
            # Per class: each class keeps its share of the pool, its largest gains.
            idx = influential_poison_indices(s, 0.25, step_size=0.05, seeds=(0,), per_class=True)
            # Classes of 17, 25, 22 examples: shares 4.25, 6.25, 5.5 of 16; the remaining one
            # goes to the largest remainder.
            y = s.data.y_train
            assert np.bincount(y).tolist() == [17, 25, 22]
            quota = [4, 6, 6]
            np.testing.assert_array_equal(np.bincount(y[idx], minlength=3), quota)
            for c in range(3):
                members = np.flatnonzero(y == c)
                top = members[np.argsort(-gain[members])[: quota[c]]]
                np.testing.assert_array_equal(idx[y[idx] == c], np.sort(top))
        # The two seeds' batch orders choose differently: the second seed matters.
        assert set(np.argsort(-gains[0])[:16]) != set(np.argsort(-gains[1])[:16])
    with pytest.raises(ValueError, match="seeds is empty"):
        influential_poison_indices(s, 0.25, seeds=())


def test_attack_with_two_seeds_per_step_ascends_their_mean_metagradient(setup, data):
    kwargs = dict(fraction=0.25, step_size=0.05, rule="normalized", progress=False)
    res = poison_attack(setup, meta_steps=2, craft_seeds=(0, 1, 2), seeds_per_step=2, **kwargs)
    assert [h.info["craft_seeds"] for h in res.history] == [[0, 1], [2, 0]]
    # The first meta-step: the mean of the seed-0 and seed-1 objectives and metagradients,
    # i.e. the normalized step along g0 + g1 (as a one-step attack on each seed computes).
    victims = [_val_loss(setup, data, s) for s in (0, 1)]
    np.testing.assert_allclose(res.history[0].objective, np.mean(victims), rtol=1e-5)
    spec = dataclasses.replace(setup.meta_spec, perturb_indices=tuple(res.indices.tolist()))
    crafting = setup.replace(meta_spec=spec)
    g = sum(crafting.replace(seed=s).metagradient().grad["perturbations"] for s in (0, 1))
    one = poison_attack(
        setup,
        meta_steps=1,
        indices=res.indices,
        craft_seeds=(0, 1),
        seeds_per_step=2,
        **{**kwargs, "fraction": None},
    )
    step = 0.05 * 6 * g / np.sqrt(np.mean(np.square(g), axis=1, keepdims=True))
    x = data.x_train[res.indices]
    np.testing.assert_allclose(one.perturbations, np.clip(step, -3 - x, 3 - x), atol=1e-5)
    with pytest.raises(ValueError, match="seeds_per_step must be an int >= 1"):
        poison_attack(setup, meta_steps=1, seeds_per_step=0, **kwargs)


@pytest.mark.parametrize("bound", [None, 0.05])
def test_other_class_start_is_a_pool_image_of_another_class(data, bound):
    idx = choose_poison_indices(data.num_train, 0.25)
    delta = other_class_start(data, idx, seed=1, bound=bound)
    x = data.x_train[idx] + delta
    clean = np.setdiff1d(np.arange(data.num_train), idx)
    if bound is None:
        # Each start is exactly an unpoisoned image whose label differs from the poisoned one's.
        match = np.all(np.isclose(x[:, None], data.x_train[clean][None]), axis=2)
        assert match.any(axis=1).all()
        for i, row in zip(idx, match, strict=True):
            assert (data.y_train[clean][row] != data.y_train[i]).all()
    else:
        assert np.abs(delta).max() <= 0.05 * 6 + 1e-5
    assert x.min() >= -3 and x.max() <= 3


def test_attack_from_other_class_images_starts_there(setup, data):
    kwargs = dict(fraction=0.25, step_size=0.05, craft_seeds=(0,), progress=False)
    res = poison_attack(setup, meta_steps=2, init="other_class", seed=2, **kwargs)
    start = other_class_start(data, res.indices, seed=2)
    # The first meta-step's objective is that of training on the other-class starting images.
    expected = _val_loss(setup, apply_perturbations(data, res.indices, start), 0)
    np.testing.assert_allclose(res.history[0].objective, expected, rtol=1e-5)
    assert res.history[1].objective > res.history[0].objective
    with pytest.raises(ValueError, match="init must be 'zero' or 'other_class'"):
        poison_attack(setup, meta_steps=1, init="noise", **kwargs)


def test_same_fraction_same_examples_across_attacks(setup, data):
    flip = label_flip_poison(data, fraction=0.1, seed=3)
    noise = random_noise_poison(data, fraction=0.1, seed=3)
    np.testing.assert_array_equal(flip.indices, noise.indices)
    np.testing.assert_array_equal(flip.indices, choose_poison_indices(64, 0.1, seed=3))


def test_label_flip_changes_only_the_labels_of_the_fraction(data):
    res = label_flip_poison(data, fraction=0.25)
    assert res.indices.size == 16
    changed = np.flatnonzero(res.data.y_train != data.y_train)
    np.testing.assert_array_equal(changed, res.indices)
    np.testing.assert_array_equal(res.data.x_train, data.x_train)


@pytest.mark.parametrize("bound", [None, 0.1])
def test_random_noise_uses_the_budget(data, bound):
    res = random_noise_poison(data, fraction=0.25, bound=bound)
    x = res.data.x_train[res.indices]
    assert x.min() >= -3 and x.max() <= 3
    if bound is not None:
        # Each coordinate at +-bound * width unless the valid range clipped it.
        clipped = (x == -3) | (x == 3)
        np.testing.assert_allclose(np.abs(res.perturbations)[~clipped], 0.6, rtol=1e-5)
    else:
        assert np.abs(res.perturbations).mean() > 0.5


def test_gradient_canceling_lowers_its_objective(setup):
    res = gradient_canceling_poison(
        setup, fraction=0.25, steps=15, step_size=0.05, target_steps=5, progress=False
    )
    h = res.details["objective"]
    assert min(h[1:]) < h[0]
    assert res.details["target_train_loss"][0] > res.details["clean_train_loss"][0]
    assert res.craft_seeds == (setup.seed,)
    assert res.data.x_train.min() >= -3 and res.data.x_train.max() <= 3


def test_evaluation_pairs_seeds_and_rejects_crafting_seeds(setup, data):
    flip = label_flip_poison(data, fraction=0.25)
    report = evaluate_poisons(setup, [flip], seeds=(10, 11, 12), progress=False)
    entry = report.attacks["label_flip"]
    assert entry.accuracy.shape == (3,)
    np.testing.assert_allclose(entry.drop, report.clean.accuracy - entry.accuracy)
    metrics = report.to_dict()
    assert set(metrics) == {"clean", "label_flip"}
    assert {"test_accuracy_mean", "test_accuracy_std"} <= set(metrics["label_flip"])
    crafted = dataclasses.replace(flip, craft_seeds=(11,))
    with pytest.raises(ValueError, match="used to craft"):
        evaluate_poisons(setup, [crafted], seeds=(10, 11, 12), progress=False)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_fraction_outside_open_unit_interval_is_rejected(setup, data, fraction):
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\)"):
        poison_attack(setup, fraction=fraction, meta_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\)"):
        label_flip_poison(data, fraction=fraction)


@pytest.mark.parametrize("bound", [-0.1, 0.0, float("nan")])
def test_negative_bound_is_rejected(setup, data, bound):
    with pytest.raises(ValueError, match="bound must be a finite"):
        poison_attack(setup, fraction=0.1, bound=bound, meta_steps=1, progress=False)
    with pytest.raises(ValueError, match="bound must be a finite"):
        random_noise_poison(data, fraction=0.1, bound=bound)


@pytest.mark.parametrize(
    "indices, match",
    [([0, 64], "out of range"), ([-1, 3], "out of range"), ([2, 2], "repeat"), ([], "non-empty")],
)
def test_bad_indices_are_rejected(setup, data, indices, match):
    with pytest.raises(ValueError, match=match):
        poison_attack(setup, indices=np.array(indices, int), meta_steps=1, progress=False)
    with pytest.raises(ValueError, match=match):
        random_noise_poison(data, indices=np.array(indices, int))


def test_fraction_and_indices_are_exclusive(setup):
    with pytest.raises(ValueError, match="exactly one of fraction"):
        poison_attack(setup, fraction=0.1, indices=[1], meta_steps=1, progress=False)


def test_data_without_held_out_split_is_rejected(setup, data):
    no_test = data.replace(x_test=data.x_test[:0], y_test=data.y_test[:0])
    with pytest.raises(ValueError, match="no held-out test split"):
        poison_attack(setup.replace(data=no_test), fraction=0.1, meta_steps=1, progress=False)
    no_val = data.replace(x_val=data.x_val[:0], y_val=data.y_val[:0])
    with pytest.raises(ValueError, match="no held-out val split"):
        label_flip_poison(no_val, fraction=0.1)


def _tiny_config(**attack) -> PoisonConfig:
    return PoisonConfig(
        data=DataConfig(name="synthetic", synthetic_shape=(6,), synthetic_sizes=(48, 24, 24)),
        train=TrainConfig(model={"name": "mlp", "hidden": [8]}, batch_size=16, num_steps=6),
        attack=PoisonAttackConfig(fraction=0.1, meta_steps=2, craft_seeds=(0,), **attack),
        gradient_canceling=GradientCancelingConfig(steps=2, target_steps=2),
        victim_seeds=(7, 8, 9),
    )


def test_experiment_writes_metrics_and_plot(tmp_path):
    exp = run(_tiny_config(choose="metagradient", choose_seeds=(5, 6)), tmp_path, progress=False)
    assert [h.step for h in exp.results["mgd"].history] == [0, 1]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"clean", "mgd", "random_noise", "label_flip", "gradient_canceling"}
    for entry in metrics.values():
        assert len(entry["test_accuracy"]) == 3
        assert 0 <= entry["test_accuracy_mean"] <= 1 and entry["test_accuracy_std"] >= 0
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert set(exp.results) == set(metrics) - {"clean"}
    assert "MGD's drop" in exp.table() or "mgd" in exp.table()
    # Every attack poisons the examples MGD chose (from the seed-5 and -6 metagradients).
    expected = influential_poison_indices(exp.setup, 0.1, step_size=0.05, seeds=(5, 6))
    for res in exp.results.values():
        np.testing.assert_array_equal(res.indices, expected)
    with pytest.raises(ValueError, match="also crafting seeds"):
        _tiny_config(choose="metagradient", choose_seeds=(5, 7))
    with pytest.raises(ValueError, match="choose must be 'random', 'metagradient' or"):
        _tiny_config(choose="largest")


def test_experiment_killed_before_its_first_checkpoint_resumes(tmp_path):
    # A run killed after writing config.yaml, before any checkpoint: --resume starts it over,
    # a fresh run refuses the folder, another config is refused.
    config = _tiny_config()
    prepare_out(tmp_path, "poison", config, resume=False)
    with pytest.raises(ValueError, match="not empty"):
        run(config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different run"):
        run(_tiny_config(subset_seed=1), tmp_path, resume=True, progress=False)
    resumed = run(config, tmp_path, resume=True, progress=False)
    fresh = run(config, progress=False)
    np.testing.assert_array_equal(
        resumed.results["mgd"].perturbations, fresh.results["mgd"].perturbations
    )


def test_victim_seeds_must_differ_from_crafting_seeds():
    with pytest.raises(ValueError, match="also crafting seeds"):
        dataclasses.replace(_tiny_config(), victim_seeds=(0, 8, 9))


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("attack:\n  fraction: 1.5\n")
    assert main(["poison", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fraction must lie in (0, 1)" in err


@pytest.mark.parametrize(
    "attack, message",
    [
        ("margin_clip: .nan", "margin_clip must be a finite number"),
        ("logit_scale: 0.0", "logit_scale must be a finite number > 0"),
        ("{margin_clip: 1.0, logit_scale: 5.0}", "at most one of margin_clip and logit_scale"),
        ("{choose: metagradient, choose_seeds: []}", "choose_seeds is empty"),
        ("init: clean", "'attack.init' must be one of 'zero', 'other_class'"),
    ],
)
def test_cli_rejects_bad_attack_options_before_writing(tmp_path, capsys, attack, message):
    # Checked when the config is read: one line, exit 2, no --out made.
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"attack: {attack}\n" if attack.startswith("{") else f"attack:\n  {attack}\n")
    out = tmp_path / "out"
    assert main(["poison", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_cifar_config_loads():
    cifar = read_config("poison", "cifar10", PoisonConfig)
    assert cifar.attack.fraction == 0.025 and cifar.data.name == "cifar10"


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "configs" / "poison" / "fashion_mnist_ablation").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_fashion_mnist_ablation_configs_load_and_name_themselves(path):
    # Each file's own command (its comment) runs it; all poison the same 1,250 pool images.
    cfg = read_config("poison", str(path), PoisonConfig)
    assert cfg.data.name == "fashion_mnist" and cfg.attack.fraction == 0.025
    assert cfg.attack.subset_seed == 0
    assert f"--config configs/poison/fashion_mnist_ablation/{path.name} " in path.read_text()


@pytest.mark.slow
def test_digits_result_at_reduced_size():
    # A statistical claim (one set of seeds), so `slow`: the fast tests above check the attack
    # raises its objective, stays feasible and is evaluated on unseen seeds. The digits config
    # (`mgd poison`'s default) with fewer training steps, meta-steps, crafting and victim seeds,
    # and the two cheap baselines: MGD must already degrade unseen victims and beat the
    # baselines by 2x (full setting: see README).
    cfg = PoisonConfig()
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, num_steps=100),
        attack=dataclasses.replace(cfg.attack, meta_steps=20, craft_seeds=(0, 1, 2)),
        baselines=("random_noise", "label_flip"),
        victim_seeds=(100, 101, 102),
    )
    report = run(cfg, progress=False).report
    mgd_drop = report.attacks["mgd"].drop_mean
    assert mgd_drop >= 0.01, report.table()
    assert mgd_drop >= 2 * max(report.largest_baseline_drop("mgd"), 0.0), report.table()
