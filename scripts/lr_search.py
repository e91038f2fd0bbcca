"""Checks the learning-rate search's claims on the `mgd lr` experiment, and its compute.

Runs ``mgd.experiments.lr.run`` (the shipped ``default`` config unless ``--config``: a grid of
412 hand-designed schedules on digits, then 50 meta-steps of search from a constant rate 10x
below and 10x above the grid's best constant rate), measures what one metagradient costs in
training runs on this machine, and checks, for every start: found within ``--tolerance`` of
the grid's best validation loss, better than its start, and cheaper than the grid in
training-run equivalents.

Usage::

    python scripts/lr_search.py                           # the README's figures, CPU minutes
    python scripts/lr_search.py --meta-steps 20 --out runs/lr
    python scripts/lr_search.py --config fashion_mnist --grid-from runs/lr_fm --out runs/lr_fm2

Exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mgd.experiments import InputError, read_config
from mgd.experiments.lr import LRConfig, run
from mgd.outer.lr._evaluate import mean_seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="default", help="shipped config name or a file")
    p.add_argument("--meta-steps", type=int, default=None, help="metagradient steps per search")
    p.add_argument("--tolerance", type=float, default=0.03, help="allowed gap to the grid's best")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    p.add_argument(
        "--grid-from",
        type=Path,
        default=None,
        help="output folder of an earlier run of the same setting: reuse its grid's result "
        "instead of training the grid again (its best is retrained on the test seeds)",
    )
    args = p.parse_args(argv)
    try:
        return _run_and_check(p, args)
    except InputError as e:  # A bad config or --grid-from: one line, nothing written over.
        print(f"lr_search: {e}", file=sys.stderr)
        return 2


def _run_and_check(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    config = read_config("lr", args.config, LRConfig)
    if args.meta_steps is not None:
        config = dataclasses.replace(
            config, search=dataclasses.replace(config.search, meta_steps=args.meta_steps)
        )
    if not config.grid.enabled:
        p.error("the checks compare with the grid; use a config with grid.enabled: true")
    done = run(config, args.out, grid_from=args.grid_from)
    print(done.table())

    # Compute is counted in training runs: a metagradient costs as much as `mg_runs` of them
    # (measured after compilation, interleaved so load from other processes slows both alike).
    setup, replay = done.setup, config.replay.build()
    meta = setup.init_meta()
    unit, mg_seconds = mean_seconds(
        [lambda: setup.train().params, lambda: setup.metagradient(meta, **replay.options()).grad],
        counts=(20, 5),
    )
    mg_runs = mg_seconds / unit
    grid_runs = done.metrics["grid"]["runs"]
    print(f"\none training run: {unit * 1e3:.1f} ms; one metagradient: {mg_runs:.1f} runs")
    # The grid is counted as one run per schedule; it trains them vmapped in chunks, so its
    # wall time in units of one run is printed too (timed earlier in the run: under shifting
    # load from other processes this ratio is rougher than the interleaved one above).
    grid_s = done.metrics["grid"]["seconds"]
    reused = done.metrics["grid"].get("reused_from")
    print(
        f"grid: {grid_runs} runs, {grid_s:.0f} s wall = {grid_s / unit:.0f} runs of wall time"
        + (f" (timed in {reused}, under that run's load)" if reused else "")
    )
    ok = True
    for name, m in done.metrics["searches"].items():
        equiv = m["cost"]["metagradients"] * mg_runs + m["cost"]["train_runs"]
        checks = {
            f"within {args.tolerance:.0%} of grid": m["gap_to_grid"] <= args.tolerance,
            "better than start": m["found_val_loss"] < m["start_val_loss"],
            "cheaper than grid": equiv < grid_runs,
        }
        ok &= all(checks.values())
        print(
            f"from {name} (lr {m['init_lr']:.4g}): {m['start_val_loss']:.4f} -> "
            f"{m['found_val_loss']:.4f}, gap {m['gap_to_grid']:+.1%}, compute {equiv:.0f} vs "
            f"{grid_runs} runs ({m['cost']['seconds']:.0f} s wall = "
            f"{m['cost']['seconds'] / unit:.0f} runs, compilation included); "
            + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())
        )
    print(f"all checks hold: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
