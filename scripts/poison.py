#!/usr/bin/env python
"""Accuracy-degrading data poisoning: the MGD attack against baselines, victims from scratch.

    python scripts/poison.py --config configs/poison/digits.yaml --out runs/poison_digits

Writes ``OUT/metrics.json`` (``clean`` and one entry per attack with ``test_accuracy_mean``,
``test_accuracy_std``, per-seed accuracies and the paired drop), ``OUT/accuracy.png``,
``OUT/run.json`` (config echo, timings, crafting histories) and ``OUT/poisons.npz``. Exit 0 on
success; on bad input exit 2 with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

# Lets the script run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mgd.config import load_config  # noqa: E402
from mgd.experiments.poison import PoisonConfig, run_poison_experiment  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML/TOML PoisonConfig (default: the digits experiment)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--meta-steps", type=int, help="override attack.meta_steps")
    p.add_argument("--fraction", type=float, help="override attack.fraction")
    p.add_argument("--resume", action="store_true", help="resume the MGD attack from OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        cfg = load_config(args.config, PoisonConfig)
        overrides = {}
        if args.meta_steps is not None:
            overrides["meta_steps"] = args.meta_steps
        if args.fraction is not None:
            overrides["fraction"] = args.fraction
        if overrides:
            cfg = dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, **overrides))
        exp = run_poison_experiment(cfg, out=args.out, resume=args.resume, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        print(f"poison.py: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(exp.report.table())
    mgd = exp.report.attacks["mgd"].drop_mean
    base = exp.report.largest_baseline_drop("mgd")
    print(f"MGD drop {100 * mgd:.2f} points; largest baseline drop {100 * base:.2f} points")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
