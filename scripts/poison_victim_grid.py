"""Clean accuracy of victim recipes: the learning rate and logit scale of a poisoning config.

Trains the config's victim from scratch on the clean pool for every learning rate given, with
the final layer's output scaled by ``--output-scale`` (the paper's metasmooth change), and
prints the mean validation and test accuracy over the seeds. Choose a recipe on the validation
column (the test split is for reporting only). ``--metasmoothness H`` also prints the paper's
metasmoothness score of each recipe along random perturbations of the poisoned images (a
seeded random 2.5% of the pool; ``H`` in units of the pixel range; first seed only)::

    python scripts/poison_victim_grid.py configs/poison/fashion_mnist.yaml \\
        --output-scale 0.1 --lr 0.01 0.03 0.1 --seeds 1 2 --metasmoothness 0.05
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from mgd.experiments import read_config
from mgd.experiments._common import load_data, setup_from_config
from mgd.experiments.poison import PoisonConfig
from mgd.outer.poison import choose_poison_indices
from mgd.train import MetaSpec, metasmoothness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--output-scale", type=float, default=1.0)
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--metasmoothness", type=float, default=None, metavar="H")
    args = parser.parse_args()
    try:  # Every recipe checked before anything is loaded or trained.
        cfg = read_config("poison", args.config, PoisonConfig)
        model = dataclasses.replace(cfg.train.model, output_scale=args.output_scale)
        optimizers = [dataclasses.replace(cfg.train.optimizer, learning_rate=lr) for lr in args.lr]
        if args.metasmoothness is not None and not args.metasmoothness > 0:
            raise ValueError(f"--metasmoothness must be > 0, got {args.metasmoothness}")
    except ValueError as e:
        parser.error(str(e))
    data, _ = load_data(cfg.data, model=cfg.train.model)
    poisoned = choose_poison_indices(data.num_train, cfg.attack.fraction)
    print(f"output_scale {args.output_scale}, seeds {args.seeds}")
    print("lr        val acc (%)       test acc (%)      s/run   metasmoothness")
    for lr, optimizer in zip(args.lr, optimizers, strict=True):
        setup = setup_from_config(
            dataclasses.replace(cfg.train, model=model, optimizer=optimizer), data
        )
        t0 = time.perf_counter()
        acc = {"val": [], "test": []}
        for seed in args.seeds:
            state = setup.train(seed=seed)
            for split in acc:
                acc[split].append(100 * setup.evaluate(state, split)["accuracy"])
        per_run = (time.perf_counter() - t0) / len(args.seeds)
        cols = [f"{np.mean(a):6.2f} +- {np.std(a):4.2f}" for a in acc.values()]
        smooth = ""
        if args.metasmoothness is not None:
            spec = MetaSpec(perturb_indices=tuple(int(i) for i in poisoned))
            r = metasmoothness(
                setup.replace(meta_spec=spec, seed=args.seeds[0]), h=args.metasmoothness
            )
            smooth = f"{r.score:+.3f} +- {r.stderr:.3f}"
        print(f"{lr:<8g}  {cols[0]}    {cols[1]}    {per_run:5.1f}   {smooth}", flush=True)


if __name__ == "__main__":
    main()
