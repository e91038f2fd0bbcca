"""The metasmoothness score of a training setup (three training runs per direction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from jax.flatten_util import ravel_pytree

from mgd.train._setup import TrainingSetup

__all__ = ["MetasmoothnessResult", "metasmoothness", "sign_agreement"]


class MetasmoothnessResult(NamedTuple):
    """Metasmoothness of a setup at a metaparameter point.

    Attributes:
      score: mean of ``scores``, in [-1, 1]; higher is smoother.
      stderr: standard error of the mean over directions (0 for one direction).
      scores: ``(num_directions,)`` float64, the score along each random direction.
    """

    score: float
    stderr: float
    scores: np.ndarray


def sign_agreement(theta0: np.ndarray, theta1: np.ndarray, theta2: np.ndarray) -> float:
    """Movement-weighted sign agreement of two consecutive finite-difference changes.

    With ``D1 = theta1 - theta0``, ``D2 = theta2 - theta1`` and ``d = |theta2 - theta0|``, returns
    ``sum_i (d_i / sum_j d_j) * sign(D1_i) * sign(D2_i)`` (the step ``h`` cancels in the signs).
    1 means every coordinate kept its direction of change from ``z`` to ``z + 2hv`` (locally
    near-linear training); -1 means every coordinate reversed (the response oscillates at scale
    ``h``, so metagradients there say little about finite moves).

    Args:
      theta0, theta1, theta2: flat float arrays ``(p,)``, trained parameters at ``z``, ``z + hv``,
        ``z + 2hv``.

    Returns:
      The score in [-1, 1]; 0 when nothing moved.
    """
    t0, t1, t2 = (np.asarray(t, np.float64) for t in (theta0, theta1, theta2))
    d = np.abs(t2 - t0)
    total = d.sum()
    if total == 0:
        return 0.0
    return float(np.sum(d / total * np.sign(t1 - t0) * np.sign(t2 - t1)))


def metasmoothness(
    setup: TrainingSetup,
    meta: dict | None = None,
    *,
    h: float = 0.05,
    num_directions: int = 4,
    keys: Sequence[str] | None = None,
    seed: int = 0,
) -> MetasmoothnessResult:
    """The MGD paper's metasmoothness score of ``setup`` at ``meta`` along random directions.

    For each direction ``v`` (i.i.d. standard normal entries over the metaparameters ``keys``),
    trains at ``z``, ``z + h v`` and ``z + 2 h v`` with the setup's seed (same init, batch order
    and augmentation, so only the metaparameters differ) and scores the trained parameters with
    ``sign_agreement``. ``1 + 2 * num_directions`` training runs, no metagradient.

    How to read it: near 1, the trained model responds to the metaparameters smoothly at scale
    ``h``, so metagradients predict the effect of small meta-steps; near 0 or below, the
    response is dominated by chaotic flips and metagradients are uninformative. Compare setups at
    the same ``h``, point and directions; the paper picks training recipes by maximizing it.

    Args:
      setup: the ``TrainingSetup``; at least one metaparameter must be on.
      meta: the point ``z``; ``None`` is ``setup.init_meta()``.
      h: step along each direction.
      num_directions: number of random directions (the standard error needs at least 2).
      keys: which metaparameters the directions move; ``None`` moves all of them.
      seed: seed of the directions.

    Returns:
      A ``MetasmoothnessResult`` (score, stderr, per-direction scores).

    Raises:
      ValueError: if no metaparameter is on, ``keys`` names an unknown one, or ``h`` or
        ``num_directions`` is not positive.

    References:
      Engstrom et al., "Optimizing ML Training with Metagradient Descent", arXiv 2503.13751, 2025.
    """
    meta = setup._checked_meta(meta)
    if not meta:
        raise ValueError("metasmoothness: the setup has no metaparameter on; set meta_spec")
    keys = sorted(meta) if keys is None else list(keys)
    unknown = sorted(set(keys) - set(meta))
    if unknown or not keys:
        raise ValueError(f"metasmoothness: keys must be a non-empty subset of {sorted(meta)}")
    if not h > 0 or num_directions < 1:
        raise ValueError("metasmoothness: h and num_directions must be positive")

    def trained(m):
        return np.asarray(ravel_pytree(setup.train(m).params)[0], np.float64)

    theta0 = trained(meta)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(num_directions):
        v = {k: rng.standard_normal(np.shape(meta[k])) for k in keys}

        def moved(scale, v=v):
            return {k: (a + scale * v[k] if k in v else a) for k, a in meta.items()}

        theta1, theta2 = trained(moved(h)), trained(moved(2 * h))
        scores.append(sign_agreement(theta0, theta1, theta2))
    scores = np.asarray(scores, np.float64)
    stderr = float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else 0.0
    return MetasmoothnessResult(float(scores.mean()), stderr, scores)
