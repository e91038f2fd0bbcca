"""Metagradient vs training on ResNet-9 with CIFAR-10-shaped synthetic data (the GPU benchmark).

Builds the metasmooth ResNet-9 of ``mgd/configs/models/resnet9_metasmooth.yaml`` (Adam with
``eps_root``) on synthetic 32x32x3 images in 10 classes made by the code (nothing is
downloaded), with per-example data weights as metaparameters, and prints for ``--steps`` T:

- plain training time (``TrainingSetup.train``) and the metagradient's time with the default
  policy ``KAryTree(ceil(sqrt T))`` (and any ``--policies``), each the best of ``--repeats``
  calls after a compiling one, the metagradient timed alternately with training;
- their ratio, the replay and peak-state counts, and the peak device memory of each
  (``Device.memory_stats()["peak_bytes_in_use"]``, reset by running each measurement in its own
  process; printed as "n/a" on backends without memory statistics, such as the CPU).

On an H100 (the issue's setting):

  python scripts/bench_resnet9.py --steps 1000 --batch-size 512

On a CPU, a small smoke run (minutes):

  python scripts/bench_resnet9.py --steps 16 --batch-size 16 --width-multiplier 0.0625 \\
      --num-train 256 --repeats 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

CONFIG = (
    Path(__file__).resolve().parents[1] / "mgd" / "configs" / "models" / "resnet9_metasmooth.yaml"
)


def _setup(args: argparse.Namespace):
    """The benchmark's `mgd.TrainingSetup` (metasmooth ResNet-9, synthetic CIFAR-shaped data)."""
    import yaml

    import mgd
    from mgd.train import make_optimizer, models

    cfg = yaml.safe_load(CONFIG.read_text())
    model_cfg = dict(cfg["model"])
    model_cfg["width_multiplier"] = model_cfg.get("width_multiplier", 1.0) * args.width_multiplier
    model_cfg["conv"] = getattr(args, "conv", "auto")
    data = mgd.make_synthetic(
        num_train=args.num_train,
        num_val=args.batch_size,
        num_test=args.batch_size,
        input_shape=(32, 32, 3),
        num_classes=10,
        seed=0,
    )
    return mgd.TrainingSetup(
        models.make_model(model_cfg, num_classes=10),
        make_optimizer(cfg["optimizer"]),
        data,
        batch_size=args.batch_size,
        num_steps=args.steps,
        meta_spec=mgd.MetaSpec(data_weights=True),
    )


def _options(config: str, args: argparse.Namespace) -> dict:
    """Engine options of a configuration: ``"default"`` (``memory_budget`` if given) or
    ``"POLICY"`` / ``"POLICY|LEAF"`` with a policy expression such as ``mgd.KAryTree(32)``."""
    import mgd

    if config == "default":
        budget = args.memory_budget
        return {} if budget is None else {"memory_budget": int(budget * 2**30)}
    expression, _, leaf = config.partition("|")
    policy = eval(expression, {"mgd": mgd})  # A policy expression from this script's caller.
    return {"checkpoint": policy, **({"leaf": leaf} if leaf else {})}


def _measure(config: str, args: argparse.Namespace, queue) -> None:
    """Runs ``train`` or one engine configuration in this (child) process; reports its
    figures, with `mgd.estimate_memory`'s estimate made (compiling only) before running."""
    import jax

    setup = _setup(args)
    meta = setup.init_meta()
    train = lambda: setup.train(meta)
    estimate = None
    if config == "train":
        run = train
    else:
        options = _options(config, args)
        estimate = setup.estimate_memory(meta, **options)
        print(f"  {config}: estimate {estimate.peak_bytes / 2**20:,.0f} MiB, "
              f"{estimate.policy!r}, leaf={estimate.leaf}, store={estimate.store}; "
              f"{ {k: round(v / 2**20) for k, v in estimate.components.items()} } MiB",
              flush=True)  # fmt: skip
        run = lambda: setup.metagradient(meta, **options)

    def seconds(fn) -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start

    result = jax.block_until_ready(run())  # Compiles; its peak memory is the one reported.
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    jax.block_until_ready(train())
    times, train_times = [], []
    for _ in range(args.repeats):
        times.append(seconds(run))
        train_times.append(seconds(train))
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(setup.init_state()))
    run_stats = getattr(result, "stats", None)
    estimated = None if estimate is None else estimate.peak_bytes
    queue.put((min(times), min(train_times), peak, run_stats, state_bytes, estimated))


def _compile_only(args: argparse.Namespace) -> None:
    """Prints, from compiled (never run) programs' memory analysis: a training step, leaf
    blocks of n steps in each mode, and the plan the engine picks with its estimated peak."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mgd.engine import leaf, memory, replay

    setup = _setup(args)
    meta, state = setup.init_meta(), setup.init_state()
    fns = replay._split_fns(setup.step_fn, setup.objective_fn)
    gib = 2**30
    step = replay._advance.lower(*fns, state, meta, np.int32(0), np.int32(1), np.bool_(True))
    step = step.compile()
    step_temps = step.memory_analysis().temp_size_in_bytes
    state_bytes = memory.tree_bytes(state)
    print(f"state {state_bytes / gib:.2f} GiB; one training step's temporaries "
          f"{step_temps / gib:.2f} GiB; training's peak (a state + a step) "
          f"{(state_bytes + step_temps) / gib:.2f} GiB", flush=True)  # fmt: skip
    ct = jax.tree.map(jnp.zeros_like, leaf.partition(state)[0])
    grad = jax.tree.map(jnp.zeros_like, meta)
    if args.block_lengths:  # `--block-lengths` with no values: only the budget's choice.
        print("\n| leaf mode | n = " + " | n = ".join(map(str, args.block_lengths)) + " |")
        print("|---|" + "---:|" * len(args.block_lengths))
    for mode in ("fused", "remat", "mixed") if args.block_lengths else ():
        cells = []
        for n in args.block_lengths:
            program = replay._reverse_block.lower(
                *fns, state, meta, np.int32(0), ct, grad, np.bool_(True), np.bool_(True),
                length=n, mode=mode,
            ).compile()  # fmt: skip
            cells.append(f"{program.memory_analysis().temp_size_in_bytes / gib:.1f}")
        print(f"| {mode} | " + " | ".join(cells) + " |", flush=True)
    options = _options("default", args)
    start = time.perf_counter()
    est = setup.estimate_memory(meta, **options)
    training_peak = state_bytes + step_temps
    print(f"\nmetagradient({options}): {est.policy!r}, leaf={est.leaf}, store={est.store}; "
          f"estimated peak {est.peak_bytes / gib:.1f} GiB = "
          f"{est.peak_bytes / training_peak:.1f}x training's peak "
          f"(estimate made in {time.perf_counter() - start:.0f} s)")  # fmt: skip
    for name, size in est.components.items():
        print(f"  {name}: {size / gib:.2f} GiB")
    cost = est.policy.cost(args.steps)
    print(f"forward steps {cost.forward_steps / args.steps:.2f} T (+{args.steps} step VJPs"
          f"{', each rematerializing its step' if est.leaf != 'fused' else ''})")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--width-multiplier", type=float, default=1.0,
                        help="factor on the config's widths (e.g. 0.0625 on a CPU)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", nargs="*", default=[],
                        help='extra configurations: a policy expression, optionally with a '
                             'leaf mode: "mgd.KAryTree(10)", "mgd.KAryTree(32)|mixed"')  # fmt: skip
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        help="GiB: the default configuration runs with this memory_budget",
    )
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="compile, never run: leaf-block memory by mode and the estimate",
    )
    parser.add_argument(
        "--conv", choices=["auto", "slices", "native"], default="auto",
        help="the model's convolution (mgd.train.loop_friendly_conv; auto: slices on a CPU, "
        "native on a GPU); --compile-only on a CPU with native shows a GPU's programs",
    )  # fmt: skip
    parser.add_argument("--block-lengths", type=int, nargs="*", default=[1, 2, 4])
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "repeats", "num_train"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.width_multiplier > 0:
        parser.error(f"--width-multiplier must be positive, got {args.width_multiplier}")
    if args.num_train < args.batch_size:
        parser.error(f"--num-train ({args.num_train}) must be at least --batch-size")

    import jax

    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    print(f"device: {device}; T = {args.steps:,}, batch {args.batch_size}, "
          f"width x{args.width_multiplier}")  # fmt: skip
    if args.compile_only:
        _compile_only(args)
        return
    configs = ["train", "default", *args.policies]
    print("\n| configuration | time (s) | train, same process (s) | x train | replay steps / T | "
          "peak states | leaf | state (MiB) | estimated peak (MiB) | peak device memory (MiB) "
          "| measured / estimated |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    context = multiprocessing.get_context("spawn")
    for config in configs:
        queue = context.Queue()
        child = context.Process(target=_measure, args=(config, args, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            print(f"| {config} | failed: exit code {child.exitcode} |" + " |" * 9, flush=True)
            continue
        seconds, train, peak, stats, state_bytes, estimated = queue.get()
        mib = 2**20
        name = f"{config}: {stats.policy}" if config == "default" and stats else config
        replay = f"{stats.replay_steps / args.steps:.2f}" if stats else ""
        peak_states = str(stats.peak_states) if stats else ""
        memory = "n/a" if peak is None else f"{peak / mib:,.0f}"
        est = "" if estimated is None else f"{estimated / mib:,.0f}"
        ratio = f"{peak / estimated:.2f}" if peak and estimated else "n/a"
        print(f"| {name} | {seconds:.3f} | {train:.3f} | {seconds / train:.2f} | {replay} | "
              f"{peak_states} | {stats.leaf if stats else ''} | {state_bytes / mib:.1f} | {est} | "
              f"{memory} | {ratio} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
