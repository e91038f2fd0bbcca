"""Learning-rate schedule search vs. a grid of hand-designed schedules, on digits.

Reproduces, at small scale, the paper's claim that a few dozen metagradient steps from a
constant schedule match the best of a large grid of one-cycle schedules:

1. trains the grid (one-cycle: peak x warm-up x final rate, plus constant, cosine and step
   decay; 412 schedules by default) and takes its best validation loss;
2. runs ``mgd.search_lr_schedule`` from a constant schedule 10x below the grid's best constant
   rate, and separately from one 10x above it;
3. prints both searches' validation loss next to the grid's best, the compute each spent in
   training-run equivalents, and the test accuracy of models retrained from scratch on fresh
   seeds with the found schedules and with the grid's best.

Usage::

    python scripts/lr_search.py                    # full setting, a few CPU minutes
    python scripts/lr_search.py --meta-steps 20 --num-steps 100 --out runs/lr

Exits 0 when every acceptance check holds (found within ``--tolerance`` of the grid's best and
better than its start, from both starts; search cheaper than the grid), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mgd.engine import StoreAll
from mgd.outer.lr._digits import digits_lr_setup
from mgd.outer.lr._evaluate import evaluate_schedules, mean_seconds, per_step_setup
from mgd.outer.lr._grid import lr_schedule_grid
from mgd.outer.lr._update import log_lr_adam
from mgd.outer.lr._schedule import PiecewiseLinearSchedule
from mgd.outer.lr._search import search_lr_schedule
from mgd.train import retrain_and_evaluate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-steps", type=int, default=200, help="training steps per run")
    p.add_argument("--num-knots", type=int, default=11, help="learning-rate knots of the search")
    p.add_argument("--meta-steps", type=int, default=50, help="metagradient steps per search")
    p.add_argument("--outer-lr", type=float, default=0.1, help="Adam step on log learning rates")
    p.add_argument("--lr-range", type=float, nargs=2, default=(0.01, 30.0), help="grid peaks")
    p.add_argument("--num-peaks", type=int, default=10, help="one-cycle peak rates in the grid")
    p.add_argument("--seed", type=int, default=0, help="seed of init and batch order")
    p.add_argument("--test-seeds", type=int, default=3, help="fresh seeds for test accuracy")
    p.add_argument("--tolerance", type=float, default=0.03, help="allowed gap to the grid's best")
    p.add_argument("--out", type=Path, default=None, help="write results.json and a plot here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup = digits_lr_setup(num_steps=args.num_steps, num_knots=args.num_knots, seed=args.seed)
    # Compute is counted in training runs: a metagradient costs as much as `mg_runs` of them
    # (measured, compiled), so a search costs metagradients * mg_runs + its plain runs.
    meta = setup.init_meta()
    unit, mg_seconds = mean_seconds(
        [
            lambda: setup.train().params,
            lambda: setup.metagradient(meta, checkpoint=StoreAll()).grad,
        ],
        counts=(20, 5),
    )
    mg_runs = mg_seconds / unit
    print(
        "setting: MLP with layer norm before tanh (normalize=True) on digits, SGD, "
        f"T={setup.num_steps}, knots {setup.meta_spec.lr_knots}"
    )
    print(f"one training run: {unit * 1e3:.1f} ms; one metagradient: {mg_runs:.1f} runs")

    grid = lr_schedule_grid(
        setup.num_steps, lr_range=tuple(args.lr_range), num_peaks=args.num_peaks
    )
    start = time.perf_counter()
    grid_loss = evaluate_schedules(setup, [g.schedule for g in grid], batch_size=64)
    grid_seconds = time.perf_counter() - start
    finite = np.where(np.isfinite(grid_loss), grid_loss, np.inf)
    best = int(np.argmin(finite))
    constants = [i for i, g in enumerate(grid) if g.family == "constant"]
    best_constant = constants[int(np.argmin(finite[constants]))]
    best_constant_lr = grid[best_constant].params["lr"]
    print(
        f"\ngrid: {len(grid)} schedules, best validation loss {grid_loss[best]:.4f}: "
        f"{grid[best].label()}"
    )
    for family in ("one_cycle", "constant", "cosine", "step_decay"):
        idx = [i for i, g in enumerate(grid) if g.family == family]
        i = idx[int(np.argmin(finite[idx]))]
        print(f"  best {family:<10} {grid_loss[i]:.4f}  {grid[i].label()}")

    searches = {}
    for name, factor in (("10x below", 0.1), ("10x above", 10.0)):
        init = best_constant_lr * factor
        res = search_lr_schedule(
            setup,
            init_schedule=init,
            meta_steps=args.meta_steps,
            optimizer=log_lr_adam(args.outer_lr),
            checkpoint=StoreAll(),
            test_seeds=args.test_seeds,
        )
        # Scored by the same batched code as the grid, so the comparison is like for like.
        found_loss, start_loss = evaluate_schedules(
            setup,
            [res.schedule, PiecewiseLinearSchedule.from_lr([0], init, num_steps=setup.num_steps)],
            progress=False,
        )
        searches[name] = (init, res, float(found_loss), float(start_loss))

    # The grid's best, retrained on the same fresh seeds as the found schedules.
    seeds = next(iter(searches.values()))[1].test.get("seeds", [])
    grid_test = {}
    if seeds:
        per_step = per_step_setup(setup)
        meta = {
            **per_step.init_meta(),
            "log_lr": np.log(grid[best].schedule.rates()).astype(np.float32),
        }
        grid_test = retrain_and_evaluate(per_step, seeds=seeds, meta=meta, split="test")

    ok = True
    grid_runs = len(grid)
    print(
        f"\ncompute, grid: {grid_runs} training runs ({grid_seconds:.1f} s wall, vmapped in "
        f"chunks of 64, compilation included)"
    )
    report = {
        "grid": {
            "best": grid[best].label(),
            "val_loss": float(grid_loss[best]),
            "runs": grid_runs,
            "seconds": grid_seconds,
        },
        "train_run_seconds": unit,
        "metagradient_runs": mg_runs,
    }
    for name, (init, res, found, start_loss) in searches.items():
        gap = found / grid_loss[best] - 1
        equiv = res.cost["metagradients"] * mg_runs + res.cost["train_runs"]
        rejected = sum(r.rejected for r in res.history)
        unstable = sum(r.unstable_knots > 0 for r in res.history)
        checks = {
            f"within {args.tolerance:.0%} of grid": gap <= args.tolerance,
            "better than start": found < start_loss,
            "cheaper than grid": equiv < grid_runs,
        }
        ok &= all(checks.values())
        print(f"\nsearch from {name} the best constant (constant lr {init:.4g}):")
        print(
            f"  start validation loss {start_loss:.4f} -> found {found:.4f} (best at meta-step "
            f"{res.best_step}); grid best {grid_loss[best]:.4f}; gap {gap:+.1%}"
        )
        print(f"  found schedule: {res.schedule}")
        print(f"  meta-steps with a chaotic run (rates lowered): {unstable}; rejected: {rejected}")
        print(
            f"  compute: {res.cost['metagradients']} metagradients + {res.cost['train_runs']} run "
            f"= {equiv:.0f} training-run equivalents ({res.cost['seconds']:.1f} s wall)"
        )
        if res.test:
            acc = np.array(res.test["accuracy"])
            print(
                f"  test accuracy (retrained, seeds {res.test['seeds']}): "
                f"{acc.mean():.4f} +- {acc.std():.4f}"
            )
        print("  checks: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
        report[name] = {
            "init_lr": init,
            "start_val_loss": start_loss,
            "found_val_loss": found,
            "gap": gap,
            "schedule": res.schedule.to_dict(),
            "best_step": res.best_step,
            "cost": res.cost,
            "run_equivalents": equiv,
            "test": res.test,
            "checks": checks,
            "history": [r._asdict() for r in res.history],
        }
    if grid_test:
        acc = grid_test["accuracy"]
        print(f"\ngrid best, test accuracy (same fresh seeds): {acc.mean():.4f} +- {acc.std():.4f}")
        report["grid"]["test_accuracy"] = acc.tolist()
    print(f"\nall checks hold: {'yes' if ok else 'NO'}")

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=1, default=float))
        plot(args.out / "lr_search.png", grid, grid_loss, searches)
        print(f"wrote {args.out / 'results.json'} and {args.out / 'lr_search.png'}")
    return 0 if ok else 1


def plot(path: Path, grid, grid_loss, searches) -> None:
    """Schedules over meta-steps next to the grid's five best; objective per meta-step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    steps = np.arange(grid[0].schedule.num_steps)
    for ax, (name, (_, res, _, _)) in zip(axes[:2], searches.items(), strict=True):
        cmap = plt.get_cmap("viridis")
        scheds = res.schedules()
        for k, s in enumerate(scheds):
            ax.plot(steps, s(steps), color=cmap(k / max(len(scheds) - 1, 1)), lw=0.8)
        for i in np.argsort(np.where(np.isfinite(grid_loss), grid_loss, np.inf))[:5]:
            ax.plot(steps, grid[i].schedule.rates(), "k--", lw=1)
        ax.set(
            yscale="log",
            xlabel="training step",
            ylabel="learning rate",
            title=f"from {name}: meta-steps dark -> light, grid's best 5 dashed",
        )
    for name, (_, res, _, _) in searches.items():
        axes[2].plot(res.objectives, label=f"search from {name}")
    axes[2].axhline(np.nanmin(grid_loss), color="k", ls="--", label="grid's best")
    axes[2].set(yscale="log", xlabel="meta-step", ylabel="validation loss")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
