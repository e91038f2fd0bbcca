"""Metaparameters a user switches on by name: data weights, LR schedule, perturbations, decay."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MetaSpec"]


@dataclasses.dataclass(frozen=True)
class MetaSpec:
    """Which metaparameters a ``TrainingSetup`` exposes; each is off unless switched on.

    ``TrainingSetup.init_meta()`` returns a dict with one entry per enabled metaparameter, at the
    value that reproduces plain training:

    - ``data_weights=True`` -> ``meta["data_weights"]``, float ``(num_train,)``, default ones;
      ``(num_groups,)`` when the data have groups (``Dataset.groups``, e.g. the windows of a
      document), every example then weighted by its group's entry. The
      loss of batch t is ``sum_i w_i * loss_i / n_t`` over the batch's examples, with ``n_t`` the
      number of real examples in it (``batch_size``, fewer in an epoch's last partial batch). A
      weight of 0 removes an example, 2 counts it twice (the paper's counts); negative weights
      are allowed (they ascend that example's loss).
    - ``lr_knots=(s_0, ..., s_m)``, increasing ints in ``[0, num_steps]`` -> ``meta["log_lr"]``,
      float ``(m + 1,)``, default zeros: the log learning rate at each knot; ``lr(t)`` is
      piecewise-linear in log space between knots and constant beyond the first and last.
    - ``per_step_lr=True`` -> ``meta["log_lr"]``, float ``(num_steps,)``: one log LR per step.
    - ``perturb_indices=idx``, distinct ints into the training pool -> ``meta["perturbations"]``,
      float ``(len(idx), *input_shape)``, default zeros: added to those examples' inputs wherever
      they appear in a batch (before augmentation), the sum clipped to ``data.x_range``. At the
      range's boundary the derivative is taken from inside, so a zero perturbation of a pixel
      that sits at the boundary still gets a gradient.
    - ``weight_decay=True`` -> ``meta["weight_decay"]``, float scalar, default 0: decoupled decay
      of every parameter, ``params -= lr(t) * weight_decay * params`` each step.

    The learning rate ``lr(t)`` multiplies the optimizer's update (after the whole optax chain),
    so it works with any optimizer; build the optimizer with learning rate 1.0 for an absolute
    schedule. Without a schedule ``lr(t) = 1``.

    Attributes:
      data_weights: per-example weights of the training loss.
      lr_knots: knots of a piecewise log-linear learning-rate schedule, or ``None``.
      per_step_lr: one learning rate per step (exclusive with ``lr_knots``).
      perturb_indices: training examples whose inputs get a learnable perturbation, or ``None``.
      weight_decay: a learnable decoupled weight decay.

    Example:
      >>> spec = mgd.MetaSpec(data_weights=True, lr_knots=(0, 50, 100))
    """

    data_weights: bool = False
    lr_knots: tuple[int, ...] | None = None
    per_step_lr: bool = False
    perturb_indices: tuple[int, ...] | None = None
    weight_decay: bool = False

    def __post_init__(self):
        if self.lr_knots is not None:
            knots = tuple(int(k) for k in np.asarray(self.lr_knots).reshape(-1))
            if not knots or any(b <= a for a, b in zip(knots, knots[1:], strict=False)):
                raise ValueError(
                    f"MetaSpec: lr_knots must be a non-empty increasing sequence, got {knots}"
                )
            object.__setattr__(self, "lr_knots", knots)
            if self.per_step_lr:
                raise ValueError("MetaSpec: give lr_knots or per_step_lr, not both")
        if self.perturb_indices is not None:
            idx = np.asarray(self.perturb_indices).reshape(-1)
            if idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"MetaSpec: perturb_indices must be integers, got {idx.dtype}")
            if np.unique(idx).size != idx.size or (idx.size and idx.min() < 0):
                raise ValueError("MetaSpec: perturb_indices must be distinct non-negative ints")
            object.__setattr__(self, "perturb_indices", tuple(int(i) for i in idx))

    def check(self, *, num_steps: int, num_train: int) -> None:
        """Raises ``ValueError`` unless the spec fits ``num_steps`` steps on ``num_train``."""
        if (
            self.lr_knots is not None
            and not 0 <= self.lr_knots[0] <= self.lr_knots[-1] <= num_steps
        ):
            raise ValueError(f"MetaSpec: lr_knots must lie in [0, num_steps={num_steps}]")
        if self.perturb_indices and max(self.perturb_indices) >= num_train:
            raise ValueError(
                f"MetaSpec: perturb_indices must lie in [0, num_train={num_train}), "
                f"got {max(self.perturb_indices)}"
            )

    def init(self, *, num_steps: int, num_train: int, input_shape, dtype) -> dict[str, jax.Array]:
        """The metaparameters of plain training, one entry per enabled kind (see class doc)."""
        meta = {}
        if self.data_weights:
            meta["data_weights"] = jnp.ones((num_train,), dtype)
        if self.lr_knots is not None:
            meta["log_lr"] = jnp.zeros((len(self.lr_knots),), dtype)
        if self.per_step_lr:
            meta["log_lr"] = jnp.zeros((num_steps,), dtype)
        if self.perturb_indices is not None:
            meta["perturbations"] = jnp.zeros((len(self.perturb_indices), *input_shape), dtype)
        if self.weight_decay:
            meta["weight_decay"] = jnp.zeros((), dtype)
        return meta

    @property
    def has_lr_schedule(self) -> bool:
        """Whether the learning rate is a metaparameter (``lr_knots`` or ``per_step_lr``)."""
        return self.lr_knots is not None or self.per_step_lr

    def learning_rate(self, meta: dict[str, jax.Array], t: jax.Array) -> jax.Array:
        """``lr(t)``, the factor on the optimizer's update at step ``t`` (1 without a schedule)."""
        if self.lr_knots is not None:
            knots = jnp.asarray(self.lr_knots, meta["log_lr"].dtype)
            return jnp.exp(jnp.interp(t.astype(knots.dtype), knots, meta["log_lr"]))
        if self.per_step_lr:
            return jnp.exp(meta["log_lr"][t])
        return jnp.ones(())
