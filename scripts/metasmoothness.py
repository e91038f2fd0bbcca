"""Metasmoothness score of one or more model configs (the MGD paper's score; higher is smoother).

Trains each config at z (plain training: data weights one), z + h v and z + 2 h v along random
Gaussian directions v over the per-example data weights, and prints the score with its standard
error. Compare configs at the same h, steps and directions.

  python scripts/metasmoothness.py mgd/configs/models/resnet9.yaml \\
      mgd/configs/models/resnet9_metasmooth.yaml --width-multiplier 0.0625 --steps 40
  MGD_CIFAR10_DIR=~/cifar-10-batches-py python scripts/metasmoothness.py \\
      mgd/configs/models/resnet9_metasmooth.yaml --data cifar10 --steps 1000 --batch-size 512
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

import mgd
from mgd.train import make_optimizer, metasmoothness, models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="YAML files from mgd/configs/models/")
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--h", type=float, default=0.2, help="step along each direction")
    parser.add_argument("--directions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--width-multiplier",
        type=float,
        default=None,
        help="scales ResNet-9 widths relative to each config (e.g. 0.0625 on a CPU)",
    )
    args = parser.parse_args(argv)
    try:
        data = mgd.load_digits() if args.data == "digits" else mgd.load_cifar10()
        for path in args.configs:
            cfg = yaml.safe_load(path.read_text())
            model_cfg = dict(cfg["model"])
            if args.width_multiplier is not None and model_cfg.get("name") == "resnet9":
                model_cfg["width_multiplier"] = (
                    model_cfg.get("width_multiplier", 1.0) * args.width_multiplier
                )
            setup = mgd.TrainingSetup(
                models.make_model(model_cfg, num_classes=data.num_classes),
                make_optimizer(cfg["optimizer"]),
                data,
                batch_size=args.batch_size,
                num_steps=args.steps,
                seed=args.seed,
                meta_spec=mgd.MetaSpec(data_weights=True),
            )
            r = metasmoothness(setup, h=args.h, num_directions=args.directions, seed=args.seed)
            acc = setup.evaluate(setup.train(), "test")["accuracy"]
            print(
                f"{path.name:28s} metasmoothness {r.score:+.3f} +- {r.stderr:.3f} "
                f"(directions: {', '.join(f'{s:+.2f}' for s in r.scores)})  test acc {acc:.3f}"
            )
    except (ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
