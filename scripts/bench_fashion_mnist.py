"""Speed and peak memory of a metagradient at Fashion-MNIST scale (issue 13, docs/benchmarks.md).

Two problems, as the shipped configs define them (needs `apt-get install dataset-fashion-mnist`
or $MGD_FASHION_MNIST_DIR):

- ``select``: ``configs/select/fashion_mnist_noisy`` (a 20,000-image pool with per-example data
  weights, a random half selected; 784-256-10 MLP, SGD momentum, batch 128, 2,000 steps);
- ``poison``: ``configs/poison/fashion_mnist`` (the 50,000-image pool, 1,250 perturbed inputs;
  the same MLP, cosine-decayed SGD momentum, 2,000 steps).

Each runs in a fresh subprocess (so peak memory is that problem's own) and reports, with the
policy the engine chose (``checkpoint: null``, the default):

- time: one metagradient / one training run (``TrainingSetup.train``), both compiled, measured
  interleaved in the same process (``mean_seconds``), so load from other processes slows both;
- memory: the peak resident set size above the process's size before a compiled call (sampled
  every 2 ms, after ``malloc_trim``, as in ``scripts/bench_replay.py``), for the metagradient and
  for a training run; and mgd's own estimate (``estimate_memory``).

Usage::

    python scripts/bench_fashion_mnist.py [select] [poison]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import jax
import numpy as np
from bench_replay import _peak_extra_memory

from mgd.experiments import poison, read_config, select
from mgd.experiments._common import load_data, setup_from_config
from mgd.outer.lr._evaluate import mean_seconds
from mgd.outer.poison._attack import resolve_indices
from mgd.train import MetaSpec

MB = 2**20


def _problem(name: str):
    """The setup and metaparameters the experiment differentiates."""
    if name == "select":
        c = read_config("select", "fashion_mnist_noisy", select.SelectConfig)
        data, _ = load_data(c.data, model=c.train.model)
        setup = setup_from_config(c.train, data, seed=c.seed, meta_spec=MetaSpec(data_weights=True))
        n = data.num_train
        k = round(c.fraction * n)
        # The selection trains a subset with weight n / k per selected example.
        weights = np.zeros(n, np.float32)
        weights[np.random.default_rng(0).permutation(n)[:k]] = n / k
        return setup, {**setup.init_meta(), "data_weights": weights}, c.replay.build()
    c = read_config("poison", "fashion_mnist", poison.PoisonConfig)
    data, _ = load_data(c.data, model=c.train.model)
    idx = resolve_indices(
        data, fraction=c.attack.fraction, indices=None, seed=c.attack.subset_seed, where="bench"
    )
    spec = MetaSpec(perturb_indices=tuple(int(i) for i in idx))
    setup = setup_from_config(c.train, data, seed=0, meta_spec=spec)
    return setup, setup.init_meta(), c.replay.build()


def measure(name: str) -> None:
    setup, meta, replay = _problem(name)
    options = replay.options()
    estimate = setup.estimate_memory(meta, **options)

    def train():
        return setup.train(meta).params

    def metagradient():
        return setup.metagradient(meta, **options)

    stats = jax.block_until_ready(metagradient()).stats  # Compiles.
    jax.block_until_ready(train())
    trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    trim(0)
    mg_peak = _peak_extra_memory(metagradient)[2]
    trim(0)
    train_peak = _peak_extra_memory(train)[2]
    unit, mg_s = mean_seconds([train, metagradient], counts=(4, 1), rounds=3)
    print(
        f"{name}: pool {setup.data.num_train}, {setup.num_steps} steps, batch "
        f"{setup.batch_size}; policy {stats.policy} ({stats.leaf}, {stats.store}), "
        f"{stats.forward_steps} forward steps, peak {stats.peak_states} states\n"
        f"  time: training run {unit:.2f} s, metagradient {mg_s:.2f} s = {mg_s / unit:.2f} "
        "training runs (interleaved, same process)\n"
        f"  memory, measured (RSS above the process before the call): metagradient "
        f"{mg_peak / MB:.0f} MB, training run {train_peak / MB:.0f} MB\n"
        f"  memory, estimated: metagradient {estimate.peak_bytes / MB:.0f} MB, training "
        f"{estimate.step_peak_bytes / MB:.0f} MB, one state {estimate.state_bytes / MB:.1f} MB, "
        f"components (MB): "
        + ", ".join(f"{k} {v / MB:.0f}" for k, v in estimate.components.items()),
        flush=True,
    )


def main(names: list[str]) -> None:
    if len(names) == 1:
        measure(names[0])
        return
    for name in names or ["select", "poison"]:
        subprocess.run([sys.executable, __file__, name], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
