"""`mgd select | lr | poison` input handling: bad input exits 2 with one line on stderr, --out
is protected, shipped configs are found by name from any working directory."""

import dataclasses
from importlib import resources

import numpy as np
import pytest
import yaml

from mgd.cli import main
from mgd.config import config_to_dict, load_config
from mgd.experiments import read_config
from mgd.experiments.lr import LRConfig
from mgd.experiments.poison import PoisonConfig
from mgd.experiments.select import SelectConfig

_CLASSES = {"select": SelectConfig, "lr": LRConfig, "poison": PoisonConfig}


@pytest.mark.parametrize(
    "command, name", [("select", "default"), ("lr", "default"), ("poison", "digits")]
)
def test_shipped_default_equals_builtin_default(command, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Found inside the package, not relative to the cwd.
    assert read_config(command, name, _CLASSES[command]) == _CLASSES[command]()


@pytest.mark.parametrize(
    "command, path",
    [
        (command, path.name)
        for command in _CLASSES
        for path in (resources.files("mgd") / "configs" / command).iterdir()
        if path.name.endswith(".yaml")
    ],
)
def test_every_shipped_config_loads(command, path):
    by_name = read_config(command, path.removesuffix(".yaml"), _CLASSES[command])
    by_path = load_config(
        str(resources.files("mgd") / "configs" / command / path), _CLASSES[command]
    )
    assert by_name == by_path


def test_unknown_config_name(capsys):
    code, err = _run(capsys, ["lr", "--config", "nosuch"])
    _assert_one_line_error(code, err, "no shipped config 'nosuch' for mgd lr; pass one of default")


_SIZES = {"y_train": 200, "y_target": 40, "y_test": 40}


def _npz(tmp_path, **changes):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((200, 8), dtype=np.float32),
        "y_train": rng.integers(0, 3, 200),
        "x_target": rng.random((40, 8), dtype=np.float32),
        "y_target": rng.integers(0, 3, 40),
        "x_test": rng.random((40, 8), dtype=np.float32),
        "y_test": rng.integers(0, 3, 40),
    }
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def _assert_one_line_error(code, err, match):
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert match in err, err


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"y_target": None}, "lacks key(s) y_target"),
        ({"y_train": np.zeros(199, np.int64)}, "x_train has 200 examples but y_train has 199"),
        ({"y_train": np.full(200, 0.5)}, "integer class labels"),
        ({"y_test": np.full(40, -1)}, "y_test"),
        ({"x_train": np.full((200, 8), np.nan, np.float32)}, "NaN"),
    ],
)
def test_bad_data(tmp_path, capsys, changes, match):
    out = tmp_path / "out"
    code, err = _run(capsys, ["select", "--data", _npz(tmp_path, **changes), "--out", str(out)])
    _assert_one_line_error(code, err, match)
    assert not out.exists()


@pytest.mark.parametrize("train", ["", "train: {loss: squared_error}\n"])
def test_regression_targets_are_refused_by_select(tmp_path, capsys, train):
    # mgd select reports test accuracy: float targets are refused up front, with the fix named.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(train)
    floats = {k: np.linspace(0, 1, n, dtype=np.float32) for k, n in _SIZES.items()}
    out = tmp_path / "out"
    argv = ["select", "--config", str(cfg), "--data", _npz(tmp_path, **floats), "--out", str(out)]
    code, err = _run(capsys, argv)
    _assert_one_line_error(code, err, "loss=mgd.train.squared_error")
    assert "float regression targets" in err
    assert not out.exists()


def test_missing_and_unreadable_data(tmp_path, capsys):
    code, err = _run(capsys, ["select", "--data", str(tmp_path / "no.npz"), "--out", "x"])
    _assert_one_line_error(code, err, "does not exist")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    code, err = _run(capsys, ["select", "--data", str(bad), "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, err, "bad.npz")


@pytest.mark.parametrize("fraction", ["0", "-0.5", "1.5", "nan"])
def test_fraction_out_of_range(tmp_path, capsys, fraction):
    code, err = _run(capsys, ["select", "--fraction", fraction, "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, err, "--fraction must be in (0, 1]")


def test_subset_smaller_than_a_batch(tmp_path, capsys):
    argv = ["select", "--data", _npz(tmp_path), "--fraction", "0.1", "--out", str(tmp_path / "o")]
    code, err = _run(capsys, argv)
    _assert_one_line_error(code, err, "smaller than one batch (64)")


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("outer:\n  meta_stepz: 3\n")
    code, err = _run(capsys, ["select", "--config", str(cfg), "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, err, "unknown config key 'outer.meta_stepz'")


def test_bad_flag_is_one_line(capsys):
    code, err = _run(capsys, ["select", "--meta-steps", "three"])
    _assert_one_line_error(code, err, "invalid int value")


def test_non_empty_out_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "selection.json").write_text("precious")
    code, err = _run(capsys, ["select", "--out", str(out)])
    _assert_one_line_error(code, err, "is not empty; pass --resume")
    code, err = _run(capsys, ["select", "--out", str(out), "--resume"])
    _assert_one_line_error(code, err, "holds no mgd select run")
    assert (out / "selection.json").read_text() == "precious"
    assert [p.name for p in out.iterdir()] == ["selection.json"]


def test_yaml_echo_round_trips(tmp_path):
    cfg = dataclasses.replace(SelectConfig(), fraction=0.5)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(path, SelectConfig) == cfg


@pytest.mark.parametrize("command", ["lr", "poison"])
def test_other_commands_protect_out_too(tmp_path, capsys, command):
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.json").write_text("precious")
    code, err = _run(capsys, [command, "--out", str(out), "--meta-steps", "1"])
    _assert_one_line_error(code, err, "is not empty; pass --resume")
    assert (out / "metrics.json").read_text() == "precious"


def test_poison_flags_are_checked(tmp_path, capsys):
    code, err = _run(capsys, ["poison", "--fraction", "1.5", "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, err, "poisoned fraction must lie in (0, 1)")
    assert not (tmp_path / "o").exists()


def test_an_error_inside_the_run_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    # Input checks passed, the run started: a ValueError from inside it keeps its traceback
    # (exit status 1 from the console script) instead of passing for a usage error.
    import mgd.experiments.select

    def fails(*args, **kwargs):
        raise ValueError("boom inside the run")

    monkeypatch.setattr(mgd.experiments.select, "select_data", fails)
    with pytest.raises(ValueError, match="boom inside the run"):
        main(["select", "--meta-steps", "1", "--out", str(tmp_path / "o"), "--quiet"])
