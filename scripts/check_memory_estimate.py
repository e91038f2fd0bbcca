"""Honesty check of `mgd.estimate_memory` on the CPU: measured peak vs the estimate.

On a CPU backend device memory is process memory, so a metagradient's peak device bytes can be
measured as in ``scripts/bench_replay.py``'s compiled call: the peak of the process's resident
set size (sampled every 2 ms) during a second, compiled call, after ``malloc_trim``, minus the
resident size before it. That counts what the call allocates; the estimate's ``peak_bytes``
also counts the inputs that exist before the call (the initial state, ``meta``, the data held
by ``step_fn`` / ``objective_fn``), so the comparison subtracts them from the estimate.

Configurations (each in its own process):

- the digits MLP of ``scripts/bench_replay.py`` (64-256-10, Adam, batch 32, data weights) in
  every leaf mode, with the default policy;
- the metasmooth ResNet-9 of ``scripts/bench_resnet9.py`` at ``--width-multiplier`` (default
  1/16), batch 16, T = 32, with the default options (remat leaves) and in the other leaf
  modes, plus ``StoreAll`` and the default choice under a budget of 15% of what ``StoreAll``
  with fused leaves (reverse mode through the unrolled loop) adds (the budget given to the
  engine is that plus the inputs, which it counts too), with its time against training's in
  the same process.

The ``estimate call`` column is the peak of the `mgd.estimate_memory` call itself, which chooses
(under a budget) and compiles the sweep that the measured calls then reuse: reported, not
compared, since compiling is host work, which on a CPU is the same process memory.

Usage:
  python scripts/check_memory_estimate.py            # all
  python scripts/check_memory_estimate.py --only mlp     # or resnet, or budget (that row)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import multiprocessing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _setup(model: str, steps: int, width: float):
    import mgd

    if model == "mlp":
        data = mgd.load_digits()
        model_def = mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(256,)))
        return mgd.TrainingSetup(
            model_def, mgd.train.adam(1e-3, eps_root=1e-8), data, batch_size=32,
            num_steps=steps, meta_spec=mgd.MetaSpec(data_weights=True),
        )  # fmt: skip
    import bench_resnet9

    args = argparse.Namespace(
        num_train=256, batch_size=16, width_multiplier=width, steps=steps, memory_budget=None
    )
    return bench_resnet9._setup(args)


def _child(model, steps, width, options, budget_fraction, queue) -> None:
    import jax
    from bench_replay import _peak_extra_memory, _seconds

    import mgd

    setup = _setup(model, steps, width)
    meta, state = setup.init_meta(), setup.init_state()
    inputs = None
    if budget_fraction is not None:
        # The budget: a fraction of what StoreAll adds to the inputs, plus the inputs. StoreAll
        # with fused leaves: reverse mode through the unrolled loop, every residual kept (with
        # leaf="auto" it would now rematerialize here).
        full = mgd.estimate_memory(
            setup.step_fn, setup.objective_fn, state, meta, steps, checkpoint=mgd.StoreAll(),
            leaf="fused",
        )  # fmt: skip
        inputs = _inputs(full)
        options = {"memory_budget": inputs + int(budget_fraction * (full.peak_bytes - inputs))}
    trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    trim(0)
    # The estimate chooses (under a budget) and compiles the sweep, which the calls then reuse:
    # its peak is reported, not compared.
    estimates = []
    estimating = lambda: estimates.append(mgd.estimate_memory(*problem, **options))
    problem = (setup.step_fn, setup.objective_fn, state, meta, steps)
    first = _peak_extra_memory(estimating)[2]
    estimate = estimates[0]
    inputs = _inputs(estimate)

    def run():
        return mgd.metagradient(*problem, **options)

    result = jax.block_until_ready(run())
    trim(0)
    measured = _peak_extra_memory(run)[2]
    train = lambda: setup.train(meta)
    jax.block_until_ready(train())
    times, train_times = [], []
    for _ in range(2):
        times.append(_seconds(run))
        train_times.append(_seconds(train))
    queue.put(
        (
            estimate.peak_bytes - inputs,
            measured,
            options.get("memory_budget", 0) - inputs if "memory_budget" in options else None,
            result.stats,
            min(times) / min(train_times),
            first,
        )
    )


def _inputs(estimate) -> int:
    # Present before the call: the initial state (stored slot 0), meta and the functions' data.
    c = estimate.components
    return estimate.state_bytes + c.get("meta", 0) + c.get("fn_arrays", 0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mlp", "resnet", "budget"], default=None,
                        help="budget: the ResNet-9 budget row alone")  # fmt: skip
    parser.add_argument("--mlp-steps", type=int, default=1000)
    parser.add_argument("--resnet-steps", type=int, default=32)
    parser.add_argument("--width-multiplier", type=float, default=1 / 16)
    args = parser.parse_args(argv)
    configs = []
    if args.only in (None, "mlp"):
        configs += [("mlp", args.mlp_steps, {"leaf": leaf}, None) for leaf in LEAVES]
    if args.only in (None, "resnet"):
        import mgd

        # The default first (leaf="auto"; it rematerializes here: a step's residuals are
        # ~29 states), then the other two leaf modes.
        configs += [("resnet", args.resnet_steps, {}, None)]
        other = ("fused", "mixed")
        configs += [("resnet", args.resnet_steps, {"leaf": leaf}, None) for leaf in other]
        configs += [("resnet", args.resnet_steps, {"checkpoint": mgd.StoreAll()}, None)]
    if args.only in (None, "resnet", "budget"):
        configs += [("resnet", args.resnet_steps, {}, 0.15)]
    print("| model | T | options | ran | estimated (MiB) | measured (MiB) | measured / estimated "
          "| budget (MiB) | x train | estimate call (MiB) |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    context = multiprocessing.get_context("spawn")
    mib = 2**20
    for model, steps, options, fraction in configs:
        queue = context.Queue()
        child = context.Process(
            target=_child, args=(model, steps, args.width_multiplier, options, fraction, queue)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            print(f"| {model} | {steps} | {options} | failed: exit code {child.exitcode} |")
            continue
        estimated, measured, budget, stats, ratio, first = queue.get()
        default = options or "default"
        label = f"budget {fraction:.0%} of StoreAll's" if fraction is not None else default
        ran = f"{stats.policy}, {stats.leaf}, {stats.store}"
        print(f"| {model} | {steps} | {label} | {ran} | {estimated / mib:.1f} | "
              f"{measured / mib:.1f} | {measured / estimated:.2f} | "
              f"{'' if budget is None else f'{budget / mib:.1f}'} | {ratio:.2f} | "
              f"{first / mib:.1f} |",
              flush=True)  # fmt: skip


LEAVES = ("fused", "remat", "mixed")

if __name__ == "__main__":
    main()
