"""Benchmark: TrainingSetup.train against a hand-written jitted optax loop on the same model.

Both run the same model, optimizer, data and batch order as one ``lax.scan`` under ``jit``; the
hand-written loop has none of the setup's machinery (metaparameters, masks, schedule). Each is
compiled first, then timed as the best of ``--repeats`` interleaved runs (retraining with new
seeds, as outer optimizers do). Prints one line per model and exits 1 if ``train`` is more than
``--tolerance`` slower.

  python scripts/bench_train.py                      # MLP and small CNN on digits, CPU
  python scripts/bench_train.py --models resnet9 --steps 50 --batch-size 128   # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import yaml

import mgd
from mgd.train import make_optimizer, models

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def hand_written_train(setup: mgd.TrainingSetup):
    """A plain jitted optax training loop over the setup's batch order (the reference)."""
    model, optimizer, n_steps = setup.model, setup.optimizer, setup.num_steps
    x_train, y_train = jnp.asarray(setup.data.x_train), jnp.asarray(setup.data.y_train)
    has_bn = isinstance(model, models.ResNet9)

    @jax.jit
    def run(key, index):
        variables = model.init(jax.random.fold_in(key, 0), x_train[:1])
        params = variables["params"]
        stats = variables.get("batch_stats", {})

        def body(carry, t):
            params, opt_state, stats = carry
            x, y = x_train[index[t]], y_train[index[t]]

            def loss_fn(p):
                if has_bn:
                    logits, new = model.apply(
                        {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
                    )
                    new_stats = new["batch_stats"]
                else:
                    logits, new_stats = model.apply({"params": p}, x, train=True), stats
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, new_stats

            grads, stats = jax.grad(loss_fn, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, stats), None

        carry = (params, optimizer.init(params), stats)
        return jax.lax.scan(body, carry, jnp.arange(n_steps))[0][0]

    return run


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each function over ``repeats`` seeds, runs interleaved so that load
    changes on a shared machine hit every function alike."""
    for fn in fns:
        jax.block_until_ready(fn(0))  # Compile.
    times = [[] for _ in fns]
    for seed in range(1, repeats + 1):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn(seed))
            ts.append(time.perf_counter() - start)
    return [min(ts) for ts in times]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "small_cnn"])
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args(argv)

    data = mgd.load_digits() if args.data == "digits" else mgd.load_cifar10()
    print(f"device: {jax.devices()[0].device_kind}, data: {args.data}, steps: {args.steps}")
    ok = True
    for name in args.models:
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        model = models.make_model(cfg["model"], num_classes=data.num_classes)
        setup = mgd.TrainingSetup(
            model,
            make_optimizer(cfg["optimizer"]),
            data,
            batch_size=args.batch_size,
            num_steps=args.steps,
        )
        reference = hand_written_train(setup)

        # The hand-written loop gets the setup's batch orders, computed outside the timing.
        orders = {s: setup.replace(seed=s)._batches.index for s in range(args.repeats + 1)}

        def hand_timed(seed, reference=reference, orders=orders):
            return reference(jax.random.PRNGKey(seed), orders[seed])

        t_ref, t_setup = best_times(
            [hand_timed, lambda seed, setup=setup: setup.train(seed=seed).params], args.repeats
        )
        ratio = t_setup / t_ref
        ok &= ratio <= 1 + args.tolerance
        print(
            f"{name:10s} hand-written {t_ref * 1e3:8.1f} ms   TrainingSetup.train "
            f"{t_setup * 1e3:8.1f} ms   ratio {ratio:.3f}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
