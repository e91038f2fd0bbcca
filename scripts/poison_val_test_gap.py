"""Where a poison's accuracy drop goes: the validation (target) split against the test split.

Trains victims from scratch on the pool poisoned by the MGD perturbations that ``mgd poison``
wrote (``OUT/poisons.npz``), and on the clean pool, with the given seeds, and prints each
victim's accuracy drop (clean minus poisoned, paired by seed) on the validation split, which
the attack maximized its objective on, on the held-out test split, and on the unpoisoned pool
images (the rest of the target of ``target: val_and_clean``, which the victims also train on),
and the poisoned victim's accuracy on the poisoned images under their own labels (how far it
fits them). A drop much larger on the validation split than on the test split means the
perturbations fit the target examples rather than the data's distribution; a larger drop for
seeds the attack crafted with than for unseen ones means they fit the crafting runs. The config
must be the run's own::

    python scripts/poison_val_test_gap.py configs/poison/fashion_mnist.yaml \\
        runs/poison_fm/poisons.npz 10 11 100 101
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from mgd.experiments import read_config
from mgd.experiments._common import load_data, setup_from_config
from mgd.experiments.poison import PoisonConfig
from mgd.outer.poison import apply_perturbations


def _inputs(argv: list[str]):
    """The config, the poisons' indices and perturbations, and the seeds; exits with one line
    naming the problem before anything is trained."""
    config, poisons, *seeds = argv
    try:
        if not all(s.lstrip("-").isdigit() for s in seeds):
            raise ValueError(f"seeds must be integers, got {' '.join(seeds)}")
        seeds = [int(s) for s in seeds]
        cfg = read_config("poison", config, PoisonConfig)
        with np.load(poisons) as arrays:
            missing = {"mgd_indices", "mgd_perturbations"} - set(arrays.files)
            if missing:
                raise ValueError(
                    f"{poisons} has no {', '.join(sorted(missing))}; pass the poisons.npz that "
                    "`mgd poison` wrote"
                )
            indices, perturbations = arrays["mgd_indices"], arrays["mgd_perturbations"]
    except (OSError, ValueError) as e:
        sys.exit(f"poison_val_test_gap.py: {e}")
    return cfg, indices, perturbations, seeds


def main(argv: list[str]) -> None:
    cfg, indices, perturbations, seeds = _inputs(argv)
    data, _ = load_data(cfg.data, model=cfg.train.model)
    expected = (len(indices), *data.input_shape)
    if perturbations.shape != expected or np.any((indices < 0) | (indices >= data.num_train)):
        sys.exit(
            f"poison_val_test_gap.py: the poisons ({perturbations.shape[0]} perturbations of shape "
            f"{perturbations.shape[1:]}) do not fit this config's pool ({data.num_train} inputs of "
            f"shape {data.input_shape}); pass the run's own config"
        )
    poisoned_data = apply_perturbations(data, indices, perturbations)
    clean_run = setup_from_config(cfg.train, data)
    poisoned_run = clean_run.replace(data=poisoned_data)
    unpoisoned = np.setdiff1d(np.arange(data.num_train), indices)
    # Every evaluation set as the test split of a copy of the two setups (same shapes: the
    # copies share the compiled programs), built once for all seeds.
    sets = {
        "val": data.split("val"),
        "test": data.split("test"),
        "pool": (data.x_train[unpoisoned], data.y_train[unpoisoned]),
        "poisons": (poisoned_data.x_train[indices], poisoned_data.y_train[indices]),
    }
    runs = {
        name: tuple(
            run.replace(data=dataclasses.replace(run.data, x_test=x, y_test=y))
            for run in (clean_run, poisoned_run)
        )
        for name, (x, y) in sets.items()
    }

    def accuracy(name, which, state):
        return 100 * runs[name][which].evaluate(state, "test")["accuracy"]

    crafted = set(cfg.attack.craft_seeds)
    t0 = time.perf_counter()
    print("drops in points; the last column is the poisoned victim's accuracy (%) on the poisons")
    print("seed  crafted  val drop  test drop  unpoisoned pool drop  poisons' own labels")
    for seed in seeds:
        clean, hit = clean_run.train(seed=seed), poisoned_run.train(seed=seed)
        drops = [
            accuracy(name, 0, clean) - accuracy(name, 1, hit) for name in ("val", "test", "pool")
        ]
        mark = "yes" if seed in crafted else "no"
        print(
            f"{seed:4d}  {mark:>7}  {drops[0]:8.2f}  {drops[1]:9.2f}  {drops[2]:20.2f}  "
            f"{accuracy('poisons', 1, hit):19.1f}"
        )
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1:])
