"""Starts N local processes of one mgd run, as several hosts would run it (a quick try).

::

    python -m mgd.launch --processes 2 [--devices-per-process 2] [--port PORT]
                         [--timeout SECONDS] -- mgd select --meta-steps 5 --out runs/sel

Each process gets the environment `mgd.distributed.initialize` reads (the coordinator
``127.0.0.1:PORT``, the process count, its id, the time limit) and, with
``--devices-per-process D``, ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (CPU
devices). A command ``mgd ...`` runs as ``python -m mgd.cli ...`` with this interpreter; any
other command (``python my_script.py``, whose script calls `mgd.distributed.initialize`) runs
as given. Without ``--port`` a free port is picked (bound to port 0, then released).

All processes share the terminal. If one fails, the others are stopped and the launcher exits
with its status; Ctrl-C stops them all (status 130). On real hosts start one process per host
yourself, with the same variables (see the README's section on several hosts).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from mgd import distributed

__all__ = ["main", "free_port"]

_EXIT_BAD_INPUT = 2
_EXIT_INTERRUPTED = 130
_GRACE = 5.0  # Seconds a stopped process gets to exit before it is killed.


def free_port() -> int:
    """A TCP port on the loopback interface that is free now (the OS's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mgd.launch",
        description="Start N local processes of one mgd run (jax.distributed over loopback).",
    )
    p.add_argument("--processes", type=int, required=True, help="number of processes (>= 1)")
    p.add_argument(
        "--devices-per-process",
        type=int,
        help="CPU devices of each process (XLA_FLAGS=--xla_force_host_platform_device_count)",
    )
    p.add_argument("--port", type=int, help="the coordinator's port (default: a free one)")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds the processes wait for each other at the start (default: %(default)s)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    return p


def environment(
    process_id: int, num_processes: int, port: int, timeout: float, devices: int | None
) -> dict[str, str]:
    """The environment of process ``process_id`` of a local run on ``127.0.0.1:port``."""
    env = dict(os.environ)
    env[distributed.ENV_COORDINATOR] = f"127.0.0.1:{port}"
    env[distributed.ENV_NUM_PROCESSES] = str(num_processes)
    env[distributed.ENV_PROCESS_ID] = str(process_id)
    env[distributed.ENV_TIMEOUT] = str(timeout)
    if devices is not None:
        flag = f"--xla_force_host_platform_device_count={devices}"
        kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(flag.split("=")[0])]
        env["XLA_FLAGS"] = " ".join([*kept, flag])
    return env


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mgd.launch``; returns the exit status (the first failing
    process's, 0 when all succeed, 2 for bad flags, 130 when interrupted)."""
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    problem = None
    if args.processes < 1:
        problem = f"--processes must be >= 1, got {args.processes}"
    elif args.devices_per_process is not None and args.devices_per_process < 1:
        problem = f"--devices-per-process must be >= 1, got {args.devices_per_process}"
    elif args.timeout <= 0:
        problem = f"--timeout must be > 0 seconds, got {args.timeout}"
    elif not command:
        problem = "no command; add -- and the command, e.g. -- mgd select --out runs/sel"
    if problem is not None:
        print(f"python -m mgd.launch: {problem}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    if command[0] == "mgd":
        command = [sys.executable, "-m", "mgd.cli", *command[1:]]
    port = args.port or free_port()
    procs = [
        subprocess.Popen(
            command,
            env=environment(i, args.processes, port, args.timeout, args.devices_per_process),
        )
        for i in range(args.processes)
    ]
    try:
        return _wait(procs)
    except KeyboardInterrupt:
        _stop(procs)
        return _EXIT_INTERRUPTED


def _wait(procs: list[subprocess.Popen]) -> int:
    # Until all succeed or one fails: the others would otherwise wait for it in a collective.
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, code = failed[0]
            _stop(procs)
            reason = f"signal {-code}" if code < 0 else f"status {code}"
            print(
                f"python -m mgd.launch: process {i} exited with {reason}; stopped the others",
                file=sys.stderr,
            )
            return code if code > 0 else 128 - code
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _GRACE
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
