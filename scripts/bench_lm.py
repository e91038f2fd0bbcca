"""Benchmark: the byte-level transformer's training speed and its metagradient's cost.

Builds the training setup of a text selection config (default: the shipped ``fortunes_lm``,
which needs ``apt-get install fortunes fortunes-de fortunes-es``) with per-document data
weights, then, in one process and after compiling each: times plain training runs and
metagradients alternately (best of ``--repeats``), and prints the metagradient's cost in
training runs, the engine's plan and its peak device memory (``estimate_memory``: stored
states, residuals and cotangents, against one training step's own peak). ``--sizes`` adds the
time of one training step of other model sizes (context x batch x width x layers).

  python scripts/bench_lm.py
  python scripts/bench_lm.py --sizes 64x16x64x2 128x32x64x2 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax

from mgd.experiments import read_config
from mgd.experiments._common import load_text_data, setup_from_config
from mgd.experiments.select import SelectConfig
from mgd.train import MetaSpec
from mgd.train.models import TransformerConfig


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fortunes_lm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="*", default=[], help="CONTEXTxBATCHxWIDTHxLAYERS")
    args = parser.parse_args()
    config = read_config("select", args.config, SelectConfig)
    text = load_text_data(config.data)
    setup = setup_from_config(config.train, text.data, meta_spec=MetaSpec(data_weights=True))
    meta = setup.init_meta()
    c = config.train.model
    print(
        f"{args.config}: transformer context {c.context}, width {c.d_model}, {c.num_layers} "
        f"layers, batch {config.train.batch_size}, T = {setup.num_steps} steps; pool "
        f"{text.data.num_groups} documents = {text.data.num_train} windows; "
        f"{jax.device_count()} {jax.default_backend()} device(s)"
    )
    jax.block_until_ready(setup.train(meta))  # Compiles.
    result = setup.metagradient(meta)  # Compiles.
    train_s, meta_s = [], []
    for _ in range(args.repeats):  # Alternating: both see the same machine load.
        train_s.append(_best(lambda: setup.train(meta), 1))
        started = time.perf_counter()
        result = setup.metagradient(meta)
        jax.block_until_ready(result.grad)
        meta_s.append(time.perf_counter() - started)
    estimate = setup.estimate_memory(meta)
    t, m = min(train_s), min(meta_s)
    print(f"training run: {t:.2f} s ({1000 * t / setup.num_steps:.1f} ms/step)")
    print(f"metagradient: {m:.2f} s = {m / t:.2f} training runs ({result.stats})")
    print(
        f"peak device memory of the metagradient: {estimate.peak_bytes / 2**20:.1f} MiB "
        f"({estimate.peak_bytes / estimate.step_peak_bytes:.1f}x one training step's "
        f"{estimate.step_peak_bytes / 2**20:.2f} MiB); by component: "
        + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in estimate.components.items())
    )
    for size in args.sizes:
        context, batch, width, layers = (int(v) for v in size.split("x"))
        model = TransformerConfig(context=context, d_model=width, num_layers=layers)
        sized_text = load_text_data(
            dataclasses.replace(
                config.data, text=dataclasses.replace(config.data.text, context=context)
            )
        )
        train = dataclasses.replace(config.train, model=model, batch_size=batch)
        sized = setup_from_config(train, sized_text.data)
        jax.block_until_ready(sized.train())
        s = _best(sized.train, args.repeats)
        print(
            f"context {context}, batch {batch}, width {width}, {layers} layers: "
            f"{1000 * s / sized.num_steps:.1f} ms/step"
        )


if __name__ == "__main__":
    main()
