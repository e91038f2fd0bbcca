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


def main(config: str, poisons: str, seeds: list[int]) -> None:
    cfg = read_config("poison", config, PoisonConfig)
    data, _ = load_data(cfg.data, model=cfg.train.model)
    setup = setup_from_config(cfg.train, data)
    arrays = np.load(poisons)
    indices = arrays["mgd_indices"]
    poisoned_data = apply_perturbations(data, indices, arrays["mgd_perturbations"])
    poisoned = setup.replace(data=poisoned_data)
    unpoisoned = np.setdiff1d(np.arange(data.num_train), indices)
    # Extra evaluation sets ride in the test slot of the data: evaluate() reads splits by name.
    extra = {
        "pool": (data.x_train[unpoisoned], data.y_train[unpoisoned]),
        "poisons": (poisoned_data.x_train[indices], poisoned_data.y_train[indices]),
    }

    def accuracy(run, state, split):
        if split in extra:
            x, y = extra[split]
            run = run.replace(data=dataclasses.replace(run.data, x_test=x, y_test=y))
            split = "test"
        return 100 * run.evaluate(state, split)["accuracy"]

    crafted = set(cfg.attack.craft_seeds)
    t0 = time.perf_counter()
    print("drops in points; the last column is the poisoned victim's accuracy (%) on the poisons")
    print("seed  crafted  val drop  test drop  unpoisoned pool drop  poisons' own labels")
    for seed in seeds:
        clean, hit = setup.train(seed=seed), poisoned.train(seed=seed)
        drops = [
            accuracy(setup, clean, split) - accuracy(poisoned, hit, split)
            for split in ("val", "test", "pool")
        ]
        mark = "yes" if seed in crafted else "no"
        print(
            f"{seed:4d}  {mark:>7}  {drops[0]:8.2f}  {drops[1]:9.2f}  {drops[2]:20.2f}  "
            f"{accuracy(poisoned, hit, 'poisons'):19.1f}"
        )
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]])
