"""Benchmark of the replay engine: time and peak memory of metagradients vs plain training.

An MLP (64-256-10) trained by Adam on scikit-learn's digits with per-example data weights as
metaparameters (``eps_root=1e-8``: digits has always-blank pixels whose gradients are exactly
zero, where plain Adam's square root has an infinite derivative). Adam is `mgd.train.adam`
(``--optimizer mgd``, the default: optax's Adam with a hand-written reverse pass) or
``optax.adam`` (``--optimizer optax``); both train identically, only the metagradient's cost
differs.

For each number of steps T it measures, each in a fresh subprocess (so that peak memory is
that configuration's own):

- ``train``: plain jitted training (``TrainingSetup.train``, one ``lax.scan``);
- ``unroll``: ``jax.grad`` of the fully unrolled loop (a ``lax.scan`` under ``jax.jit``; reverse
  mode keeps every step's residuals), the unlimited-memory floor;
- ``mgd.StoreAll()``, ``mgd.KAryTree(k)`` for a few k, and ``mgd.Binomial(slots)``.

Time is the best of ``--repeats`` calls (default 5) after a compiling warm-up call
(``--repeats 0``: the warm-up call itself, compilation included, for runs too long to repeat).
``x train`` divides by the ``train`` row's time. Plain training is also timed inside every
configuration's own process, alternating call for call with it (``x train, same process``):
runs made under the same conditions, so the variance between processes (up to 15% here)
cancels; but after a configuration that allocated gigabytes (``unroll``, ``StoreAll``) that
process trains up to 2x slower, so for those only the first ratio is fair. Memory is the peak of
the process's resident set size sampled every 2 ms during the warm-up call, minus the resident
size before it (the memory the call itself needs, compilation included), and ``ru_maxrss``;
and the same for a second, compiled call after ``malloc_trim`` has handed freed memory back to
the OS (``compiled call``: the states, residuals and buffers alone, without the compiler's).

The memory target (KAryTree(k ~ sqrt T) <= 1/10 of StoreAll's at T = 10,000) is checked on the
compiled call: the CPU counterpart of peak device memory on a GPU (``memory_stats()``'s
``peak_bytes_in_use``, which ``scripts/bench_resnet9.py`` reports), which holds the arrays a
computation allocates and not the compiler's host memory. Compiling the programs (chiefly a
block's VJP) is a one-time cost of the process, about the same at T = 1,000 and T = 10,000 and
for any block length, not a cost of the checkpointing; the first-call figures, compilation
included, are printed beside it, with their difference from the compiled call.

``--policies-vs-T`` measures instead, for T in ``--steps`` (default 1e3, 1e4, 1e5) and a smaller
MLP (64-32-10): training, ``StoreAll`` (up to T = 10,000; beyond, its T + 1 states do not fit
a laptop), ``KAryTree(ceil(sqrt T))``, ``KAryTree(10)`` (peak storage logarithmic in T),
``Binomial(20)``, and the two trees with their stored states offloaded to host memory
(``store="host"``) and to disk (``store="disk"``).

``--cores 1`` pins every measured process to one core. XLA sizes its CPU thread pools by the
cores a process may use and splits some kernels across them; on this 2-core machine that
slows the reverse sweep's many tiny kernels (and makes it vary between processes) while plain
training is unaffected, so the metagradient runs about 10% faster on one core.

Usage:
  python scripts/bench_replay.py                       # T = 1,000 and 10,000
  python scripts/bench_replay.py --steps 1000 --cores 1
  python scripts/bench_replay.py --steps 1000 --optimizer optax
  python scripts/bench_replay.py --policies-vs-T --repeats 1
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import multiprocessing
import os
import resource
import threading
import time

# The Adam implementations --optimizer chooses between: the same training, bit for bit; mgd's
# has a hand-written reverse pass (mgd.train.adam).
OPTIMIZERS = {"mgd": "mgd.train.adam", "optax": "optax.adam"}


def _measure(
    config: str, num_steps: int, repeats: int, hidden: int, optimizer: str, cores, queue
) -> None:
    """Runs one configuration in this (child) process and reports time and memory.

    ``config`` is ``train``, ``unroll`` or a policy expression, optionally followed by
    ``|host`` or ``|disk`` for the store. ``cores``: pin the process to that many CPU cores
    (before JAX starts, which sizes its thread pools by the cores it may use); ``None``: all.
    """
    if cores is not None:
        os.sched_setaffinity(0, range(cores))
    import jax
    import jax.numpy as jnp
    import optax

    import mgd

    data = mgd.load_digits()
    adam = eval(OPTIMIZERS[optimizer], {"mgd": mgd, "optax": optax})
    optimizer = adam(1e-3, eps_root=1e-8)
    model = mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(hidden,)))
    setup = mgd.TrainingSetup(
        model, optimizer, data, batch_size=32, num_steps=num_steps,
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
        expression, _, store = config.partition("|")
        policy = eval(expression, {"mgd": mgd})  # e.g. "mgd.KAryTree(32)", from this script.
        run = lambda: setup.metagradient(meta, checkpoint=policy, store=store or None)

    first, result, extra = _peak_extra_memory(run)  # The first call compiles.
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # Again, compiled, after handing freed memory back to the OS: the memory the computation
    # itself needs (states, residuals, buffers), without the compiler's. Skipped with
    # --repeats 0 (runs too long to repeat).
    compiled_extra = None
    if repeats:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
        compiled_extra = _peak_extra_memory(run)[2]

    # Plain training is timed in this same process, alternating with the configuration, so
    # that the "x train" ratio compares runs under the same conditions (allocator state, cache,
    # clock), not two processes minutes apart.
    train = lambda: setup.train(meta)
    # With --repeats 0, both times include compilation (the train row: its own first call).
    times, train_times = [first], [first if config == "train" else _seconds(train)]
    if repeats:
        times, train_times = [], []
        for _ in range(repeats):
            times.append(_seconds(run))
            train_times.append(_seconds(train))
    stats = getattr(result, "stats", None)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state0))
    queue.put((min(times), min(train_times), extra, max_rss, stats, state_bytes, compiled_extra))


def _peak_extra_memory(fn) -> tuple[float, object, int]:
    """Runs ``fn`` once: its time (s), result, and the peak of the process's resident set size
    (sampled every 2 ms) above the size before the call (bytes)."""
    import jax
    import psutil

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
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, result, peak[0] - baseline


def _seconds(fn) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def measure(
    config: str, num_steps: int, repeats: int, hidden: int = 256, optimizer="mgd", cores=None
):
    """Time (s), plain training's time in the same process (s), peak extra memory (bytes),
    max RSS (bytes), the metagradient's stats (or ``None``) and the training state's size
    (bytes) of a configuration."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_measure, args=(config, num_steps, repeats, hidden, optimizer, cores, queue)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        print(f"| {config} | failed: exit code {child.exitcode} | | | | |", flush=True)
        return None
    return queue.get()


def policies_vs_steps(steps: list[int], repeats: int, optimizer: str, cores=None) -> None:
    """Prints, for each T, time and memory of the policies and stores on a 64-32-10 MLP."""
    mib = 2**20
    print("| T | configuration | store | time (s) | train, same process (s) | x train | "
          "peak extra memory (MiB) | peak extra memory, compiled call (MiB) | max RSS (MiB) | "
          "peak states | replay steps / T | stored on device (MiB) |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for T in steps:
        trees = [f"mgd.KAryTree({math.isqrt(T - 1) + 1})", "mgd.KAryTree(10)"]
        configs = ["train"] + (["mgd.StoreAll()"] if T <= 10_000 else []) + trees
        configs += ["mgd.Binomial(20)"] + [f"{t}|{s}" for s in ["host", "disk"] for t in trees]
        for config in configs:
            result = measure(config, T, repeats, hidden=32, optimizer=optimizer, cores=cores)
            if result is None:
                continue
            seconds, train, extra, max_rss, stats, state_bytes, compiled = result
            policy, _, store = config.partition("|")
            peak = replay = on_device = ""
            if stats is not None:
                peak, replay = str(stats.peak_states), f"{stats.replay_steps / T:.2f}"
                # Off-device stores keep only the states of the current action on the device
                # (plus one prefetched); the device store keeps all held states there.
                states = stats.peak_states if not store else _live_states(policy, T) + 1
                on_device = f"{states * state_bytes / mib:.2f}"
            print(
                f"| {T:,} | {policy} | {store or 'device' if stats else ''} | {seconds:.2f} | "
                f"{train:.2f} | {seconds / train:.2f} | {extra / mib:.1f} | {_mib(compiled)} | "
                f"{max_rss / mib:.0f} | "
                f"{peak} | {replay} | {on_device} |",
                flush=True,
            )


def _mib(nbytes: int | None) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _ratio(a: int | None, b: int | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.3f}x"


def _live_states(policy_expression: str, num_steps: int) -> int:
    """Most states live in one action of the policy's plan: 1, or ``n`` for ``Reverse(n)``."""
    import mgd

    cost = eval(policy_expression, {"mgd": mgd}).cost(num_steps)
    return max(cost.block_lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="mgd",
        help="Adam implementation: mgd.train.adam (default) or optax.adam (same training)",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=None,
        help="pin every measured process to this many CPU cores (default: all it may use)",
    )
    parser.add_argument(
        "--policies-vs-T",
        action="store_true",
        help="time and memory of the policies and state stores vs T on a small MLP",
    )
    args = parser.parse_args()
    if args.steps is not None and min(args.steps) < 1:
        parser.error(f"--steps must all be >= 1, got {args.steps}")
    if args.repeats < 0:
        parser.error(f"--repeats must be >= 0, got {args.repeats}")
    available = len(os.sched_getaffinity(0))
    if args.cores is not None and not 1 <= args.cores <= available:
        parser.error(
            f"--cores must lie in [1, {available}] (the cores available), got {args.cores}"
        )
    print(f"CPU cores per measured process: {args.cores or available} of {available}")
    if args.policies_vs_T:
        steps = args.steps or [1000, 10_000, 100_000]
        policies_vs_steps(steps, args.repeats, args.optimizer, args.cores)
        return
    args.steps = args.steps or [1000, 10_000]

    mib = 2**20
    for T in args.steps:
        sqrt_k = math.isqrt(T - 1) + 1
        configs = ["train", "unroll", "mgd.StoreAll()"]
        configs += [f"mgd.KAryTree({k})" for k in sorted({sqrt_k, 10, 4 * sqrt_k})]
        configs += [f"mgd.Binomial({2 * sqrt_k})"]
        results = {}
        print(f"\n## T = {T:,} steps\n")
        print("| configuration | time (s) | x train | train, same process (s) | "
              "x train, same process | x unroll | peak extra memory (MiB) | "
              "peak extra memory, compiled call (MiB) | max RSS (MiB) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for config in configs:
            results[config] = measure(
                config, T, args.repeats, optimizer=args.optimizer, cores=args.cores
            )
            if results[config] is None:
                continue
            seconds, own_train, extra, max_rss = results[config][:4]
            compiled = results[config][6]
            train = results["train"][0] if results["train"] else math.nan
            unroll = results["unroll"][0] if results.get("unroll") else math.nan
            print(
                f"| {config} | {seconds:.3f} | {seconds / train:.2f} | {own_train:.3f} | "
                f"{seconds / own_train:.2f} | {seconds / unroll:.2f} | {extra / mib:.1f} | "
                f"{_mib(compiled)} | {max_rss / mib:.0f} |",
                flush=True,
            )
        tree, store_all = f"mgd.KAryTree({sqrt_k})", "mgd.StoreAll()"
        if None in (results[tree], results[store_all], results["unroll"], results["train"]):
            continue
        seconds, own_train = results[tree][:2]
        first_call, compiled = results[tree][2], results[tree][6]
        print(
            f"\nKAryTree({sqrt_k}) (k ~ sqrt T):\n"
            f"- time: {seconds / results['unroll'][0]:.2f}x unroll (target <= 1.5 at T = 1,000); "
            f"{seconds / results['train'][0]:.2f}x train ({seconds / own_train:.2f}x training "
            "timed in the same process; target <= 5)\n"
            f"- peak memory of the metagradient (compiled call): "
            f"{_ratio(compiled, results[store_all][6])} StoreAll's (target <= 0.1 at "
            "T = 10,000)\n"
            f"- first call, with XLA's one-time compilation "
            f"({_mib(None if compiled is None else first_call - compiled) or 'n/a'} MiB more "
            f"here): {first_call / results[store_all][2]:.3f}x StoreAll's first call"
        )


if __name__ == "__main__":
    main()
