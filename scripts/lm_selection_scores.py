"""Diagnostic: how the selection-focused inner run scores documents at DSIR's selection.

Builds the setup of a text selection config (default ``fortunes_lm_selection``, which needs
``apt-get install fortunes fortunes-de fortunes-es``), takes DSIR's selection of the config's
byte budget, and for each seed computes one metagradient of ``select_data(inner_batches=
"selection")``'s inner run (the selection less a held-out share trained, the held-out and a
sample of unselected documents drawn at weight 0). Prints the step-normalized scores (negative:
adding the document lowers the target loss) of the held-out target-domain documents, the other
held-out ones and the unselected ones: their mean, median and the share that is negative.

  python scripts/lm_selection_scores.py
  python scripts/lm_selection_scores.py --config fortunes_lm_selection --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import numpy as np

from mgd.experiments import InputError, read_config
from mgd.experiments._common import checking_input, load_text_data, setup_from_config
from mgd.experiments.select import SelectConfig, _byte_budget
from mgd.outer.selection import dsir_selection
from mgd.outer.selection._search import _SelectionRun, _step_normalized
from mgd.train import MetaSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fortunes_lm_selection")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    try:  # Bad input (config, missing fortunes): one line, as the commands report it.
        with checking_input():
            cfg = read_config("select", args.config, SelectConfig)
            text = load_text_data(cfg.data)
    except InputError as e:
        raise SystemExit(f"lm_selection_scores: {e}") from None
    meta_spec = MetaSpec(data_weights=True)
    setup = setup_from_config(cfg.train, text.data, seed=cfg.seed, meta_spec=meta_spec)
    n = text.data.num_groups
    target = np.asarray(text.pool.in_domain(text.target_domain))
    start = dsir_selection(
        text.pool.texts,
        text.target.texts,
        budget_bytes=_byte_budget(cfg, text),
        num_buckets=cfg.scores.dsir_buckets,
        seed=cfg.seed,
    ).indices
    selected = np.zeros(n, bool)
    selected[start] = True
    print(f"DSIR's selection: {selected.sum()} documents, {target[selected].sum()} in-domain")
    run = _SelectionRun(setup, cfg.outer.selection_share, cfg.outer.selection_holdout)
    window = 2 if cfg.outer.step_window is None else cfg.outer.step_window
    for seed in args.seeds:
        trained, weight, draw_group = run(selected, seed)
        res = trained.metagradient({"data_weights": weight})
        grad = np.asarray(res.grad["data_weights"])
        scored = (np.asarray(weight) == 0).reshape(trained.batch_order.shape)
        order = np.where(scored, trained.batch_order, -1)
        score = _step_normalized(grad, order, draw_group, n, window)
        drawn = np.bincount(draw_group[order.ravel() >= 0], minlength=n) > 0
        print(f"seed {seed}: target loss {float(res.value):.4f}")
        groups = {
            "held-out, in-domain": selected & drawn & target,
            "held-out, other": selected & drawn & ~target,
            "unselected, in-domain": ~selected & drawn & target,
            "unselected, other": ~selected & drawn & ~target,
        }
        for name, mask in groups.items():
            if mask.any():
                s = score[mask]
                print(
                    f"  {name:22s} {mask.sum():4d} documents: mean {s.mean():+.3f}, "
                    f"median {np.median(s):+.3f}, negative {np.mean(s < 0):.0%}"
                )


if __name__ == "__main__":
    main()
