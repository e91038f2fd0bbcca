"""load_config: YAML/TOML into frozen dataclasses, unknown keys and bad types rejected."""

import dataclasses

import pytest

from mgd.config import config_from_dict, config_to_dict, load_config


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    sizes: tuple[int, ...] = (64, 32)
    kind: str = "sgd"


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 3
    path: str | None = None
    inner: Inner = Inner()


def test_none_is_the_default():
    assert load_config(None, Outer) == Outer()


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_reads_nested_sections(tmp_path, suffix):
    if suffix == ".yaml":
        text = "steps: 5\ninner:\n  lr: 1\n  sizes: [8, 4, 2]\n"
    else:
        text = "steps = 5\n[inner]\nlr = 1\nsizes = [8, 4, 2]\n"
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    cfg = load_config(path, Outer)
    assert cfg == Outer(steps=5, inner=Inner(lr=1.0, sizes=(8, 4, 2)))
    assert isinstance(cfg.inner.lr, float)


def test_empty_yaml_is_all_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load_config(path, Outer) == Outer()


def test_round_trip():
    cfg = Outer(path="a", inner=Inner(sizes=(1,)))
    assert config_from_dict(config_to_dict(cfg), Outer) == cfg


@pytest.mark.parametrize(
    "text, match",
    [
        ("stepz: 3\n", "unknown config key 'stepz'"),
        ("inner:\n  lrr: 3\n", "unknown config key 'inner.lrr'"),
        ("steps: 1.5\n", "'steps' must be int"),
        ("steps: true\n", "'steps' must be int"),
        ("inner:\n  lr: fast\n", "'inner.lr' must be float"),
        ("inner: 3\n", "inner must be a mapping"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("steps: [1\n", "cannot parse config"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_config(path, Outer)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml", Outer)


def test_model_section_is_a_typed_tagged_union(tmp_path):
    from mgd.experiments import TrainConfig
    from mgd.train.models import ResNet9Config, SmallCNNConfig

    path = tmp_path / "c.yaml"
    path.write_text("model: {name: resnet9, preset: metasmooth, pool: max}\n")
    cfg = load_config(path, TrainConfig)
    assert cfg.model == ResNet9Config.metasmooth(pool="max")
    # The tag is written back, so the echo reads into the same config.
    assert config_to_dict(cfg)["model"]["name"] == "resnet9"
    assert config_from_dict(config_to_dict(cfg), TrainConfig) == cfg
    # A dict given in code is read like the file's section.
    assert TrainConfig(model={"name": "small_cnn", "channels": [4]}).model == SmallCNNConfig(
        channels=(4,)
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("model: {name: mlp, hiden: [3]}\n", "'model': model config: unknown field.s. hiden"),
        ("model: {name: vit}\n", "'model': model config: name must be one of"),
        ("model: {name: mlp, activation: sine}\n", "'model': MLPConfig: activation must be"),
        ("model: 3\n", "'model': model config must be a mapping"),
    ],
)
def test_bad_model_sections_give_one_line_errors(tmp_path, text, match):
    from mgd.experiments import TrainConfig

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_config(path, TrainConfig)
    assert "\n" not in str(info.value)


@dataclasses.dataclass(frozen=True)
class Checked:
    lr: float = 0.1

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class WithOptional:
    checked: Checked | None = None


def test_an_optional_section_reports_its_own_error():
    # `X | None` with a mapping that X refuses: X's message, not "must be X | None".
    assert config_from_dict({"checked": {"lr": 2}}, WithOptional) == WithOptional(Checked(2.0))
    with pytest.raises(ValueError, match=r"lr must be > 0, got -1\.0"):
        config_from_dict({"checked": {"lr": -1}}, WithOptional)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"learning_rate": -0.1}, "learning_rate must be > 0 and finite"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0 and finite"),
        ({"learning_rate": float("inf")}, "learning_rate must be > 0 and finite"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ],
)
def test_optimizer_config_refuses_out_of_range_values(fields, match):
    from mgd.experiments._common import OptimizerConfig

    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**fields)
