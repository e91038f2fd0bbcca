"""Datasets: the embedded digits, user .npz files, CIFAR-10 batches, synthetic data, bad inputs."""

import pickle

import numpy as np
import pytest

import mgd


def _arrays(n=20, shape=(4,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def _npz(tmp_path, **overrides):
    (xt, yt), (xv, yv), (xs, ys) = _arrays(20), _arrays(8, seed=1), _arrays(8, seed=2)
    arrays = dict(x_train=xt, y_train=yt, x_target=xv, y_target=yv, x_test=xs, y_test=ys)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_load_digits():
    data = mgd.load_digits()
    assert data.input_shape == (8, 8, 1) and data.num_classes == 10
    assert data.num_train + len(data.y_val) + len(data.y_test) == 1797
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    np.testing.assert_array_equal(mgd.load_digits().x_train, data.x_train)  # Seeded split.


def test_load_npz_round_trip(tmp_path):
    data = mgd.load_npz(_npz(tmp_path))
    assert data.num_train == 20 and data.x_val.shape == (8, 4) and data.num_classes == 3
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)
    scaled = mgd.load_npz(_npz(tmp_path, x_train=images, x_target=images[:8], x_test=images[:8]))
    np.testing.assert_allclose(scaled.x_train, images / 255, rtol=1e-6)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(y_test=None), "lacks key.*y_test"),
        (dict(y_train=np.arange(20) * 0.5), "integer class labels"),
        (dict(y_train=-np.ones(20, int)), "labels"),
        (dict(y_train=np.zeros(19, int)), "one label per input"),
        (dict(x_target=np.zeros((8, 5), np.float32)), "same input shape"),
        (dict(x_train=np.full((20, 4), np.nan, np.float32)), "NaN"),
        (dict(x_train=np.zeros(20, np.float32)), "shape"),
        (dict(y_target=np.zeros((8, 1), int)), "y_val holds token sequences"),
        (dict(y_target=np.zeros((8, 1, 1), int)), "class labels \\(n,\\) or token sequences"),
    ],
)
def test_load_npz_rejects_bad_files(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        mgd.load_npz(_npz(tmp_path, **overrides))


def test_load_npz_missing_and_unreadable(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        mgd.load_npz(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="readable"):
        mgd.load_npz(bad)


def _write_cifar(folder, n=6, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_load_cifar10_from_written_batches(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    data = mgd.load_cifar10(tmp_path, val_size=6)
    assert data.input_shape == (32, 32, 3) and data.num_train == 24 and len(data.y_val) == 6
    assert len(data.y_test) == 6 and data.num_classes == 10
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    low, high = data.x_range
    assert np.all(data.x_train >= low - 1e-5) and np.all(data.x_train <= high + 1e-5)
    # The channel-major rows become NHWC images.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)[b"data"][0]
    pixel = raw.reshape(3, 32, 32)[:, 1, 2] / 255
    np.testing.assert_allclose((data.x_train[0, 1, 2] - low) / (high - low), pixel, atol=1e-5)
    monkeypatch.setenv("MGD_CIFAR10_DIR", str(tmp_path))
    assert mgd.load_cifar10(val_size=6).num_train == 24


def test_load_cifar10_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MGD_CIFAR10_DIR", raising=False)
    with pytest.raises(ValueError, match="MGD_CIFAR10_DIR"):
        mgd.load_cifar10()
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(ValueError, match="lacks test_batch"):
        mgd.load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="python-pickle batch"):
        mgd.load_cifar10(tmp_path, val_size=6)


def test_make_synthetic_and_subset():
    data = mgd.make_synthetic(num_train=50, input_shape=(3, 3, 2), num_classes=4, seed=1)
    assert data.input_shape == (3, 3, 2) and data.num_classes == 4
    np.testing.assert_array_equal(
        mgd.make_synthetic(num_train=50, seed=3).x_train,
        mgd.make_synthetic(num_train=50, seed=3).x_train,
    )
    sub = data.subset([3, 3, 7])
    np.testing.assert_array_equal(sub.x_train, data.x_train[[3, 3, 7]])
    assert np.shares_memory(sub.x_val, data.x_val)  # Other splits are not copied.
    with pytest.raises(ValueError, match="indices"):
        data.subset([50])
    with pytest.raises(ValueError, match="split"):
        data.split("dev")


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(num_classes=1), ValueError, "num_classes"),
        (dict(num_classes=2.0), TypeError, "num_classes"),
        (dict(x_train=np.zeros((0, 4), np.float32), y_train=np.zeros(0, int)), ValueError, "empty"),
        (dict(x_range=(1.0, 0.0)), ValueError, "low < high"),
        (dict(x_range=(np.zeros(3), 1.0)), ValueError, "broadcastable"),
        (dict(x_train=np.array([["a"] * 4] * 20)), ValueError, "numbers"),
    ],
)
def test_dataset_rejects_bad_fields(changes, error, match):
    data = mgd.make_synthetic(num_train=20, input_shape=(4,))
    with pytest.raises(error, match=match):
        data.replace(**changes)


def test_dataset_arrays_are_read_only_views():
    x, y = _arrays(20)
    data = mgd.Dataset(x, y, x, y, x, y, 3)
    with pytest.raises(ValueError):
        data.x_train[0, 0] = 1.0
    x[0, 0] = 1.0  # The caller's array stays writable.


def test_load_npz_refuses_labels_that_leave_classes_empty(tmp_path):
    y = np.arange(20) % 10
    stray = y.copy()
    stray[5] = 99
    path = _npz(tmp_path, y_train=stray, y_target=y[:8], y_test=y[:8])
    with pytest.raises(ValueError, match=r"y_train has labels 0-99 but class\(es\) 10-98 never"):
        mgd.load_npz(path)
    with pytest.raises(ValueError, match="num_classes=100"):
        mgd.load_npz(path)
    data = mgd.load_npz(path, num_classes=100)
    assert data.num_classes == 100 and data.y_train[5] == 99
    # A class missing in the middle is named too, wherever the largest label is.
    train, test = np.array([0, 1, 2, 4] * 5), np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 0])
    x = np.zeros((20, 4), np.float32)
    with pytest.raises(ValueError, match=r"y_test has labels 0-9 but class\(es\) 3 never"):
        mgd.Dataset(x, train, x[:8], train[:8], x[:10], test)
    # Labels present in some split only are fine: the classes are counted over all splits.
    only_test = mgd.load_npz(
        _npz(tmp_path, y_train=np.arange(20) % 2, y_target=np.zeros(8, int), y_test=np.arange(8))
    )
    assert only_test.num_classes == 8
    # Subsets keep the number of classes, even when they miss classes.
    assert only_test.subset([0]).num_classes == 8


def test_regression_targets():
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    for y in (x @ np.ones(4), x @ np.ones((4, 3))):
        data = mgd.Dataset(x, y, x[:8], y[:8], x[:5], y[:5])
        assert data.num_classes is None and data.target_shape == y.shape[1:]
        assert data.y_train.dtype == np.float32
        np.testing.assert_allclose(data.y_val, y[:8], rtol=1e-6)
        assert data.subset([1, 2]).target_shape == y.shape[1:]
    assert mgd.make_synthetic().target_shape == ()


@pytest.mark.parametrize(
    "ys, kw, match",
    [
        ((np.zeros(20), np.zeros(8, int), np.zeros(5)), {}, "y_val holds integer class labels"),
        ((np.zeros(20), np.zeros((8, 2)), np.zeros(5)), {}, r"shape \(n, 2\)"),
        (
            (np.zeros((20, 2, 2)), np.zeros((8, 2, 2)), np.zeros((5, 2, 2))),
            {},
            r"\(n,\) or \(n, d\)",
        ),
        ((np.full(20, np.nan), np.zeros(8), np.zeros(5)), {}, "NaN"),
        ((np.zeros(20), np.zeros(8), np.zeros(5)), dict(num_classes=3), "leave num_classes=None"),
        ((np.zeros(20, int), np.zeros(8, int), np.zeros(5, int)), {}, "num_classes=2"),
        ((np.zeros(20, bool), np.zeros(8, bool), np.zeros(5, bool)), {}, "dtype bool"),
    ],
)
def test_dataset_rejects_bad_targets(ys, kw, match):
    x = np.zeros((20, 4), np.float32)
    with pytest.raises(ValueError, match=match):
        mgd.Dataset(x, ys[0], x[:8], ys[1], x[:5], ys[2], **kw)
