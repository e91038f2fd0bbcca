"""What every experiment shares: the data, training and replay sections of a config, the one
``setup_from_config``, config files shipped with the package, and the output folder's rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import jax
import numpy as np
import optax

from mgd import distributed
from mgd.config import config_to_dict, load_config
from mgd.engine import Binomial, KAryTree, StoreAll
from mgd.outer import Replay, setup_fingerprint
from mgd.train import (
    Dataset,
    MetaSpec,
    TextData,
    TrainingSetup,
    absolute_error,
    accuracy,
    load_cifar10,
    load_digits,
    load_documents,
    load_fashion_mnist,
    load_fortunes,
    load_npz,
    make_mesh,
    make_optimizer,
    make_synthetic,
    next_token_loss,
    softmax_cross_entropy,
    squared_error,
    text_dataset,
)
from mgd.train.models import MLPConfig, ModelConfig, make_model, model_config

__all__ = [
    "InputError",
    "checking_input",
    "TextConfig",
    "DataConfig",
    "OptimizerConfig",
    "TrainConfig",
    "ReplayConfig",
    "load_data",
    "load_text_data",
    "require_class_labels",
    "setup_from_config",
    "config_path",
    "read_config",
    "prepare_out",
    "check_processes_agree",
    "write_json",
]

C = TypeVar("C")
_NOISE_STREAM = 0x6E6F697365  # "noise": tags the label noise's random stream.


class InputError(ValueError):
    """Bad input found before a run starts: a config, flag, data file or ``--out`` refused.

    The command line reports it in one line with exit status 2; any other error is a failure of
    the run and keeps its traceback.
    """


@contextlib.contextmanager
def checking_input() -> Iterator[None]:
    """Turns a ``ValueError`` raised inside the block into an :class:`InputError`.

    Raises:
      InputError: for any ``ValueError`` of the block (its message kept, the cause chained).
    """
    try:
        yield
    except InputError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A language-model data set of documents (``data.name`` ``fortunes`` or ``documents``).

    The candidate pool mixes documents of all domains; the target is held-out documents of
    ``target_domain``, which the pool holds only ``target_in_pool`` of (see
    :func:`mgd.train.text_dataset`). Every document is a group: one data weight per document.

    Attributes:
      languages: fortunes: the languages read (``en, de, es, it, pl, cs, ru``).
      separator: documents: the line between entries of a file; ``null``: one document per
        file.
      target_domain: the target, a domain or a prefix of domains: ``es`` (Spanish),
        ``en/computers``, ... (a domain is ``<language or folder>/<file name>``).
      context: byte tokens per window (and the transformer's context).
      pool_size: documents in the candidate pool.
      target_in_pool: of those, documents of the target domain.
      num_target: target documents of the validation split (the selection's objective).
      num_test: target documents held out for reporting (bits per byte).
      max_bytes: documents are cut to their first ``max_bytes`` bytes (``null``: whole).
      baseline_budget: ``bytes``: the DSIR and oracle baselines take documents until they hold
        as many bytes as the MGD selection (documents differ in length, and a baseline that
        prefers short documents would otherwise train on less text); ``documents``: as many
        documents as the selection.
    """

    languages: tuple[str, ...] = ("en", "de", "es")
    separator: str | None = "%"
    target_domain: str = "es"
    context: int = 64
    pool_size: int = 2000
    target_in_pool: int = 60
    num_target: int = 200
    num_test: int = 500
    max_bytes: int | None = 256
    baseline_budget: Literal["bytes", "documents"] = "bytes"

    def __post_init__(self):
        if self.context < 1:
            raise ValueError(f"data.text.context must be >= 1, got {self.context}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data an experiment uses (never downloaded).

    Attributes:
      name: ``"digits"`` (scikit-learn's digits, shipped with it, split at random), ``"npz"``
        (``path``: ``x_train, y_train`` the pool, ``x_target, y_target`` the target/validation
        split, ``x_test, y_test`` held out), ``"cifar10"`` (a local copy in ``path`` or
        ``$MGD_CIFAR10_DIR``), ``"fashion_mnist"`` (the IDX files in ``path``, else
        ``$MGD_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist`` where
        ``apt-get install dataset-fashion-mnist`` puts them) or ``"synthetic"`` (Gaussian
        clusters, for timing); text for a language model (see ``text``): ``"fortunes"``
        (Debian's fortune cookies under ``path``, default ``/usr/share/games/fortunes``, from
        ``apt-get install fortunes fortunes-de fortunes-es``) or ``"documents"`` (the folder
        ``path``, read recursively: files of ``%``-separated entries or one document per file).
      path: the ``.npz`` file, the CIFAR-10 folder, the Fashion-MNIST folder or the documents'
        folder.
      val_fraction: digits: fraction of the images in the validation (target) split.
      test_fraction: digits: fraction in the held-out test split.
      split_seed: digits and synthetic: seed of the split.
      val_size: fashion_mnist: the last ``val_size`` training images are the validation
        (target) split, the rest the pool (the 10,000 test images are held out).
      num_train: keep only the first ``num_train`` training examples (``None``: all).
      num_classes: npz: the number of classes (``None``: inferred from the labels).
      label_noise: fraction of the pool whose labels become a random *wrong* label, in [0, 1)
        (an experiment: a selection should avoid them); target and test labels never change.
      noise_seed: seed of the label noise.
      synthetic_shape: synthetic: input shape.
      synthetic_sizes: synthetic: ``(num_train, num_val, num_test)``.
      text: fortunes and documents: the pool, the target domain and the windows.
    """

    name: Literal[
        "digits", "npz", "cifar10", "fashion_mnist", "synthetic", "fortunes", "documents"
    ] = "digits"
    path: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    val_size: int = 10_000
    num_train: int | None = None
    num_classes: int | None = None
    label_noise: float = 0.0
    noise_seed: int = 0
    synthetic_shape: tuple[int, ...] = (32, 32, 3)
    synthetic_sizes: tuple[int, ...] = (400, 100, 100)
    text: TextConfig = TextConfig()

    @property
    def is_text(self) -> bool:
        """Whether the data are documents for a language model."""
        return self.name in ("fortunes", "documents")

    def __post_init__(self):
        if self.name == "documents" and self.path is None:
            raise ValueError("data.name is 'documents' but no folder is given; set data.path")
        if self.name == "npz" and self.path is None:
            raise ValueError(
                "data.name is 'npz' but no file is given; pass --data FILE.npz or set data.path"
            )
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"data.label_noise must be in [0, 1), got {self.label_noise}")
        if self.num_train is not None and self.num_train < 2:
            raise ValueError(f"data.num_train must be >= 2 or null, got {self.num_train}")
        if len(self.synthetic_sizes) != 3:
            raise ValueError(
                "data.synthetic_sizes must be [num_train, num_val, num_test], got "
                f"{list(self.synthetic_sizes)}"
            )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The inner optimizer (``mgd.train.make_optimizer``) and its learning-rate decay.

    Attributes:
      name: ``"sgd"`` or ``"adam"`` (``mgd.train.adam``: optax's Adam, cheaper metagradients).
      learning_rate: the (peak) rate; 1.0 when a learning-rate metaparameter sets the rate.
      momentum: SGD momentum (``None``: none).
      nesterov: Nesterov momentum.
      b1, b2, eps, eps_root: Adam's (``eps_root > 0`` makes Adam metasmooth).
      lr_decay: ``"constant"`` or ``"cosine"`` (decays to 5% of the rate over training).
    """

    name: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.01
    momentum: float | None = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 0.0
    lr_decay: Literal["constant", "cosine"] = "constant"

    def __post_init__(self):
        # `not x > 0` also refuses NaN; a negative rate would train uphill without an error.
        if not self.learning_rate > 0 or self.learning_rate == float("inf"):
            raise ValueError(
                f"optimizer.learning_rate must be > 0 and finite, got {self.learning_rate}"
            )
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"optimizer.momentum must be in [0, 1) or null, got {self.momentum}")

    def build(self, num_steps: int) -> optax.GradientTransformation:
        """The optax optimizer for a run of ``num_steps`` steps."""
        rate: Any = self.learning_rate
        if self.lr_decay == "cosine":
            rate = optax.cosine_decay_schedule(self.learning_rate, num_steps, alpha=0.05)
        if self.name == "sgd":
            fields = {"momentum": self.momentum, "nesterov": self.nesterov}
        else:
            fields = {"b1": self.b1, "b2": self.b2, "eps": self.eps, "eps_root": self.eps_root}
            fields["nesterov"] = self.nesterov
        return make_optimizer({"name": self.name, "learning_rate": rate, **fields})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The inner training run: model, optimizer, batch size, steps, objective.

    Attributes:
      model: an ``MLPConfig``, ``SmallCNNConfig`` or ``ResNet9Config``
        (``mgd.train.models``), or a ``TransformerConfig`` for text; a file writes ``{name: mlp,
        hidden: [128]}`` (``name``: ``mlp``, ``small_cnn``, ``resnet9`` or ``transformer``,
        then that config's fields; ``preset:
        metasmooth`` for ``resnet9``), and a dict given here is read the same way.
      optimizer: the optimizer section.
      batch_size: examples per step.
      num_steps: training steps (the metagradient goes through all of them).
      augment: random crops and flips (images).
      objective: what the outer loop evaluates on the target/validation split:
        ``"val_loss"``, ``"val_margin"`` or ``"val_error"`` (see ``mgd.TrainingSetup``).
      loss: the per-example training loss (``mgd.train``'s function of that name):
        ``"softmax_cross_entropy"`` for integer class labels, ``"squared_error"`` for float
        regression targets (the model then has one output per target dimension),
        ``"next_token_loss"`` for token sequences (a ``transformer`` on text data).
      metric: what ``TrainingSetup.evaluate`` reports next to the loss: ``"accuracy"``,
        ``"absolute_error"`` or ``None`` (accuracy for ``softmax_cross_entropy``, else none).
      mesh: sizes of the device mesh's axes ``("data",)`` or ``("data", "model")`` over every
        process's devices (`mgd.make_mesh`; one size may be -1, the rest), e.g. ``[-1]`` or
        ``[2, 2]``: batches are split over ``data``. ``None``: one device, or, when several
        processes run together (`mgd.distributed.initialize`), ``[-1]``: all devices.
      param_axis: ``"data"`` or ``"model"`` to shard the training state over that mesh axis
        (FSDP; with ``mesh`` ``None``, over all devices on ``data``); ``None`` replicates it.
    """

    model: Annotated[ModelConfig, model_config] = MLPConfig(hidden=(128,))
    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: int = 64
    num_steps: int = 1000
    augment: bool = False
    objective: Literal["val_loss", "val_margin", "val_error"] = "val_loss"
    loss: Literal["softmax_cross_entropy", "squared_error", "next_token_loss"] = (
        "softmax_cross_entropy"
    )
    metric: Literal["accuracy", "absolute_error"] | None = None
    mesh: tuple[int, ...] | None = None
    param_axis: Literal["data", "model"] | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", model_config(self.model))
        if self.mesh is not None and len(self.mesh) not in (1, 2):
            raise ValueError(
                f"train.mesh must list 1 or 2 axis sizes (data, model), got {list(self.mesh)}"
            )
        if self.param_axis is not None and len(self.mesh or (-1,)) <= _MESH_AXES.index(
            self.param_axis
        ):
            raise ValueError(
                f"train.param_axis={self.param_axis!r} is not an axis of train.mesh; give "
                "train.mesh two sizes [data, model] or use param_axis: data"
            )
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.num_steps < 1:
            raise ValueError(f"train.num_steps must be >= 1, got {self.num_steps}")


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """The engine's options for every metagradient (``mgd.Replay``).

    Attributes:
      checkpoint: ``null`` (the engine's default), ``store_all``, ``kary`` (``KAryTree(k)``) or
        ``binomial`` (``Binomial(slots)``).
      k: the tree's arity for ``kary``.
      slots: stored states for ``binomial``.
      store: ``null`` (device), ``device``, ``host`` or ``disk``.
      memory_budget: bytes the reverse sweep may hold on the device (``null``: unbounded).
    """

    checkpoint: Literal["store_all", "kary", "binomial"] | None = None
    k: int = 2
    slots: int = 8
    store: Literal["device", "host", "disk"] | None = None
    memory_budget: int | None = None

    def build(self) -> Replay:
        """The :class:`mgd.Replay` this section describes."""
        policy = {
            None: lambda: None,
            "store_all": StoreAll,
            "kary": lambda: KAryTree(self.k),
            "binomial": lambda: Binomial(self.slots),
        }[self.checkpoint]()
        return Replay(checkpoint=policy, store=self.store, memory_budget=self.memory_budget)


def load_data(
    cfg: DataConfig, *, model: ModelConfig | dict | None = None
) -> tuple[Dataset, np.ndarray]:
    """The dataset a :class:`DataConfig` names, with its label noise.

    Args:
      cfg: the data section.
      model: the model config the data are for (``TrainConfig.model``, or its dict).
        Fashion-MNIST's inputs are flattened to ``(784,)`` for an ``mlp`` and kept as
        ``(28, 28, 1)`` images for convnets; other data sets keep their shape (an MLP flattens
        what it is given).

    Returns:
      ``(data, noisy)``: the ``Dataset`` and a bool ``(num_train,)`` mask of the training
      examples whose labels the noise changed.

    Raises:
      ValueError: a missing or malformed file, or labels the loader refuses.
    """
    if cfg.is_text:
        data = load_text_data(cfg).data
    elif cfg.name == "digits":
        data = load_digits(
            val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed
        )
    elif cfg.name == "cifar10":
        data = load_cifar10(cfg.path)
    elif cfg.name == "fashion_mnist":
        flatten = model is not None and isinstance(model_config(model), MLPConfig)
        data = load_fashion_mnist(cfg.path, val_size=cfg.val_size, flatten=flatten)
    elif cfg.name == "npz":
        try:
            data = load_npz(cfg.path, num_classes=cfg.num_classes)
        except ValueError as e:
            # Some numpy errors (e.g. a file that is not a zip) do not name the file.
            message = str(e).strip().splitlines()[0]
            if cfg.path not in message:
                message = f"cannot read data file {cfg.path!r}: {message}"
            raise ValueError(message) from e
    else:
        n_train, n_val, n_test = cfg.synthetic_sizes
        data = make_synthetic(
            num_train=n_train,
            num_val=n_val,
            num_test=n_test,
            input_shape=tuple(cfg.synthetic_shape),
            num_classes=10,
            seed=cfg.split_seed,
        )
    if cfg.num_train is not None and cfg.num_train < data.num_train:
        data = data.subset(np.arange(cfg.num_train))
    noisy = np.zeros(data.num_train, bool)
    if cfg.label_noise > 0:
        if data.num_classes is None:
            raise ValueError(
                "data.label_noise flips class labels, but the data hold float regression "
                "targets; set data.label_noise to 0"
            )
        # A stream of its own: default_rng(noise_seed) alone is the stream a selection's starting
        # subset and random subsets draw from with the same seed, so seed 0 and noise_seed 0
        # would start the selection on exactly the noisy labels.
        rng = np.random.default_rng([cfg.noise_seed, _NOISE_STREAM])
        noisy[rng.permutation(data.num_train)[: round(cfg.label_noise * data.num_train)]] = True
        # A shift by 1..C-1 classes: always a wrong label, uniformly among the wrong ones.
        shift = rng.integers(1, data.num_classes, size=int(noisy.sum()))
        y = data.y_train.copy()
        y[noisy] = (y[noisy] + shift) % data.num_classes
        data = data.replace(y_train=y)
    return data, noisy


_MESH_AXES = ("data", "model")


def load_text_data(cfg: DataConfig) -> TextData:
    """The language-model data set of a text :class:`DataConfig` (``fortunes``, ``documents``).

    Returns:
      The :class:`mgd.train.TextData`: the ``Dataset`` (one group per pool document) and the
      pool, target and test documents.

    Raises:
      ValueError: missing files (naming the package to install), a target domain without
        documents, or too few documents for the sizes asked.
    """
    t = cfg.text
    if cfg.name == "fortunes":
        docs = load_fortunes(t.languages, root=cfg.path or "/usr/share/games/fortunes")
    else:
        root = Path(cfg.path)
        docs = load_documents({root.name: root}, separator=t.separator, recursive=True)
    return text_dataset(
        docs,
        target_domain=t.target_domain,
        context=t.context,
        pool_size=t.pool_size,
        target_in_pool=t.target_in_pool,
        num_target=t.num_target,
        num_test=t.num_test,
        max_bytes=t.max_bytes,
        seed=cfg.split_seed,
    )


_LOSSES = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "squared_error": squared_error,
    "next_token_loss": next_token_loss,
}
_METRICS = {"accuracy": accuracy, "absolute_error": absolute_error}


def require_class_labels(data: Dataset, command: str) -> None:
    """Refuses regression targets in an experiment whose report is test accuracy, and token
    sequences outside ``select`` (which reports bits per byte for them).

    Raises:
      ValueError: ``data`` holds float regression targets, or text outside ``select`` (named
        with the fix).
    """
    if data.num_classes is not None and data.y_train.ndim == 2 and command != "select":
        raise ValueError(
            f"mgd {command} reports test accuracy, but the data are token sequences (text); "
            "text is supported by mgd select (data.name: fortunes or documents)"
        )
    if data.num_classes is None:
        raise ValueError(
            f"mgd {command} reports the test accuracy of retrained models and needs integer "
            "class labels, but the data hold float regression targets; for regression call the "
            "library from Python with mgd.TrainingSetup(..., loss=mgd.train.squared_error)"
        )


def setup_from_config(
    cfg: TrainConfig, data: Dataset, *, seed: int = 0, meta_spec: MetaSpec | None = None
) -> TrainingSetup:
    """The ``TrainingSetup`` of a :class:`TrainConfig` on ``data``.

    The one place a config becomes a setup: the CLI, the scripts, the notebooks and the tests
    all build theirs here.

    Args:
      cfg: the training section.
      data: the dataset (its number of classes, or for regression targets ``(n,)`` or
        ``(n, d)`` their dimension 1 or ``d``, sizes the model's output).
      seed: initialization and batch order.
      meta_spec: the metaparameters switched on (default none).

    Returns:
      The ``TrainingSetup``.

    Raises:
      ValueError: a setting the model, optimizer, mesh or setup refuses.
    """
    outputs = data.num_classes
    if outputs is None:  # Regression: one output per target dimension.
        outputs = int(np.prod(data.y_train.shape[1:], dtype=int))
    shape = cfg.mesh
    if shape is None and (cfg.param_axis is not None or jax.process_count() > 1):
        shape = (-1,)
    mesh = None if shape is None else make_mesh(dict(zip(_MESH_AXES, shape, strict=False)))
    return TrainingSetup(
        make_model(cfg.model, num_classes=outputs),
        cfg.optimizer.build(cfg.num_steps),
        data,
        batch_size=cfg.batch_size,
        num_steps=cfg.num_steps,
        seed=seed,
        meta_spec=MetaSpec() if meta_spec is None else meta_spec,
        objective=cfg.objective,
        augment=cfg.augment,
        loss=_LOSSES[cfg.loss],
        metric=None if cfg.metric is None else _METRICS[cfg.metric],
        mesh=mesh,
        param_axis=cfg.param_axis,
    )


def config_path(command: str, config: str | os.PathLike | None) -> Path | None:
    """Where a ``--config`` value points: a shipped config's name or a file path.

    ``None`` is the built-in default; a bare name without suffix (``default``, ``digits_noisy``)
    is a config shipped in ``mgd/configs/<command>/``; anything else is a path.

    Raises:
      ValueError: a bare name that is not shipped (the shipped names are listed).
    """
    if config is None:
        return None
    text = str(config)
    if os.sep in text or "/" in text or Path(text).suffix:
        return Path(text)
    shipped = resources.files("mgd") / "configs" / command
    names = sorted(p.name[: -len(".yaml")] for p in shipped.iterdir() if p.name.endswith(".yaml"))
    if text not in names:
        raise ValueError(
            f"no shipped config {text!r} for mgd {command}; pass one of {', '.join(names)} or a "
            "path to a .yaml/.toml file"
        )
    return Path(str(shipped / f"{text}.yaml"))


def read_config(command: str, config: str | os.PathLike | None, cls: type[C]) -> C:
    """A config of type ``cls`` from a shipped name, a file path or ``None`` (the default)."""
    return load_config(config_path(command, config), cls)


def prepare_out(out: Path, command: str, config: Any, *, resume: bool) -> None:
    """Checks the output folder and writes its ``config.yaml`` (before anything else).

    A fresh run needs an empty or new folder. ``resume`` continues a run of the same command and
    config: from its checkpoint, or from the start when it was killed before its first one.
    With several processes every one checks the folder (the same folder, on a file system they
    share) before process 0 alone writes.

    Raises:
      ValueError: the folder is a file, holds something without ``resume``, or holds another
        command's or another config's run.
    """
    import yaml

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory")
    echo = {"command": command, "config": config_to_dict(config)}
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and not resume:
        raise ValueError(
            f"--out {out} is not empty; pass --resume to continue that run or choose a new --out"
        )
    if non_empty:
        try:
            earlier = yaml.safe_load((out / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            earlier = None
        if not isinstance(earlier, dict) or earlier.get("command") != command:
            raise ValueError(f"--out {out} holds no mgd {command} run; choose a new --out")
        if earlier != json.loads(json.dumps(echo)):
            raise ValueError(
                f"--out {out} holds a different run (its config.yaml differs: config, data or "
                "seed); resume with those, or choose a new --out"
            )
        return
    if jax.process_count() > 1:
        # Every process has looked at the folder before process 0 fills it.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("mgd.experiments.prepare_out")
    if not distributed.is_primary():
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(echo, sort_keys=False))
    os.replace(tmp, out / "config.yaml")


def check_processes_agree(command: str, config: Any, setup: TrainingSetup) -> None:
    """Refuses processes of one run started with different configs, data or seeds.

    A no-op in a single process; with several, every process compares its config echo and
    `mgd.outer.setup_fingerprint` with process 0's (`mgd.distributed.check_same`) before any
    other collective, where a difference would hang instead.

    Raises:
      mgd.distributed.DistributedError: on every process, if any differs from process 0.
    """
    if jax.process_count() > 1:
        value = {"command": command, "config": config_to_dict(config)}
        distributed.check_same(value | {"setup": setup_fingerprint(setup)}, "config, data or seed")


def write_json(path: Path, value: Any) -> None:
    """Writes ``value`` as JSON atomically (write, then rename): never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=_plain) + "\n")
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return repr(value)


def new_figure(*size: float) -> Any:
    """A matplotlib figure drawn off-screen, without touching pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig
