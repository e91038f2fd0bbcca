"""The ``mgd`` command line: a thin shell on :mod:`mgd.experiments`.

::

    mgd select [--config CONFIG] [--data FILE.npz] [--fraction F] [--meta-steps N] [--seed S]
               [--num-classes C] [--out DIR] [--resume] [--quiet]
    mgd lr     [--config CONFIG] [--data FILE.npz] [--meta-steps N] [--seed S] [--num-classes C]
               [--out DIR] [--resume] [--quiet]
    mgd poison [--config CONFIG] [--data FILE.npz] [--fraction F] [--meta-steps N] [--seed S]
               [--num-classes C] [--out DIR] [--resume] [--quiet]

``CONFIG`` is a shipped config's name (``default``, ``digits_noisy``, ``digits``, ``cifar10``)
or a YAML/TOML file. Each command prints its results table and writes ``metrics.json``, its
plots and ``config.yaml`` into ``DIR``, with the outer loop's checkpoints under
``DIR/checkpoints/``. Bad input (a flag, config, data file or ``DIR`` refused, or a checkpoint
in ``DIR`` of another run) exits with status 2 and one line on stderr, before anything in ``DIR``
is written; an error during the run itself raises with its traceback (status 1).

Several processes (hosts) run one command together when each is started with the environment
`mgd.distributed.initialize` reads, as ``python -m mgd.launch --processes N -- mgd select ...``
does on one machine: all take the same decisions, process 0 prints and writes ``DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
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


_COMMANDS = {
    "select": (
        "choose the training subset that minimizes the target loss",
        "Select a fraction of the candidate pool by metagradient descent on data weights, then "
        "retrain from scratch (fresh seeds) on the selection, on random subsets of the same size "
        "and on the full pool, and report held-out test accuracy.",
    ),
    "lr": (
        "search a learning-rate schedule by metagradient descent",
        "Search a piecewise-linear learning-rate schedule on the validation loss from each "
        "start of the config, compare it with a grid of hand-designed schedules when the config "
        "asks, and report the test accuracy of models retrained with fresh seeds.",
    ),
    "poison": (
        "craft an accuracy-degrading data poison",
        "Perturb a fraction of the training pool by metagradient ascent on the victim's "
        "held-out loss, run the baselines on the same examples, and report the test accuracy of "
        "victims trained from scratch with unseen seeds.",
    ),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mgd", description="Metagradient descent on training metaparameters.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_, description) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=description)
        p.add_argument(
            "--config",
            metavar="CONFIG",
            help=f"a shipped config's name (see mgd/configs/{name}/) or a YAML/TOML file; "
            "default: the built-in default",
        )
        p.add_argument(
            "--data",
            metavar="FILE.npz",
            help="x_train, y_train (the pool); x_target, y_target (the target/validation "
            "split); x_test, y_test (held out) (default: the config's dataset)",
        )
        if name != "lr":
            p.add_argument(
                "--fraction",
                type=float,
                help="subset size / pool size, in (0, 1]"
                if name == "select"
                else "poisoned fraction of the pool, in (0, 1)",
            )
        p.add_argument("--meta-steps", type=int, help="number of meta-steps (metagradients)")
        p.add_argument("--seed", type=int, help="seed of the run")
        p.add_argument(
            "--num-classes",
            type=int,
            help="number of classes of --data (default: inferred from the labels)",
        )
        p.add_argument(
            "--out",
            metavar="DIR",
            default=f"runs/{name}",
            help="output directory (default: %(default)s)",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the run in DIR (without it, a non-empty DIR is refused)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mgd`` console script; returns the exit status."""
    command = "mgd"
    try:
        args = _build_parser().parse_args(argv)
        command = f"mgd {args.command}"
        config = _config(args)
        primary = _join_processes()
        done = _experiment(args.command).run(
            config, Path(args.out), resume=args.resume, progress=primary and not args.quiet
        )
    except _UsageError as e:
        print(str(e), file=sys.stderr)
        return _EXIT_BAD_INPUT
    except _distributed_error() as e:
        print(f"{command}: {e}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    except ValueError as e:
        if not _bad_input(e):
            raise  # A failure of the run itself, not bad input: keep its traceback.
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{command}: {message}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "mgd: interrupted; rerun with --resume to continue from the last meta-step",
            file=sys.stderr,
        )
        return _EXIT_INTERRUPTED
    if primary:
        print(done.table())
        print(f"wrote {args.out}/metrics.json and the plots")
    return 0


def _join_processes() -> bool:
    """Joins the other processes of a run started by ``python -m mgd.launch`` (whose
    environment names the coordinator), or by hand with the same ``MGD_*`` variables; returns
    whether this process writes (and prints) the results."""
    from mgd import distributed

    if distributed.ENV_NUM_PROCESSES in os.environ:
        distributed.initialize()
    return distributed.is_primary()


def _distributed_error() -> type[Exception]:
    # Looked up only when an error is being handled: `mgd --help` stays free of JAX.
    from mgd.distributed import DistributedError

    return DistributedError


def _experiment(command: str) -> Any:
    # Imported here: `mgd --help` and bad flags answer without loading JAX.
    from mgd.experiments import lr, poison, select

    return {"select": select, "lr": lr, "poison": poison}[command]


def _config(args: argparse.Namespace) -> Any:
    """The config file's content with the flags applied (flags win).

    Raises:
      InputError: an unknown config, a key or flag value the config refuses.
    """
    from mgd.experiments._common import checking_input

    with checking_input():
        return _flags_applied(args)


def _bad_input(error: ValueError) -> bool:
    # Imported here, like the experiments: the errors' modules load JAX.
    from mgd.experiments import InputError
    from mgd.outer import ResumeError

    return isinstance(error, InputError | ResumeError)


def _flags_applied(args: argparse.Namespace) -> Any:
    from mgd.experiments import read_config

    module = _experiment(args.command)
    cls = {"select": "SelectConfig", "lr": "LRConfig", "poison": "PoisonConfig"}[args.command]
    config = read_config(args.command, args.config, getattr(module, cls))
    replace = dataclasses.replace
    data = config.data
    if args.data is not None:
        data = replace(data, name="npz", path=args.data)
    if args.num_classes is not None:
        data = replace(data, num_classes=args.num_classes)
    config = replace(config, data=data)
    if args.command == "select":
        if args.fraction is not None:
            config = replace(config, fraction=args.fraction)
        if args.seed is not None:
            config = replace(config, seed=args.seed)
        if args.meta_steps is not None:
            config = replace(config, outer=replace(config.outer, meta_steps=args.meta_steps))
    elif args.command == "lr":
        if args.seed is not None:
            config = replace(config, seed=args.seed)
        if args.meta_steps is not None:
            config = replace(config, search=replace(config.search, meta_steps=args.meta_steps))
    else:
        attack = config.attack
        if args.fraction is not None:
            attack = replace(attack, fraction=args.fraction)
        if args.seed is not None:
            attack = replace(attack, subset_seed=args.seed)
        if args.meta_steps is not None:
            attack = replace(attack, meta_steps=args.meta_steps)
        config = replace(config, attack=attack)
    return config


if __name__ == "__main__":
    sys.exit(main())
