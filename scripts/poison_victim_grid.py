"""Clean accuracy of victim recipes: the learning rate and logit scale of a poisoning config.

Trains the config's victim from scratch on the clean pool for every learning rate given, with
the final layer's output scaled by ``--output-scale`` (the paper's metasmooth change), and
prints the mean validation and test accuracy over the seeds. Choose a recipe on the validation
column (the test split is for reporting only)::

    python scripts/poison_victim_grid.py configs/poison/fashion_mnist.yaml \\
        --output-scale 0.1 --lr 0.01 0.03 0.1 --seeds 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from mgd.experiments import read_config
from mgd.experiments._common import load_data, setup_from_config
from mgd.experiments.poison import PoisonConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--output-scale", type=float, default=1.0)
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cfg = read_config("poison", args.config, PoisonConfig)
    data, _ = load_data(cfg.data, model=cfg.train.model)
    model = dataclasses.replace(cfg.train.model, output_scale=args.output_scale)
    print(f"output_scale {args.output_scale}, seeds {args.seeds}")
    print("lr        val acc (%)       test acc (%)      s/run")
    for lr in args.lr:
        optimizer = dataclasses.replace(cfg.train.optimizer, learning_rate=lr)
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
        print(f"{lr:<8g}  {cols[0]}    {cols[1]}    {per_run:5.1f}", flush=True)


if __name__ == "__main__":
    main()
