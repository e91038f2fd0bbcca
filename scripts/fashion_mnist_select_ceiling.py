"""Selection under label noise (Fashion-MNIST): the ceiling, and recipes chosen blind.

Two questions about the README's "Selection under label noise (Fashion-MNIST)" results:

1. **The ceiling.** How accurate can a model trained on half of the noisy pool be at all? Models
   are trained, like every evaluation model there, for 8,000 steps with the evaluation seeds
   (10000-10002) on an *oracle* clean half (10,000 of the pool's correctly labelled images,
   drawn at random: draw ``j`` trains with seed ``j``), on all of the pool's correctly labelled
   images (about 12,000), and on the whole 20,000-image pool with its original labels. If the
   clean half scores below random halves + 10 points under a recipe, no selection can gain 10
   points over random halves under that recipe.
2. **A blind protocol.** Each training set (the MGD selection, random halves, small-loss, EL2N,
   the full noisy pool, and the ceiling's sets) gets the recipe of a grid fixed in advance
   (``RECIPES``) with the best mean *validation* accuracy (the clean 10,000-image target split
   the selection already optimizes; the test split is never used to choose), and its test
   accuracy under that recipe is reported.

The selection and the baselines' subsets are read from a finished ``mgd select --config
fashion_mnist_noisy`` run (its ``selection.json``, checked against the shipped config); the
noise mask is known only because the noise was injected. Needs
`apt-get install dataset-fashion-mnist` (or $MGD_FASHION_MNIST_DIR)::

    mgd select --config fashion_mnist_noisy --out runs/select_fm    # if not run yet (~15 min)
    python scripts/fashion_mnist_select_ceiling.py runs/select_fm [--json ceiling.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from mgd.config import config_from_dict
from mgd.experiments import InputError, read_config, select
from mgd.experiments._common import (
    OptimizerConfig,
    checking_input,
    load_data,
    setup_from_config,
)
from mgd.outer.selection._evaluate import draw_random_subsets
from mgd.train import MetaSpec

# Fixed before any model below was trained: the selection's smooth recipe (A), two faster
# cosine decays, and the constant rate (B). SGD with momentum 0.9, batch 128, 8,000 steps.
RECIPES = {
    "0.01 cosine (A)": OptimizerConfig(learning_rate=0.01, momentum=0.9, lr_decay="cosine"),
    "0.02 cosine": OptimizerConfig(learning_rate=0.02, momentum=0.9, lr_decay="cosine"),
    "0.05 cosine": OptimizerConfig(learning_rate=0.05, momentum=0.9, lr_decay="cosine"),
    "0.05 constant (B)": OptimizerConfig(learning_rate=0.05, momentum=0.9, lr_decay="constant"),
}


def training_sets(config, selection: dict, noisy: np.ndarray) -> dict[str, tuple]:
    """``{name: (data_kind, [(indices or None, seed), ...])}``: each model to train."""
    n, k = noisy.size, selection["size"]
    seeds = [10_000 + 100 * config.seed + j for j in range(config.eval.num_seeds)]
    clean = np.flatnonzero(~noisy)
    # Oracle halves: a stream of their own (not the random halves' seed + 1).
    rng = np.random.default_rng([config.seed, 13])
    oracle = [np.sort(rng.choice(clean, k, replace=False)) for _ in seeds]
    randoms = draw_random_subsets(n, k, config.eval.num_random, config.seed + 1)
    per_seed = lambda idx: [(idx, s) for s in seeds]  # noqa: E731
    return {
        "MGD selection": ("noisy", per_seed(np.asarray(selection["indices"]))),
        f"random halves ({len(randoms)})": (
            "noisy",
            [(r, seeds[j % len(seeds)]) for j, r in enumerate(randoms)],
        ),
        "small-loss": ("noisy", per_seed(np.asarray(selection["baselines"]["small_loss"]))),
        "EL2N": ("noisy", per_seed(np.asarray(selection["baselines"]["el2n"]))),
        "full noisy pool (20,000)": ("noisy", per_seed(None)),
        "oracle clean half (3 draws)": ("noisy", list(zip(oracle, seeds, strict=True))),
        f"all clean-labelled ({clean.size:,})": ("noisy", per_seed(clean)),
        "pool, original labels (20,000)": ("clean", per_seed(None)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `mgd select` run (its folder)")
    parser.add_argument("--json", type=Path, help="also write every model's accuracies here")
    args = parser.parse_args()

    config = read_config("select", "fashion_mnist_noisy", select.SelectConfig)
    if not (args.run / "selection.json").is_file():
        raise SystemExit(
            f"{args.run}/selection.json not found; pass the folder of a finished "
            "`mgd select --config fashion_mnist_noisy --out DIR` run"
        )
    selection = json.loads((args.run / "selection.json").read_text())
    # Read back as a config: a run older than a setting added since has its default.
    if config_from_dict(selection["config"], select.SelectConfig) != config:
        raise SystemExit(
            f"{args.run}/selection.json was not made with the shipped fashion_mnist_noisy config; "
            "rerun `mgd select --config fashion_mnist_noisy`"
        )
    try:  # A missing or bad data set: one line, as the commands report it.
        with checking_input():
            noisy_data, noisy = load_data(config.data, model=config.train.model)
            clean_data, _ = load_data(
                dataclasses.replace(config.data, label_noise=0.0), model=config.train.model
            )
    except InputError as e:
        raise SystemExit(f"fashion_mnist_select_ceiling: {e}") from None
    datasets = {"noisy": noisy_data, "clean": clean_data}
    sets = training_sets(config, selection, noisy)
    setup = setup_from_config(
        config.train, noisy_data, seed=config.seed, meta_spec=MetaSpec(data_weights=True)
    )

    results: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in sets}
    started = time.perf_counter()
    for recipe, optimizer in RECIPES.items():
        recipe_config = dataclasses.replace(
            config, eval=dataclasses.replace(config.eval, optimizer=optimizer)
        )
        # The evaluation models' recipe exactly as `mgd select` builds it, without data weights.
        plain = select.eval_setup(recipe_config, setup).replace(meta_spec=MetaSpec())
        for name, (kind, models) in sets.items():
            scores = {"val": [], "test": []}
            for indices, seed in models:
                data = datasets[kind]
                trained = plain.replace(data=data if indices is None else data.subset(indices))
                params = trained.train(None, seed=seed)
                for split in scores:
                    scores[split].append(float(trained.evaluate(params, split)["accuracy"]))
            results[name][recipe] = scores
            print(
                f"[{time.perf_counter() - started:5.0f} s] {recipe:<18} {name:<32} "
                f"val {np.mean(scores['val']):.4f}  test {np.mean(scores['test']):.4f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"recipes": list(RECIPES), "results": results}, indent=1))
    print_tables(sets, results, noisy)


def print_tables(sets: dict, results: dict, noisy: np.ndarray) -> None:
    """Test accuracy per recipe, then the blind protocol (recipe by validation accuracy)."""

    def cell(scores: dict, split: str) -> str:
        v = np.asarray(scores[split])
        return f"{v.mean():.4f} +- {v.std():.4f}"

    def wrong(kind: str, models: list) -> str:
        if kind == "clean":
            return "0%"
        return f"{np.mean([noisy[slice(None) if i is None else i].mean() for i, _ in models]):.1%}"

    print("\ntest accuracy (mean +- std over models) per recipe; wrong labels in the training set")
    print("| training set | wrong labels | " + " | ".join(RECIPES) + " |")
    print("|---|---|" + "---|" * len(RECIPES))
    for name, (kind, models) in sets.items():
        cells = " | ".join(cell(results[name][r], "test") for r in RECIPES)
        print(f"| {name} | {wrong(kind, models)} | {cells} |")

    print("\nblind protocol: each set's recipe chosen by mean validation accuracy")
    print("| training set | recipe chosen | val. acc. | test acc. |")
    print("|---|---|---|---|")
    chosen = {}
    for name in sets:
        best = max(RECIPES, key=lambda r: np.mean(results[name][r]["val"]))
        chosen[name] = np.mean(results[name][best]["test"])
        val, test = cell(results[name][best], "val"), cell(results[name][best], "test")
        print(f"| {name} | {best} | {val} | {test} |")
    random_name = next(name for name in sets if name.startswith("random"))
    gap = 100 * (chosen["MGD selection"] - chosen[random_name])
    print(f"\nMGD selection - random halves, blind protocol: {gap:+.2f} points")
    for r in RECIPES:
        per = {n: 100 * np.mean(results[n][r]["test"]) for n in sets}
        mgd_gap = per["MGD selection"] - per[random_name]
        oracle_gap = per["oracle clean half (3 draws)"] - per[random_name]
        print(f"{r}: over random halves, MGD {mgd_gap:+.2f}, oracle clean half {oracle_gap:+.2f}")


if __name__ == "__main__":
    main()
