"""Honest evaluation of a selection: models retrained from scratch with fresh seeds.

The selected subset, random subsets of the same size and the whole pool are each trained with
the selection's recipe and seeds the selection never used; accuracy is on the test split only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mgd.train import MetaSpec, TrainingSetup, retrain_and_evaluate

__all__ = ["SubsetAccuracy", "SelectionReport", "evaluate_selection"]


@dataclasses.dataclass(frozen=True)
class SubsetAccuracy:
    """Test accuracy (or another metric) of models trained on one training set.

    Attributes:
      name: ``"selected"``, ``"random"``, ``"full"`` or a baseline's name.
      size: candidates in the training set (examples, or groups such as documents).
      accuracies: float64 ``(r,)``: one value of the metric per model (``random``: per random
        subset).
      metric: the metric's name (a key of ``TrainingSetup.evaluate``), e.g. ``"accuracy"`` or
        ``"bits_per_byte"``.
    """

    name: str
    size: int
    accuracies: np.ndarray
    metric: str = "accuracy"

    @property
    def mean(self) -> float:
        """Mean of the metric over the models."""
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Standard deviation of the metric over the models (``ddof=0``)."""
        return float(np.std(self.accuracies))

    def to_dict(self) -> dict[str, Any]:
        """``{"accuracy", "accuracy_std", "accuracies"}`` (JSON-able); for another metric
        ``{metric, metric + "_std", "values"}``."""
        values = "accuracies" if self.metric == "accuracy" else "values"
        return {
            self.metric: self.mean,
            f"{self.metric}_std": self.std,
            values: self.accuracies.tolist(),
        }


@dataclasses.dataclass(frozen=True)
class SelectionReport:
    """What :func:`evaluate_selection` measured.

    Attributes:
      selected: models trained on the selection (one per seed).
      random: random subsets of the same size (one model each).
      full: models trained on the whole pool (one per seed).
      seeds: the training seeds.
      baselines: other selections of the pool (e.g. ``small_loss``, ``el2n``), one model per
        seed each.
    """

    selected: SubsetAccuracy
    random: SubsetAccuracy
    full: SubsetAccuracy
    seeds: tuple[int, ...]
    baselines: tuple[SubsetAccuracy, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """``{"selected", "random", "full": {...}, "size", "num_candidates", "eval_seeds"}``,
        and ``"baselines": {name: {...}}`` when there are baselines."""
        out = {
            "selected": self.selected.to_dict(),
            "random": self.random.to_dict(),
            "full": self.full.to_dict(),
            "size": self.selected.size,
            "num_candidates": self.full.size,
            "eval_seeds": list(self.seeds),
        }
        if self.baselines:
            out["baselines"] = {b.name: {"size": b.size, **b.to_dict()} for b in self.baselines}
        return out

    def table(self) -> str:
        """A plain-text table: size and test accuracy mean +- std per training set."""
        rows = [
            ("selected", self.selected),
            (f"random (x{len(self.random.accuracies)})", self.random),
            *((b.name, b) for b in self.baselines),
            ("full pool", self.full),
        ]
        metric = self.selected.metric.replace("_", " ")
        lines = [f"{'training set':<14}{'size':>6}  test {metric} (retrained, fresh seeds)"]
        for name, r in rows:
            lines.append(f"{name:<14}{r.size:>6}  {r.mean:.4f} +- {r.std:.4f}")
        return "\n".join(lines)


def draw_random_subsets(n: int, k: int, count: int, seed: int) -> list[np.ndarray]:
    """The random subsets :func:`evaluate_selection` trains on (scripts that retrain them under
    other recipes draw the same ones).

    Returns:
      ``count`` sorted int arrays ``(k,)`` of distinct indices into ``range(n)``, drawn with
      ``seed``.
    """
    rng = np.random.default_rng(seed)
    return [np.sort(rng.permutation(n)[:k]) for _ in range(count)]


def evaluate_selection(
    setup: TrainingSetup,
    indices: Sequence[int] | np.ndarray,
    *,
    seeds: Sequence[int],
    num_random: int = 5,
    random_seed: int = 0,
    baselines: Mapping[str, Sequence[int] | np.ndarray] | None = None,
    metric: str = "accuracy",
    progress: bool = True,
) -> SelectionReport:
    """Test accuracy of models retrained from scratch on the selection, random subsets, the pool.

    Every model is trained with the setup's recipe (model, optimizer, batch size, steps) and no
    metaparameters, from the seeds in ``seeds`` (seeds the selection never trained with). When
    the pool has groups (``Dataset.groups``, e.g. a document's windows), indices are group ids
    and a model trains on all examples of its groups (``Dataset.subset_groups``); random
    subsets are random groups.

    Args:
      setup: the training recipe used for selection (its ``meta_spec`` is ignored).
      indices: the selected candidates, ``(k,)``.
      seeds: training seeds for the selected subset and the full pool (one model each); the
        ``j``-th random subset is trained with ``seeds[j % len(seeds)]``.
      num_random: number of random subsets of size ``k`` (drawn with ``random_seed``).
      random_seed: seed of the random subsets.
      baselines: other selections to evaluate alike, ``{name: indices}`` (e.g. the indices of
        :func:`small_loss_selection`); each is trained with every seed in ``seeds``.
      metric: the key of ``TrainingSetup.evaluate`` reported: ``"accuracy"``, or e.g.
        ``"bits_per_byte"`` for a language model (``loss=mgd.train.next_token_loss``).
      progress: show a tqdm progress bar over the retrained models.

    Returns:
      A :class:`SelectionReport`.

    Raises:
      ValueError: ``seeds`` is empty or contains the setup's own seed, or ``num_random < 1``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or setup.seed in seeds:
        raise ValueError(
            f"evaluate_selection: seeds must be non-empty and exclude the selection's seed "
            f"{setup.seed} (honest evaluation retrains with fresh seeds), got {seeds}"
        )
    if num_random < 1:
        raise ValueError(f"evaluate_selection: num_random must be >= 1, got {num_random}")
    plain = setup.replace(meta_spec=MetaSpec())
    data, n, k = setup.data, setup.data.num_groups, len(indices)
    random_subsets = draw_random_subsets(n, k, num_random, random_seed)
    baselines = dict(baselines or {})
    total = (2 + len(baselines)) * len(seeds) + num_random
    with tqdm(total=total, desc="retraining", disable=not progress) as bar:

        def run(subset: np.ndarray | None, run_seeds: list[int]) -> np.ndarray:
            trained = plain if subset is None else plain.replace(data=data.subset_groups(subset))
            scores = retrain_and_evaluate(trained, seeds=run_seeds, split="test")
            if metric not in scores:
                raise ValueError(
                    f"evaluate_selection: the setup's evaluate reports {sorted(scores)}, not "
                    f"metric={metric!r}; pass one of those"
                )
            acc = scores[metric]
            bar.update(len(run_seeds))
            return np.asarray(acc, np.float64)

        selected = run(np.asarray(indices), seeds)
        random = np.array(
            [run(s, [seeds[j % len(seeds)]])[0] for j, s in enumerate(random_subsets)]
        )
        others = tuple(
            SubsetAccuracy(name, len(idx), run(np.asarray(idx), seeds), metric)
            for name, idx in baselines.items()
        )
        full = run(None, seeds)

    return SelectionReport(
        selected=SubsetAccuracy("selected", k, selected, metric),
        random=SubsetAccuracy("random", k, random, metric),
        full=SubsetAccuracy("full", n, full, metric),
        seeds=tuple(seeds),
        baselines=others,
    )
