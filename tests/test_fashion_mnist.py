"""`mgd.load_fashion_mnist` on tiny IDX files written here (neither the package nor the data set
is needed): the format, the splits, the scaling, the shapes and every error's one line."""

import dataclasses
import gzip
import json
import struct

import numpy as np
import pytest

import mgd
from mgd.cli import main
from mgd.experiments import DataConfig, OptimizerConfig, TrainConfig, load_data, select
from mgd.experiments.select import EvalConfig, OuterConfig, ScoreConfig, SelectConfig
from mgd.train._idx import read_idx

_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _idx_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a, np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes()


def _arrays(n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def _write(folder, arrays, *, gz=True, raw=None):
    folder.mkdir(parents=True, exist_ok=True)
    raw = raw or {}
    for key, name in _NAMES.items():
        content = raw.get(key, _idx_bytes(arrays[key]) if key in arrays else None)
        if content is None:
            continue
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_splits_scaling_and_shapes(tmp_path, gz):
    a = _arrays()
    folder = _write(tmp_path / "fm", a, gz=gz)
    data = mgd.load_fashion_mnist(folder, val_size=4)
    # The last val_size training images are the target split, the rest the pool, t10k the test.
    np.testing.assert_array_equal(data.x_train[..., 0], a["train_x"][:8] / np.float32(255))
    np.testing.assert_array_equal(data.x_val[..., 0], a["train_x"][8:] / np.float32(255))
    np.testing.assert_array_equal(data.x_test[..., 0], a["test_x"] / np.float32(255))
    np.testing.assert_array_equal(data.y_train, a["train_y"][:8])
    np.testing.assert_array_equal(data.y_val, a["train_y"][8:])
    np.testing.assert_array_equal(data.y_test, a["test_y"])
    assert data.input_shape == (28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert data.num_classes == 10
    np.testing.assert_array_equal(data.x_range[0], 0.0)
    np.testing.assert_array_equal(data.x_range[1], 1.0)
    flat = mgd.load_fashion_mnist(folder, val_size=4, flatten=True)
    assert flat.input_shape == (784,)
    np.testing.assert_array_equal(flat.x_train, data.x_train.reshape(8, 784))


def test_directory_from_environment(tmp_path, monkeypatch):
    a = _arrays()
    folder = _write(tmp_path / "env", a)
    monkeypatch.setenv("MGD_FASHION_MNIST_DIR", str(folder))
    data = mgd.load_fashion_mnist(val_size=2)
    np.testing.assert_array_equal(data.y_val, a["train_y"][-2:])


def test_default_directory_is_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.delenv("MGD_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(mgd.train._data, "_FASHION_DEFAULT_DIR", str(tmp_path / "none"))
    with pytest.raises(ValueError, match="apt-get install") as e:
        mgd.load_fashion_mnist()
    assert str(tmp_path / "none") in str(e.value)


def _one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_files_name_folder_and_install_command(tmp_path):
    a = _arrays()
    del a["test_y"]
    folder = _write(tmp_path / "fm", a)
    with pytest.raises(ValueError) as e:
        mgd.load_fashion_mnist(folder)
    message = _one_line(e)
    assert str(folder) in message
    assert "t10k-labels-idx1-ubyte" in message and "train-images" not in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_wrong_magic_number_names_the_file(tmp_path):
    a = _arrays()
    bad = bytearray(_idx_bytes(a["train_y"]))
    bad[3] = 3  # Says three dimensions: an image file where labels belong.
    folder = _write(tmp_path / "fm", a, raw={"train_y": bytes(bad)})
    with pytest.raises(ValueError, match="magic number") as e:
        mgd.load_fashion_mnist(folder, val_size=2)
    assert "train-labels-idx1-ubyte.gz" in _one_line(e)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_names_the_file(tmp_path, gz):
    a = _arrays()
    folder = _write(tmp_path / "fm", a, gz=gz, raw={"test_x": _idx_bytes(a["test_x"])[:-7]})
    with pytest.raises(ValueError, match="truncated") as e:
        mgd.load_fashion_mnist(folder, val_size=2)
    assert "t10k-images-idx3-ubyte" in _one_line(e)


def test_truncated_header_and_corrupt_gzip(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="header"):
        read_idx(path, ndim=3)
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros(5)))[:-9])
    with pytest.raises(ValueError, match=str(path)):
        read_idx(path, ndim=1)


def test_mismatched_counts_name_the_file(tmp_path):
    a = _arrays()
    a["train_y"] = a["train_y"][:-1]
    folder = _write(tmp_path / "fm", a)
    with pytest.raises(ValueError, match="11 labels but") as e:
        mgd.load_fashion_mnist(folder, val_size=2)
    assert "train-labels-idx1-ubyte.gz" in _one_line(e)


def test_bad_labels_and_val_size(tmp_path):
    a = _arrays()
    folder = _write(tmp_path / "fm", a)
    for val_size in (0, 12, -1):
        with pytest.raises(ValueError, match=r"val_size must lie in \(0, 12\)"):
            mgd.load_fashion_mnist(folder, val_size=val_size)
    a["test_y"][0] = 10
    folder = _write(tmp_path / "bad", a)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*label 10"):
        mgd.load_fashion_mnist(folder, val_size=2)


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "p").write_bytes(_idx_bytes(a))
    (tmp_path / "g").write_bytes(gzip.compress(_idx_bytes(a)))
    for name in ("p", "g"):
        np.testing.assert_array_equal(read_idx(tmp_path / name, ndim=3), a)
    with pytest.raises(ValueError, match="longer than its header"):
        (tmp_path / "long").write_bytes(_idx_bytes(a) + b"\0")
        read_idx(tmp_path / "long", ndim=3)


def test_data_config_names_fashion_mnist_with_the_model_s_input_shape(tmp_path):
    a = _arrays(n_train=30)
    folder = _write(tmp_path / "fm", a)
    cfg = DataConfig(name="fashion_mnist", path=str(folder), val_size=6, num_train=20)
    flat, _ = load_data(cfg, model={"name": "mlp", "hidden": [8]})
    image, _ = load_data(cfg, model={"name": "small_cnn"})
    assert flat.input_shape == (784,) and image.input_shape == (28, 28, 1)
    assert flat.num_train == image.num_train == 20
    np.testing.assert_array_equal(flat.x_val, image.x_val.reshape(6, 784))
    np.testing.assert_array_equal(image.y_val, a["train_y"][-6:])
    noisy_cfg = dataclasses.replace(cfg, label_noise=0.5)
    noisy, flipped = load_data(noisy_cfg, model={"name": "mlp"})
    assert flipped.sum() == 10
    assert np.all((noisy.y_train != a["train_y"][:20]) == flipped)


def test_select_experiment_reports_the_baselines(tmp_path):
    # Separable classes (a bright square per class), so brief training ranks noisy labels last.
    rng = np.random.default_rng(3)

    def images(labels):
        x = rng.integers(0, 60, (len(labels), 28, 28))
        for i, c in enumerate(labels):
            x[i, 2 * c : 2 * c + 6, 2 * c : 2 * c + 6] = 255
        return x.astype(np.uint8)

    y = rng.integers(0, 10, 260).astype(np.uint8)
    y_test = rng.integers(0, 10, 60).astype(np.uint8)
    folder = _write(
        tmp_path / "fm",
        {"train_x": images(y), "train_y": y, "test_x": images(y_test), "test_y": y_test},
    )
    config = SelectConfig(
        fraction=0.5,
        data=DataConfig(name="fashion_mnist", path=str(folder), val_size=60, label_noise=0.3),
        train=TrainConfig(
            model={"name": "mlp", "hidden": [16]},
            optimizer=OptimizerConfig(learning_rate=0.05),
            batch_size=20,
            num_steps=60,
        ),
        outer=OuterConfig(meta_steps=1),
        eval=EvalConfig(num_seeds=1, num_random=1),
        baselines=("small_loss", "el2n"),
        scores=ScoreConfig(num_steps=30, el2n_runs=2),
    )
    out = tmp_path / "run"
    done = select.run(config, out, progress=False)
    _, flipped = load_data(config.data)
    metrics = json.loads((out / "metrics.json").read_text())
    selection = json.loads((out / "selection.json").read_text())
    assert done.setup.data.input_shape == (784,)
    for name in ("small_loss", "el2n"):
        kept = done.baselines[name].indices
        assert selection["baselines"][name] == kept.tolist() and len(kept) == 100
        assert len(metrics["baselines"][name]["accuracies"]) == 1
        clean = metrics["label_noise"]["baselines_clean_fraction"][name]
        assert clean == pytest.approx(1 - flipped[kept].mean())
        assert clean > 0.9  # 70% of the pool is clean; the scores find most of it
        assert name in done.table()
    with pytest.raises(ValueError, match="baselines: unknown forgetting; choose from"):
        SelectConfig(baselines=("forgetting",))


@pytest.mark.parametrize(
    "command, config",
    [
        ("select", "fashion_mnist_noisy"),
        ("select", "fashion_mnist_noisy_user_eval"),
        ("lr", "fashion_mnist"),
        ("poison", "fashion_mnist"),
    ],
)
def test_shipped_configs_without_the_files_exit_2_naming_the_install(
    tmp_path, monkeypatch, capsys, command, config
):
    monkeypatch.setenv("MGD_FASHION_MNIST_DIR", str(tmp_path / "none"))
    out = tmp_path / "run"
    assert main([command, "--config", config, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "apt-get install dataset-fashion-mnist" in err
    assert str(tmp_path / "none") in err and not out.exists()
