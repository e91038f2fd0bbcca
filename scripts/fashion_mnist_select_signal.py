"""How much a single metagradient says about wrong labels, per training recipe (Fashion-MNIST).

On the pool of ``configs/select/fashion_mnist_noisy`` (20,000 images, 40% wrong labels), a
random half is selected (weights ``n / k``) and one metagradient of the validation loss with
respect to the per-example data weights is taken through the whole training run. The printed
AUC is the probability that a wrong-labelled example gets a larger metagradient (upweighting it
raises the validation loss more) than a correctly labelled one: 0.5 is no information, 1 a
perfect ranking; separately for the selected half and the unselected half. The labels' noise
mask is known only because the noise was injected; the selection never sees it.

Needs `apt-get install dataset-fashion-mnist` (or $MGD_FASHION_MNIST_DIR). Each recipe is
``LR,MOMENTUM,STEPS,DECAY`` (``MOMENTUM`` may be ``none``, ``DECAY`` ``constant`` or ``cosine``)::

    python scripts/fashion_mnist_select_signal.py 0.05,0.9,2000,constant 0.01,0.9,2000,cosine
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from mgd.experiments import read_config, select
from mgd.experiments._common import load_data, setup_from_config
from mgd.train import MetaSpec


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative) (Mann-Whitney U / (p q))."""
    ranks = np.argsort(np.argsort(scores))
    p, q = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - p * (p - 1) / 2) / (p * q))


def main(recipes: list[str]) -> None:
    c = read_config("select", "fashion_mnist_noisy", select.SelectConfig)
    data, noisy = load_data(c.data, model=c.train.model)
    n = data.num_train
    k = round(c.fraction * n)
    selected = np.random.default_rng(0).permutation(n)[:k]
    weights = np.zeros(n, np.float32)
    weights[selected] = n / k
    rest = np.setdiff1d(np.arange(n), selected)
    for recipe in recipes:
        lr, momentum, steps, decay = recipe.split(",")
        optimizer = dataclasses.replace(
            c.train.optimizer,
            learning_rate=float(lr),
            momentum=None if momentum == "none" else float(momentum),
            lr_decay=decay,
        )
        train = dataclasses.replace(c.train, num_steps=int(steps), optimizer=optimizer)
        setup = setup_from_config(train, data, seed=0, meta_spec=MetaSpec(data_weights=True))
        started = time.perf_counter()
        res = setup.metagradient({**setup.init_meta(), "data_weights": weights})
        g = np.asarray(res.grad["data_weights"], np.float64)
        print(
            f"{recipe}: validation loss {float(res.value):.3f}, AUC wrong vs right labels: "
            f"selected half {auc(g[selected], noisy[selected]):.3f}, unselected half "
            f"{auc(g[rest], noisy[rest]):.3f} ({time.perf_counter() - started:.0f} s, "
            f"{res.stats.policy})",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
