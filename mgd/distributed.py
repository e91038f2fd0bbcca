"""Several processes (hosts) running one mgd script together, over `jax.distributed`.

Every process runs the same program: after `initialize`, `jax.devices()` lists all processes'
devices, a `TrainingSetup(mesh=...)` over them trains and differentiates with global arrays, and
the outer loops take the same decisions everywhere (they are deterministic functions of
replicated values). Only process 0 writes outputs (`is_primary`); `check_same` verifies at the
start that the processes were given the same run.

`initialize` adds to `jax.distributed.initialize` what a user needs to not hang: a rendezvous
on the coordinator's port, with a time limit, before JAX connects (JAX aborts the process with a
C++ stack trace when a peer never comes), and CPU collectives (gloo), so that several processes
on one machine work as several hosts do. `python -m mgd.launch` starts N local processes with
the environment `initialize` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import Any

import jax
import numpy as np

__all__ = ["initialize", "check_same", "is_primary", "DistributedError"]

# The environment `python -m mgd.launch` gives each process it starts.
ENV_COORDINATOR = "MGD_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "MGD_NUM_PROCESSES"
ENV_PROCESS_ID = "MGD_PROCESS_ID"
ENV_TIMEOUT = "MGD_INIT_TIMEOUT"

_HELLO, _GO = b"mgd-hello", b"mgd-go"
_POLL = 0.1  # Seconds between connection attempts to a coordinator not yet listening.


class DistributedError(RuntimeError):
    """Several processes could not start together, or were started with different runs.

    Raised on every process involved, with a one-line message naming the fix.
    """


def _from_env(name: str, value: Any, cast: type) -> Any:
    if value is not None or name not in os.environ:
        return value
    try:
        return cast(os.environ[name])
    except ValueError:
        raise DistributedError(
            f"${name}={os.environ[name]!r} is not a valid {cast.__name__}; unset it or fix it"
        ) from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: float | None = None,
) -> None:
    """Joins this process to the others of a run (`jax.distributed.initialize`), or fails fast.

    Call it on every process before anything else uses JAX. Arguments left ``None`` come from
    the environment `python -m mgd.launch` sets (``MGD_COORDINATOR_ADDRESS``,
    ``MGD_NUM_PROCESSES``, ``MGD_PROCESS_ID``, ``MGD_INIT_TIMEOUT``); with none there either,
    JAX detects the cluster (SLURM, Open MPI, TPU pods, ...) itself.

    With an explicit coordinator, the processes first meet on its port (process 0 listens,
    the others connect), so that a process that cannot reach the others raises
    `DistributedError` after ``timeout`` seconds instead of hanging or aborting. CPU
    collectives use gloo, so several processes on one machine (each with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=D``) act like several hosts; GPUs and
    TPUs use their own collectives (NCCL, ICI) whatever this setting.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: how many processes take part (>= 1).
      process_id: this process's number in ``[0, num_processes)``; process 0 hosts the
        coordinator.
      timeout: seconds to wait for all processes to meet (default 60).

    Raises:
      DistributedError: bad arguments, or the processes did not all meet within ``timeout``
        (one line naming who is missing).
    """
    coordinator_address = _from_env(ENV_COORDINATOR, coordinator_address, str)
    num_processes = _from_env(ENV_NUM_PROCESSES, num_processes, int)
    process_id = _from_env(ENV_PROCESS_ID, process_id, int)
    timeout = _from_env(ENV_TIMEOUT, timeout, float)
    timeout = 60.0 if timeout is None else float(timeout)
    if timeout <= 0:
        raise DistributedError(f"initialize: timeout must be > 0 seconds, got {timeout}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is None:
        jax.distributed.initialize(initialization_timeout=max(1, round(timeout)))
        return
    host, port = _address(coordinator_address)
    if num_processes is None or process_id is None:
        raise DistributedError(
            f"initialize: coordinator_address={coordinator_address!r} needs num_processes and "
            "process_id too (or start the processes with python -m mgd.launch)"
        )
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise DistributedError(
            f"initialize: num_processes must be an int >= 1, got {num_processes}"
        )
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
        raise DistributedError(
            f"initialize: process_id must lie in [0, {num_processes}), got {process_id}"
        )
    deadline = time.monotonic() + timeout
    if num_processes > 1:
        if process_id == 0:
            _gather(port, num_processes, deadline, timeout)
        else:
            _join(host, port, process_id, deadline, timeout)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=max(1, round(deadline - time.monotonic())),
    )


def _address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"initialize: coordinator_address must be host:port, e.g. 127.0.0.1:1234, got "
            f"{address!r}"
        )
    return host.strip("[]"), int(port)


def _gather(port: int, num_processes: int, deadline: float, timeout: float) -> None:
    # Process 0: wait for every other process to say hello, then let them all go at once. The
    # others close first, so no connection lingers on this side of the port (TIME_WAIT) when
    # JAX's coordinator binds it next.
    arrived: dict[int, socket.socket] = {}
    dual = socket.has_dualstack_ipv6()  # IPv4 and IPv6 peers alike, as JAX's coordinator.
    family = socket.AF_INET6 if dual else socket.AF_INET
    with socket.create_server(("", port), family=family, dualstack_ipv6=dual) as server:
        while len(arrived) < num_processes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, num_processes)) - set(arrived))
                for conn in arrived.values():
                    conn.close()
                raise DistributedError(
                    f"initialize: process(es) {missing} of {num_processes} did not connect to "
                    f"the coordinator on port {port} within {timeout:g} s; start every process "
                    "with the same coordinator address and process count"
                )
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(max(left, _POLL))
            try:
                hello = conn.recv(64).decode().split()
                peer = int(hello[1]) if len(hello) == 2 and hello[0] == _HELLO.decode() else -1
            except (OSError, ValueError):
                peer = -1
            if not 0 < peer < num_processes or peer in arrived:
                conn.close()  # Not one of ours (a port scan, a duplicate id): ignore it.
                continue
            arrived[peer] = conn
        for conn in arrived.values():
            conn.sendall(_GO)
        for conn in arrived.values():
            with conn:
                try:
                    conn.recv(1)  # Returns when the peer has closed.
                except OSError:
                    pass


def _join(host: str, port: int, process_id: int, deadline: float, timeout: float) -> None:
    # The other processes: connect (retrying while process 0 has not started), say hello, and
    # wait for process 0's go.
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DistributedError(
                f"initialize: process {process_id} could not reach the coordinator "
                f"{host}:{port} within {timeout:g} s (is process 0 running, and the address "
                "reachable?); start process 0 with the same coordinator address"
            )
        try:
            with socket.create_connection((host, port), timeout=left) as conn:
                conn.sendall(_HELLO + f" {process_id}".encode())
                conn.settimeout(max(deadline - time.monotonic(), _POLL))
                if conn.recv(len(_GO)) == _GO:
                    return
        except OSError:
            pass
        time.sleep(_POLL)


def is_primary() -> bool:
    """Whether this process writes a run's outputs: process 0 (`jax.process_index`), or the
    only process of a single-process run."""
    return jax.process_index() == 0


def check_same(value: Any, what: str) -> None:
    """Raises on every process unless all processes hold the same ``value``.

    Compares a hash of ``value``'s JSON text across processes (one small all-gather); a no-op
    in a single process. Call it at the same point on every process, before their work could
    diverge (a mismatch would otherwise hang a later collective).

    Args:
      value: a JSON-able description (a config echo, seeds, a data digest).
      what: what ``value`` is, for the message (e.g. ``"config"``).

    Raises:
      DistributedError: some process's ``value`` differs from process 0's (one line naming
        the processes).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    text = json.dumps(value, sort_keys=True, default=repr)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.int32)
    every = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [i for i in range(1, len(every)) if not np.array_equal(every[i], every[0])]
    if differ:
        raise DistributedError(
            f"processes {differ} were started with a different {what} than process 0; start "
            "every process with the same command line, config and seeds"
        )
