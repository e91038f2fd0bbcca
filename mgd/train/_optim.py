"""Optimizers from config dicts (the ``optimizer:`` section of ``mgd/configs/models/``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from mgd.train._adam import adam

__all__ = ["make_optimizer"]

_FIELDS = {
    "sgd": {"learning_rate", "momentum", "nesterov"},
    "adam": {"learning_rate", "b1", "b2", "eps", "eps_root", "nesterov"},
}


def make_optimizer(config: Mapping[str, Any]) -> optax.GradientTransformation:
    """Builds an optax optimizer from a config dict.

    Args:
      config: ``{"name": "sgd", "learning_rate", "momentum", "nesterov"}`` or
        ``{"name": "adam", "learning_rate", "b1", "b2", "eps", "eps_root", "nesterov"}``; absent
        fields take optax's defaults (``learning_rate`` defaults to 1.0, the right value when a
        ``MetaSpec`` learning-rate schedule sets the absolute rate). ``eps_root`` adds a constant
        inside Adam's square root, which the MGD paper found makes Adam metasmooth (its gradient
        through ``sqrt(v)`` stays bounded where ``v`` is near zero).

    Returns:
      The ``optax.GradientTransformation``. Adam without Nesterov momentum is
      `mgd.train.adam`: the same training as ``optax.adam``, bit for bit, with a cheaper
      reverse pass for metagradients.

    Raises:
      ValueError: for an unknown name or field.
    """
    fields = dict(config)
    name = fields.pop("name", None)
    if name not in _FIELDS:
        raise ValueError(f"optimizer config: name must be one of {sorted(_FIELDS)}, got {name!r}")
    unknown = sorted(set(fields) - _FIELDS[name])
    if unknown:
        raise ValueError(
            f"optimizer config: unknown field(s) {', '.join(unknown)} for {name!r}; "
            f"known: {', '.join(sorted(_FIELDS[name]))}"
        )
    fields.setdefault("learning_rate", 1.0)
    if name == "sgd":
        return optax.sgd(**fields)
    if fields.pop("nesterov", False):
        return optax.adam(**fields, nesterov=True)
    return adam(**fields)
