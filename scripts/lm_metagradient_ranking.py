"""Diagnostic: how well one metagradient ranks the target domain's documents, raw or normalized.

Builds the setup of a text selection config (default: the shipped ``fortunes_lm``, which needs
``apt-get install fortunes fortunes-de fortunes-es``), takes the selection's random starting
subset, and computes one metagradient per training window (each window weighted as its
document). Prints the RMS metagradient of the windows drawn at every 30th step, then, among the
documents outside the subset, how well the raw per-document metagradient and the
step-normalized one (``select_data(step_window=k)``) rank the target domain's documents first:
the AUC (0.5: chance, 1: all of them first) and how many are among the best 20 / 60.

  python scripts/lm_metagradient_ranking.py
  python scripts/lm_metagradient_ranking.py --config fortunes_lm --windows 0 2 10
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np

from mgd.experiments import read_config
from mgd.experiments._common import load_text_data, setup_from_config
from mgd.experiments.select import SelectConfig
from mgd.outer.selection._search import _step_normalized
from mgd.outer.selection._update import subset_weights
from mgd.train import MetaSpec


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    # Probability that a positive outranks a negative (larger score is better), ties half.
    pos, neg = score[positive], score[~positive]
    return float(
        ((pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()) / pos.size / neg.size
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fortunes_lm")
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 2, 10])
    args = parser.parse_args()
    cfg = read_config("select", args.config, SelectConfig)
    text = load_text_data(cfg.data)
    data = text.data
    setup = setup_from_config(cfg.train, data, seed=cfg.seed, meta_spec=MetaSpec(data_weights=True))
    n, groups = data.num_groups, np.asarray(data.groups)
    size = round(cfg.fraction * n)
    # The same random start as select_data(seed=cfg.seed).
    start = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:size])
    weights = subset_weights(jnp.asarray(start), n)
    per_window = setup.replace(data=data.replace(groups=None))
    started = time.perf_counter()
    res = per_window.metagradient({"data_weights": weights[jnp.asarray(groups)]})
    grad = np.asarray(res.grad["data_weights"], np.float64)
    print(
        f"one metagradient: {time.perf_counter() - started:.0f} s, objective {float(res.value):.4f}"
    )
    order = per_window.batch_indices()
    rms = [np.sqrt(np.mean(grad[row[row >= 0]] ** 2)) for row in order]
    print("RMS metagradient of the windows drawn at step:")
    print("  " + ", ".join(f"{t}: {rms[t]:.2g}" for t in range(0, len(rms), 30)))
    outside = np.ones(n, bool)
    outside[start] = False
    target = np.asarray(text.pool.in_domain(text.target_domain))
    print(
        f"{outside.sum()} documents outside the start, {target[outside].sum()} of them "
        f"{text.target_domain}; ranked by minus the score:"
    )
    scores = {"raw": np.bincount(groups, grad, minlength=n)}
    for k in args.windows:
        scores[f"step_window={k}"] = _step_normalized(grad, order, groups, n, k)
    for name, score in scores.items():
        s = -score[outside]
        best = target[outside][np.argsort(-s, kind="stable")]
        print(
            f"  {name:14s} AUC {_auc(s, target[outside]):.3f}, target documents among the best "
            f"20: {best[:20].sum()}, best 60: {best[:60].sum()}"
        )


if __name__ == "__main__":
    main()
