"""Hand-designed schedule families and the grid the search is measured against.

Each family maps a few numbers (peak rate, warm-up fraction, final rate, ...) to the rate at
every training step; a grid is their Cartesian product, each entry a per-step
:class:`~mgd.outer.lr._schedule.PiecewiseLinearSchedule` tagged with its family and numbers, so a
grid entry and a found schedule are trained and scored by the same code.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from mgd.outer.lr._schedule import PiecewiseLinearSchedule

__all__ = [
    "GridSchedule",
    "constant_rates",
    "cosine_rates",
    "lr_schedule_grid",
    "one_cycle_rates",
    "step_decay_rates",
]


class GridSchedule(NamedTuple):
    """One schedule of a grid.

    Attributes:
      family: ``"one_cycle"``, ``"constant"``, ``"cosine"`` or ``"step_decay"``.
      params: the family's numbers, e.g. ``{"peak_lr": 0.1, "warmup": 0.2, "final_lr": 1e-3}``.
      schedule: the rates at every step, as a per-step schedule.
    """

    family: str
    params: dict[str, float | int]
    schedule: PiecewiseLinearSchedule

    def label(self) -> str:
        """A short human-readable name, e.g. ``one_cycle(peak_lr=0.1, warmup=0.2, ...)``."""
        args = ", ".join(f"{k}={v:.3g}" for k, v in self.params.items())
        return f"{self.family}({args})"


def _check_positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if not (value > 0 and np.isfinite(value)):
            raise ValueError(f"{where}: {name} must be positive and finite, got {value!r}")


def constant_rates(lr: float, num_steps: int) -> np.ndarray:
    """``lr`` at every step; shape ``(num_steps,)``."""
    _check_positive("constant_rates", lr=lr)
    return np.full(num_steps, float(lr))


def one_cycle_rates(
    peak_lr: float,
    warmup: float,
    final_lr: float,
    num_steps: int,
    *,
    start_factor: float = 25.0,
) -> np.ndarray:
    """Smith's one-cycle: linear warm-up to the peak, then linear decay to the final rate.

    The rate rises linearly from ``peak_lr / start_factor`` at step 0 to ``peak_lr`` at step
    ``round(warmup * (T-1))`` and falls linearly to ``final_lr`` at step ``T-1`` (the triangular
    policy with PyTorch's ``OneCycleLR`` default ``div_factor = 25``).

    Args:
      peak_lr: the highest rate.
      warmup: fraction of the run spent warming up, in ``[0, 1)``.
      final_lr: the rate at the last step.
      num_steps: ``T``.
      start_factor: the first rate is ``peak_lr / start_factor``.

    Returns:
      Rates, float64, shape ``(num_steps,)``.

    References:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
      Learning Rates", 2019.
    """
    _check_positive(
        "one_cycle_rates", peak_lr=peak_lr, final_lr=final_lr, start_factor=start_factor
    )
    if not 0 <= warmup < 1:
        raise ValueError(f"one_cycle_rates: warmup must be in [0, 1), got {warmup!r}")
    t = np.arange(num_steps, dtype=np.float64)
    peak_step = round(warmup * (num_steps - 1))
    last = max(num_steps - 1, 1)
    if peak_step == 0:
        return np.interp(t, [0, last], [peak_lr, final_lr])
    return np.interp(t, [0, peak_step, last], [peak_lr / start_factor, peak_lr, final_lr])


def cosine_rates(peak_lr: float, final_lr: float, num_steps: int) -> np.ndarray:
    """Cosine decay from ``peak_lr`` at step 0 to ``final_lr`` at step ``T-1`` (Loshchilov & Hutter,
    SGDR, without restarts); shape ``(num_steps,)``."""
    _check_positive("cosine_rates", peak_lr=peak_lr, final_lr=final_lr)
    frac = np.arange(num_steps) / max(num_steps - 1, 1)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1 + np.cos(np.pi * frac))


def step_decay_rates(peak_lr: float, factor: float, num_drops: int, num_steps: int) -> np.ndarray:
    """``peak_lr`` multiplied by ``factor`` at ``num_drops`` evenly spaced steps.

    With ``num_drops = 2`` the rate drops at ``T/3`` and ``2T/3`` (the classic step schedule).
    Shape ``(num_steps,)``.
    """
    _check_positive("step_decay_rates", peak_lr=peak_lr, factor=factor)
    drops = np.floor(np.arange(num_steps) * (num_drops + 1) / num_steps)
    return peak_lr * factor**drops


def lr_schedule_grid(
    num_steps: int,
    *,
    lr_range: tuple[float, float] = (1e-3, 1.0),
    num_peaks: int = 10,
    warmups: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5),
    final_fractions: Sequence[float] = (1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0),
    num_other: int = 16,
) -> list[GridSchedule]:
    """The grid the search is compared with: one-cycle, constant, cosine and step-decay families.

    One-cycle: ``num_peaks`` peak rates log-spaced over ``lr_range`` x ``warmups`` x final rates
    (``peak * final_fractions``) — 10 x 5 x 6 = 300 schedules by default. Constant: ``num_other``
    rates log-spaced over ``lr_range``. Cosine: the same ``num_other`` peaks x final rate
    ``peak * {1e-3, 0.1}``. Step decay: the same peaks x factor ``{0.1, 0.3}`` x ``{1, 2}`` drops.
    Default total: 300 + 16 + 32 + 64 = 412 schedules.

    Args:
      num_steps: ``T``.
      lr_range: the lowest and highest peak (or constant) rate.
      num_peaks: one-cycle peak rates.
      warmups: one-cycle warm-up fractions, each in ``[0, 1)``.
      final_fractions: one-cycle final rates as fractions of the peak.
      num_other: peak rates of the constant, cosine and step-decay families.

    Returns:
      A list of :class:`GridSchedule`, one-cycle first.

    Raises:
      ValueError: an empty or reversed ``lr_range``, or a non-positive count.
    """
    lo, hi = lr_range
    if not (0 < lo <= hi < np.inf):
        raise ValueError(f"lr_schedule_grid: lr_range must satisfy 0 < low <= high, got {lr_range}")
    if num_peaks < 1 or num_other < 1:
        raise ValueError(
            f"lr_schedule_grid: num_peaks and num_other must be >= 1, got {num_peaks}, {num_other}"
        )

    def entry(family: str, params: dict[str, Any], rates: np.ndarray) -> GridSchedule:
        params = {k: float(v) if k != "num_drops" else int(v) for k, v in params.items()}
        return GridSchedule(family, params, PiecewiseLinearSchedule.per_step(rates))

    grid = [
        entry(
            "one_cycle",
            {"peak_lr": p, "warmup": w, "final_lr": p * f},
            one_cycle_rates(p, w, p * f, num_steps),
        )
        for p, w, f in itertools.product(np.geomspace(lo, hi, num_peaks), warmups, final_fractions)
    ]
    peaks = np.geomspace(lo, hi, num_other)
    grid += [entry("constant", {"lr": p}, constant_rates(p, num_steps)) for p in peaks]
    grid += [
        entry("cosine", {"peak_lr": p, "final_lr": p * f}, cosine_rates(p, p * f, num_steps))
        for p, f in itertools.product(peaks, (1e-3, 0.1))
    ]
    grid += [
        entry(
            "step_decay",
            {"peak_lr": p, "factor": f, "num_drops": d},
            step_decay_rates(p, f, d, num_steps),
        )
        for p, f, d in itertools.product(peaks, (0.1, 0.3), (1, 2))
    ]
    return grid
