"""Benchmark of the compiled sweep (`mgd.replay_loop`, which `mgd.metagradient` runs for
device-resident stores) against plain training, the Python driver and the full unroll.

Measured in this one process, calls interleaved (best of ``--repeats`` warm calls each), so the
ratios compare runs under the same conditions:

1. **Linear regression, T = 100,000** (SGD with momentum 0.9, 32 features, batch 16 of 1,024
   examples, per-example weights and a per-step learning rate as metaparameters),
   ``KAryTree(316)``: the metagradient against its training run (a jitted ``fori_loop``), for
   the compiled sweep and for the Python driver (a `mgd.DeviceStore` subclass, which
   `mgd.metagradient` runs block by block), and ``jax.grad`` of the unrolled loop (one
   ``lax.scan``, every step's residuals kept). Target: compiled <= 4x training.
2. **Digits MLP, T = 1,000** (64-256-10, `mgd.train.adam`, batch 32, per-example weights; the
   problem of ``scripts/bench_replay.py``), ``KAryTree(32)``: against training and against
   ``jax.grad`` of the unrolled loop (one ``lax.scan``). Targets: <= 5x training, <= 1.5x
   unroll.
3. **Compile time vs T** on the linear regression (T = 1e3, 1e4, 1e5 with
   ``KAryTree(ceil(sqrt T))``): the first call's time minus a warm call's, i.e. tracing and
   XLA compilation of the one program.
4. **A jit-compiled meta-step** (metagradient + ``optax.adam`` update of the metaparameters,
   `mgd.meta_step`) against the same meta-step as ``metagradient`` plus a
   separately jitted update, on the linear regression at T = 1,000 (the per-call overhead an
   outer loop pays); and on a learning-rate search's problem (digits MLP, T = 200).
5. **A real LR search** (`mgd.search_lr_schedule`, 10 meta-steps on that problem) with its
   compiled meta-step against the same search with ``setup.metagradient`` plus the loop's
   update: wall time per meta-step.

Usage:
  python scripts/bench_compiled.py
  python scripts/bench_compiled.py --repeats 3 --skip-digits
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mgd

N, FEATURES, BATCH = 1024, 32, 16


def linear_regression(num_steps: int, seed: int = 0):
    """``(step_fn, objective_fn, init_state, meta)`` of the linear-regression problem."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(N, FEATURES)), jnp.float32)
    w_true = rng.normal(size=FEATURES)
    y = jnp.asarray(np.asarray(x) @ w_true + 0.1 * rng.normal(size=N), jnp.float32)
    order = jnp.asarray(rng.integers(0, N, size=(num_steps, BATCH)), jnp.int32)
    x_val = jnp.asarray(rng.normal(size=(256, FEATURES)), jnp.float32)
    y_val = jnp.asarray(np.asarray(x_val) @ w_true, jnp.float32)

    def step(x, y, order, state, meta, t):
        w, velocity = state
        idx = order[t]
        residual = x[idx] @ w - y[idx]
        grad = x[idx].T @ (meta["weights"][idx] * residual) / BATCH
        velocity = 0.9 * velocity + grad
        return w - meta["lr"][t] * velocity, velocity

    def objective(x_val, y_val, state, meta):
        return jnp.mean((x_val @ state[0] - y_val) ** 2)

    step_fn = jax.tree_util.Partial(step, x, y, order)
    objective_fn = jax.tree_util.Partial(objective, x_val, y_val)
    state = (jnp.zeros(FEATURES, jnp.float32), jnp.zeros(FEATURES, jnp.float32))
    meta = {"weights": jnp.ones(N, jnp.float32), "lr": jnp.full(num_steps, 0.01, jnp.float32)}
    return step_fn, objective_fn, state, meta


@jax.jit
def _train(step_fn, state, meta):
    num_steps = meta["lr"].shape[0]
    return jax.lax.fori_loop(0, num_steps, lambda t, s: step_fn(s, meta, t), state)


class DriverStore(mgd.DeviceStore):
    """Device memory, but through the Python driver (one jitted program per block): any store
    other than `mgd.DeviceStore` itself keeps the driver."""


def best(fns: dict, repeats: int) -> dict:
    """Best time (s) of each function over ``repeats`` rounds, calls interleaved."""
    for fn in fns.values():  # Warm-up: compile.
        jax.block_until_ready(fn())
    times = {name: math.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def linear_regression_overhead(repeats: int) -> None:
    T, policy = 100_000, mgd.KAryTree(316)
    step_fn, objective_fn, state, meta = linear_regression(T)

    @jax.jit
    def unrolled(meta):  # jax.grad of the loop as one lax.scan: every step's residuals kept
        def objective(meta):
            body = lambda s, t: (step_fn(s, meta, t), None)
            final = jax.lax.scan(body, state, jnp.arange(T, dtype=jnp.int32))[0]
            return objective_fn(final, meta)

        return jax.value_and_grad(objective)(meta)

    times = best(
        {
            "train": lambda: _train(step_fn, state, meta),
            "unroll": lambda: unrolled(meta),
            "compiled": lambda: mgd.metagradient(
                step_fn, objective_fn, state, meta, T, checkpoint=policy
            ),
            "driver": lambda: mgd.metagradient(
                step_fn, objective_fn, state, meta, T, checkpoint=policy, store=DriverStore()
            ),
        },
        repeats,
    )
    train = times["train"]
    print(f"\n## Linear regression, T = {T:,}, {policy!r} (best of {repeats}, interleaved)\n")
    print("| configuration | time (s) | x train |\n|---|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.4f} | {seconds / train:.2f} |")
    print(f"\ncompiled sweep: {times['compiled'] / train:.2f}x training (target <= 4); "
          f"the driver: {times['driver'] / train:.2f}x")  # fmt: skip


def digits_overhead(repeats: int) -> None:
    T, policy = 1000, mgd.KAryTree(32)
    optimizer = mgd.train.adam(1e-3, eps_root=1e-8)
    model = mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(256,)))
    setup = mgd.TrainingSetup(
        model, optimizer, mgd.load_digits(), batch_size=32, num_steps=T,
        meta_spec=mgd.MetaSpec(data_weights=True),
    )  # fmt: skip
    meta, state0 = setup.init_meta(), setup.init_state()

    @jax.jit
    def unrolled(meta):
        def objective(meta):
            body = lambda s, t: (setup.step_fn(s, meta, t), None)
            final = jax.lax.scan(body, state0, jnp.arange(T, dtype=jnp.int32))[0]
            return setup.objective_fn(final, meta)

        return jax.value_and_grad(objective)(meta)

    times = best(
        {
            "train": lambda: setup.train(meta),
            "unroll": lambda: unrolled(meta),
            "compiled": lambda: setup.metagradient(meta, checkpoint=policy),
            "driver": lambda: setup.metagradient(meta, checkpoint=policy, store=DriverStore()),
        },
        repeats,
    )
    train, unroll = times["train"], times["unroll"]
    print(f"\n## Digits MLP 64-256-10, T = {T:,}, {policy!r} (best of {repeats}, interleaved)\n")
    print("| configuration | time (s) | x train | x unroll |\n|---|---:|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.4f} | {seconds / train:.2f} | {seconds / unroll:.2f} |")
    print(f"\ncompiled sweep: {times['compiled'] / train:.2f}x training (target <= 5), "
          f"{times['compiled'] / unroll:.2f}x unroll (target <= 1.5)")  # fmt: skip


def compile_time_vs_steps(steps: list[int]) -> None:
    print("\n## Compile time vs T (linear regression, KAryTree(ceil(sqrt T)))\n")
    print("| T | policy | first call (s) | warm call (s) | compile = first - warm (s) |")
    print("|---:|---|---:|---:|---:|")
    for T in steps:
        policy = mgd.KAryTree(math.isqrt(T - 1) + 1)
        step_fn, objective_fn, state, meta = linear_regression(T, seed=T)
        call = lambda: mgd.metagradient(step_fn, objective_fn, state, meta, T, checkpoint=policy)  # noqa: B023
        start = time.perf_counter()
        jax.block_until_ready(call())
        first = time.perf_counter() - start
        warm = min(_seconds(call) for _ in range(3))
        print(f"| {T:,} | {policy!r} | {first:.2f} | {warm:.4f} | {first - warm:.2f} |")


def _seconds(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def meta_step_speed(repeats: int) -> None:
    T, policy = 1000, mgd.KAryTree(32)
    step_fn, objective_fn, state, meta = linear_regression(T)
    outer = optax.adam(1e-2)
    update = jax.jit(outer.update)

    def separate(meta, opt_state):
        res = mgd.metagradient(step_fn, objective_fn, state, meta, T, checkpoint=policy)
        updates, opt_state = update(res.grad, opt_state, meta)
        return optax.apply_updates(meta, updates), opt_state, res.value

    opt_state = outer.init(meta)
    times = best(
        {
            "mgd.meta_step": lambda: mgd.meta_step(
                step_fn, objective_fn, state, meta, opt_state, T, outer, checkpoint=policy
            ),
            "metagradient + jitted update": lambda: separate(meta, opt_state),
        },
        repeats,
    )
    print(f"\n## One meta-step, linear regression T = {T:,}, {policy!r} (best of {repeats})\n")
    print("| meta-step | time (ms) |\n|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {1e3 * seconds:.2f} |")
    ratio = times["metagradient + jitted update"] / times["mgd.meta_step"]
    print(f"\nmgd.meta_step is {ratio:.2f}x as fast")


def meta_step_lr_search(repeats: int) -> None:
    """`mgd.meta_step` against ``setup.metagradient`` plus a jitted update on a learning-rate
    search's problem (digits MLP 64-64-10, SGD momentum, T = 200, 11 learning-rate knots)."""
    T, policy = 200, mgd.KAryTree(16)
    model = mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(64,)))
    setup = mgd.TrainingSetup(
        model, optax.sgd(1.0, momentum=0.9), mgd.load_digits(), batch_size=32, num_steps=T,
        meta_spec=mgd.MetaSpec(lr_knots=tuple(range(0, T + 1, T // 10))),
    )  # fmt: skip
    meta, state = setup.init_meta(), setup.init_state()
    meta = {**meta, "log_lr": jnp.full_like(meta["log_lr"], -3.0)}
    outer = optax.adam(0.1)
    update, opt_state = jax.jit(outer.update), outer.init(meta)

    def separate():
        res = setup.metagradient(meta, checkpoint=policy)
        updates, new_state = update(res.grad, opt_state, meta)
        return optax.apply_updates(meta, updates), new_state, res.value

    times = best(
        {
            "mgd.meta_step": lambda: mgd.meta_step(
                setup.step_fn, setup.objective_fn, state, meta, opt_state, T, outer,
                checkpoint=policy,
            ),
            "setup.metagradient + jitted update": separate,
        },
        repeats,
    )  # fmt: skip
    print(f"\n## One meta-step, LR search on digits, T = {T}, {policy!r} (best of {repeats})\n")
    print("| meta-step | time (ms) |\n|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {1e3 * seconds:.2f} |")
    ratio = times["setup.metagradient + jitted update"] / times["mgd.meta_step"]
    print(f"\nmgd.meta_step is {ratio:.2f}x as fast")


def lr_search_speed(meta_steps: int, rounds: int) -> None:
    """`mgd.search_lr_schedule` with its compiled meta-step against the same search with
    ``setup.metagradient`` plus the loop's own update (the compiled step switched off), on the
    problem of `meta_step_lr_search`; per meta-step wall time from the searches' histories
    (the first meta-step, which compiles, left out), searches alternating ``rounds`` times."""
    from mgd.outer.lr import _search  # noqa: PLC0415 (switching the compiled step off)

    T = 200
    model = mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(64,)))
    setup = mgd.TrainingSetup(
        model, optax.sgd(1.0, momentum=0.9), mgd.load_digits(), batch_size=32, num_steps=T,
        meta_spec=mgd.MetaSpec(lr_knots=tuple(range(0, T + 1, T // 10))),
    )  # fmt: skip
    kwargs = dict(
        init_schedule=0.05, meta_steps=meta_steps, replay=mgd.Replay(mgd.KAryTree(16)),
        test_seeds=0, progress=False,
    )  # fmt: skip
    compiled_step = _search.outer_update
    seconds: dict[str, list[float]] = {"compiled meta-step": [], "metagradient + update": []}
    objectives = {}
    for _ in range(rounds):
        for name in seconds:
            _search.outer_update = (
                compiled_step if name == "compiled meta-step" else (lambda *a, **k: None)
            )
            res = mgd.search_lr_schedule(setup, **kwargs)
            seconds[name] += [r.seconds for r in res.history[1:meta_steps]]
            objectives[name] = res.objectives
    _search.outer_update = compiled_step
    print(f"\n## LR search on digits, T = {T}, KAryTree(16), {meta_steps} meta-steps x {rounds}\n")
    print("| search | median s / meta-step | min |\n|---|---:|---:|")
    for name, values in seconds.items():
        print(f"| {name} | {np.median(values):.4f} | {np.min(values):.4f} |")
    ratio = np.median(seconds["metagradient + update"]) / np.median(seconds["compiled meta-step"])
    gap = np.abs(objectives["compiled meta-step"] / objectives["metagradient + update"] - 1)
    print(
        f"\ncompiled meta-step is {ratio:.2f}x as fast (median); relative gap of the objectives "
        f"(float32 rounding, compounding over meta-steps): first {gap[0]:.1e}, largest "
        f"{np.max(gap):.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-digits", action="store_true", help="skip the digits MLP")
    parser.add_argument(
        "--compile-steps", type=int, nargs="*", default=[1000, 10_000, 100_000],
        help="the T of the compile-time table (none: skip it)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if any(T < 1 for T in args.compile_steps):
        parser.error(f"--compile-steps must all be >= 1, got {args.compile_steps}")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    linear_regression_overhead(args.repeats)
    if not args.skip_digits:
        digits_overhead(args.repeats)
    meta_step_speed(args.repeats)
    if not args.skip_digits:
        meta_step_lr_search(args.repeats)
        lr_search_speed(meta_steps=10, rounds=2)
    if args.compile_steps:
        compile_time_vs_steps(args.compile_steps)


if __name__ == "__main__":
    main()
