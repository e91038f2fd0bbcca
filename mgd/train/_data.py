"""Datasets: a validated container and loaders that never download at run time."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np

from mgd.train._idx import read_idx

__all__ = [
    "Dataset",
    "load_digits",
    "load_npz",
    "load_cifar10",
    "load_fashion_mnist",
    "make_synthetic",
]

_SPLITS = ("train", "val", "test")
_NPZ_KEYS = ("x_train", "y_train", "x_target", "y_target", "x_test", "y_test")
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _frozen(a: np.ndarray) -> np.ndarray:
    # A read-only view: the caller's own array stays writable.
    a = np.ascontiguousarray(a).view()
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation (target) / test splits of a supervised problem, as numpy arrays.

    Classification has integer labels, regression float targets; the dtype of ``y_*`` decides
    (all splits alike). Language modelling has integer token ids as inputs, ``(n, L)``, and
    integer next-token sequences as labels, ``(n, L)``, with ``-1`` on padded positions (see
    ``mgd.train.token_windows``); ``num_classes`` is then the output vocabulary. Training
    examples may belong to *groups* (e.g. the windows cut from one document): data weights are
    then one per group, shared by its examples, so selecting a group selects all of it.

    The validation split is the *target*: the data whose loss outer optimizers minimize
    (dataset selection, learning-rate search) or attack (poisoning); ``.npz`` files name it
    ``x_target, y_target``. The test split is held out and used only for reporting.

    Attributes:
      x_train: inputs of the training pool, shape ``(n_train, *input_shape)``: float32
        (normalized), or int32 token ids when given as integers.
      y_train: int32 labels in ``[0, num_classes)``, shape ``(n_train,)``; int32 token
        sequences, shape ``(n_train, L)``, entries in ``[0, num_classes)`` or ``-1`` (padding);
        or float32 regression targets, shape ``(n_train,)`` or ``(n_train, d)``.
      x_val: float32 target inputs, shape ``(n_val, *input_shape)``.
      y_val: the target labels or targets, shape ``(n_val, *target_shape)``.
      x_test: float32 held-out inputs, shape ``(n_test, *input_shape)``.
      y_test: the held-out labels or targets, shape ``(n_test, *target_shape)``.
      num_classes: number of classes, at least 2. ``None`` takes the largest label plus one and
        refuses labels that leave a class between 0 and the largest label empty in every split
        (a stray label would otherwise add classes nobody has; give ``num_classes`` to allow
        it). Always ``None`` for regression targets.
      x_range: ``(low, high)``, the valid range of an input (floats, or arrays broadcastable to
        ``input_shape``, e.g. per channel). Perturbed inputs are clipped to it. ``None`` takes the
        smallest and largest value over all three splits.
      groups: ``None`` (every training example on its own) or int ``(n_train,)``, the group of
        each training example, ids in ``[0, num_groups)``; see ``num_groups`` and
        ``subset_groups``.

    Raises:
      ValueError: when a shape, dtype, label or range is invalid; the message names the field.

    Example:
      >>> data = mgd.make_synthetic(num_train=100)
      >>> data.subset(np.arange(10)).num_train
      10
      >>> x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
      >>> mgd.Dataset(x, x @ np.ones((4, 2)), x, x[:, :2], x, x[:, :2]).target_shape
      (2,)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None = None
    x_range: tuple | None = None
    groups: np.ndarray | None = None

    def __post_init__(self):
        ys = {s: _check_targets(getattr(self, f"y_{s}"), f"y_{s}") for s in _SPLITS}
        _check_same_kind(ys)
        if np.issubdtype(ys["train"].dtype, np.floating):
            if self.num_classes is not None:
                raise ValueError(
                    f"Dataset: num_classes={self.num_classes!r} is for integer class labels, but "
                    "the y arrays hold float regression targets; leave num_classes=None"
                )
        else:
            object.__setattr__(self, "num_classes", _checked_num_classes(self.num_classes, ys))
        input_shape = None
        for split in _SPLITS:
            x = _check_inputs(getattr(self, f"x_{split}"), f"x_{split}")
            y = ys[split]
            if self.num_classes is not None:
                _check_label_range(y, f"y_{split}", self.num_classes)
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"Dataset: x_{split} has {x.shape[0]} examples but y_{split} has {y.shape[0]}; "
                    "give one label per input"
                )
            if input_shape is None:
                input_shape = x.shape[1:]
            elif x.shape[1:] != input_shape:
                raise ValueError(
                    f"Dataset: x_{split} has input shape {x.shape[1:]} but x_train has "
                    f"{input_shape}; all splits need the same input shape"
                )
            object.__setattr__(self, f"x_{split}", _frozen(x))
            object.__setattr__(self, f"y_{split}", _frozen(y))
        if self.x_train.shape[0] == 0:
            raise ValueError(
                "Dataset: x_train is empty; the training pool needs at least one example"
            )
        object.__setattr__(self, "x_range", self._checked_range(input_shape))
        if self.groups is not None:
            groups = np.asarray(self.groups)
            if groups.shape != (self.num_train,) or not np.issubdtype(groups.dtype, np.integer):
                raise ValueError(
                    f"Dataset: groups must be one integer group id per training example, shape "
                    f"({self.num_train},), got {groups.shape} {groups.dtype}"
                )
            if groups.min() < 0:
                raise ValueError(f"Dataset: groups must be >= 0, got {groups.min()}")
            object.__setattr__(self, "groups", _frozen(groups.astype(np.int32)))

    def _checked_range(self, input_shape) -> tuple[np.ndarray, np.ndarray]:
        if self.x_range is None:
            xs = [x for x in (self.x_train, self.x_val, self.x_test) if x.size]
            return (
                _frozen(np.asarray(min(x.min() for x in xs), np.float32)),
                _frozen(np.asarray(max(x.max() for x in xs), np.float32)),
            )
        try:
            low, high = (np.asarray(r, np.float32) for r in self.x_range)
            np.broadcast_shapes(low.shape, high.shape, input_shape)
        except (TypeError, ValueError) as e:
            raise ValueError(
                "Dataset: x_range must be (low, high), floats or arrays broadcastable to the input "
                f"shape {input_shape}"
            ) from e
        if np.any(low >= high):
            raise ValueError("Dataset: x_range needs low < high everywhere")
        return _frozen(low), _frozen(high)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(32, 32, 3)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one label or target: ``()`` for class labels and scalar targets, ``(d,)``."""
        return tuple(self.y_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of examples in the training pool."""
        return int(self.x_train.shape[0])

    @property
    def num_groups(self) -> int:
        """Number of data weights: the largest group id plus one; ``num_train`` without groups."""
        return self.num_train if self.groups is None else int(self.groups.max()) + 1

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(x, y)`` of the split ``name``: ``"train"``, ``"val"`` or ``"test"``."""
        if name not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def subset(self, indices) -> Dataset:
        """Restricts the training pool to ``indices`` (int array into it); other splits are kept.

        Args:
          indices: int array of shape ``(k,)``, entries in ``[0, num_train)``; repeats are allowed.

        Returns:
          A new ``Dataset`` whose training pool is ``x_train[indices], y_train[indices]``.
        """
        idx = _check_indices(indices, self.num_train, "indices")
        groups = None if self.groups is None else self.groups[idx]
        return self.replace(x_train=self.x_train[idx], y_train=self.y_train[idx], groups=groups)

    def subset_groups(self, group_indices) -> Dataset:
        """Restricts the training pool to the examples of the given groups (all of each).

        Without groups an example is its own group, so this is ``subset`` (repeats allowed
        there). Group ids keep
        their numbering (``num_groups`` may shrink to the largest one kept plus one).

        Args:
          group_indices: int array ``(k,)`` of group ids in ``[0, num_groups)``, distinct when
            the data have groups.

        Returns:
          A new ``Dataset`` whose training pool holds the examples of those groups, in pool order.

        Raises:
          ValueError: ids out of range, repeated, or selecting no example.
        """
        idx = _check_indices(group_indices, self.num_groups, "group_indices")
        if self.groups is None:
            return self.subset(idx)
        if np.unique(idx).size != idx.size:
            raise ValueError("group_indices must be distinct; a group is selected once")
        keep = np.flatnonzero(np.isin(self.groups, idx))
        if not keep.size:
            raise ValueError("group_indices select no training example; pick non-empty groups")
        return self.subset(keep)

    def replace(self, **fields) -> Dataset:
        """Returns a copy with ``fields`` replaced, validated again."""
        return dataclasses.replace(self, **fields)


def _check_inputs(x, name: str) -> np.ndarray:
    # Integer inputs are token ids (a model embeds them), kept exact as int32.
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (n, *input_shape), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{name} holds integer token ids outside [0, 2**31); renumber them")
        return x.astype(np.int32, copy=False)
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values; clean or drop those examples")
    return x


def _check_targets(y, name: str) -> np.ndarray:
    # Integer labels become int32, float targets float32 (the dtype of the inputs).
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer):
        if y.ndim not in (1, 2):
            raise ValueError(
                f"{name} must be class labels (n,) or token sequences (n, L), got shape {y.shape}"
            )
        if y.size and y.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{name} has label {y.max()}, beyond int32; number the classes 0..")
        return y.astype(np.int32, copy=False)
    if np.issubdtype(y.dtype, np.floating):
        if y.ndim not in (1, 2):
            raise ValueError(
                f"{name} holds float regression targets, which need shape (n,) or (n, d); "
                f"got shape {y.shape}"
            )
        y = y.astype(np.float32, copy=False)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{name} contains NaN or infinite targets; clean or drop those")
        return y
    raise ValueError(
        f"{name} must hold integer class labels or float regression targets, got dtype {y.dtype}"
    )


def _check_same_kind(ys: dict[str, np.ndarray]) -> None:
    def kind(y):
        if np.issubdtype(y.dtype, np.integer):
            return "integer class labels" if y.ndim == 1 else f"token sequences (n, {y.shape[1]})"
        return "float targets of shape " + ("(n,)" if y.ndim == 1 else f"(n, {y.shape[1]})")

    train = kind(ys["train"])
    for split in _SPLITS[1:]:
        if kind(ys[split]) != train:
            raise ValueError(
                f"Dataset: y_train holds {train} but y_{split} holds {kind(ys[split])}; "
                "all splits need the same kind of labels"
            )


def _checked_num_classes(num_classes, ys: dict[str, np.ndarray]) -> int:
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
            raise TypeError(
                f"Dataset: num_classes must be an int, got {type(num_classes).__name__}"
            )
        if num_classes < 2:
            raise ValueError(f"Dataset: num_classes must be at least 2, got {num_classes}")
        return int(num_classes)
    for split, y in ys.items():
        _check_label_range(y, f"y_{split}", None)
    present = np.unique(np.concatenate([y.reshape(-1) for y in ys.values()]))
    present = present[present >= 0]  # -1 pads token sequences.
    if not present.size:
        raise ValueError("Dataset: no split holds a label; pass num_classes= or some examples")
    top = int(present[-1])
    where = next(s for s in _SPLITS if ys[s].size and ys[s].max() == top)
    if top == 0:
        raise ValueError(
            "Dataset: every label is 0, one class; a classifier needs at least 2: pass "
            "num_classes=2 if that is intended"
        )
    missing = np.setdiff1d(np.arange(top + 1), present)
    if missing.size:
        raise ValueError(
            f"Dataset: y_{where} has labels 0-{top} but class(es) {_ranges(missing)} never occur "
            f"in any split; pass num_classes={top + 1} if that is intended"
        )
    return top + 1


def _ranges(values: np.ndarray, limit: int = 8) -> str:
    # Sorted ints as "1, 4-7, 10-98", at most `limit` runs (a long list helps nobody).
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(values, breaks)]
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f", ... ({values.size} in all)" if len(runs) > limit else "")


def _check_label_range(y: np.ndarray, name: str, num_classes: int | None) -> None:
    # num_classes=None checks only the lower end (the upper one is then inferred).
    if not y.size:
        return
    low = -1 if y.ndim == 2 else 0  # Token sequences mark padding with -1.
    if y.min() < low or (num_classes is not None and y.max() >= num_classes):
        bound = "[0, ...)" if num_classes is None else f"[0, {num_classes})"
        pad = " (or -1 for padding)" if low else ""
        raise ValueError(
            f"{name} has labels in [{y.min()}, {y.max()}] outside {bound}{pad}; "
            "labels must be 0..num_classes-1"
        )


def _check_indices(indices, size: int, name: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {idx.shape} {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise ValueError(f"{name} must lie in [0, {size}), got [{idx.min()}, {idx.max()}]")
    return idx.astype(np.int64)


def _three_way_split(n: int, val_fraction: float, test_fraction: float, seed: int):
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < f < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {f}")
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must be below 1 to leave a training pool")
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


def load_digits(*, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), shipped with the package.

    Pixels are scaled from 0..16 to [0, 1]; inputs have shape ``(8, 8, 1)`` (models that need
    vectors flatten them). The split is a seeded random permutation.

    Args:
      val_fraction: fraction of the images in the validation (target) split.
      test_fraction: fraction in the held-out test split; the rest is the training pool.
      seed: seed of the split.

    Returns:
      A ``Dataset`` with ``x_range = (0, 1)``.
    """
    from sklearn.datasets import load_digits as _sk_digits

    raw = _sk_digits()
    x = (raw.images / 16.0).astype(np.float32)[..., None]
    y = raw.target.astype(np.int32)
    tr, va, te = _three_way_split(len(y), val_fraction, test_fraction, seed)
    return Dataset(x[tr], y[tr], x[va], y[va], x[te], y[te], 10, x_range=(0.0, 1.0))


def load_npz(path: str | os.PathLike, *, num_classes: int | None = None) -> Dataset:
    """A user's ``.npz`` file with ``x_train, y_train, x_target, y_target, x_test, y_test``.

    ``x_target, y_target`` become the validation (target) split. Integer (e.g. ``uint8``) inputs
    are scaled to [0, 1] by their dtype's maximum; float inputs are used as they are. Integer
    ``y`` arrays are class labels, float ones regression targets (see ``Dataset``).

    Args:
      path: the ``.npz`` file.
      num_classes: number of classes; ``None`` takes the largest label plus one and refuses
        labels that leave classes in between empty (e.g. 0-9 and a stray 99), naming them.

    Returns:
      A validated ``Dataset``.

    Raises:
      ValueError: if the file is missing or unreadable, a key is absent, an array is invalid, or
        (with ``num_classes=None``) a class between 0 and the largest label never occurs.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist; pass an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in _NPZ_KEYS if k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"data file {str(path)!r} is not a readable .npz file: {e}") from e
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"data file {str(path)!r} lacks key(s) {', '.join(missing)}; it needs "
            f"{', '.join(_NPZ_KEYS)}"
        )
    for k in ("x_train", "x_target", "x_test"):
        if np.issubdtype(arrays[k].dtype, np.integer):
            arrays[k] = arrays[k] / float(np.iinfo(arrays[k].dtype).max)
    return Dataset(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_target"],
        arrays["y_target"],
        arrays["x_test"],
        arrays["y_test"],
        num_classes,
    )


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(file, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], np.uint8)
        labels = np.asarray(d[b"labels"], np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"CIFAR-10 batch {str(file)!r} is not a python-pickle batch with b'data' and b'labels'"
        ) from e
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"CIFAR-10 batch {str(file)!r} has data of shape {data.shape} and "
            f"{labels.shape[0]} labels; expected (n, 3072) and n"
        )
    # Stored channel-major (3, 32, 32) per row; models take NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(directory: str | os.PathLike | None = None, *, val_size: int = 10_000) -> Dataset:
    """CIFAR-10 from the standard python-pickle batches in a local folder (never downloaded).

    The folder (or its ``cifar-10-batches-py`` subfolder) holds ``data_batch_1`` ...
    ``data_batch_5`` and ``test_batch``, as in ``cifar-10-python.tar.gz``. The last ``val_size``
    training images become the validation (target) split, so the default training pool has
    40,000 images as in the paper's poisoning experiment. Inputs, shape ``(32, 32, 3)``, are
    standardized per channel with the training pool's mean and standard deviation; ``x_range`` is
    the per-channel image of [0, 1].

    Args:
      directory: the folder; ``None`` reads the environment variable ``MGD_CIFAR10_DIR``.
      val_size: number of training images held out as the validation split.

    Returns:
      A ``Dataset`` with 10 classes.

    Raises:
      ValueError: if the folder is not given, or a batch file is missing or malformed.
    """
    if directory is None:
        directory = os.environ.get("MGD_CIFAR10_DIR")
        if not directory:
            raise ValueError(
                "no CIFAR-10 folder: pass directory= or set MGD_CIFAR10_DIR to the folder holding "
                "data_batch_1..data_batch_5 and test_batch"
            )
    root = Path(directory)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    expected = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)
    missing = [name for name in expected if not (root / name).is_file()]
    if missing:
        raise ValueError(
            f"CIFAR-10 folder {str(root)!r} lacks {', '.join(missing)}; it must hold the "
            f"python-pickle batches {', '.join(expected)}"
        )
    parts = [_read_cifar_batch(root / name) for name in _CIFAR_TRAIN_FILES]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(root / _CIFAR_TEST_FILE)
    if not 0 < val_size < len(y):
        raise ValueError(f"val_size must lie in (0, {len(y)}), got {val_size}")
    x_pool = x[:-val_size] / np.float32(255)
    mean = x_pool.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = x_pool.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)

    def norm(a):
        return (a / np.float32(255) - mean) / std

    return Dataset(
        norm(x[:-val_size]),
        y[:-val_size],
        norm(x[-val_size:]),
        y[-val_size:],
        norm(x_test),
        y_test,
        10,
        x_range=(-mean / std, (1 - mean) / std),
    )


def _idx_pair(root: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    # One split's images (n, h, w) and labels (n,), checked against each other.
    files = [_idx_file(root, name) for name in (images, labels)]
    x, y = read_idx(files[0], ndim=3), read_idx(files[1], ndim=1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"IDX file {str(files[1])!r} has {y.shape[0]} labels but {str(files[0])!r} has "
            f"{x.shape[0]} images; the two files must come from the same split"
        )
    if y.size and y.max() > 9:
        raise ValueError(
            f"IDX file {str(files[1])!r} has label {y.max()}; Fashion-MNIST labels are 0..9"
        )
    return x, y


def _idx_file(root: Path, name: str) -> Path:
    # The packaged files are gzip-compressed; a plain (unpacked) copy is read as well.
    gz = root / f"{name}.gz"
    return gz if gz.is_file() else root / name


def load_fashion_mnist(
    directory: str | os.PathLike | None = None, *, val_size: int = 10_000, flatten: bool = False
) -> Dataset:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from its four IDX files (never downloaded).

    The folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzip-compressed (``.gz``,
    as distributed) or plain. Debian's ``apt-get install dataset-fashion-mnist`` puts them in
    ``/usr/share/datasets/fashion-mnist``. The last ``val_size`` of the 60,000 training images
    become the validation (target) split and the rest the training pool (50,000 by default);
    the 10,000 test images are held out. Pixels are scaled from 0..255 to [0, 1] and
    ``x_range`` is ``(0, 1)``.

    Args:
      directory: the folder; ``None`` reads ``$MGD_FASHION_MNIST_DIR``, else the Debian package's
        ``/usr/share/datasets/fashion-mnist``.
      val_size: number of training images held out as the validation split, in
        ``(0, num_images)``.
      flatten: inputs of shape ``(784,)`` (for MLPs) instead of ``(28, 28, 1)`` (for convnets).

    Returns:
      A ``Dataset`` with 10 classes, float32 inputs in [0, 1].

    Raises:
      ValueError: a file is missing (the message names the folder searched and the install
        command), or a file has a wrong magic number, is truncated, or its count disagrees with
        its partner's (the message names the file); or ``val_size`` is out of range.

    Example:
      >>> data = mgd.load_fashion_mnist(flatten=True)  # doctest: +SKIP
      >>> data.num_train, data.input_shape
      (50000, (784,))

    References:
      Xiao, Rasul, Vollgraf. "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
      Learning Algorithms", arXiv:1708.07747, 2017.
    """
    if directory is None:
        directory = os.environ.get("MGD_FASHION_MNIST_DIR") or _FASHION_DEFAULT_DIR
    root = Path(directory)
    missing = [name for name in _FASHION_FILES if not _idx_file(root, name).is_file()]
    if missing:
        raise ValueError(
            f"Fashion-MNIST folder {str(root)!r} lacks {', '.join(missing)} (.gz or plain); "
            "install them with `apt-get install dataset-fashion-mnist`, or point directory= (a "
            "config's data.path) or $MGD_FASHION_MNIST_DIR at the folder holding the four files"
        )
    x, y = _idx_pair(root, *_FASHION_FILES[:2])
    x_test, y_test = _idx_pair(root, *_FASHION_FILES[2:])
    if x_test.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"IDX file {str(_idx_file(root, _FASHION_FILES[2]))!r} has images of shape "
            f"{x_test.shape[1:]} but the training images are {x.shape[1:]}"
        )
    if isinstance(val_size, bool) or not 0 < val_size < len(y):
        raise ValueError(f"val_size must lie in (0, {len(y)}), got {val_size}")
    shape = (-1,) if flatten else (*x.shape[1:], 1)

    def scaled(a):
        return (a / np.float32(255)).astype(np.float32).reshape(a.shape[0], *shape)

    return Dataset(
        scaled(x[:-val_size]),
        y[:-val_size],
        scaled(x[-val_size:]),
        y[-val_size:],
        scaled(x_test),
        y_test,
        10,
        x_range=(0.0, 1.0),
    )


def make_synthetic(
    *,
    num_train: int = 256,
    num_val: int = 64,
    num_test: int = 64,
    input_shape: tuple[int, ...] = (8,),
    num_classes: int = 3,
    noise: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """Gaussian class clusters, made by the code (for tests and examples).

    Each class has a random mean of unit scale per input coordinate; an example is its class mean
    plus Gaussian noise of standard deviation ``noise``.

    Args:
      num_train: size of the training pool.
      num_val: size of the validation (target) split.
      num_test: size of the held-out test split.
      input_shape: shape of one input, e.g. ``(8,)`` or ``(8, 8, 1)``.
      num_classes: number of classes (at least 2).
      noise: standard deviation of the noise around the class means.
      seed: seed of the generator; the same seed gives the same data.

    Returns:
      A ``Dataset``.
    """
    if num_train < 1 or num_val < 0 or num_test < 0:
        raise ValueError("make_synthetic: num_train must be >= 1 and num_val, num_test >= 0")
    if noise < 0:
        raise ValueError(f"make_synthetic: noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, *input_shape))

    def draw(n):
        y = rng.integers(0, num_classes, size=n)
        return (means[y] + noise * rng.normal(size=(n, *input_shape))).astype(np.float32), y

    return Dataset(*draw(num_train), *draw(num_val), *draw(num_test), num_classes)
