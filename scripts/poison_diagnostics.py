"""What an MGD poison did: box saturation, classes poisoned, and the victim's logit scale.

For the MGD perturbations that ``mgd poison`` wrote (``OUT/poisons.npz``), prints

- the fraction of poisoned pixels at an edge of the valid range after the attack, and of those
  moved there (a large fraction would mean the box constraint limits the attack);
- how many poisoned examples each class has;
- for victims trained with the given seeds on the clean and on the poisoned pool: the
  validation split's accuracy, cross-entropy and the RMS of the centred logits (the victim's
  confidence scale). Only the validation split: choices made from this output never see the
  test split. A poison that raises the cross-entropy mostly by shrinking the logits makes the
  victim less confident rather than wrong.

The config must be the run's own::

    python scripts/poison_diagnostics.py configs/poison/fashion_mnist.yaml \\
        runs/poison_fm/poisons.npz 10
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mgd.experiments import InputError, read_config
from mgd.experiments._common import checking_input, load_data, setup_from_config
from mgd.experiments.poison import PoisonConfig
from mgd.outer.poison import apply_perturbations


def _victim(setup, seed: int) -> str:
    state = setup.train(seed=seed)
    data = setup.data
    logits = np.asarray(
        setup._model.apply(state.params, state.model_state, jnp.asarray(data.x_val), False)[0],
        np.float64,
    )
    y = data.y_val
    z = logits - logits.mean(axis=1, keepdims=True)
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(y.size), y]
    acc = np.mean(logits.argmax(axis=1) == y)
    scale = np.sqrt(np.mean(z**2, axis=1)).mean()
    return (
        f"val accuracy {100 * acc:.2f}%, val cross-entropy {ce.mean():.4f}, logit RMS {scale:.3f}"
    )


def main(config: str, poisons: str, seeds: list[int]) -> None:
    try:  # Bad input (config, data, poisons file): one line, as the commands report it.
        with checking_input():
            cfg = read_config("poison", config, PoisonConfig)
            data, _ = load_data(cfg.data, model=cfg.train.model)
            if not Path(poisons).is_file():
                raise ValueError(f"{poisons} not found; pass the poisons.npz of an mgd poison run")
    except InputError as e:
        sys.exit(f"poison_diagnostics: {e}")
    setup = setup_from_config(cfg.train, data)
    arrays = np.load(poisons)
    idx, delta = arrays["mgd_indices"], arrays["mgd_perturbations"]
    low, high = data.x_range
    after = data.x_train[idx] + delta
    edge = np.isclose(after, low) | np.isclose(after, high)
    moved = np.abs(delta) > 1e-4
    print(
        f"{idx.size} poisoned examples: {100 * edge.mean():.1f}% of their pixels at an edge of the "
        f"valid range ({100 * (edge & moved).mean():.1f}% moved there), {100 * moved.mean():.1f}% "
        f"moved, mean |delta| {np.abs(delta).mean():.3f} of the range"
    )
    counts = np.bincount(data.y_train[idx], minlength=int(data.y_train.max()) + 1)
    print("poisoned examples per class:", " ".join(str(c) for c in counts))
    poisoned = setup.replace(data=apply_perturbations(data, idx, delta))
    for seed in seeds:
        print(f"seed {seed} clean:    {_victim(setup, seed)}", flush=True)
        print(f"seed {seed} poisoned: {_victim(poisoned, seed)}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python scripts/poison_diagnostics.py CONFIG POISONS.npz SEED [SEED ...]")
    main(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]])
