"""Learning-rate schedules as knots of a piecewise-linear function in log space.

The schedule the search optimizes, and the common form every schedule takes in mgd so that a
found schedule, a one-cycle schedule of the grid and a user's hand-written one are evaluated by
the same code: the log learning rate at a few steps (the knots), linearly interpolated between
them. A per-step schedule is the special case of a knot at every step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PiecewiseLinearSchedule", "validate_knots"]

# Tag written into the JSON form, so a file from another kind of schedule is refused by name.
_FORMAT = "mgd.piecewise_linear_log_lr"


def validate_knots(knots: Sequence[int] | np.ndarray, num_steps: int, *, where: str) -> tuple:
    """Checks knot steps and returns them as a tuple of Python ints.

    Args:
      knots: the steps ``s_0 < s_1 < ... < s_m`` at which the log learning rate is a parameter;
        integers in ``[0, num_steps]``.
      num_steps: the number of training steps ``T`` (a positive int).
      where: the caller's name, put in front of every error message.

    Returns:
      The knots as a tuple of ints.

    Raises:
      ValueError: ``num_steps`` is not a positive int; there are no knots; a knot is not an
        integer, lies outside ``[0, num_steps]``, or the knots are not strictly increasing.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"{where}: num_steps must be a positive int, got {num_steps!r}")
    array = np.asarray(knots)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{where}: knots must be a non-empty 1-D sequence of steps, got shape {array.shape}; "
            "pass e.g. (0, num_steps // 2, num_steps)"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.all(np.mod(array, 1) == 0)):
        raise ValueError(f"{where}: knots must be integer steps, got {array.tolist()}")
    array = array.astype(np.int64)
    outside = array[(array < 0) | (array > num_steps)]
    if outside.size:
        raise ValueError(
            f"{where}: knots {outside.tolist()} lie outside [0, num_steps={num_steps}]; "
            "place every knot at a step between 0 and num_steps"
        )
    if np.any(np.diff(array) <= 0):
        raise ValueError(
            f"{where}: knots must be strictly increasing, got {array.tolist()}; sort them and "
            "drop duplicates"
        )
    return tuple(int(k) for k in array)


@dataclasses.dataclass(frozen=True, eq=False)
class PiecewiseLinearSchedule:
    r"""A learning-rate schedule, piecewise-linear in log space between knots.

    .. math::
        \log \mathrm{lr}(t) = \log \mathrm{lr}_i + \frac{t - s_i}{s_{i+1} - s_i}
        (\log \mathrm{lr}_{i+1} - \log \mathrm{lr}_i), \qquad s_i \le t \le s_{i+1},

    held constant before the first knot and after the last. This is the form
    ``mgd.MetaSpec(lr_knots=knots)`` gives ``meta["log_lr"]`` in the training layer, so
    ``schedule.log_lr`` *is* that metaparameter. Interpolating the logarithm keeps every rate
    positive whatever the parameters, and makes a step of the outer optimizer a relative
    (multiplicative) change of the rate — the natural scale of learning rates.

    Args:
      knots: steps ``s_0 < ... < s_m``, integers in ``[0, num_steps]``; shape ``(m+1,)``.
      log_lr: the natural log of the learning rate at each knot; float, shape ``(m+1,)``.
      num_steps: the number of training steps ``T`` the schedule is meant for.

    Raises:
      ValueError: bad knots (see :func:`validate_knots`), a ``log_lr`` whose shape does not match
        the knots, or a non-finite ``log_lr`` (a rate of zero, infinity or NaN).

    Example:
      >>> s = PiecewiseLinearSchedule.from_lr([0, 50, 100], [0.01, 0.1, 0.001], num_steps=100)
      >>> round(float(s(25)), 5)  # geometric mean of 0.01 and 0.1
      0.03162
      >>> round(float(PiecewiseLinearSchedule.from_json(s.to_json())(50)), 12)
      0.1
    """

    knots: tuple[int, ...]
    log_lr: np.ndarray
    num_steps: int

    def __post_init__(self):
        knots = validate_knots(self.knots, self.num_steps, where=type(self).__name__)
        log_lr = np.array(self.log_lr, dtype=np.float64)
        if log_lr.shape != (len(knots),):
            raise ValueError(
                f"{type(self).__name__}: log_lr has shape {log_lr.shape} but there are "
                f"{len(knots)} knots; give one log learning rate per knot"
            )
        if not np.all(np.isfinite(log_lr)):
            raise ValueError(
                f"{type(self).__name__}: log_lr must be finite (rates positive and finite), got "
                f"{log_lr.tolist()}"
            )
        log_lr.setflags(write=False)
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "log_lr", log_lr)
        object.__setattr__(self, "num_steps", int(self.num_steps))

    @classmethod
    def from_lr(
        cls, knots: Sequence[int], lr: Sequence[float] | np.ndarray | float, *, num_steps: int
    ) -> PiecewiseLinearSchedule:
        """Builds a schedule from learning rates (not their logs) at the knots.

        Args:
          knots: knot steps, as for the class.
          lr: the rate at each knot, shape ``(m+1,)``, or one float for a constant schedule.
          num_steps: the number of training steps.

        Raises:
          ValueError: a rate that is not positive and finite (named with its knot), or bad knots.
        """
        knots = validate_knots(knots, num_steps, where=f"{cls.__name__}.from_lr")
        rates = np.broadcast_to(np.asarray(lr, dtype=np.float64), (len(knots),))
        bad = [
            (k, float(r)) for k, r in zip(knots, rates, strict=True) if not (r > 0 and r < np.inf)
        ]
        if bad:
            raise ValueError(
                f"{cls.__name__}.from_lr: learning rates must be positive and finite, got "
                f"(knot, lr) {bad}; the search works on log(lr), which needs lr > 0"
            )
        return cls(knots, np.log(rates), num_steps)

    @classmethod
    def per_step(cls, lr: Sequence[float] | np.ndarray) -> PiecewiseLinearSchedule:
        """A schedule with a knot at every step ``0 .. T-1`` (``T = len(lr)``): any schedule."""
        lr = np.asarray(lr, dtype=np.float64)
        return cls.from_lr(range(lr.shape[0]), lr, num_steps=lr.shape[0])

    @property
    def lr(self) -> np.ndarray:
        """The learning rate at each knot, shape ``(m+1,)``."""
        return np.exp(self.log_lr)

    def __call__(self, step: int | np.ndarray) -> np.ndarray:
        """The learning rate at ``step`` (int or array of steps; same shape out, float64)."""
        return np.exp(np.interp(np.asarray(step, dtype=np.float64), self.knots, self.log_lr))

    def rates(self) -> np.ndarray:
        """The rate used at each training step ``0 .. num_steps-1``, shape ``(num_steps,)``."""
        return self(np.arange(self.num_steps))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: format tag, ``num_steps``, ``knots`` and ``lr`` (rates, not logs)."""
        return {
            "format": _FORMAT,
            "num_steps": self.num_steps,
            "knots": list(self.knots),
            "lr": [float(r) for r in self.lr],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PiecewiseLinearSchedule:
        """Inverse of :meth:`to_dict`.

        Raises:
          ValueError: a dict of another format or with missing keys, or invalid contents.
        """
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(
                f"{cls.__name__}.from_dict: expected format {_FORMAT!r}, got {got!r}; pass what "
                "PiecewiseLinearSchedule.to_dict()/to_json() wrote"
            )
        missing = [k for k in ("num_steps", "knots", "lr") if k not in d]
        if missing:
            raise ValueError(f"{cls.__name__}.from_dict: missing keys {missing}")
        return cls.from_lr(d["knots"], d["lr"], num_steps=d["num_steps"])

    def to_json(self, **kwargs: Any) -> str:
        """The schedule as a JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> PiecewiseLinearSchedule:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PiecewiseLinearSchedule):
            return NotImplemented
        return (
            self.knots == other.knots
            and self.num_steps == other.num_steps
            and np.array_equal(self.log_lr, other.log_lr)
        )

    __hash__ = None  # mutable-looking array field; equality is by value

    def __repr__(self) -> str:
        rates = np.array2string(self.lr, precision=3, separator=", ", threshold=12)
        return (
            f"PiecewiseLinearSchedule(knots={self.knots}, lr={rates}, num_steps={self.num_steps})"
        )
