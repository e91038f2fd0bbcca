"""More evaluation seeds for a finished text selection run: paired differences against DSIR.

A ``mgd select`` text run (e.g. ``--config fortunes_lm``) evaluates its selection and baselines
with ``eval.num_seeds`` fresh seeds (3 in the shipped configs), too few to tell differences of a
few hundredths of a bit per byte from the seed spread. This script reads the run's
``selection.json`` (its config and the selections) and retrains the selection, every baseline
and (for ``outer.start: dsir``) DSIR's starting selection with ``--seeds`` fresh seeds each
(the run's own ``10000 + 100 * seed + j``, ``j = 0, 1, ...``: the first ``eval.num_seeds``
repeat the run's models), with the evaluation's recipe. It prints each training set's test
bits per byte (mean, std) and, seed by seed, the selection minus each other set: mean,
standard error, and the number of seeds on which the selection is better. The selections are
fixed before; nothing is chosen on the test documents.

DSIR resamples at random (Gumbel noise), and two of its draws at the same budget differ by a
few hundredths of a bit per byte: ``--dsir-draws k`` also trains ``k - 1`` more DSIR selections
with the bytes of the MGD selection (Gumbel seeds ``seed + 1, ...``; the run's own is ``seed``)
and prints the MGD selection minus all ``k`` draws pooled (mean over draws and seeds).

  mgd select --config fortunes_lm --out runs/fortunes_lm
  python scripts/lm_selection_seeds.py runs/fortunes_lm --seeds 10
  python scripts/lm_selection_seeds.py runs/fortunes_lm_smooth --seeds 10 --dsir-draws 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mgd.config import config_from_dict
from mgd.experiments import InputError
from mgd.experiments._common import checking_input, load_text_data, setup_from_config
from mgd.experiments.select import SelectConfig, _byte_budget, eval_setup
from mgd.outer.selection import dsir_selection
from mgd.train import MetaSpec, retrain_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the --out folder of a finished text selection")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--dsir-draws", type=int, default=1)
    args = parser.parse_args()
    try:  # Bad input (no such run, not a text run, missing fortunes): one line.
        with checking_input():
            path = args.run / "selection.json"
            if not path.is_file():
                raise ValueError(f"{path} not found; pass a finished run's --out")
            selection = json.loads(path.read_text())
            cfg = config_from_dict(selection["config"], SelectConfig)
            if not cfg.data.is_text:
                raise ValueError(f"{args.run} is not a text selection run (data.name)")
            if args.seeds < 1:
                raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
            if args.dsir_draws < 1:
                raise ValueError(f"--dsir-draws must be >= 1, got {args.dsir_draws}")
            text = load_text_data(cfg.data)
    except InputError as e:
        raise SystemExit(f"lm_selection_seeds: {e}") from None
    sets = {"selected": np.asarray(selection["indices"])}
    sets.update({k: np.asarray(v) for k, v in selection["baselines"].items()})
    if cfg.outer.start == "dsir":
        by = {"budget_bytes": _byte_budget(cfg, text)} if cfg.outer.budget == "bytes" else {}
        sets["dsir start"] = dsir_selection(
            text.pool.texts,
            text.target.texts,
            **(by or {"size": round(cfg.fraction * len(text.pool))}),
            num_buckets=cfg.scores.dsir_buckets,
            seed=cfg.seed,
        ).indices
    nbytes = np.asarray(text.pool.num_bytes)
    for j in range(1, args.dsir_draws):
        sets[f"dsir draw {j + 1}"] = dsir_selection(
            text.pool.texts,
            text.target.texts,
            budget_bytes=int(nbytes[sets["selected"]].sum()),
            num_buckets=cfg.scores.dsir_buckets,
            seed=cfg.seed + j,
        ).indices
    setup = setup_from_config(cfg.train, text.data, seed=cfg.seed, meta_spec=MetaSpec())
    plain = eval_setup(cfg, setup)
    seeds = [10_000 + 100 * cfg.seed + j for j in range(args.seeds)]
    inside = np.asarray(text.pool.in_domain(text.target_domain))
    bpb = {}
    for name, idx in sets.items():
        trained = plain.replace(data=text.data.subset_groups(idx))
        bpb[name] = retrain_and_evaluate(trained, seeds=seeds, split="test")["bits_per_byte"]
        print(
            f"{name:14s} {len(idx):4d} documents, {nbytes[idx].sum():6d} bytes, "
            f"{inside[idx].sum():3d} in-domain: {bpb[name].mean():.4f} +- {bpb[name].std():.4f} "
            f"({args.seeds} seeds)",
            flush=True,
        )
    print("selected minus each, seed by seed (negative: the selection is better):")
    for name, values in bpb.items():
        if name == "selected":
            continue
        d = bpb["selected"] - values
        sem = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
        print(
            f"  - {name:14s} {d.mean():+.4f} +- {sem:.4f} (standard error); the selection "
            f"better on {int((d < 0).sum())} of {d.size} seeds"
        )
    if args.dsir_draws > 1:
        # Per seed, the selection against the mean of the DSIR draws' models of that seed.
        names = ["dsir", *(f"dsir draw {j + 1}" for j in range(1, args.dsir_draws))]
        pooled = np.stack([bpb[name] for name in names])
        d = bpb["selected"] - pooled.mean(0)
        sem = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
        print(
            f"DSIR, {args.dsir_draws} draws x {args.seeds} seeds: {pooled.mean():.4f} +- "
            f"{pooled.std():.4f} (draw means {', '.join(f'{m:.4f}' for m in pooled.mean(1))}); "
            f"selected minus the draws' mean, seed by seed: {d.mean():+.4f} +- {sem:.4f} "
            f"(standard error); the selection better on {int((d < 0).sum())} of {d.size} seeds"
        )


if __name__ == "__main__":
    main()
