"""Benchmark: TrainingSetup.train against a hand-written jitted optax loop on the same model.

Both run the same model, optimizer, data and batch order as one ``lax.scan`` under ``jit``; the
hand-written loop has none of the setup's machinery (metaparameters, masks, schedule). Each is
compiled first, then timed as the best of ``--repeats`` interleaved runs (retraining with new
seeds, as outer optimizers do). Prints one line per model and exits 1 if ``train`` is more than
``--tolerance`` slower.

``--conv`` benchmarks convolutions inside compiled loops instead (see ``conv_main``).

  python scripts/bench_train.py                      # MLP and small CNN on digits, CPU
  python scripts/bench_train.py --models resnet9 --steps 50 --batch-size 128   # on a GPU
  python scripts/bench_train.py --conv               # SmallCNN, narrow ResNet-9 (+ PyTorch), CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from jax import lax

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


def patches_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
):
    """The simple loop-friendly formulation, for comparison: XLA's patches op, then one matmul
    (flax's NHWC / HWIO layout, no feature groups)."""
    assert feature_group_count == 1
    patches = lax.conv_general_dilated_patches(
        lhs,
        rhs.shape[:-2],
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers=dimension_numbers,
        precision=precision,
    )
    # The patches' features run (input channel, *window), channel major.
    kernel = jnp.moveaxis(rhs, -2, 0).reshape(-1, rhs.shape[-1])
    return jnp.dot(patches, kernel, precision=precision)


def step_loop(setup: mgd.TrainingSetup):
    """The setup's own training step jitted once and called from a Python loop: convolutions at a
    program's top level, where XLA:CPU runs them fast."""
    step = jax.jit(lambda step_fn, state, meta, t: step_fn(state, meta, t))
    step_fn, meta = setup.step_fn, setup.init_meta()

    def run(seed):
        state = setup.replace(seed=seed).init_state()
        for t in range(setup.num_steps):
            state = step(step_fn, state, meta, np.int32(t))
        return state.params

    return run


def torch_train(model_cfg: dict, opt_cfg: dict, data, batch_size: int, steps: int):
    """The same network, optimizer and batch size in PyTorch (``None`` if torch is absent)."""
    try:
        import torch
        from torch import nn as tnn
    except ImportError:
        return None
    act = {"relu": tnn.ReLU, "gelu": tnn.GELU, "tanh": tnn.Tanh, "silu": tnn.SiLU}
    h, w, c = data.x_train.shape[1:]

    def conv(ci, co, bias=True):
        return tnn.Conv2d(ci, co, 3, padding=1, bias=bias)

    if model_cfg["name"] == "small_cnn":
        cfg = models.SmallCNNConfig(**{k: v for k, v in model_cfg.items() if k != "name"})
        pool = tnn.AvgPool2d if cfg.pool == "avg" else tnn.MaxPool2d
        layers, ci = [], c
        for co in cfg.channels:
            layers += [conv(ci, co), act[cfg.activation](), pool(2)]
            ci, h, w = co, h // 2, w // 2
        layers.append(tnn.Flatten())
        if cfg.hidden:
            layers += [tnn.Linear(ci * h * w, cfg.hidden), act[cfg.activation]()]
            ci, h, w = cfg.hidden, 1, 1
        net = tnn.Sequential(*layers, tnn.Linear(ci * h * w, data.num_classes))
    else:
        cfg = models.ResNet9Config(**{k: v for k, v in model_cfg.items() if k != "name"})
        pool = tnn.AvgPool2d if cfg.pool == "avg" else tnn.MaxPool2d

        def block(ci, co):
            bn = tnn.BatchNorm2d(co, momentum=1 - cfg.bn_momentum)
            order = [bn, tnn.ReLU()] if cfg.bn_before_activation else [tnn.ReLU(), bn]
            return tnn.Sequential(conv(ci, co, bias=False), *order)

        class Residual(tnn.Module):
            def __init__(self, co):
                super().__init__()
                self.body = tnn.Sequential(block(co, co), block(co, co))

            def forward(self, x):
                return x + self.body(x)

        w0, w1, w2, w3 = cfg.widths()
        gpool = tnn.AdaptiveMaxPool2d(1) if cfg.pool == "max" else tnn.AdaptiveAvgPool2d(1)
        net = tnn.Sequential(
            block(c, w0),
            block(w0, w1),
            pool(2),
            Residual(w1),
            block(w1, w2),
            pool(2),
            block(w2, w3),
            pool(2),
            Residual(w3),
            gpool,
            tnn.Flatten(),
            tnn.Linear(w3, data.num_classes, bias=False),
        )
    x_all = torch.tensor(np.moveaxis(data.x_train, -1, 1))
    y_all = torch.tensor(data.y_train, dtype=torch.long)
    opt = torch.optim.SGD(
        net.parameters(),
        lr=opt_cfg["learning_rate"],
        momentum=opt_cfg.get("momentum", 0.0),
        nesterov=opt_cfg.get("nesterov", False),
    )

    def run(seed):
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))
        for t in range(steps):
            index = order[(t * batch_size + torch.arange(batch_size)) % len(order)]
            opt.zero_grad()
            loss = tnn.functional.cross_entropy(net(x_all[index]), y_all[index])
            loss.backward()
            opt.step()

    return run, f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)"


def conv_main(args) -> int:
    """Convolutional networks inside compiled loops (``--conv``), on synthetic images.

    Per model, ms per step of: ``TrainingSetup.train`` with the models' default convolution
    (``conv="auto"``: ``mgd.train.loop_friendly_conv``'s slices on the CPU), with the native
    convolution (``conv="native"``: XLA:CPU's slow path inside loops) and with XLA's patches op
    plus a matmul; the native model's step jitted once and called from a Python loop (the
    reference); and PyTorch's training of the same network if torch is installed. Then the
    metagradient of a ``--metagrad-steps`` run of the first model against its training run, both
    timed in this process, native convolution and default.
    """
    h, w, c = args.image_shape
    data = mgd.make_synthetic(
        num_train=2048, num_val=256, num_test=0, input_shape=(h, w, c), num_classes=10
    )
    steps = args.steps or 32
    print(
        f"device: {jax.devices()[0].device_kind}, synthetic {h}x{w}x{c} images, "
        f"batch {args.batch_size}, {steps} steps; ms per training step, best of {args.repeats}"
    )
    ok = True
    for name in args.conv_models:
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        model_cfg = dict(cfg["model"])
        if name == "resnet9":
            model_cfg["width_multiplier"] = args.resnet_width
        model = models.make_model(model_cfg, num_classes=data.num_classes)
        setup = mgd.TrainingSetup(
            model,
            make_optimizer(cfg["optimizer"]),
            data,
            batch_size=args.batch_size,
            num_steps=steps,
        )

        def with_conv(conv, setup=setup, model=model):
            return setup.replace(
                model=model.clone(config=dataclasses.replace(model.config, conv=conv))
            )

        runs = {
            "train (default conv)": setup,
            "train (native conv)": with_conv("native"),
            "train (patches conv)": with_conv(patches_conv),
        }
        fns = [lambda seed, s=s: s.train(seed=seed).params for s in runs.values()]
        fns.append(step_loop(with_conv("native")))
        labels = [*runs, "native step jitted, Python loop"]
        torch_run = torch_train(model_cfg, cfg["optimizer"], data, args.batch_size, steps)
        if torch_run is not None:
            fns.append(torch_run[0])
            labels.append(torch_run[1])
        times = best_times(fns, args.repeats)
        ms = dict(zip(labels, (t / steps * 1e3 for t in times), strict=True))
        ratio = ms["train (default conv)"] / ms["native step jitted, Python loop"]
        ok &= ratio <= args.conv_target
        print(f"{name} ({sum(x.size for x in jax.tree.leaves(setup.init_state().params))} params)")
        for label, value in ms.items():
            print(f"  {label:34s} {value:8.2f} ms/step")
        print(
            f"  train (default conv) / native step in a Python loop: {ratio:.2f}x "
            f"(target <= {args.conv_target}); native conv in train: "
            f"{ms['train (native conv)'] / ms['train (default conv)']:.1f}x slower than default"
        )
    if args.metagrad_steps:
        name = args.conv_models[0]
        print(
            f"metagradient of a {args.metagrad_steps}-step {name} run (data weights), "
            "default checkpoint policy, against its training run in this process:"
        )
        base = runs["train (default conv)"].replace(
            num_steps=args.metagrad_steps, meta_spec=mgd.MetaSpec(data_weights=True)
        )
        for conv in ("native", "auto"):
            s = base.replace(
                model=base.model.clone(config=dataclasses.replace(base.model.config, conv=conv))
            )
            meta = s.init_meta()
            t_train, t_meta = best_times(
                [
                    lambda seed, s=s, meta=meta: s.train(meta, seed=seed).params,
                    lambda seed, s=s, meta=meta: s.replace(seed=seed).metagradient(meta).grad,
                ],
                args.metagrad_repeats,
            )
            print(
                f"  conv={conv:6s}  train {t_train:7.2f} s   metagradient {t_meta:7.2f} s   "
                f"{t_meta / t_train:.1f}x train"
            )
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "small_cnn"])
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--steps", type=int, default=None, help="default 500; 32 with --conv")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.10)
    conv = parser.add_argument_group("--conv: convolutions inside compiled loops")
    conv.add_argument("--conv", action="store_true", help="run this benchmark instead")
    conv.add_argument("--conv-models", nargs="+", default=["small_cnn", "resnet9"])
    conv.add_argument("--image-shape", type=int, nargs=3, default=[28, 28, 1])
    conv.add_argument("--resnet-width", type=float, default=0.0625, help="width_multiplier")
    conv.add_argument("--conv-target", type=float, default=1.2)
    conv.add_argument("--metagrad-steps", type=int, default=64, help="0 to skip")
    conv.add_argument("--metagrad-repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.conv:
        return conv_main(args)
    args.steps = args.steps or 500

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
