"""Where a poison's accuracy drop goes: the validation (target) split against the test split.

Trains victims from scratch on the pool poisoned by the MGD perturbations that ``mgd poison``
wrote (``OUT/poisons.npz``), and on the clean pool, with the given seeds, and prints each
victim's accuracy drop (clean minus poisoned, paired by seed) on the validation split, which
the attack maximized its objective on, and on the held-out test split. A drop much larger on
the validation split than on the test split means the perturbations fit the target examples
rather than the data's distribution; a larger drop for seeds the attack crafted with than for
unseen ones means they fit the crafting runs. The config must be the run's own::

    python scripts/poison_val_test_gap.py configs/poison/fashion_mnist.yaml \\
        runs/poison_fm/poisons.npz 10 11 100 101
"""

from __future__ import annotations

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
    poisoned = setup.replace(
        data=apply_perturbations(data, arrays["mgd_indices"], arrays["mgd_perturbations"])
    )
    crafted = set(cfg.attack.craft_seeds)
    t0 = time.perf_counter()
    print("seed  crafted  val drop (points)  test drop (points)")
    for seed in seeds:
        clean, hit = setup.train(seed=seed), poisoned.train(seed=seed)
        drops = [
            100
            * (setup.evaluate(clean, split)["accuracy"] - poisoned.evaluate(hit, split)["accuracy"])
            for split in ("val", "test")
        ]
        mark = "yes" if seed in crafted else "no"
        print(f"{seed:4d}  {mark:>7}  {drops[0]:17.2f}  {drops[1]:18.2f}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]])
