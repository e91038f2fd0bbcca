"""Configs: frozen dataclasses read from YAML or TOML files, with unknown keys rejected.

A config class is a frozen dataclass whose fields have defaults; fields may be other config
dataclasses (nested sections), or ``Annotated[T, parse]`` where ``parse`` turns a mapping into a
``T`` (a tagged union such as the model configs, whose class attribute ``config_name`` is written
back as the ``name`` key). ``load_config(None, cls)`` is ``cls()``, the built-in default, so a
command works from a non-editable install without the repository's config files.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["load_config", "config_from_dict", "config_to_dict"]

C = TypeVar("C")


def load_config(path: str | Path | None, cls: type[C]) -> C:
    """Reads a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into the config dataclass ``cls``.

    Keys absent from the file keep the dataclass defaults; nested sections become the nested
    dataclasses; lists become tuples where the field is a tuple.

    Args:
      path: the config file, or ``None`` for the built-in default ``cls()``.
      cls: a frozen dataclass type whose fields all have defaults.

    Returns:
      An instance of ``cls``.

    Raises:
      ValueError: one line naming the problem and the fix: a missing or unparsable file, a
        top level that is not a mapping, an unknown key (named with its dotted path), or a value
        of the wrong type.

    Example:
      >>> from mgd.experiments.select import SelectConfig
      >>> cfg = load_config("my_select.yaml", SelectConfig)  # doctest: +SKIP
    """
    if path is None:
        return cls()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(
            f"cannot read config {path}: {e.strerror or e}; pass an existing file"
        ) from e
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        else:
            raw = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot parse config {path}: {first}") from e
    if raw is None:  # an empty YAML file means "all defaults"
        raw = {}
    return config_from_dict(raw, cls, where=str(path))


def config_from_dict(raw: Any, cls: type[C], *, where: str = "config") -> C:
    """Builds the config dataclass ``cls`` from a plain mapping (as parsed from YAML/TOML).

    Args:
      raw: a mapping of field names to values; nested mappings for nested dataclasses.
      cls: the frozen dataclass type.
      where: names the source in error messages (a file path).

    Returns:
      An instance of ``cls``.

    Raises:
      ValueError: an unknown key or a value of the wrong type, naming its dotted path.
    """
    return _build(raw, cls, where, prefix="")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Converts a config dataclass to plain JSON/YAML-able data (tuples become lists).

    The inverse of :func:`config_from_dict`: ``config_from_dict(config_to_dict(c), type(c)) == c``.
    """
    return _plain(config)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        tag = getattr(type(value), "config_name", None)
        return fields if tag is None else {"name": tag, **fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(raw: Any, cls: type, where: str, prefix: str) -> Any:
    section = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: {section} must be a mapping of keys to values, got {type(raw).__name__}"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ValueError(f"{where}: unknown config key '{prefix}{key}' (known keys: {known})")
        kwargs[key] = _coerce(value, hints[key], where, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; converts lists to tuples, ints to floats."""
    if dataclasses.is_dataclass(tp):
        return _build(value, tp, where, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        _, parse = typing.get_args(tp)[:2]
        try:
            return parse(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: '{key}': {e}") from e
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, key)
            except ValueError as e:
                errors.append(e)
        if len(errors) == 1:  # `X | None`: X's own error says what to fix.
            raise errors[0]
        raise _type_error(value, tp, where, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _type_error(value, tp, where, key)
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ValueError(f"{where}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float:
        # YAML reads "1" as an int and "1e-3" as a string; both mean a float here.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(value, tp, where, key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(value, tp, where, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _type_error(value, tp, where, key)


def _type_error(value: Any, tp: Any, where: str, key: str) -> ValueError:
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return ValueError(f"{where}: '{key}' must be {name}, got {value!r}")
