"""Leaf modes' speed in one process: training, then the metagradient in each leaf mode, calls
alternating, best of ``--repeats`` warm calls, each as a multiple of training's time.

The problems are those of ``scripts/check_memory_estimate.py``: the digits MLP (T = 1,000) or
the metasmooth ResNet-9 at width 1/16, batch 16 (T = 32), with the default policy. It checks
`leaf="auto"`'s time rule (`mgd.engine.memory.fuses_fast`): it also prints one step's residual
bytes over the state's bytes, and the mode ``"auto"`` picks.

Usage:
  python scripts/leaf_speed.py --model mlp
  python scripts/leaf_speed.py --model resnet --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "resnet"], default="mlp")
    parser.add_argument("--steps", type=int, default=None, help="T (1,000 MLP, 32 ResNet-9)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="*", default=["fused", "remat", "mixed"])
    args = parser.parse_args(argv)
    import jax
    from bench_replay import _seconds
    from check_memory_estimate import _setup

    from mgd.engine import memory, replay

    steps = args.steps or {"mlp": 1000, "resnet": 32}[args.model]
    setup = _setup(args.model, steps, 1 / 16)
    meta, state = setup.init_meta(), setup.init_state()
    fns = replay._split_fns(setup.step_fn, setup.objective_fn)
    ratio = memory.residual_bytes_per_step(fns, state, meta) / memory.tree_bytes(state)
    calls = {"train": lambda: setup.train(meta)}
    for mode in args.modes:
        calls[mode] = lambda mode=mode: setup.metagradient(meta, leaf=mode)
    auto = setup.metagradient(meta).stats.leaf
    for call in calls.values():
        jax.block_until_ready(call())  # Compiles.
    times = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            times[name].append(_seconds(call))
    train = min(times["train"])
    print(f"{args.model}, T = {steps}: residuals / state {ratio:.1f}; leaf='auto' picks {auto}; "
          f"training {train:.3f} s (best of {args.repeats})")  # fmt: skip
    for mode in args.modes:
        print(f"  {mode}: {min(times[mode]):.3f} s = {min(times[mode]) / train:.2f}x training")


if __name__ == "__main__":
    main()
