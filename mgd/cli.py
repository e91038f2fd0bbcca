"""The ``mgd`` command line: ``mgd select`` chooses a training subset by metagradient descent.

Contract 2 of the architecture::

    mgd select --config CONFIG [--data FILE.npz] [--fraction F] [--meta-steps N] [--seed S]
               [--out DIR] [--resume]

Writes ``DIR/selection.json``, ``DIR/metrics.json``, ``DIR/history.json`` (objective and subset
per meta-step), ``DIR/config.yaml`` (the resolved config), ``DIR/objective.png`` and
``DIR/checkpoints/`` (the outer state after every meta-step, for ``--resume``). Bad input exits
with status 2 and one line on stderr, before anything in ``DIR`` is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]

_EXIT_BAD_INPUT = 2
_EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage block before the message; the contract is a single line.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mgd", description="Metagradient descent on training metaparameters.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    select = sub.add_parser(
        "select",
        help="choose the training subset that minimizes the target loss",
        description=(
            "Select a fraction of the candidate pool by metagradient descent on data weights, "
            "then retrain from scratch (fresh seeds) on the selection, on random subsets of the "
            "same size and on the full pool, and report held-out test accuracy."
        ),
    )
    select.add_argument(
        "--config",
        metavar="CONFIG",
        help="YAML or TOML config (see configs/select/); default: the built-in default, "
        "equal to configs/select/default.yaml",
    )
    select.add_argument(
        "--data",
        metavar="FILE.npz",
        help="candidates x_train, y_train; target x_target, y_target; held-out x_test, y_test "
        "(default: the config's dataset)",
    )
    select.add_argument("--fraction", type=float, help="subset size / pool size, in (0, 1]")
    select.add_argument("--meta-steps", type=int, help="number of meta-steps (metagradients)")
    select.add_argument("--seed", type=int, help="seed of the selection")
    select.add_argument(
        "--out",
        metavar="DIR",
        default="runs/select",
        help="output directory (default: %(default)s)",
    )
    select.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from its last checkpoint (without it, a non-empty DIR is "
        "refused)",
    )
    select.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mgd`` console script; returns the exit status."""
    try:
        args = _build_parser().parse_args(argv)
        return _select(args)
    except _UsageError as e:
        print(str(e), file=sys.stderr)
        return _EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "mgd: interrupted; rerun with --resume to continue from the last meta-step",
            file=sys.stderr,
        )
        return _EXIT_INTERRUPTED


def _fail(message: str) -> NoReturn:
    raise _UsageError(f"mgd select: {message}")


# --- inputs -------------------------------------------------------------------------------------


def _resolve_config(args: argparse.Namespace):
    from mgd.config import load_config
    from mgd.experiments.select import SelectConfig

    try:
        config = load_config(args.config, SelectConfig)
    except ValueError as e:
        _fail(str(e))
    if args.fraction is not None:
        config = dataclasses.replace(config, fraction=args.fraction)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.meta_steps is not None:
        config = dataclasses.replace(
            config, outer=dataclasses.replace(config.outer, meta_steps=args.meta_steps)
        )
    if args.data is not None:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, name="npz", path=args.data)
        )
    _check_config(config)
    return config


def _check_config(config) -> None:
    checks = [
        (0 < config.fraction <= 1, f"--fraction must be in (0, 1], got {config.fraction}"),
        (config.outer.meta_steps >= 1, f"--meta-steps must be >= 1, got {config.outer.meta_steps}"),
        (0 <= config.seed < 2**31, f"--seed must be in [0, 2**31), got {config.seed}"),
        (
            0 <= config.data.label_noise < 1,
            f"data.label_noise must be in [0, 1), got {config.data.label_noise}",
        ),
        (
            config.data.name != "npz" or config.data.path is not None,
            "data.name is 'npz' but no file is given; pass --data FILE.npz or set data.path",
        ),
        (config.eval.num_seeds >= 1, f"eval.num_seeds must be >= 1, got {config.eval.num_seeds}"),
        (
            config.eval.num_random >= 1,
            f"eval.num_random must be >= 1, got {config.eval.num_random}",
        ),
        (
            config.eval.num_steps is None or config.eval.num_steps >= 1,
            f"eval.num_steps must be >= 1 or null, got {config.eval.num_steps}",
        ),
        (
            config.train.num_steps >= 1,
            f"train.num_steps must be >= 1, got {config.train.num_steps}",
        ),
        (
            config.train.batch_size >= 1,
            f"train.batch_size must be >= 1, got {config.train.batch_size}",
        ),
        (
            config.outer.replay_k is None or config.outer.replay_k >= 2,
            f"outer.replay_k must be >= 2 or null, got {config.outer.replay_k}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            _fail(message)


def _load_data(config):
    """The dataset with the config's label noise, and the boolean mask of noisy candidates."""
    import numpy as np

    import mgd

    try:
        if config.data.name == "npz":
            try:
                data = mgd.load_npz(config.data.path)
            except ValueError as e:
                # Some numpy errors (e.g. a file that is not a zip) do not name the file.
                message = str(e).strip().splitlines()[0]
                if config.data.path not in message:
                    message = f"cannot read data file {config.data.path!r}: {message}"
                raise ValueError(message) from e
        else:
            data = mgd.load_digits(
                val_fraction=config.data.target_fraction,
                test_fraction=config.data.test_fraction,
                seed=config.data.split_seed,
            )
    except ValueError as e:
        _fail(str(e))
    noisy = np.zeros(data.num_train, bool)
    if config.data.label_noise > 0:
        rng = np.random.default_rng(config.data.noise_seed)
        noisy[
            rng.permutation(data.num_train)[: round(config.data.label_noise * data.num_train)]
        ] = True
        # A shift by 1..C-1 classes: always a wrong label, uniformly among the wrong ones.
        shift = rng.integers(1, data.num_classes, size=int(noisy.sum()))
        y = data.y_train.copy()
        y[noisy] = (y[noisy] + shift) % data.num_classes
        data = data.replace(y_train=y)
    return data, noisy


def _data_digest(data) -> str:
    # Resuming must see the same data; a hash of the arrays catches a changed --data file.
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        h.update(getattr(data, name).tobytes())
    return h.hexdigest()[:16]


def _make_setup(config, data):
    import optax

    import mgd
    from mgd.train.models import MLP, MLPConfig

    t = config.train
    if t.optimizer == "sgd":
        optimizer = optax.sgd(t.learning_rate, momentum=t.momentum or None)
    else:
        optimizer = optax.adam(t.learning_rate)
    try:
        model = MLP(
            MLPConfig(
                num_classes=data.num_classes,
                hidden=config.model.hidden,
                activation=config.model.activation,
                output_scale=config.model.output_scale,
                normalize=config.model.normalize,
            )
        )
        return mgd.TrainingSetup(
            model,
            optimizer,
            data,
            batch_size=t.batch_size,
            num_steps=t.num_steps,
            seed=config.seed,
            meta_spec=mgd.MetaSpec(data_weights=True),
        )
    except ValueError as e:
        _fail(str(e))


def _make_optimizer(config, size: int):
    from mgd.outer.selection._update import budget_exchange, count_descent

    o = config.outer
    try:
        if o.method == "exchange":
            num_exchange = max(1, round(o.exchange_fraction * size))
            return budget_exchange(
                num_exchange=num_exchange, p=o.p, momentum=o.momentum, seed=config.seed
            )
        return count_descent(p=o.p, step_size=o.step_size, momentum=o.momentum, seed=config.seed)
    except ValueError as e:
        _fail(f"outer: {e}")


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; pass a directory")
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and not resume:
        _fail(f"--out {out} is not empty; pass --resume to continue that run or choose a new --out")
    if resume and non_empty and not (out / "checkpoints").is_dir():
        _fail(f"--out {out} holds no checkpoints of an mgd select run; choose a new --out")


# --- the command --------------------------------------------------------------------------------


def _select(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = _resolve_config(args)
    out = Path(args.out)
    _check_out(out, args.resume)
    data, noisy = _load_data(config)
    setup = _make_setup(config, data)
    n = data.num_train
    size = round(config.fraction * n)
    if size < config.train.batch_size:
        _fail(
            f"the subset ({size} of {n} candidates at --fraction {config.fraction}) is smaller "
            f"than one batch ({config.train.batch_size}); raise --fraction or lower "
            "train.batch_size"
        )
    optimizer = _make_optimizer(config, size)

    import jax
    import numpy as np

    import mgd
    from mgd.config import config_to_dict
    from mgd.outer.selection import evaluate_selection, select_data

    echo = config_to_dict(config)
    fingerprint = {"config": echo, "data": _data_digest(data)}
    progress = not args.quiet
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.yaml").exists():
        _write_yaml(out / "config.yaml", echo)

    def log(history) -> None:
        _write_json(out / "history.json", [h._asdict() for h in history])

    policy = None if config.outer.replay_k is None else mgd.KAryTree(config.outer.replay_k)
    try:
        result = select_data(
            setup,
            size=size,
            meta_steps=config.outer.meta_steps,
            optimizer=optimizer,
            fixed_budget=config.outer.method == "exchange",
            seed=config.seed,
            replay=mgd.Replay(policy),
            save_dir=out / "checkpoints",
            resume=args.resume,
            fingerprint=fingerprint,
            callback=log,
            progress=progress,
        )
    except ValueError as e:  # --resume on a directory written by a different run
        _fail(str(e))
    _write_json(out / "history.json", [h._asdict() for h in result.history])
    selected_at = time.perf_counter()

    # One training run of the inner model, timed after compilation: the unit of meta-step cost
    # (median of three: the machine may be shared).
    meta = {"data_weights": jax.numpy.asarray(result.weights)}
    jax.block_until_ready(setup.train(meta, seed=config.seed))
    run_seconds = []
    for _ in range(3):
        run_started = time.perf_counter()
        jax.block_until_ready(setup.train(meta, seed=config.seed))
        run_seconds.append(time.perf_counter() - run_started)
    train_run_s = float(np.median(run_seconds))

    eval_started = time.perf_counter()
    seeds = [10_000 + 100 * config.seed + j for j in range(config.eval.num_seeds)]
    # The evaluation recipe: the selection's, trained for eval.num_steps when set.
    eval_setup = (
        setup if config.eval.num_steps is None else setup.replace(num_steps=config.eval.num_steps)
    )
    report = evaluate_selection(
        eval_setup,
        result.indices,
        seeds=seeds,
        num_random=config.eval.num_random,
        random_seed=config.seed + 1,
        progress=progress,
    )
    metrics = report.to_dict()
    retrain_s = time.perf_counter() - eval_started
    total_s = time.perf_counter() - started

    step_seconds = [h.seconds for h in result.history]
    metagradient_s = float(sum(step_seconds))
    # The first meta-step includes compiling the engine's functions; the median is the steady cost.
    meta_step_s = float(np.median(step_seconds))
    metrics["eval_seeds"] = seeds
    metrics["best_step"] = result.best_step
    metrics["timing"] = {
        "total_s": total_s,
        "selection_s": selected_at - started,
        "metagradient_s": metagradient_s,
        "retrain_s": retrain_s,
        "train_run_s": train_run_s,
        "meta_step_s": meta_step_s,
        "meta_step_in_training_runs": meta_step_s / train_run_s,
        "note": "wall times on this machine; this run only, resumed runs count their last part",
    }
    if noisy.any():
        metrics["label_noise"] = {
            "fraction": config.data.label_noise,
            "pool_clean_fraction": float(1 - noisy.mean()),
            "selected_clean_fraction": float(1 - noisy[result.indices].mean()),
        }
    _write_json(
        out / "selection.json",
        {
            "indices": result.indices.tolist(),
            "fraction": config.fraction,
            "size": size,
            "num_candidates": n,
            "config": echo,
        },
    )
    _write_json(out / "metrics.json", metrics)
    _plot(out / "objective.png", result.history, result.best_step, metrics)
    print(_table(metrics, out))
    return 0


# --- outputs ------------------------------------------------------------------------------------


def _write_json(path: Path, value: Any) -> None:
    # Write-then-rename: a reader (or a killed run) never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def _write_yaml(path: Path, value: Any) -> None:
    import yaml

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(value, sort_keys=False))
    os.replace(tmp, path)


def _table(metrics: dict[str, Any], out: Path) -> str:
    rows = [
        ("selected", metrics["size"], metrics["selected"]),
        (f"random (x{len(metrics['random']['accuracies'])})", metrics["size"], metrics["random"]),
        ("full pool", metrics["num_candidates"], metrics["full"]),
    ]
    lines = [f"{'training set':<14}{'size':>6}  test accuracy (retrained, fresh seeds)"]
    for name, size, r in rows:
        lines.append(f"{name:<14}{size:>6}  {r['accuracy']:.4f} +- {r['accuracy_std']:.4f}")
    if "label_noise" in metrics:
        ln = metrics["label_noise"]
        lines.append(
            f"clean labels: {ln['selected_clean_fraction']:.3f} of the selection, "
            f"{ln['pool_clean_fraction']:.3f} of the pool"
        )
    t = metrics["timing"]
    lines.append(
        f"time: {t['total_s']:.0f} s total, {t['metagradient_s']:.0f} s metagradients, "
        f"{t['retrain_s']:.0f} s retraining; one meta-step = "
        f"{t['meta_step_in_training_runs']:.1f} training runs"
    )
    lines.append(f"wrote {out}/selection.json, metrics.json, objective.png")
    return "\n".join(lines)


def _plot(path: Path, history: list[dict[str, Any]], best_step: int, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h.step for h in history]
    left.plot(steps, [h.objective for h in history], marker="o")
    left.axvline(best_step, color="grey", linestyle=":", label=f"selected (step {best_step})")
    left.set_xlabel("meta-step")
    left.set_ylabel("target loss")
    left.set_title("Target loss per meta-step")
    left.legend()
    names = ["selected", "random", "full"]
    labels = ["selected", "random\n(same size)", "full pool"]
    means = [metrics[k]["accuracy"] for k in names]
    stds = [metrics[k]["accuracy_std"] for k in names]
    right.bar(labels, means, yerr=stds, capsize=4, color=["tab:green", "tab:grey", "tab:blue"])
    low = min(m - s for m, s in zip(means, stds, strict=True))
    right.set_ylim(max(0.0, low - 0.05), 1.0)
    right.set_ylabel("test accuracy")
    right.set_title("Retrained from scratch, fresh seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
