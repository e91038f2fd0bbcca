"""Where the replay engine keeps checkpointed training states.

A store maps a plan's slot numbers to ``(step index, state)`` pairs. The executor only calls
``put``, ``get``, ``delete`` and ``clear``, so stores that keep states in host memory or on
disk slot in without touching the reverse sweep.
"""

from __future__ import annotations

import abc
from typing import Any

PyTree = Any


class AbstractStateStore(abc.ABC):
    """Keeps training states between the forward replay and the reverse sweep."""

    @abc.abstractmethod
    def put(self, slot: int, step: int, state: PyTree) -> None:
        """Keeps ``state`` (the state at ``step``) under ``slot``."""

    @abc.abstractmethod
    def get(self, slot: int) -> tuple[int, PyTree]:
        """Returns ``(step, state)`` kept under ``slot``, as arrays on the compute device."""

    @abc.abstractmethod
    def delete(self, slot: int) -> None:
        """Drops the state kept under ``slot``."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Drops every state; called when a metagradient finishes or fails."""


class DeviceStore(AbstractStateStore):
    """Keeps states where they were computed (device memory), sharding included.

    Costs nothing to put or get: the stored arrays are the very arrays the step produced.
    """

    def __init__(self):
        self._states: dict[int, tuple[int, PyTree]] = {}

    def put(self, slot: int, step: int, state: PyTree) -> None:
        self._states[slot] = (step, state)

    def get(self, slot: int) -> tuple[int, PyTree]:
        return self._states[slot]

    def delete(self, slot: int) -> None:
        del self._states[slot]

    def clear(self) -> None:
        self._states.clear()
