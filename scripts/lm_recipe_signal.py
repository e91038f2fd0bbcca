"""Which inner training recipe makes the transformer's per-document metagradient informative.

On the data of a text selection config (default ``fortunes_lm_random``: 2,000 fortunes, 60 of
them Spanish, target: Spanish; needs ``apt-get install fortunes fortunes-de fortunes-es``), for
each inner recipe below: takes the selection's random starting subset (10% of the documents,
weights ``n / k``), computes the metagradient of the validation (target) loss per training
window through the whole run with two seeds (new initialization and batch order), and prints,
among the documents outside the start:

- ``AUC``: how well minus the per-document score ranks Spanish documents first (0.5: chance, 1:
  all first), for the raw score (windows' metagradients summed) and the step-normalized one
  (``select_data(step_window=2)``), for each draw and for the mean of the two draws;
- ``corr``: the rank correlation of the two draws' scores (1: the score is a property of the
  document; 0: noise of the draw);
- ``val bpb``: validation (target) bits per byte of a model trained from scratch on the start
  subset alone with the recipe (as the evaluation trains), so a recipe that trains badly shows;
- ``meta-s``: seconds per metagradient.

Everything is measured in one process; the test documents are never used. Recipes (``--recipes``
picks some): ``current`` (``fortunes_lm_random``'s inner run: Adam 3e-3 constant, eps_root 1e-8, 300
steps of batch 16), ``scale0.1`` (logits x 0.1, ``TransformerConfig.output_scale``), ``cosine``
(Adam 3e-3 with cosine decay: the shipped ``fortunes_lm``), ``warmcos3e-3`` / ``warmcos1e-3`` (30
steps of linear warmup, then cosine decay to 5%), ``epsroot1e-4`` / ``epsroot1e-3`` (Adam's
eps_root), ``sgd`` (SGD momentum 0.9, 0.1, cosine), ``smooth`` (scale 0.1 + warmup-cosine 3e-3 +
eps_root 1e-4), ``cosine+epsroot1e-3``, ``steps900`` (900 steps: each window drawn about three
times).

  python scripts/lm_recipe_signal.py
  python scripts/lm_recipe_signal.py --recipes current smooth
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax.numpy as jnp
import numpy as np
import optax
from lm_metagradient_ranking import _auc

from mgd import NonFiniteCotangentError
from mgd.experiments import read_config
from mgd.experiments._common import load_text_data, setup_from_config
from mgd.experiments.select import SelectConfig
from mgd.outer.selection._search import _step_normalized
from mgd.outer.selection._update import subset_weights
from mgd.train import MetaSpec, make_optimizer, retrain_and_evaluate

# name: (changes to the model config, to the optimizer config, to the train config, warmup steps)
RECIPES = {
    "current": ({}, {}, {}, 0),
    "scale0.1": ({"output_scale": 0.1}, {}, {}, 0),
    "cosine": ({}, {"lr_decay": "cosine"}, {}, 0),
    "warmcos3e-3": ({}, {}, {}, 30),
    "warmcos1e-3": ({}, {"learning_rate": 1e-3}, {}, 30),
    "epsroot1e-4": ({}, {"eps_root": 1e-4}, {}, 0),
    "epsroot1e-3": ({}, {"eps_root": 1e-3}, {}, 0),
    "sgd": (
        {},
        {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "lr_decay": "cosine"},
        {},
        0,
    ),
    "smooth": ({"output_scale": 0.1}, {"eps_root": 1e-4}, {}, 30),
    "cosine+epsroot1e-3": ({}, {"lr_decay": "cosine", "eps_root": 1e-3}, {}, 0),
    "steps900": ({}, {}, {"num_steps": 900}, 0),
}


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def recipe_setup(cfg: SelectConfig, name: str, data, meta_spec: MetaSpec):
    """The ``TrainingSetup`` of ``cfg.train`` changed as recipe ``name`` says."""
    model, opt, train, warmup = RECIPES[name]
    t = dataclasses.replace(
        cfg.train,
        model=dataclasses.replace(cfg.train.model, **model),
        optimizer=dataclasses.replace(cfg.train.optimizer, **opt),
        **train,
    )
    setup = setup_from_config(t, data, seed=cfg.seed, meta_spec=meta_spec)
    if warmup:
        o = t.optimizer
        rate = optax.warmup_cosine_decay_schedule(
            0.0, o.learning_rate, warmup, t.num_steps, end_value=0.05 * o.learning_rate
        )
        fields = {"b1": o.b1, "b2": o.b2, "eps": o.eps, "eps_root": o.eps_root}
        setup = setup.replace(
            optimizer=make_optimizer({"name": "adam", "learning_rate": rate, **fields})
        )
    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fortunes_lm_random")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    cfg = read_config("select", args.config, SelectConfig)
    text = load_text_data(cfg.data)
    data = text.data
    n, groups = data.num_groups, np.asarray(data.groups)
    size = round(cfg.fraction * n)
    # The same random start as select_data(seed=cfg.seed).
    start = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:size])
    meta = {"data_weights": subset_weights(jnp.asarray(start), n)[jnp.asarray(groups)]}
    outside = np.ones(n, bool)
    outside[start] = False
    target = np.asarray(text.pool.in_domain(text.target_domain))[outside]
    print(
        f"{outside.sum()} documents outside the start, {target.sum()} of them "
        f"{text.target_domain}; AUC of minus the score (raw | step_window=2), draws 1, 2, mean",
        flush=True,
    )
    for name in args.recipes:
        setup = recipe_setup(cfg, name, data, MetaSpec(data_weights=True))
        per_window = setup.replace(data=data.replace(groups=None))
        raw, norm, seconds = [], [], []
        for j in range(2):
            run = per_window.replace(seed=cfg.seed + j)  # shares the compiled programs
            started = time.perf_counter()
            try:
                g = np.asarray(run.metagradient(meta).grad["data_weights"], np.float64)
            except NonFiniteCotangentError:  # A recipe that diverges is a row, not the end.
                break
            seconds.append(time.perf_counter() - started)
            raw.append(-np.bincount(groups, g, minlength=n)[outside])
            norm.append(-_step_normalized(g, run.batch_indices(), groups, n, 2)[outside])
        if len(raw) < 2:
            print(f"{name:12s} the metagradient is not finite (training diverges)", flush=True)
            continue
        plain = recipe_setup(cfg, name, data.subset_groups(start), MetaSpec())
        bpb = retrain_and_evaluate(plain, seeds=[1000, 1001], split="val")["bits_per_byte"]
        cells = []
        for label, s in (("raw", raw), ("sw2", norm)):
            aucs = [_auc(x, target) for x in (*s, s[0] + s[1])]
            cells.append(
                f"{label} AUC {aucs[0]:.3f} {aucs[1]:.3f} {aucs[2]:.3f} corr {_rank_corr(*s):+.3f}"
            )
        print(
            f"{name:12s} {' | '.join(cells)} | val bpb {bpb.mean():.3f} | meta-s "
            f"{seconds[1]:.0f} (first {seconds[0]:.0f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
