"""The learning-rate schedule search experiment (``mgd lr``): config, ``run``, outputs.

``run(config, out)`` searches a schedule with :func:`mgd.search_lr_schedule` from each start
and, when the config asks, trains a grid of hand-designed schedules (one-cycle, constant,
cosine, step decay) to compare with; starts may be given relative to the grid's best constant
rate. Writes ``metrics.json``, ``history.json`` and ``lr_search.png`` into ``out``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optax

from mgd import distributed
from mgd.config import config_from_dict, config_to_dict
from mgd.experiments._common import (
    DataConfig,
    OptimizerConfig,
    ReplayConfig,
    TrainConfig,
    check_processes_agree,
    checking_input,
    load_data,
    new_figure,
    prepare_out,
    require_class_labels,
    setup_from_config,
    write_json,
)
from mgd.outer.lr import (
    GridSchedule,
    LRSearchResult,
    PiecewiseLinearSchedule,
    evaluate_schedules,
    log_lr_adam,
    lr_schedule_grid,
    search_lr_schedule,
)
from mgd.outer.lr._evaluate import per_step_setup
from mgd.train import Dataset, MetaSpec, TrainingSetup, retrain_and_evaluate
from mgd.train.models import MLPConfig

__all__ = ["SearchConfig", "GridConfig", "LRConfig", "LRRun", "search_setup", "run"]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The search (see :func:`mgd.search_lr_schedule`).

    Attributes:
      init_lr: constant starting rates.
      start_factors: starting rates as factors of the grid's best constant rate (needs
        ``grid.enabled``); one search per start, ``init_lr`` first.
      meta_steps: metagradient steps per search.
      learning_rate: the outer Adam's step on the log rates (``log_lr_adam``).
      learning_rate_decay: ``"constant"``, or ``"cosine"``: the step decays to a tenth of
        ``learning_rate`` over ``meta_steps``, so a search whose metagradients are noisy
        settles instead of wandering.
      max_step: the largest change of a log rate per meta-step.
      test_seeds: fresh seeds the found schedules (and the grid's best) are retrained with.
      reseed: meta-step ``k`` trains with seed ``seed + k``, so the outer Adam's momentum
        averages the metagradient over seeds (see :func:`mgd.search_lr_schedule`).
    """

    init_lr: tuple[float, ...] = ()
    start_factors: tuple[float, ...] = (0.1, 10.0)
    meta_steps: int = 50
    learning_rate: float = 0.1
    learning_rate_decay: Literal["constant", "cosine"] = "constant"
    max_step: float = 0.5
    test_seeds: int = 3
    reseed: bool = False

    def outer_optimizer(self) -> optax.GradientTransformationExtraArgs:
        """The outer optimizer on the log rates: ``log_lr_adam`` with this step and bound."""
        rate: float | optax.Schedule = self.learning_rate
        if self.learning_rate_decay == "cosine":
            rate = optax.cosine_decay_schedule(self.learning_rate, self.meta_steps, alpha=0.1)
        return log_lr_adam(rate, max_step=self.max_step)

    def __post_init__(self):
        if self.meta_steps < 1:
            raise ValueError(f"--meta-steps must be >= 1, got {self.meta_steps}")
        if not self.init_lr and not self.start_factors:
            raise ValueError("search: give init_lr or start_factors (at least one start)")
        if any(not 0 < r < np.inf for r in (*self.init_lr, *self.start_factors)):
            raise ValueError("search: init_lr and start_factors must be positive and finite")


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The grid of hand-designed schedules the search is compared with (``lr_schedule_grid``).

    Attributes:
      enabled: train the grid and report the found schedules against its best.
      lr_range: lowest and highest peak (or constant) rate.
      num_peaks: one-cycle peak rates.
    """

    enabled: bool = True
    lr_range: tuple[float, ...] = (0.01, 30.0)
    num_peaks: int = 10


@dataclasses.dataclass(frozen=True)
class LRConfig:
    """Everything ``mgd lr`` does; the shipped ``default`` config equals ``LRConfig()``.

    Attributes:
      seed: initialization and batch order of every search run.
      data, train: the data and the training recipe (its optimizer's learning rate is 1.0:
        the schedule sets the absolute rate).
      num_knots: evenly spaced knots of the schedule on ``[0, num_steps]``, ends included.
      search, grid, replay: the sections.
    """

    seed: int = 0
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig(
        # Layer norm before the activation keeps a search that tries too high a rate alive.
        model=MLPConfig(hidden=(128,), activation="tanh", normalize=True),
        optimizer=OptimizerConfig(name="sgd", learning_rate=1.0, momentum=None),
        batch_size=64,
        num_steps=200,
    )
    num_knots: int = 11
    search: SearchConfig = SearchConfig()
    grid: GridConfig = GridConfig()
    replay: ReplayConfig = ReplayConfig(checkpoint="store_all")

    def __post_init__(self):
        if self.num_knots < 2:
            raise ValueError(f"num_knots must be >= 2, got {self.num_knots}")
        if self.search.start_factors and not self.grid.enabled:
            raise ValueError(
                "search.start_factors are relative to the grid's best constant rate; set "
                "grid.enabled: true or give absolute search.init_lr"
            )
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"--seed must be in [0, 2**31), got {self.seed}")


@dataclasses.dataclass(frozen=True, eq=False)
class LRRun:
    """What :func:`run` produced.

    Attributes:
      config: the config that ran.
      setup: the search's training setup.
      searches: one :class:`mgd.LRSearchResult` per start, by start label.
      metrics: the content of ``metrics.json``.
      grid: the grid's schedules and their validation losses (empty without a grid).
    """

    config: LRConfig
    setup: TrainingSetup
    searches: dict[str, LRSearchResult]
    metrics: dict[str, Any]
    grid: tuple[list[GridSchedule], np.ndarray] | tuple[()] = ()

    def table(self) -> str:
        """The results table printed by ``mgd lr``."""
        rows = [f"{'schedule':<36}{'val. loss':>10}{'test accuracy':>20}"]
        for name, m in self.metrics["searches"].items():
            rows.append(f"{'start: ' + name:<36}{m['start_val_loss']:>10.4f}")
            acc = _acc(m["test"].get("accuracy"))
            rows.append(f"{'  found':<36}{m['found_val_loss']:>10.4f}{acc:>20}")
        if "grid" in self.metrics:
            g = self.metrics["grid"]
            label = f"grid's best of {g['runs']}"
            rows.append(f"{label:<36}{g['val_loss']:>10.4f}{_acc(g.get('test_accuracy')):>20}")
            rows.append(f"  ({g['best']})")
        return "\n".join(rows)


def _acc(values: list[float] | None) -> str:
    if not values:
        return ""
    a = np.asarray(values)
    return f"{a.mean():.4f} +- {a.std():.4f}"


def search_setup(config: LRConfig, data: Dataset | None = None) -> TrainingSetup:
    """The ``TrainingSetup`` a search of ``config`` differentiates (``config.train`` on ``data``).

    The one definition of the LR-search setting, shared by :func:`run` and the tests.

    Args:
      config: the experiment; ``num_knots`` evenly spaced knots on ``[0, train.num_steps]``.
      data: the data; ``None`` loads ``config.data``.

    Returns:
      The setup, with ``MetaSpec(lr_knots=...)``: ``meta["log_lr"]`` has shape
      ``(num_knots,)``, and ``config.train``'s optimizer (learning rate 1.0 in the shipped
      configs, so the schedule sets the absolute rate) and ``config.seed``.

    Raises:
      ValueError: data or settings that the loader, the model or the setup refuses.
    """
    if data is None:
        data, _ = load_data(config.data, model=config.train.model)
    num_steps = config.train.num_steps
    knots = tuple(int(k) for k in np.round(np.linspace(0, num_steps, config.num_knots)))
    return setup_from_config(
        config.train, data, seed=config.seed, meta_spec=MetaSpec(lr_knots=knots)
    )


def run(
    config: LRConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    grid_from: str | Path | None = None,
) -> LRRun:
    """Runs the schedule search (and the grid comparison) and writes its outputs.

    Args:
      config: the experiment.
      out: the output folder (new or empty, or the folder of the same run with ``resume``);
        ``None`` writes nothing.
      resume: continue the searches in ``out`` from their last meta-steps.
      progress: show progress bars.
      grid_from: the folder of an earlier ``mgd lr`` run of the same data, recipe, seed, knots
        and grid, whose grid result (``metrics.json``) is taken instead of training the grid
        again; its best schedule is retrained on this run's test seeds. ``None``: train it.

    Returns:
      An :class:`LRRun` (its ``grid`` is empty with ``grid_from``: the earlier run kept only
      the grid's best).

    Raises:
      InputError: (a ``ValueError``) bad input, before anything in ``out`` is written; a
        ``grid_from`` folder without that run's outputs or of another setting.
    """
    with checking_input():
        data, _ = load_data(config.data, model=config.train.model)
        require_class_labels(data, "lr")
        num_steps = config.train.num_steps
        setup = search_setup(config, data)
        check_processes_agree("lr", config, setup)
        schedules = lr_schedule_grid(
            num_steps, lr_range=tuple(config.grid.lr_range), num_peaks=config.grid.num_peaks
        )
        stored = None if grid_from is None else _stored_grid(config, Path(grid_from), schedules)
        out = None if out is None else Path(out)
        if out is not None:
            prepare_out(out, "lr", config, resume=resume)
    metrics: dict[str, Any] = {}
    starts = {f"lr {r:.4g}": float(r) for r in config.search.init_lr}
    grid: tuple = ()
    grid_best = None
    if stored is not None:
        metrics["grid"], grid_best = stored
        for f in config.search.start_factors:
            starts[f"{f:g}x grid's best constant"] = metrics["grid"]["best_constant_lr"] * f
    elif config.grid.enabled:
        started = time.perf_counter()
        losses = evaluate_schedules(
            setup, [g.schedule for g in schedules], batch_size=64, progress=progress
        )
        finite = np.where(np.isfinite(losses), losses, np.inf)
        best = int(np.argmin(finite))
        constants = [i for i, g in enumerate(schedules) if g.family == "constant"]
        best_constant = schedules[constants[int(np.argmin(finite[constants]))]].params["lr"]
        metrics["grid"] = {
            "best": schedules[best].label(),
            "val_loss": float(losses[best]),
            "best_constant_lr": best_constant,
            "runs": len(schedules),
            "seconds": time.perf_counter() - started,
        }
        for f in config.search.start_factors:
            starts[f"{f:g}x grid's best constant"] = best_constant * f
        grid = (schedules, losses)
        grid_best = schedules[best]

    searches: dict[str, LRSearchResult] = {}
    metrics["searches"] = {}
    for i, (name, init) in enumerate(starts.items()):
        res = search_lr_schedule(
            setup,
            init_schedule=init,
            meta_steps=config.search.meta_steps,
            optimizer=config.search.outer_optimizer(),
            replay=config.replay.build(),
            test_seeds=config.search.test_seeds,
            reseed=config.search.reseed,
            save_dir=None if out is None else out / "checkpoints" / f"start-{i}",
            resume=resume,
            fingerprint=config_to_dict(config),
            progress=progress,
        )
        # Scored by the same batched code as the grid, so the comparison is like for like.
        found, start_loss = evaluate_schedules(
            setup,
            [res.schedule, PiecewiseLinearSchedule.from_lr([0], init, num_steps=num_steps)],
            progress=False,
        )
        searches[name] = res
        metrics["searches"][name] = {
            "init_lr": init,
            "start_val_loss": float(start_loss),
            "found_val_loss": float(found),
            "best_step": res.best_step,
            "schedule": res.schedule.to_dict(),
            "test": res.test,
            "cost": res.cost,
        }
        if grid_best is not None:
            metrics["searches"][name]["gap_to_grid"] = (
                float(found) / metrics["grid"]["val_loss"] - 1
            )

    seeds = next(iter(searches.values())).test.get("seeds", [])
    if grid_best is not None and seeds:
        # The grid's best, retrained on the same fresh seeds as the found schedules.
        per_step = per_step_setup(setup)
        meta = {
            **per_step.init_meta(),
            "log_lr": np.log(grid_best.schedule.rates()).astype(np.float32),
        }
        acc = retrain_and_evaluate(per_step, seeds=seeds, meta=meta, split="test")["accuracy"]
        metrics["grid"]["test_accuracy"] = np.asarray(acc).tolist()

    done = LRRun(config, setup, searches, metrics, grid)
    # With several processes, all take the same decisions and process 0 writes the outputs.
    if out is not None and distributed.is_primary():
        write_json(
            out / "history.json",
            {name: [h._asdict() for h in r.history] for name, r in searches.items()},
        )
        write_json(out / "metrics.json", metrics)
        _plot(done).savefig(out / "lr_search.png", dpi=110)
    return done


# What a reused grid result must share with this run: everything its losses depend on.
_GRID_KEYS = ("seed", "data", "train", "num_knots", "grid")


def _stored_grid(
    config: LRConfig, folder: Path, schedules: list[GridSchedule]
) -> tuple[dict[str, Any], GridSchedule]:
    """The grid section of an earlier run's ``metrics.json`` (without its test accuracies,
    which this run measures on its own seeds) and the grid's best schedule, checked to belong
    to ``config``'s setting."""
    import json

    import yaml

    if not config.grid.enabled:
        raise ValueError("--grid-from needs grid.enabled: true (the grid to compare with)")
    try:
        earlier = yaml.safe_load((folder / "config.yaml").read_text())
        section = json.loads((folder / "metrics.json").read_text())["grid"]
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(
            f"--grid-from {folder}: no finished mgd lr run with a grid there ({e}); pass the "
            "--out folder of such a run"
        ) from e
    if not isinstance(earlier, dict) or earlier.get("command") != "lr":
        raise ValueError(f"--grid-from {folder}: holds no mgd lr run; pass the --out of one")
    # Read back as a config, so keys added since with their defaults compare equal.
    plain = lambda c: json.loads(json.dumps(config_to_dict(c)))
    now, before = plain(config), plain(config_from_dict(earlier.get("config"), LRConfig))
    differ = [k for k in _GRID_KEYS if before[k] != now[k]]
    if differ:
        raise ValueError(
            f"--grid-from {folder}: its run differs in {', '.join(differ)}; reuse "
            "a grid trained with the same seed, data, train, num_knots and grid"
        )
    best = [g for g in schedules if g.label() == section["best"]]
    if len(best) != 1 or section["runs"] != len(schedules):
        raise ValueError(
            f"--grid-from {folder}: its best schedule {section['best']!r} is not one of this "
            f"grid's {len(schedules)}; reuse a grid built by the same code and config"
        )
    keep = ("best", "val_loss", "best_constant_lr", "runs", "seconds")
    return {**{k: section[k] for k in keep}, "reused_from": str(folder)}, best[0]


def _plot(done: LRRun) -> Any:
    """Each search's schedules over meta-steps (dark to light) next to the grid's best five;
    the objective per meta-step."""
    import matplotlib

    searches = done.searches
    fig = new_figure(6 * (len(searches) + 1), 4.5)
    axes = fig.subplots(1, len(searches) + 1, squeeze=False)[0]
    steps = np.arange(done.setup.num_steps)
    cmap = matplotlib.colormaps["viridis"]
    for ax, (name, res) in zip(axes[:-1], searches.items(), strict=True):
        scheds = res.schedules()
        for k, s in enumerate(scheds):
            ax.plot(steps, s(steps), color=cmap(k / max(len(scheds) - 1, 1)), lw=0.8)
        if done.grid:
            schedules, losses = done.grid
            for i in np.argsort(np.where(np.isfinite(losses), losses, np.inf))[:5]:
                ax.plot(steps, schedules[i].schedule.rates(), "k--", lw=1)
        ax.set(yscale="log", xlabel="training step", ylabel="learning rate", title=f"from {name}")
    for name, res in searches.items():
        axes[-1].plot(res.objectives, label=f"from {name}")
    if "grid" in done.metrics:
        axes[-1].axhline(done.metrics["grid"]["val_loss"], color="k", ls="--", label="grid's best")
    axes[-1].set(yscale="log", xlabel="meta-step", ylabel="validation loss")
    axes[-1].legend()
    fig.tight_layout()
    return fig
