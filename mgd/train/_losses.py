"""Per-example losses and metrics: ``(outputs, targets) -> (b,)``, what ``TrainingSetup`` takes.

A loss maps the model's outputs for a batch, shape ``(b, ...)``, and the batch's labels or
targets, shape ``(b, *target_shape)``, to one value per example, shape ``(b,)``. Write your own
as a plain function of ``jax.numpy`` operations (it is traced, never called on host arrays);
checks on shapes and dtypes may raise, they run once at trace time. Define it once (``def``, at
module level): a setup's compiled programs belong to that function object, so a fresh lambda
per setup compiles afresh. A metric has the same form; ``TrainingSetup.evaluate`` averages it
over a split and reports it under the function's ``__name__``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "softmax_cross_entropy",
    "next_token_loss",
    "squared_error",
    "accuracy",
    "absolute_error",
]


def _check_labels(fn: str, outputs: jax.Array, targets: jax.Array) -> None:
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(
            f"{fn} needs integer class labels, got {targets.dtype} targets; for regression "
            "targets pass loss=mgd.train.squared_error (and a regression metric)"
        )
    if outputs.ndim != 2 or targets.shape != outputs.shape[:1]:
        raise ValueError(
            f"{fn} needs logits of shape (b, num_classes) and labels of shape (b,), got "
            f"{outputs.shape} and {targets.shape}"
        )


def _matched_targets(fn: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise ValueError(
            f"{fn} needs float regression targets, got {targets.dtype} labels; for class labels "
            "use loss=mgd.train.softmax_cross_entropy"
        )
    if targets.ndim == 1 and outputs.shape == (*targets.shape, 1):
        return targets[:, None]  # Scalar targets against a model with one output unit.
    if outputs.shape != targets.shape:
        raise ValueError(
            f"{fn} needs outputs of the targets' shape {targets.shape} (or (b, 1) for targets "
            f"(b,)), got outputs of shape {outputs.shape}; give the model {targets.shape[1:]} "
            "outputs per example"
        )
    return targets


def _per_example_sum(values: jax.Array) -> jax.Array:
    return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


def softmax_cross_entropy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy of logits against integer class labels, per example (the default).

    Args:
      outputs: float logits, shape ``(b, num_classes)``.
      targets: integer class labels in ``[0, num_classes)``, shape ``(b,)``.

    Returns:
      Float losses, shape ``(b,)``: ``logsumexp(logits) - logits[label]``.

    Raises:
      ValueError: at trace time, for float targets or shapes other than the above.
    """
    _check_labels("softmax_cross_entropy", outputs, targets)
    return optax.softmax_cross_entropy_with_integer_labels(outputs, targets)


def next_token_loss(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Next-token cross-entropy of a language model, per sequence, padding masked.

    Each sequence's value is the sum of the cross-entropies at its real (non-padded) positions
    divided by the number of positions ``L``, so a batch's mean is the mean per token slot and
    every real token of the batch weighs the same, whatever the length of its window (a window
    cut from the end of a short document holds few real tokens). ``TrainingSetup.evaluate``
    turns the split's mean into bits per real token (``"bits_per_byte"`` for byte tokens).

    Args:
      outputs: float logits, shape ``(b, L, num_classes)``.
      targets: int token ids, shape ``(b, L)``: in ``[0, num_classes)``, or ``-1`` on padding.

    Returns:
      Float losses, shape ``(b,)``, in nats per token slot.

    Raises:
      ValueError: at trace time, for float targets or shapes other than the above.
    """
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"next_token_loss needs integer token ids, got {targets.dtype} targets")
    if outputs.ndim != 3 or targets.shape != outputs.shape[:2]:
        raise ValueError(
            f"next_token_loss needs logits of shape (b, L, vocab) and tokens of shape (b, L), "
            f"got {outputs.shape} and {targets.shape}"
        )
    real = targets >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.where(real, targets, 0))
    return jnp.sum(jnp.where(real, ce, 0), axis=1) / targets.shape[1]


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Squared error summed over the output dimensions, per example (for regression).

    Its mean over a split is the mean squared error (summed over the ``d`` outputs).

    Args:
      outputs: float predictions, shape ``(b,)`` or ``(b, d)``; ``(b, 1)`` for targets ``(b,)``.
      targets: float regression targets, shape ``(b,)`` or ``(b, d)``.

    Returns:
      Float losses, shape ``(b,)``: ``sum_j (outputs[i, j] - targets[i, j]) ** 2``.

    Raises:
      ValueError: at trace time, for integer targets or outputs of another shape.

    Example:
      >>> setup = mgd.TrainingSetup(model, optax.adam(1e-2), data, batch_size=64, num_steps=300,
      ...                           loss=mgd.train.squared_error,
      ...                           metric=mgd.train.absolute_error)
      >>> setup.evaluate(setup.train())  # {"loss": mean squared error, "absolute_error": ...}

      A loss of your own has this form: a function ``(outputs, targets) -> (b,)`` of
      ``jax.numpy`` operations, e.g. ``optax.huber_loss(outputs, targets).sum(axis=1)``.
    """
    targets = _matched_targets("squared_error", outputs, targets)
    return _per_example_sum(jnp.square(outputs - targets))


def accuracy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """1 where the largest logit is the label's, else 0, per example (the classification metric).

    Args:
      outputs: float logits, shape ``(b, num_classes)``.
      targets: integer class labels, shape ``(b,)``.

    Returns:
      Floats in {0, 1} of the outputs' dtype, shape ``(b,)``; their mean is the accuracy.

    Raises:
      ValueError: at trace time, for float targets or shapes other than the above.
    """
    _check_labels("accuracy", outputs, targets)
    return (jnp.argmax(outputs, axis=1) == targets).astype(outputs.dtype)


def absolute_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Absolute error summed over the output dimensions, per example (a regression metric).

    Its mean over a split is the mean absolute error, less dominated by outliers than the
    squared error.

    Args:
      outputs: float predictions, shape ``(b,)`` or ``(b, d)``; ``(b, 1)`` for targets ``(b,)``.
      targets: float regression targets, shape ``(b,)`` or ``(b, d)``.

    Returns:
      Float errors, shape ``(b,)``: ``sum_j |outputs[i, j] - targets[i, j]|``.

    Raises:
      ValueError: at trace time, for integer targets or outputs of another shape.
    """
    targets = _matched_targets("absolute_error", outputs, targets)
    return _per_example_sum(jnp.abs(outputs - targets))
