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
import math
import multiprocessing
import time
from pathlib import Path

CONFIG = (
    Path(__file__).resolve().parents[1] / "mgd" / "configs" / "models" / "resnet9_metasmooth.yaml"
)


def _measure(config: str, args: argparse.Namespace, queue) -> None:
    """Runs ``train`` or one policy expression in this (child) process; reports its figures."""
    import jax
    import yaml

    import mgd
    from mgd.train import make_optimizer, models

    cfg = yaml.safe_load(CONFIG.read_text())
    model_cfg = dict(cfg["model"])
    model_cfg["width_multiplier"] = model_cfg.get("width_multiplier", 1.0) * args.width_multiplier
    data = mgd.make_synthetic(
        num_train=args.num_train,
        num_val=args.batch_size,
        num_test=args.batch_size,
        input_shape=(32, 32, 3),
        num_classes=10,
        seed=0,
    )
    setup = mgd.TrainingSetup(
        models.make_model(model_cfg, num_classes=10),
        make_optimizer(cfg["optimizer"]),
        data,
        batch_size=args.batch_size,
        num_steps=args.steps,
        meta_spec=mgd.MetaSpec(data_weights=True),
    )
    meta = setup.init_meta()
    train = lambda: setup.train(meta)
    if config == "train":
        run = train
    else:
        policy = eval(config, {"mgd": mgd})  # e.g. "mgd.KAryTree(32)", from this script.
        run = lambda: setup.metagradient(meta, checkpoint=policy)

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
    queue.put((min(times), min(train_times), peak, run_stats, state_bytes))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--width-multiplier", type=float, default=1.0,
                        help="factor on the config's widths (e.g. 0.0625 on a CPU)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", nargs="*", default=[],
                        help='extra policy expressions, e.g. "mgd.KAryTree(10)"')  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "repeats", "num_train"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.width_multiplier > 0:
        parser.error(f"--width-multiplier must be positive, got {args.width_multiplier}")
    if args.num_train < args.batch_size:
        parser.error(f"--num-train ({args.num_train}) must be at least --batch-size")

    import jax

    sqrt_k = max(2, math.isqrt(args.steps - 1) + 1)
    configs = ["train", f"mgd.KAryTree({sqrt_k})", *args.policies]
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    print(f"device: {device}; T = {args.steps:,}, batch {args.batch_size}, "
          f"width x{args.width_multiplier}")  # fmt: skip
    print("\n| configuration | time (s) | train, same process (s) | x train | replay steps / T | "
          "peak states | state (MiB) | peak device memory (MiB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    context = multiprocessing.get_context("spawn")
    for config in configs:
        queue = context.Queue()
        child = context.Process(target=_measure, args=(config, args, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            print(f"| {config} | failed: exit code {child.exitcode} | | | | | | |", flush=True)
            continue
        seconds, train, peak, stats, state_bytes = queue.get()
        mib = 2**20
        replay = f"{stats.replay_steps / args.steps:.2f}" if stats else ""
        peak_states = str(stats.peak_states) if stats else ""
        memory = "n/a" if peak is None else f"{peak / mib:,.0f}"
        print(f"| {config} | {seconds:.3f} | {train:.3f} | {seconds / train:.2f} | {replay} | "
              f"{peak_states} | {state_bytes / mib:.1f} | {memory} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
