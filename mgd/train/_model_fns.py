"""One functional interface over flax linen, flax NNX and plain ``(init, apply)`` models."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import nnx

__all__ = ["ModelFns", "model_fns"]


class ModelFns(NamedTuple):
    """Pure functions of a model.

    Attributes:
      init: ``init(key, x) -> (params, model_state)``; ``x`` is a batch of example inputs.
      apply: ``apply(params, model_state, x, train) -> (logits, new_model_state)``; ``train`` is a
        Python bool (batch statistics and their update when ``True``).
    """

    init: Callable[[jax.Array, jax.Array], tuple[Any, Any]]
    apply: Callable[[Any, Any, jax.Array, bool], tuple[jax.Array, Any]]


def _takes_train(fn: Callable) -> bool:
    try:
        return "train" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _linen_fns(module: nn.Module) -> ModelFns:
    takes_train = _takes_train(module.__call__)

    def kwargs(train):
        return {"train": train} if takes_train else {}

    def init(key, x):
        variables = dict(module.init(key, x, **kwargs(False)))
        params = variables.pop("params", {})
        return params, variables

    def apply(params, model_state, x, train):
        variables = {"params": params, **model_state}
        if train and model_state:
            logits, new_state = module.apply(
                variables, x, **kwargs(True), mutable=list(model_state)
            )
            return logits, dict(new_state)
        return module.apply(variables, x, **kwargs(train)), model_state

    return ModelFns(init, apply)


def _nnx_fns(module: nnx.Module) -> ModelFns:
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def init(key, x):
        del key, x  # An NNX module is created initialized; its own parameters are the start.
        return params, rest

    def apply(params, model_state, x, train):
        m = nnx.merge(graphdef, params, model_state)
        if train:
            m.train()
        else:
            m.eval()
        logits = m(x)
        return logits, nnx.split(m, nnx.Param, ...)[2]

    return ModelFns(init, apply)


def _plain_fns(init_fn: Callable, apply_fn: Callable) -> ModelFns:
    def init(key, x):
        return init_fn(key, x), {}

    def apply(params, model_state, x, train):
        del train  # A plain apply(params, x) has no training mode.
        return apply_fn(params, x), model_state

    return ModelFns(init, apply)


def model_fns(model: Any) -> ModelFns:
    """Adapts ``model`` to ``ModelFns``.

    Args:
      model: a flax linen module (``__call__(x[, train])``), an NNX module (``__call__(x)``; its
        current parameters are the initial ones, so the seed does not change them), or a plain
        model: an ``(init, apply)`` pair or an object with ``init(key, x) -> params`` and
        ``apply(params, x) -> logits`` methods.

    Returns:
      The model's ``ModelFns``.

    Raises:
      TypeError: if ``model`` is none of these.
    """
    if isinstance(model, nn.Module):
        return _linen_fns(model)
    if isinstance(model, nnx.Module):
        return _nnx_fns(model)
    if isinstance(model, tuple) and len(model) == 2 and all(callable(f) for f in model):
        return _plain_fns(*model)
    if callable(getattr(model, "init", None)) and callable(getattr(model, "apply", None)):
        return _plain_fns(model.init, model.apply)
    raise TypeError(
        f"model must be a flax linen or NNX module or an (init, apply) pair, got {type(model)}"
    )
