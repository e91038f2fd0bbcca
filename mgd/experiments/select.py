"""The dataset-selection experiment (``mgd select``): config, ``run``, outputs.

``run(config, out)`` selects a fraction of the candidate pool with :func:`mgd.select_data`,
runs the baselines the config lists (small-loss, EL2N; for text, DSIR and the domain-label
oracle), retrains from scratch with fresh seeds
on the selection, on random subsets of the same size, on the baselines' subsets and on the
whole pool (:func:`mgd.evaluate_selection`), and writes ``selection.json``,
``metrics.json``, ``history.json`` and ``objective.png`` into ``out``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np

from mgd import distributed
from mgd.config import config_to_dict
from mgd.experiments._common import (
    DataConfig,
    OptimizerConfig,
    ReplayConfig,
    TrainConfig,
    check_processes_agree,
    checking_input,
    load_data,
    load_text_data,
    new_figure,
    prepare_out,
    require_class_labels,
    setup_from_config,
    write_json,
)
from mgd.outer.selection import (
    BaselineSelection,
    SelectionReport,
    SelectionResult,
    budget_exchange,
    count_descent,
    domain_oracle_selection,
    dsir_selection,
    el2n_selection,
    evaluate_selection,
    retrained_loss,
    select_data,
    small_loss_selection,
)
from mgd.outer.selection._search import check_step_window
from mgd.train import MetaSpec, TextData, TrainingSetup, token_windows
from mgd.train.models import MLPConfig

__all__ = [
    "OuterConfig",
    "EvalConfig",
    "ScoreConfig",
    "SelectConfig",
    "SelectRun",
    "eval_setup",
    "run",
]

BASELINES = ("small_loss", "el2n", "dsir", "domain_oracle")
_TEXT_BASELINES = ("dsir", "domain_oracle")


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    """The selection's update rule (see :mod:`mgd.outer.selection`).

    Attributes:
      method: ``"exchange"`` (fixed budget: swaps the worst-ranked selected candidates for the
        best-ranked unselected ones) or ``"counts"`` (the paper's Algorithm 1).
      meta_steps: number of meta-steps, one metagradient each.
      p: Bernoulli probability of the random mask.
      exchange_fraction: ``exchange`` only, most swaps per meta-step as a fraction of the subset.
      momentum: weight of past metagradients in the ranking, in [0, 1).
      step_size: ``counts`` only, how far a count moves per meta-step.
      reseed: meta-step ``k`` trains with seed ``seed + k`` (new initialization and batch
        order), so momentum averages each candidate's metagradient over several batch orders
        (see :func:`mgd.select_data`); ``false``: one seed throughout.
      step_window: rank candidates by the step-normalized metagradient, each drawn example's
        metagradient divided by its RMS over the examples drawn within this many steps (see
        :func:`mgd.select_data`; for runs that draw each example at most once); ``null``: the
        raw metagradient.
      start: the initial subset: ``random`` (drawn with ``seed``), or ``dsir`` (text only:
        DSIR's selection of as many documents, :func:`mgd.outer.selection.dsir_selection`
        with the experiment's seed, which the meta-steps then refine).
      inner_batches: the training run differentiated: ``pool`` (batches of the whole pool,
        unselected candidates at weight 0) or ``selection`` (``exchange`` only: a run on the
        current selection like the evaluation's, with a share of every batch given to a fresh
        sample of unselected candidates at weight 0; see :func:`mgd.select_data`).
      selection_share: ``selection`` only: the selection's share of every batch, in (0, 1).
      selection_holdout: ``selection`` only: the share of the selection held out of each
        meta-step's run and scored like the unselected candidates, in (0, 1).
      budget: what ``fraction`` is a fraction of: ``documents`` (candidates: the subset keeps
        its size) or ``bytes`` (text and ``exchange`` only: the pool's bytes; the subset keeps
        within that many bytes, filled by rank, and its number of documents may change; a
        random start takes random documents while they fit).
      check_share: text only: the share of the target's validation documents held out of the
        metagradient's objective for a check of every meta-step's proposal (``select_data
        (check=...)``, :func:`mgd.outer.selection.retrained_loss`: models trained with the
        evaluation's recipe on the proposed selection alone, their bits per byte on the held-out
        documents); a proposal is taken only if that is not worse than the current selection's.
        In [0, 1); 0: no check, every update is taken.
      check_seeds: training seeds of each check (seeds ``20000 + 100 * seed + j``, never the
        evaluation's), >= 1.
    """

    method: Literal["exchange", "counts"] = "exchange"
    meta_steps: int = 10
    p: float = 1.0
    exchange_fraction: float = 0.1
    momentum: float = 0.5
    step_size: float = 1.0
    reseed: bool = False
    step_window: int | None = None
    start: Literal["random", "dsir"] = "random"
    inner_batches: Literal["pool", "selection"] = "pool"
    selection_share: float = 0.75
    selection_holdout: float = 0.25
    budget: Literal["documents", "bytes"] = "documents"
    check_share: float = 0.0
    check_seeds: int = 2

    def __post_init__(self):
        if self.meta_steps < 1:
            raise ValueError(f"--meta-steps must be >= 1, got {self.meta_steps}")
        if self.inner_batches == "selection" and self.method != "exchange":
            raise ValueError(
                "outer.inner_batches: selection needs outer.method: exchange (a fixed budget)"
            )
        if self.budget == "bytes" and self.method != "exchange":
            raise ValueError("outer.budget: bytes needs outer.method: exchange (a fixed budget)")
        for name in ("selection_share", "selection_holdout"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"outer.{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.check_share < 1.0:
            raise ValueError(
                f"outer.check_share must be in [0, 1) (0: no check), got {self.check_share}"
            )
        if self.check_seeds < 1:
            raise ValueError(f"outer.check_seeds must be >= 1, got {self.check_seeds}")
        if self.check_share > 0 and self.method != "exchange":
            raise ValueError("outer.check_share needs outer.method: exchange (a fixed budget)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Honest evaluation: models retrained from scratch with seeds selection never used.

    Attributes:
      num_seeds: models trained on the selected subset and on the full pool (one per seed).
      num_random: random subsets of the same size, one model each.
      num_steps: training steps of the evaluation models (``None``: ``train.num_steps``); the
        selected subset, the random subsets and the full pool all get this recipe, its
        learning-rate decay spread over these steps.
      optimizer: the evaluation models' optimizer (``None``: ``train.optimizer``): the recipe a
        user trains the chosen subset with need not be the smooth one the selection
        differentiates.
    """

    num_seeds: int = 3
    num_random: int = 5
    num_steps: int | None = None
    optimizer: OptimizerConfig | None = None

    def __post_init__(self):
        if self.num_seeds < 1:
            raise ValueError(f"eval.num_seeds must be >= 1, got {self.num_seeds}")
        if self.num_random < 1:
            raise ValueError(f"eval.num_random must be >= 1, got {self.num_random}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"eval.num_steps must be >= 1 or null, got {self.num_steps}")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """The brief training of the score-based baselines (``small_loss``, ``el2n``).

    Attributes:
      num_steps: training steps on the whole pool before scoring (``None``: a tenth of
        ``train.num_steps``), with the selection's recipe and seed.
      el2n_runs: EL2N averages the scores of this many runs (seeds ``seed, seed + 1, ...``).
      dsir_buckets: DSIR's hashed n-gram buckets (text data).
    """

    num_steps: int | None = None
    el2n_runs: int = 4
    dsir_buckets: int = 10_000

    def __post_init__(self):
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"scores.num_steps must be >= 1 or null, got {self.num_steps}")
        if self.el2n_runs < 1:
            raise ValueError(f"scores.el2n_runs must be >= 1, got {self.el2n_runs}")


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """Everything ``mgd select`` does; the shipped ``default`` config equals ``SelectConfig()``.

    Attributes:
      fraction: size of the subset as a fraction of the candidate pool, in (0, 1].
      seed: seed of the selection: initialization and batch order while selecting, the initial
        subset and the update rule's masks.
      data, train, outer, replay, eval: the sections.
      baselines: the selections of the same size also evaluated, beside random subsets and
        the full pool: a subset of ``small_loss`` (:func:`mgd.outer.selection.small_loss_selection`)
        and ``el2n`` (:func:`mgd.outer.selection.el2n_selection`) for labelled examples, of
        ``dsir`` (:func:`mgd.outer.selection.dsir_selection`) and ``domain_oracle``
        (:func:`mgd.outer.selection.domain_oracle_selection`) for text; empty: none.
      scores: the baselines' brief training.
    """

    fraction: float = 0.25
    seed: int = 0
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig(
        model=MLPConfig(hidden=(128,)),
        optimizer=OptimizerConfig(name="sgd", learning_rate=0.01, momentum=0.9),
        batch_size=64,
        num_steps=1000,
    )
    outer: OuterConfig = OuterConfig()
    replay: ReplayConfig = ReplayConfig()
    eval: EvalConfig = EvalConfig()
    baselines: tuple[str, ...] = ()
    scores: ScoreConfig = ScoreConfig()

    def __post_init__(self):
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(
                f"baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES)}"
            )
        allowed = _TEXT_BASELINES if self.data.is_text else BASELINES[:2]
        wrong = [b for b in self.baselines if b not in allowed]
        if wrong:
            kind = "text (documents)" if self.data.is_text else "labelled examples"
            raise ValueError(
                f"baselines: {', '.join(wrong)} do not apply to {kind}; choose from "
                f"{', '.join(allowed)}"
            )
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.outer.start == "dsir" and not self.data.is_text:
            raise ValueError(
                "outer.start: dsir needs text data (documents); use outer.start: random"
            )
        if self.outer.start == "dsir" and self.outer.method != "exchange":
            raise ValueError("outer.start: dsir needs outer.method: exchange (a fixed budget)")
        if self.outer.budget == "bytes" and not self.data.is_text:
            raise ValueError(
                "outer.budget: bytes needs text data (documents); use outer.budget: documents"
            )
        if self.outer.check_share > 0 and not self.data.is_text:
            raise ValueError(
                "outer.check_share needs text data (documents); use outer.check_share: 0"
            )
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"--seed must be in [0, 2**31), got {self.seed}")


@dataclasses.dataclass(frozen=True, eq=False)
class SelectRun:
    """What :func:`run` produced.

    Attributes:
      config: the config that ran.
      setup: the selection's training setup.
      result: the selection (:class:`mgd.SelectionResult`).
      report: the evaluation (:class:`mgd.SelectionReport`).
      metrics: the content of ``metrics.json``.
      baselines: the baselines' selections by name (those ``config.baselines`` lists).
    """

    config: SelectConfig
    setup: TrainingSetup
    result: SelectionResult
    report: SelectionReport
    metrics: dict[str, Any]
    baselines: dict[str, BaselineSelection] = dataclasses.field(default_factory=dict)

    def table(self) -> str:
        """The results table printed by ``mgd select``."""
        lines = [self.report.table()]
        if "domain" in self.metrics:
            dm = self.metrics["domain"]
            shares = ", ".join(f"{name} {v:.3f}" for name, v in dm["in_domain_fraction"].items())
            lines.append(f"in-domain ({dm['target_domain']}) share of each selection: {shares}")
        if "label_noise" in self.metrics:
            ln = self.metrics["label_noise"]
            others = "".join(
                f", {c:.3f} of {name}" for name, c in ln.get("baselines_clean_fraction", {}).items()
            )
            lines.append(
                f"clean labels: {ln['selected_clean_fraction']:.3f} of the selection{others}, "
                f"{ln['pool_clean_fraction']:.3f} of the pool"
            )
        t = self.metrics["timing"]
        lines.append(
            f"time: {t['total_s']:.0f} s total, {t['metagradient_s']:.0f} s metagradients, "
            f"{t['retrain_s']:.0f} s retraining; one meta-step = "
            f"{t['meta_step_in_training_runs']:.1f} training runs"
        )
        return "\n".join(lines)


def _optimizer(config: SelectConfig, size: int, text: TextData | None = None):
    o = config.outer
    if o.method == "exchange":
        num_exchange = max(1, round(o.exchange_fraction * size))
        costs = {}
        if o.budget == "bytes":
            costs = {"costs": text.pool.num_bytes, "budget": _byte_budget(config, text)}
        return budget_exchange(
            num_exchange=num_exchange, p=o.p, momentum=o.momentum, seed=config.seed, **costs
        )
    return count_descent(p=o.p, step_size=o.step_size, momentum=o.momentum, seed=config.seed)


def _split_target(config: SelectConfig, text: TextData):
    # The target's validation documents: the first ones form the metagradient's objective,
    # the last check_share of them the held-out check's.
    m = len(text.target)
    held = round(config.outer.check_share * m)
    if not 1 <= held < m:
        raise ValueError(
            f"outer.check_share {config.outer.check_share} of the {m} validation documents "
            f"(data.text.num_target) leaves {held} for the check and {m - held} for the "
            "objective; both need at least one: change check_share or num_target"
        )
    context = config.data.text.context

    def with_target(texts):
        x, y, _ = token_windows(texts, context)
        return text.data.replace(x_val=x, y_val=y)

    return with_target(text.target.texts[: m - held]), with_target(text.target.texts[m - held :])


def _byte_budget(config: SelectConfig, text: TextData) -> int:
    return int(config.fraction * np.sum(text.pool.num_bytes))


def _random_bytes_start(config: SelectConfig, text: TextData) -> np.ndarray:
    # Random documents while they fit the byte budget (the exchange's rule when it fills).
    order = np.random.default_rng(config.seed).permutation(len(text.pool))
    fits = np.cumsum(np.asarray(text.pool.num_bytes)[order]) <= _byte_budget(config, text)
    return np.sort(order[: int(np.argmin(fits)) if not fits.all() else len(order)])


def run(
    config: SelectConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> SelectRun:
    """Runs the selection experiment and writes its outputs.

    Args:
      config: the experiment.
      out: the output folder (new or empty, or the folder of the same run with ``resume``);
        ``None`` writes nothing (no checkpoints either).
      resume: continue the run in ``out`` (from its last meta-step; from the start if it was
        killed before the first).
      progress: show progress bars.

    Returns:
      A :class:`SelectRun`.

    Raises:
      InputError: (a ``ValueError``) bad input, before anything in ``out`` is written:
        unreadable data, a subset smaller than one batch, a model or optimizer setting refused,
        an ``out`` that is not empty without ``resume`` or holds another run.
    """
    started = time.perf_counter()
    with checking_input():
        text = load_text_data(config.data) if config.data.is_text else None
        if text is None:
            data, noisy = load_data(config.data, model=config.train.model)
        else:
            data, noisy = text.data, np.zeros(text.data.num_groups, bool)
            model_context = getattr(config.train.model, "context", None)
            if model_context is not None and model_context < config.data.text.context:
                raise ValueError(
                    f"train.model.context ({model_context}) is shorter than the windows "
                    f"(data.text.context = {config.data.text.context}); make them equal"
                )
        require_class_labels(data, "select")
        check_data = None
        if config.outer.check_share > 0:
            data, check_data = _split_target(config, text)
        setup = setup_from_config(
            config.train, data, seed=config.seed, meta_spec=MetaSpec(data_weights=True)
        )
        n = data.num_groups  # Candidates: examples, or documents of text.
        size = round(config.fraction * n)
        if config.outer.step_window is not None:
            check_step_window(
                setup,
                config.outer.step_window,
                "outer.step_window",
                draws_once=config.outer.inner_batches == "pool",
            )
        start = None
        by_bytes = {"size": size}
        if config.outer.budget == "bytes":
            by_bytes = {"budget_bytes": _byte_budget(config, text)}
            start = _random_bytes_start(config, text)
        if config.outer.start == "dsir":
            start = dsir_selection(
                text.pool.texts,
                text.target.texts,
                **by_bytes,
                num_buckets=config.scores.dsir_buckets,
                seed=config.seed,
            ).indices
        if start is not None:
            size = len(start)  # With a byte budget: the start's documents.
        if size < config.train.batch_size:
            unit = "documents" if text is not None else "candidates"
            raise ValueError(
                f"the subset ({size} of {n} {unit} at --fraction {config.fraction}) is smaller "
                f"than one batch ({config.train.batch_size}); raise --fraction or lower "
                "train.batch_size"
            )
        optimizer = _optimizer(config, size, text)
        echo = config_to_dict(config)
        check_processes_agree("select", config, setup)
        out = None if out is None else Path(out)
        if out is not None:
            prepare_out(out, "select", config, resume=resume)
    # With several processes, all take the same decisions and process 0 writes the outputs.
    writes = out is not None and distributed.is_primary()

    def log(history) -> None:
        write_json(out / "history.json", [h._asdict() for h in history])

    check = None
    if check_data is not None:
        check_seeds = [20_000 + 100 * config.seed + j for j in range(config.outer.check_seeds)]
        check = retrained_loss(
            eval_setup(config, setup).replace(data=check_data),
            seeds=check_seeds,
            metric="bits_per_byte",
        )

    result = select_data(
        setup,
        size=size,
        meta_steps=config.outer.meta_steps,
        optimizer=optimizer,
        fixed_budget=config.outer.method == "exchange",
        seed=config.seed,
        reseed=config.outer.reseed,
        step_window=config.outer.step_window,
        start=start,
        inner_batches=config.outer.inner_batches,
        selection_share=config.outer.selection_share,
        selection_holdout=config.outer.selection_holdout,
        check=check,
        replay=config.replay.build(),
        save_dir=None if out is None else out / "checkpoints",
        resume=resume,
        fingerprint=echo,
        callback=log if writes else None,
        progress=progress,
    )
    selected_at = time.perf_counter()
    baselines = _baselines(config, setup, size, text, result.indices)
    baselines_s = time.perf_counter() - selected_at

    # One training run of the inner model, timed after compilation: the unit of meta-step cost
    # (median of three: the machine may be shared).
    meta = {"data_weights": jax.numpy.asarray(result.weights)}
    jax.block_until_ready(setup.train(meta, seed=config.seed))
    run_seconds = []
    for _ in range(3):
        run_started = time.perf_counter()
        jax.block_until_ready(setup.train(meta, seed=config.seed))
        run_seconds.append(time.perf_counter() - run_started)
    train_run_s = float(np.median(run_seconds))

    eval_started = time.perf_counter()
    seeds = [10_000 + 100 * config.seed + j for j in range(config.eval.num_seeds)]
    report = evaluate_selection(
        eval_setup(config, setup),
        result.indices,
        seeds=seeds,
        num_random=config.eval.num_random,
        random_seed=config.seed + 1,
        baselines={name: b.indices for name, b in baselines.items()},
        metric="accuracy" if text is None else "bits_per_byte",
        progress=progress,
    )
    retrain_s = time.perf_counter() - eval_started
    total_s = time.perf_counter() - started

    step_seconds = [h.seconds for h in result.history]
    # The first meta-step includes compiling the engine's functions; the median is the steady cost.
    meta_step_s = float(np.median(step_seconds))
    metrics = report.to_dict()
    metrics["best_step"] = result.best_step
    metrics["timing"] = {
        "total_s": total_s,
        "selection_s": selected_at - started,
        "baselines_s": baselines_s,
        "metagradient_s": float(sum(step_seconds)),
        "retrain_s": retrain_s,
        "train_run_s": train_run_s,
        "meta_step_s": meta_step_s,
        "meta_step_in_training_runs": meta_step_s / train_run_s,
        "note": "wall times on this machine; a resumed run counts its meta-steps of all parts",
    }
    if noisy.any():
        metrics["label_noise"] = {
            "fraction": config.data.label_noise,
            "pool_clean_fraction": float(1 - noisy.mean()),
            "selected_clean_fraction": float(1 - noisy[result.indices].mean()),
        }
        if baselines:
            metrics["label_noise"]["baselines_clean_fraction"] = {
                name: float(1 - noisy[b.indices].mean()) for name, b in baselines.items()
            }
    if text is not None:
        metrics["domain"] = _domain_metrics(text, result.indices, baselines)
    if check is not None:
        history = result.history
        metrics["check"] = {
            "held_out_documents": round(config.outer.check_share * len(text.target)),
            "seeds": check_seeds,
            "proposals": sum(h.info["check"] is not None for h in history),
            "accepted": sum(h.info["accepted"] and h.info["check"] is not None for h in history),
            "start_bits_per_byte": check(np.asarray(history[0].info["indices"])),
            "final_bits_per_byte": history[-1].info["kept"],
        }
    done = SelectRun(config, setup, result, report, metrics, baselines)
    if writes:
        log(result.history)
        write_json(
            out / "selection.json",
            {
                "indices": result.indices.tolist(),
                "fraction": config.fraction,
                "size": len(result.indices),  # With a byte budget it may differ from the start's.
                "num_candidates": n,
                "baselines": {name: b.indices.tolist() for name, b in baselines.items()},
                "config": echo,
            },
        )
        write_json(out / "metrics.json", metrics)
        _plot(done).savefig(out / "objective.png", dpi=100)
    return done


def eval_setup(config: SelectConfig, setup: TrainingSetup) -> TrainingSetup:
    """The recipe the evaluation models train with: ``config.eval``'s steps and optimizer.

    Args:
      config: the experiment.
      setup: the selection's setup (``config.train`` on the experiment's data).

    Returns:
      ``setup`` itself when ``eval.num_steps`` and ``eval.optimizer`` are ``None``, else
      ``config.train`` rebuilt with them on the same data, seed and metaparameters: the
      optimizer's learning-rate decay spans the evaluation run (``setup.replace(num_steps=...)``
      would keep a cosine decay over the selection's steps and train the rest at its final
      rate).
    """
    e = config.eval
    if e.num_steps is None and e.optimizer is None:
        return setup
    train = dataclasses.replace(
        config.train,
        num_steps=config.train.num_steps if e.num_steps is None else e.num_steps,
        optimizer=config.train.optimizer if e.optimizer is None else e.optimizer,
    )
    return setup_from_config(train, setup.data, seed=setup.seed, meta_spec=setup.meta_spec)


def _domain_metrics(text: TextData, indices: np.ndarray, baselines: dict) -> dict[str, Any]:
    # How much of each selection is of the target domain, and its bytes (the budget is in
    # documents, so selections may differ in bytes).
    inside = text.pool.in_domain(text.target_domain)
    nbytes = text.pool.num_bytes
    chosen = {"selected": indices, **{name: b.indices for name, b in baselines.items()}}
    return {
        "target_domain": text.target_domain,
        "pool_documents": len(text.pool),
        "pool_in_domain": int(inside.sum()),
        "pool_in_domain_fraction": float(inside.mean()),
        "pool_bytes": int(nbytes.sum()),
        "in_domain_fraction": {k: float(inside[v].mean()) for k, v in chosen.items()},
        "in_domain_documents": {k: int(inside[v].sum()) for k, v in chosen.items()},
        "bytes": {k: int(nbytes[v].sum()) for k, v in chosen.items()},
        "documents": {k: len(v) for k, v in chosen.items()},
        "domains_selected": {
            d: int(c)
            for d, c in zip(
                *np.unique(np.asarray(text.pool.domains)[indices], return_counts=True), strict=True
            )
        },
    }


def _baselines(
    config: SelectConfig,
    setup: TrainingSetup,
    size: int,
    text: TextData | None,
    selected: np.ndarray,
) -> dict:
    # The score-based baselines, trained with the selection's recipe and seed (never the
    # evaluation's seeds); the text baselines read the documents, and by default take as many
    # bytes as the MGD selection holds.
    steps = config.scores.num_steps
    budget: dict[str, Any] = {"size": size}
    if text is not None and config.data.text.baseline_budget == "bytes":
        budget = {"budget_bytes": int(text.pool.num_bytes[selected].sum())}
    out = {}
    for name in config.baselines:
        if name == "dsir":
            out[name] = dsir_selection(
                text.pool.texts,
                text.target.texts,
                **budget,
                num_buckets=config.scores.dsir_buckets,
                seed=config.seed,
            )
        elif name == "domain_oracle":
            out[name] = domain_oracle_selection(
                text.pool.in_domain(text.target_domain),
                **budget,
                num_bytes=text.pool.num_bytes,
                seed=config.seed,
            )
        elif name == "small_loss":
            out[name] = small_loss_selection(setup, size, num_steps=steps, seed=config.seed)
        else:
            seeds = [config.seed + j for j in range(config.scores.el2n_runs)]
            out[name] = el2n_selection(setup, size, num_steps=steps, seeds=seeds)
    return out


def _plot(done: SelectRun) -> Any:
    history, best_step, report = done.result.history, done.result.best_step, done.report
    fig = new_figure(10, 4)
    left, right = fig.subplots(1, 2)
    left.plot([h.step for h in history], [h.objective for h in history], marker="o")
    left.axvline(best_step, color="grey", linestyle=":", label=f"selected (step {best_step})")
    left.set(xlabel="meta-step", ylabel="target loss", title="Target loss per meta-step")
    left.legend()
    entries = [report.selected, report.random, *report.baselines, report.full]
    labels = ["selected", "random\n(same size)", *(b.name for b in report.baselines), "full pool"]
    means = [e.mean for e in entries]
    stds = [e.std for e in entries]
    right.bar(
        labels,
        means,
        yerr=stds,
        capsize=4,
        color=["tab:green", "tab:grey", *["tab:orange"] * len(report.baselines), "tab:blue"],
    )
    low = min(m - s for m, s in zip(means, stds, strict=True))
    metric = report.selected.metric
    if metric == "accuracy":
        right.set_ylim(max(0.0, low - 0.05), 1.0)
    else:  # Bits per byte: lower is better, no natural upper end.
        high = max(m + s for m, s in zip(means, stds, strict=True))
        right.set_ylim(low - 0.1 * (high - low) - 1e-3, high + 0.1 * (high - low) + 1e-3)
    ylabel = (
        "test " + metric.replace("_", " ") + (" (lower is better)" if metric != "accuracy" else "")
    )
    right.set(ylabel=ylabel, title="Retrained from scratch, fresh seeds")
    fig.tight_layout()
    return fig
