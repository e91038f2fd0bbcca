"""Diagnostic: how well one metagradient ranks the target domain's documents, raw or normalized.

Builds the setup of a text selection config (default: ``fortunes_lm_random``, the constant-rate
recipe, which needs ``apt-get install fortunes fortunes-de fortunes-es``), takes the selection's
random starting subset, and computes one metagradient per training window (each window weighted as
its document). Prints the RMS metagradient of the windows drawn at every 30th step, then, among the
documents outside the subset, how well the raw per-document metagradient and the step-normalized one
(``select_data(step_window=k)``) rank the target domain's documents first: the AUC (0.5: chance, 1:
all of them first) and how many are among the best 20 / 60.

With ``--draws k`` it also trains ``k - 1`` more runs with new seeds (new initialization and
batch order, as ``outer.reseed`` does) and reports how the ranking improves when each
document's step-normalized score (the first of ``--windows``' nonzero windows, else 2) is
averaged over its first 1, 2, ..., k draws (also per byte: the windows' scores summed over the
document's bytes), and the rank correlation between two draws.

  python scripts/lm_metagradient_ranking.py
  python scripts/lm_metagradient_ranking.py --config fortunes_lm --windows 0 2 10
  python scripts/lm_metagradient_ranking.py --draws 8
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
    parser.add_argument("--config", default="fortunes_lm_random")
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 2, 10])
    parser.add_argument("--draws", type=int, default=1)
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
    if args.draws > 1:
        window = next((k for k in args.windows if k > 0), 2)
        meta = {"data_weights": weights[jnp.asarray(groups)]}
        nbytes = np.asarray(text.pool.num_bytes, np.float64)

        def per_byte(score, order):
            # The windows' normalized scores summed, per byte of the document (a byte budget's
            # value per cost) instead of their mean.
            return score * np.bincount(groups[order[order >= 0]], minlength=n) / nbytes

        draws = [_step_normalized(grad, order, groups, n, window)]
        draws_per_byte = [per_byte(draws[0], order)]
        for j in range(1, args.draws):
            run = per_window.replace(seed=cfg.seed + j)  # shares the compiled programs
            g = np.asarray(run.metagradient(meta).grad["data_weights"], np.float64)
            draws.append(_step_normalized(g, run.batch_indices(), groups, n, window))
            draws_per_byte.append(per_byte(draws[-1], run.batch_indices()))
        ranks = [np.argsort(np.argsort(d[outside])) for d in draws[:2]]
        print(
            f"step_window={window}, averaged over a document's first k draws (seeds "
            f"{cfg.seed}..{cfg.seed + args.draws - 1}); rank correlation of draws 1 and 2: "
            f"{np.corrcoef(*ranks)[0, 1]:.3f}"
        )
        for k in range(1, args.draws + 1):
            line = []
            for name, d in (("", draws), ("per byte: ", draws_per_byte)):
                s = -np.mean(d[:k], axis=0)[outside]
                best = target[outside][np.argsort(-s, kind="stable")]
                line.append(f"{name}AUC {_auc(s, target[outside]):.3f}, best 60: {best[:60].sum()}")
            print(f"  k={k}: " + "; ".join(line))


if __name__ == "__main__":
    main()
