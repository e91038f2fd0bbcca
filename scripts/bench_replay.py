"""Benchmark of the replay engine: time and peak memory of metagradients vs plain training.

An MLP (64-256-10) trained by Adam on scikit-learn's digits with per-example data weights as
metaparameters (``eps_root=1e-8``: digits has always-blank pixels whose gradients are exactly
zero, where plain Adam's square root has an infinite derivative).

For each number of steps T it measures, each in a fresh subprocess (so that peak memory is
that configuration's own):

- ``train``: plain jitted training (``TrainingSetup.train``, one ``lax.scan``);
- ``unroll``: ``jax.grad`` of the fully unrolled loop (a ``lax.scan`` under ``jax.jit``; reverse
  mode keeps every step's residuals), the unlimited-memory floor;
- ``mgd.StoreAll()``, ``mgd.KAryTree(k)`` for a few k, and ``mgd.Binomial(slots)``.

Time is the best of ``--repeats`` calls after a compiling warm-up call. Memory is the peak of
the process's resident set size sampled every 2 ms during the warm-up call, minus the resident
size before it (the memory the call itself needs, compilation included), and ``ru_maxrss``.

Usage:
  python scripts/bench_replay.py                       # T = 1,000 and 10,000
  python scripts/bench_replay.py --steps 1000 --repeats 1
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import threading
import time


def _measure(config: str, num_steps: int, repeats: int, queue) -> None:
    """Runs one configuration in this (child) process and reports time and memory."""
    import jax
    import jax.numpy as jnp
    import optax
    import psutil

    import mgd

    data = mgd.load_digits()
    optimizer = optax.adam(1e-3, eps_root=1e-8)
    setup = mgd.TrainingSetup(
        mgd.train.models.MLP(), optimizer, data, batch_size=32, num_steps=num_steps,
        meta_spec=mgd.MetaSpec(data_weights=True),
    )  # fmt: skip
    meta = setup.init_meta()
    state0 = setup.init_state()

    if config == "train":
        run = lambda: setup.train(meta)
    elif config == "unroll":

        @jax.jit
        def unrolled_grad(meta):
            def objective(meta):
                steps = jnp.arange(num_steps, dtype=jnp.int32)
                body = lambda s, t: (setup.step_fn(s, meta, t), None)
                return setup.objective_fn(jax.lax.scan(body, state0, steps)[0], meta)

            return jax.value_and_grad(objective)(meta)

        run = lambda: unrolled_grad(meta)
    else:
        policy = eval(config, {"mgd": mgd})  # e.g. "mgd.KAryTree(32)", from this script only.
        run = lambda: setup.metagradient(meta, checkpoint=policy)

    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    jax.block_until_ready(run())
    done.set()
    sampler.join()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put((min(times), peak[0] - baseline, max_rss))


def measure(config: str, num_steps: int, repeats: int):
    """Time (s), peak extra memory (bytes) and max RSS (bytes) of a configuration."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_measure, args=(config, num_steps, repeats, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        print(f"| {config} | failed: exit code {child.exitcode} | | | | |", flush=True)
        return None
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    mib = 2**20
    for T in args.steps:
        sqrt_k = math.isqrt(T - 1) + 1
        configs = ["train", "unroll", "mgd.StoreAll()"]
        configs += [f"mgd.KAryTree({k})" for k in sorted({sqrt_k, 10, 4 * sqrt_k})]
        configs += [f"mgd.Binomial({2 * sqrt_k})"]
        results = {}
        print(f"\n## T = {T:,} steps\n")
        print("| configuration | time (s) | x train | x unroll | peak extra memory (MiB) | "
              "max RSS (MiB) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        for config in configs:
            results[config] = measure(config, T, args.repeats)
            if results[config] is None:
                continue
            seconds, extra, max_rss = results[config]
            train = results["train"][0]
            unroll = results["unroll"][0] if results.get("unroll") else math.nan
            print(
                f"| {config} | {seconds:.3f} | {seconds / train:.2f} | {seconds / unroll:.2f} | "
                f"{extra / mib:.1f} | {max_rss / mib:.0f} |",
                flush=True,
            )
        tree, store_all = results[f"mgd.KAryTree({sqrt_k})"], results["mgd.StoreAll()"]
        if None in (tree, store_all, results["train"], results["unroll"]):
            continue
        print(
            f"\nKAryTree({sqrt_k}) (k ~ sqrt T): time {tree[0] / results['unroll'][0]:.2f}x "
            f"unroll (target <= 1.5 at T = 1,000), {tree[0] / results['train'][0]:.2f}x train "
            f"(target <= 5); peak extra memory {tree[1] / store_all[1]:.3f}x StoreAll's "
            "(target <= 0.1 at T = 10,000)"
        )


if __name__ == "__main__":
    main()
