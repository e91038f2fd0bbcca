"""Honest evaluation of poisoning attacks: victims trained from scratch with unseen seeds.

Every attack's poisoned pool and the clean pool are used to train victims with the *same* recipe
and the same victim seeds (initialization and batch order), none of them used while crafting.
Accuracy is measured on the test split, which no attack saw. Drops are paired per seed (clean
victim with seed ``s`` minus poisoned victim with seed ``s``), which removes the seed-to-seed
variation the two share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mgd.outer.poison._attack import PoisonResult
from mgd.train import Dataset, MetaSpec, TrainingSetup, retrain_and_evaluate

__all__ = [
    "AttackAccuracy",
    "PoisonReport",
    "evaluate_poisons",
    "plot_poison_report",
    "plot_poisoned_examples",
]


@dataclasses.dataclass(frozen=True)
class AttackAccuracy:
    """Test accuracy of victims trained on one (clean or poisoned) pool.

    Attributes:
      name: ``"clean"`` or the attack's name.
      accuracy: float ``(num_seeds,)``, one victim per evaluation seed, in [0, 1].
      drop: float ``(num_seeds,)``, clean accuracy minus this accuracy, paired by seed (zeros for
        ``"clean"``).
    """

    name: str
    accuracy: np.ndarray
    drop: np.ndarray

    @property
    def mean(self) -> float:
        """Mean test accuracy over victim seeds."""
        return float(np.mean(self.accuracy))

    @property
    def std(self) -> float:
        """Standard deviation of the test accuracy over victim seeds (``ddof=1``; 0 for one)."""
        return _std(self.accuracy)

    @property
    def drop_mean(self) -> float:
        """Mean accuracy drop versus clean training, in accuracy units (0.1 = 10 points)."""
        return float(np.mean(self.drop))

    @property
    def drop_std(self) -> float:
        """Standard deviation of the paired drop over victim seeds."""
        return _std(self.drop)

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` entry: ``test_accuracy_mean``, ``test_accuracy_std``, per seed,
        and the drop's mean and std."""
        return {
            "test_accuracy_mean": self.mean,
            "test_accuracy_std": self.std,
            "test_accuracy": [float(a) for a in self.accuracy],
            "drop_mean": self.drop_mean,
            "drop_std": self.drop_std,
        }


def _std(a: np.ndarray) -> float:
    return float(np.std(a, ddof=1)) if a.size > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class PoisonReport:
    """Clean and per-attack accuracy of victims trained from scratch.

    Attributes:
      seeds: the victim seeds, in the order of every ``accuracy`` array.
      clean: victims trained on the clean pool.
      attacks: one entry per attack, in the order given to :func:`evaluate_poisons`.
    """

    seeds: tuple[int, ...]
    clean: AttackAccuracy
    attacks: dict[str, AttackAccuracy]

    def to_dict(self) -> dict[str, Any]:
        """``{"clean": {...}, "<attack>": {...}, ...}``, the content of ``metrics.json``."""
        return {"clean": self.clean.to_dict()} | {k: v.to_dict() for k, v in self.attacks.items()}

    def table(self) -> str:
        """A plain-text table: accuracy mean +- std and drop per attack, in percent."""
        rows = [f"{'attack':<20} {'test accuracy (%)':>20} {'drop (points)':>16}"]
        for entry in (self.clean, *self.attacks.values()):
            acc = f"{100 * entry.mean:.2f} +- {100 * entry.std:.2f}"
            drop = "" if entry is self.clean else f"{100 * entry.drop_mean:+.2f}"
            rows.append(f"{entry.name:<20} {acc:>20} {drop:>16}")
        return "\n".join(rows)

    def largest_baseline_drop(self, attack: str = "mgd") -> float:
        """The largest mean drop among the attacks other than ``attack`` (0 if there are none)."""
        return max((v.drop_mean for k, v in self.attacks.items() if k != attack), default=0.0)


def evaluate_poisons(
    setup: TrainingSetup,
    poisons: Sequence[PoisonResult] | Mapping[str, Dataset],
    *,
    seeds: Sequence[int],
    progress: bool = True,
) -> PoisonReport:
    """Trains victims from scratch on the clean and on each poisoned pool, and tests them.

    Each victim uses ``setup``'s recipe (model, optimizer, batch size, steps) with one of
    ``seeds`` for its initialization and batch order, and plain training (no metaparameters:
    the poison is in the data). Accuracy is on the test split.

    Args:
      setup: the victim's training recipe on the clean data (``setup.data``).
      poisons: :class:`mgd.outer.poison.PoisonResult` objects, or a mapping from name to a
        poisoned ``Dataset`` (same validation and test splits as ``setup.data``).
      seeds: victim seeds, at least one (three or more for a std); none may be a seed an attack
        crafted with (its ``craft_seeds``).
      progress: show a progress bar over the pools (each trains ``len(seeds)`` victims).

    Returns:
      A :class:`PoisonReport`.

    Raises:
      ValueError: no seeds, repeated seeds, a victim seed that an attack crafted with, two
        attacks with one name, or a poisoned pool whose test split differs from the clean one.

    Example:
      >>> report = evaluate_poisons(setup, [mgd_result, flip_result], seeds=(100, 101, 102))
      >>> print(report.table())  # doctest: +SKIP
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError(
            "evaluate_poisons: seeds is empty; pass victim seeds, e.g. (100, 101, 102)"
        )
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"evaluate_poisons: victim seeds repeat: {seeds}; pass distinct seeds")
    if isinstance(poisons, Mapping):
        named = dict(poisons)
    else:
        named = {}
        for p in poisons:
            if p.name in named:
                raise ValueError(
                    f"evaluate_poisons: two attacks are named {p.name!r}; rename one "
                    "(dataclasses.replace(result, name=...))"
                )
            used = set(p.craft_seeds) & set(seeds)
            if used:
                raise ValueError(
                    f"evaluate_poisons: victim seed(s) {sorted(used)} were used to craft "
                    f"{p.name!r}; evaluate on seeds the attack never saw"
                )
            named[p.name] = p.data
    for name, data in named.items():
        if data.x_test.shape != setup.data.x_test.shape or not np.array_equal(
            data.x_test, setup.data.x_test
        ):
            raise ValueError(
                f"evaluate_poisons: the test split of {name!r} differs from the clean data's; "
                "poison only the training pool"
            )

    accuracy = {}
    for name, (victim, meta) in tqdm(
        _victim_runs(setup, named).items(), desc="victims", disable=not progress
    ):
        res = retrain_and_evaluate(victim, seeds=seeds, meta=meta, split="test")
        accuracy[name] = np.asarray(res["accuracy"], np.float64)
    clean = accuracy.pop("clean")
    return PoisonReport(
        seeds=seeds,
        clean=AttackAccuracy("clean", clean, np.zeros_like(clean)),
        attacks={k: AttackAccuracy(k, accuracy[k], clean - accuracy[k]) for k in named},
    )


def _victim_runs(
    setup: TrainingSetup, pools: dict[str, Dataset]
) -> dict[str, tuple[TrainingSetup, dict | None]]:
    """How to train the victims of each pool, compiling as few training functions as possible.

    A setup compiles its training once and retrains with any metaparameters and seeds. Pools
    that differ from the clean data only in some training inputs (every input-perturbing attack)
    therefore share one setup on the *clean* data whose ``perturbations`` metaparameter carries
    each pool's changes (``x_pool - x_clean`` on the union of changed examples; the training
    layer's clip to the valid range leaves the already-valid poisoned inputs as they are), and
    the clean victims are the same setup with zero perturbations. Other pools (changed labels)
    get a setup of their own. Either way the victim is plain training on the pool's data.
    """
    clean = setup.data
    plain = MetaSpec()
    base = setup if setup.meta_spec == plain else setup.replace(meta_spec=plain)
    x_only, other = {}, {}
    for name, data in pools.items():
        same_labels = np.array_equal(data.y_train, clean.y_train)
        if same_labels and data.x_train.shape == clean.x_train.shape:
            x_only[name] = data
        else:
            other[name] = data
    axes = tuple(range(1, clean.x_train.ndim))
    changed = [np.any(d.x_train != clean.x_train, axis=axes) for d in x_only.values()]
    union = np.flatnonzero(np.any(changed, axis=0)) if changed else np.zeros(0, np.int64)
    runs: dict[str, tuple[TrainingSetup, dict | None]] = {}
    if union.size == 0:
        runs["clean"] = (base, None)
        runs.update({name: (base, None) for name in x_only})
    else:
        shared = base.replace(meta_spec=MetaSpec(perturb_indices=tuple(int(i) for i in union)))
        zero = clean.x_train[union] - clean.x_train[union]
        runs["clean"] = (shared, {"perturbations": zero})
        for name, data in x_only.items():
            runs[name] = (shared, {"perturbations": data.x_train[union] - clean.x_train[union]})
    runs.update({name: (base.replace(data=data), None) for name, data in other.items()})
    return runs


def plot_poison_report(report: PoisonReport, path: str | None = None, *, ax: Any = None) -> Any:
    """Bar chart of test accuracy (mean +- std over victim seeds) per attack, clean first.

    Args:
      report: from :func:`evaluate_poisons`.
      path: if given, the figure is saved there (e.g. ``DIR/accuracy.png``).
      ax: optional matplotlib axes to draw on.

    Returns:
      The matplotlib figure.
    """
    entries = [report.clean, *report.attacks.values()]
    fig = ax.figure if ax is not None else _figure(path, 1.6 + 1.3 * len(entries), 3.6)
    ax = ax if ax is not None else fig.add_subplot()
    means = [100 * e.mean for e in entries]
    stds = [100 * e.std for e in entries]
    colors = ["tab:gray"] + ["tab:red" if e.name == "mgd" else "tab:blue" for e in entries[1:]]
    ax.bar(range(len(entries)), means, yerr=stds, capsize=4, color=colors)
    ax.set_xticks(range(len(entries)), [e.name for e in entries], rotation=20)
    low = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0.0, low - 10), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"victims trained from scratch, {len(report.seeds)} unseen seeds")
    for i, (m, e) in enumerate(zip(means, entries, strict=True)):
        label = f"{m:.1f}" if e is report.clean else f"{m:.1f}\n({-100 * e.drop_mean:+.1f})"
        ax.text(i, m + 1, label, ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_poisoned_examples(
    result: PoisonResult, clean: Dataset, *, num: int = 6, path: str | None = None
) -> Any:
    """Shows poisoned training images next to their originals (rows: clean, poisoned, change).

    Args:
      result: a poisoning result; its first ``num`` poisoned examples are shown.
      clean: the clean ``Dataset`` the poison was made from.
      num: how many examples, ``>= 1``.
      path: if given, the figure is saved there.

    Returns:
      The matplotlib figure. Images are mapped from the valid range to [0, 1] (per channel),
      labels are the training labels (the label-flip baseline shows old -> new).
    """
    idx = result.indices[: max(1, num)]
    low, high = (np.broadcast_to(r, clean.input_shape) for r in clean.x_range)

    def image(x):
        x = np.clip((x - low) / (high - low), 0, 1)
        if x.ndim == 1:  # vector inputs: one row of pixels
            return x[None]
        return x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x

    def change(before, after):
        d = np.abs(after - before) / (high - low)
        return d.max(axis=-1) if d.ndim == 3 else (d[None] if d.ndim == 1 else d)

    fig = _figure(path, 1.5 * len(idx), 4.8)
    axes = fig.subplots(3, len(idx), squeeze=False)
    for j, i in enumerate(idx):
        before, after = clean.x_train[i], result.data.x_train[i]
        y0, y1 = clean.y_train[i], result.data.y_train[i]
        panels = (
            (image(before), f"clean, y={y0}", "gray"),
            (image(after), f"poisoned, y={y1}" if y1 == y0 else f"y={y0}->{y1}", "gray"),
            (change(before, after), "|change|", "magma"),
        )
        for row, (img, title, cmap) in enumerate(panels):
            ax = axes[row, j]
            ax.imshow(img, cmap=cmap if img.ndim == 2 else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{result.name}: poisoned training examples", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _figure(path: str | None, width: float, height: float) -> Any:
    """A pyplot figure for interactive use; one drawn off-screen, leaving pyplot's backend
    alone, when it only goes to a file."""
    if path is None:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=(width, height))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig
