"""TrainingSetup: a training recipe as the pure step / objective functions the engine needs."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgd import engine
from mgd.train._augment import Augment
from mgd.train._data import Dataset
from mgd.train._losses import accuracy, next_token_loss, softmax_cross_entropy
from mgd.train._meta import MetaSpec
from mgd.train._model_fns import ModelFns, model_fns
from mgd.train._sharding import check_mesh, constrain_state, put_state, replicate, shard_batch

__all__ = ["TrainState", "TrainingSetup"]

# Independent streams of one seed: parameter init, batch order, augmentation.
_INIT, _ORDER, _AUGMENT = 0, 1, 2


class TrainState(NamedTuple):
    """The state carried from one training step to the next (a pytree).

    Attributes:
      step: int32 scalar, number of steps taken.
      params: the model's trainable parameters.
      opt_state: the optax optimizer's state.
      model_state: non-trainable model variables (batch norm's ``batch_stats``; ``{}`` if none).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any


class _Batches(NamedTuple):
    # index: (num_steps, batch_size) int32 into the training pool.
    # mask: (num_steps, batch_size) float, 0 on the slots that fill an epoch's last partial batch.
    # count: (num_steps,) float, real examples per batch (the loss normalizer).
    index: jax.Array
    mask: jax.Array
    count: jax.Array


class _Arrays(NamedTuple):
    # The data as device arrays in the setup's dtype, and the perturbation slot of each example.
    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    slot: jax.Array
    group: jax.Array  # (n_train,) int32: the data weight of each example (its group's).
    x_low: jax.Array
    x_high: jax.Array


def _params(state: TrainState) -> Any:
    return state.params


def _margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    # Smooth accuracy surrogate per example: logsumexp of the wrong logits minus the right one
    # (negative when the right logit dominates).
    right = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    wrong = jnp.where(jax.nn.one_hot(labels, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return jax.nn.logsumexp(wrong, axis=1) - right


def _expected_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    # Smooth 0-1 error per example: 1 - softmax probability of the right class, i.e.
    # sigmoid(_margin). Its gradient vanishes on confidently classified examples and peaks at
    # the decision boundary, where the accuracy can change.
    right = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    return -jnp.expm1(right)


_OBJECTIVES = ("val_loss", "val_margin", "val_error")
# The objectives defined on one class label per example.
_CLASS_OBJECTIVES = ("val_margin", "val_error")


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingSetup:
    """A training recipe as the pure functions ``mgd.metagradient`` differentiates.

    Training runs ``num_steps`` steps of ``optimizer`` on mini-batches of ``data``'s training
    pool; the metaparameters switched on in ``meta_spec`` (data weights, learning-rate schedule,
    input perturbations, weight decay; see ``MetaSpec``) enter every step, and the objective is
    evaluated on the validation (target) split at the end. The per-example ``loss`` (softmax
    cross-entropy by default; ``mgd.train.squared_error`` for regression targets) is what the
    data weights multiply, what the ``"val_loss"`` objective averages and what ``evaluate``
    reports, next to ``metric``.

    Batch order is a deterministic function of (seed, step): each epoch is a fresh permutation of
    the pool (``jax.random.permutation`` of ``fold_in(key, epoch)``, so identical across processes
    and machines), cut into ``ceil(num_train / batch_size)`` batches. The last batch of an epoch
    is filled up with the epoch's first examples, which take part in the forward pass (batch norm
    statistics stay those of real data) but carry zero loss weight; the loss divides by the
    number of real examples. Augmentation, if on, is also a function of (seed, step).

    All functions are jitted once per setup and cached: ``train`` takes meta and seed as traced
    arguments, so outer loops retrain with new metaparameters and new seeds without recompiling.
    A setup is immutable; ``replace`` makes a modified copy, which compiles afresh unless only
    ``data`` and ``seed`` change.

    Attributes:
      model: a flax linen module, an NNX module, or a plain ``(init, apply)`` pair (see
        ``mgd.train.models`` for ready ones).
      optimizer: an optax ``GradientTransformation``.
      data: the ``Dataset``.
      batch_size: examples per step, at most ``data.num_train``.
      num_steps: training steps.
      seed: seed of parameter init, batch order and augmentation.
      meta_spec: which metaparameters are on (``MetaSpec()``: none).
      objective: ``"val_loss"`` (mean ``loss`` on the validation split), ``"val_margin"``
        (classification only; a smooth accuracy surrogate: mean of logsumexp of the wrong
        logits minus the right logit), ``"val_error"`` (classification only; the expected 0-1
        error under the model's softmax, mean of ``1 - p_y``: what an accuracy-degrading attack
        maximizes), or a callable ``(outputs, targets) -> scalar`` on the
        whole validation split, to minimize.
      loss: per-example training loss ``(outputs, targets) -> (b,)``: outputs of the model for a
        batch, ``(b, ...)``, and its labels or targets, ``(b, *data.target_shape)``. Built in:
        ``mgd.train.softmax_cross_entropy`` (integer labels) and ``mgd.train.squared_error``
        (float targets). Your own is a function of ``jax.numpy`` operations, traced inside the
        compiled step (checks on shapes may raise there), defined once with ``def``: setups
        with another function object compile their own programs. E.g. ``def huber(outputs,
        targets): return optax.huber_loss(outputs, targets).sum(axis=1)``.
      metric: per-example evaluation metric of the same form, averaged by ``evaluate`` and
        reported under its ``__name__``; ``None``: ``mgd.train.accuracy`` when ``loss`` is
        ``softmax_cross_entropy``, otherwise none (``evaluate`` reports the loss only). E.g.
        ``mgd.train.absolute_error`` for regression.
      augment: ``False``, ``True`` (``Augment()``: crop with padding 4 and flip) or an
        ``Augment``.
      dtype: floating dtype of parameters, inputs and metaparameters (``jnp.float64`` needs x64).
      eval_batch_size: chunk size of the objective and of ``evaluate`` (bounds their memory).
      mesh: a `jax.sharding.Mesh` to train on several devices: each batch is split over its
        ``data_axis`` (which must divide ``batch_size``), the state is replicated or, with
        ``param_axis``, sharded; metagradients equal the single-device ones up to float
        rounding. The mesh may span several processes (`mgd.distributed.initialize`,
        `mgd.make_mesh`): every process then builds the same setup, and its data, batch order,
        metaparameters and state become global arrays. ``None``: one device.
      data_axis: the mesh axis batches are split over.
      param_axis: a mesh axis to shard the state over (FSDP / ZeRO style; may be
        ``data_axis``): each leaf of parameters, optimizer state and model state is split along
        its largest dimension that the axis size divides, and replicated if none does.
        ``None``: the state is replicated on every device.
      batch_order: an explicit batch order instead of the seed's: int ``(num_steps,
        batch_size)`` of training-pool indices, ``-1`` for an empty slot (no loss; a step's loss
        divides by its real examples). ``None``: the seed's epochs of permutations. Setups made
        by ``replace(batch_order=...)`` share the compiled programs (the order is an argument),
        so an outer loop can train every meta-step on a new order without recompiling.

    Example:
      >>> data = mgd.load_digits()
      >>> setup = mgd.TrainingSetup(
      ...     mgd.train.models.MLP(), optax.sgd(0.1), data, batch_size=64, num_steps=200,
      ...     meta_spec=mgd.MetaSpec(data_weights=True))
      >>> res = setup.metagradient(setup.init_meta())
      >>> res.grad["data_weights"].shape
      (1079,)
    """

    model: Any
    optimizer: optax.GradientTransformation
    data: Dataset
    _: dataclasses.KW_ONLY
    batch_size: int
    num_steps: int
    seed: int = 0
    meta_spec: MetaSpec = MetaSpec()
    objective: str | Callable[[jax.Array, jax.Array], jax.Array] = "val_loss"
    loss: Callable[[jax.Array, jax.Array], jax.Array] = softmax_cross_entropy
    metric: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    augment: bool | Augment = False
    dtype: Any = jnp.float32
    eval_batch_size: int = 1024
    mesh: jax.sharding.Mesh | None = None
    data_axis: str = "data"
    param_axis: str | None = None
    batch_order: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.data, Dataset):
            raise TypeError(f"TrainingSetup: data must be an mgd.Dataset, got {type(self.data)}")
        if not (
            callable(getattr(self.optimizer, "init", None))
            and callable(getattr(self.optimizer, "update", None))
        ):
            raise TypeError("TrainingSetup: optimizer must be an optax GradientTransformation")
        for name in ("batch_size", "num_steps", "eval_batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"TrainingSetup: {name} must be an int, got {value!r}")
        n = self.data.num_train
        if not 1 <= self.batch_size <= n:
            raise ValueError(
                f"TrainingSetup: batch_size must lie in [1, num_train={n}], got {self.batch_size}"
            )
        if self.num_steps < 1 or self.eval_batch_size < 1:
            raise ValueError("TrainingSetup: num_steps and eval_batch_size must be positive")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"TrainingSetup: seed must lie in [0, 2**32), got {self.seed}")
        if not isinstance(self.meta_spec, MetaSpec):
            raise TypeError(
                f"TrainingSetup: meta_spec must be an mgd.MetaSpec, got {self.meta_spec}"
            )
        self.meta_spec.check(num_steps=self.num_steps, num_train=n)
        if self.batch_order is not None:
            order = np.asarray(self.batch_order)
            if (
                order.shape != (self.num_steps, self.batch_size)
                or not np.issubdtype(order.dtype, np.integer)
                or order.min() < -1
                or order.max() >= n
            ):
                raise ValueError(
                    f"TrainingSetup: batch_order must be int (num_steps, batch_size) = "
                    f"({self.num_steps}, {self.batch_size}) of indices in [-1, {n}), got "
                    f"{order.shape} {order.dtype}; or None for the seed's order"
                )
            object.__setattr__(self, "batch_order", order.astype(np.int32))
        if self.meta_spec.perturb_indices is not None and self._integer_inputs:
            raise ValueError(
                "TrainingSetup: perturb_indices perturbs float inputs, but data holds integer "
                "token ids; leave MetaSpec.perturb_indices unset"
            )
        if not callable(self.objective) and self.objective not in _OBJECTIVES:
            raise ValueError(
                f"TrainingSetup: objective must be one of {_OBJECTIVES} or a callable "
                f"(outputs, targets) -> scalar, got {self.objective!r}"
            )
        self._check_loss_and_metric()
        if self.data.y_val.size == 0:
            raise ValueError("TrainingSetup: the objective needs a non-empty validation split")
        if self.augment is True:
            object.__setattr__(self, "augment", Augment())
        if isinstance(self.augment, Augment):
            self.augment.check(self.data.input_shape)
        elif self.augment is not False:
            raise TypeError(f"TrainingSetup: augment must be a bool or Augment, got {self.augment}")
        if not jnp.issubdtype(self.dtype, jnp.floating):
            raise ValueError(f"TrainingSetup: dtype must be a floating dtype, got {self.dtype}")
        _ = self._model  # Fails now, not at first use, on a model of the wrong kind.
        check_mesh(self.mesh, self.data_axis, self.param_axis, self.batch_size)

    def _check_loss_and_metric(self) -> None:
        # Shapes are checked where they are known, when the functions are traced.
        for name in ("loss", "metric"):
            fn = getattr(self, name)
            if fn is None and name == "metric":
                continue
            if not callable(fn):
                raise TypeError(
                    f"TrainingSetup: {name} must be a function (outputs, targets) -> per-example "
                    f"values, got {fn!r}"
                )
            try:
                hash(fn)  # A static field (it shapes the compiled programs), like jit's.
            except TypeError as e:
                raise TypeError(f"TrainingSetup: {name} must be hashable, got {fn!r}") from e
        if self.metric is not None and (
            not getattr(self.metric, "__name__", "").isidentifier()
            or self.metric.__name__ == "loss"
        ):
            raise ValueError(
                "TrainingSetup: metric needs a name other than 'loss' to report it under: define "
                f"it with def, got {getattr(self.metric, '__name__', self.metric)!r}"
            )
        sequences = self.data.num_classes is not None and self.data.y_train.ndim == 2
        if sequences and self.loss is softmax_cross_entropy:
            raise ValueError(
                "TrainingSetup: data holds token sequences (n, L) but loss is "
                "softmax_cross_entropy, for one class label per example; pass "
                "loss=mgd.train.next_token_loss"
            )
        if sequences and self.objective in _CLASS_OBJECTIVES:
            raise ValueError(
                f"TrainingSetup: objective={self.objective!r} needs one class label per example; "
                "for token sequences use objective='val_loss'"
            )
        if self.data.num_classes is None:
            if self.loss is softmax_cross_entropy:
                raise ValueError(
                    "TrainingSetup: data holds float regression targets but loss is "
                    "softmax_cross_entropy, for class labels; pass loss=mgd.train.squared_error "
                    "or another regression loss"
                )
            if self.objective in _CLASS_OBJECTIVES:
                raise ValueError(
                    f"TrainingSetup: objective={self.objective!r} needs integer class labels, but "
                    "data holds float regression targets; use objective='val_loss'"
                )

    @property
    def _integer_inputs(self) -> bool:
        return bool(np.issubdtype(self.data.x_train.dtype, np.integer))

    def _inputs(self, x: np.ndarray) -> jax.Array:
        # Token ids stay int32 (a model embeds them); other inputs take the setup's dtype.
        return jnp.asarray(x, None if np.issubdtype(x.dtype, np.integer) else self.dtype)

    @property
    def _metric(self) -> Callable | None:
        if self.metric is None and self.loss is softmax_cross_entropy:
            return accuracy
        return self.metric

    def _per_example(self, name: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        # The loss or metric of a batch, with a check of what the user's function returned.
        fn = self.loss if name == "loss" else self._metric
        values = fn(outputs, targets)
        b = outputs.shape[0]
        if jnp.shape(values) != (b,) or not jnp.issubdtype(jnp.result_type(values), jnp.floating):
            raise ValueError(
                f"TrainingSetup: {name} {getattr(fn, '__name__', fn)} must return one float per "
                f"example, shape ({b},), got {jnp.shape(values)} {jnp.result_type(values)} for "
                f"outputs {outputs.shape} and targets {targets.shape}"
            )
        return values

    def replace(self, **changes: Any) -> TrainingSetup:
        """Returns a copy with the given fields (e.g. ``data``, ``seed``, ``meta_spec``) changed.

        A copy that changes only ``data``, ``seed`` and ``batch_order`` shares this setup's
        compiled ``train``, ``init_state``, ``evaluate`` and engine programs (``metagradient``):
        they take the data, the seed and the order as arguments, so retraining or
        differentiating on other data of the same shapes (e.g. subsets of one size) compiles
        nothing. A copy that changes only ``seed`` or ``batch_order`` also shares the data's
        device arrays.
        """
        copy = dataclasses.replace(self, **changes)
        if set(changes) <= {"data", "seed", "batch_order"}:
            copy.__dict__["_jitted"] = self._jitted  # The cached_property's slot.
        if set(changes) <= {"seed", "batch_order"}:
            # Same data: share its device arrays, or every seed's copy (an outer loop crafting
            # with a fresh seed per meta-step) would hold the whole data set again.
            copy.__dict__["_arrays"] = self._arrays
        return copy

    # --- derived, built once per setup -------------------------------------------------------

    @functools.cached_property
    def _model(self) -> ModelFns:
        return model_fns(self.model)

    # The cached arrays below are built under `jax.ensure_compile_time_eval`: a first access
    # may come from inside a user's jitted function (e.g. calling `step_fn` there), and a
    # tracer cached here would leak into every later call.

    @functools.cached_property
    @jax.ensure_compile_time_eval()
    def _arrays(self) -> _Arrays:
        d, dt = self.data, self.dtype
        slot = np.full(d.num_train, -1, np.int32)
        if self.meta_spec.perturb_indices:
            slot[list(self.meta_spec.perturb_indices)] = np.arange(
                len(self.meta_spec.perturb_indices)
            )
        low, high = d.x_range
        group = np.arange(d.num_train) if d.groups is None else d.groups
        arrays = _Arrays(
            self._inputs(d.x_train),
            self._targets(d.y_train),
            self._inputs(d.x_val),
            self._targets(d.y_val),
            jnp.asarray(slot),
            jnp.asarray(group, jnp.int32),
            jnp.asarray(low, dt),
            jnp.asarray(high, dt),
        )
        return replicate(arrays, self.mesh)

    @functools.cached_property
    @jax.ensure_compile_time_eval()
    def _batches(self) -> _Batches:
        if self.batch_order is None:
            batches = self._jitted["batches"](jax.random.PRNGKey(self.seed), self.data.num_train)
        else:
            real = self.batch_order >= 0
            batches = _Batches(
                jnp.asarray(np.maximum(self.batch_order, 0)),
                jnp.asarray(real, self.dtype),
                # An all-empty step has no loss; max(., 1) keeps it 0 rather than 0 / 0.
                jnp.asarray(np.maximum(real.sum(axis=1), 1), self.dtype),
            )
        return replicate(batches, self.mesh)

    @functools.cached_property
    @jax.ensure_compile_time_eval()
    def _augment_key(self) -> jax.Array:
        return replicate(jax.random.fold_in(jax.random.PRNGKey(self.seed), _AUGMENT), self.mesh)

    # --- pure functions -----------------------------------------------------------------------

    def _make_batches(self, key: jax.Array, num_train: int) -> _Batches:
        # num_train comes as an argument, not from self.data: `replace` shares the compiled
        # functions between setups whose data differ.
        n, b = num_train, self.batch_size
        per_epoch = math.ceil(n / b)
        epochs = math.ceil(self.num_steps / per_epoch)
        fill = per_epoch * b - n
        order_key = jax.random.fold_in(key, _ORDER)

        def epoch(e):
            perm = jax.random.permutation(jax.random.fold_in(order_key, e), n)
            return jnp.concatenate([perm, perm[:fill]]).reshape(per_epoch, b)

        index = jax.vmap(epoch)(jnp.arange(epochs)).reshape(-1, b)[: self.num_steps]
        one_epoch_mask = np.concatenate([np.ones(n), np.zeros(fill)]).reshape(per_epoch, b)
        mask = np.tile(one_epoch_mask, (epochs, 1))[: self.num_steps]
        return _Batches(
            index.astype(jnp.int32),
            jnp.asarray(mask, self.dtype),
            jnp.asarray(mask.sum(axis=1), self.dtype),
        )

    def _init(self, key: jax.Array, arrays: _Arrays) -> TrainState:
        init_key = jax.random.fold_in(key, _INIT)
        params, model_state = self._model.init(init_key, arrays.x_train[:1])
        params = jax.tree.map(self._cast, params)
        model_state = jax.tree.map(self._cast, model_state)
        return TrainState(
            jnp.zeros((), jnp.int32), params, self.optimizer.init(params), model_state
        )

    def _targets(self, y: np.ndarray) -> jax.Array:
        # Labels stay int32; regression targets take the setup's dtype, like the inputs.
        return jnp.asarray(y, self.dtype if np.issubdtype(y.dtype, np.floating) else None)

    def _cast(self, leaf: jax.Array) -> jax.Array:
        return leaf.astype(self.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    def _batch_inputs(self, arrays: _Arrays, index: jax.Array, meta: dict) -> jax.Array:
        x = arrays.x_train[index]
        if self.meta_spec.perturb_indices is None:
            return x
        slot = arrays.slot[index]
        delta = meta["perturbations"][jnp.maximum(slot, 0)]
        moved = x + delta
        # A where-clip (not jnp.clip) so the derivative at the boundary is the inside one.
        clipped = jnp.where(
            moved < arrays.x_low,
            arrays.x_low,
            jnp.where(moved > arrays.x_high, arrays.x_high, moved),
        )
        inside = (slot >= 0).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(inside, clipped, x)

    def _step(self, arrays, batches, augment_key, state: TrainState, meta: dict, t) -> TrainState:
        grads, model_state = jax.grad(self._loss, has_aux=True)(
            state.params, arrays, batches, augment_key, state, meta, t
        )
        return self._update(state, meta, t, grads, model_state)

    def _loss(self, params, arrays, batches, augment_key, state: TrainState, meta: dict, t):
        # The training loss of step t and the model state its forward pass makes (the step's
        # GradientStep.loss, so the engine can differentiate it in mixed mode).
        spec = self.meta_spec
        index = batches.index[t]
        x = self._batch_inputs(arrays, index, meta)
        if self.augment:
            x = self.augment(x, jax.random.fold_in(augment_key, t))
        y = arrays.y_train[index]
        weight = batches.mask[t]
        if spec.data_weights:
            weight = weight * meta["data_weights"][arrays.group[index]]
        x, y, weight = shard_batch((x, y, weight), self.mesh, self.data_axis)
        outputs, model_state = self._model.apply(params, state.model_state, x, True)
        losses = self._per_example("loss", outputs, y)
        return jnp.sum(weight * losses) / batches.count[t], model_state

    def _update(self, state: TrainState, meta: dict, t, grads, model_state) -> TrainState:
        # The optimizer step given the loss gradient (the step's GradientStep.update).
        spec = self.meta_spec
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        if spec.has_lr_schedule or spec.weight_decay:
            lr = spec.learning_rate(meta, t)
            if spec.weight_decay:
                updates = jax.tree.map(
                    lambda u, p: u - meta["weight_decay"] * p, updates, state.params
                )
            updates = jax.tree.map(lambda u: lr * u, updates)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, opt_state, model_state)
        return constrain_state(new, self.mesh, self.param_axis)

    def _split_sums(self, params, model_state, x, y, fn) -> jax.Array:
        # Sum of fn(outputs, targets, valid) over chunks of eval_batch_size (bounded memory).
        n, c = x.shape[0], min(self.eval_batch_size, x.shape[0])
        chunks = math.ceil(n / c)
        pad = chunks * c - n
        xs = jnp.concatenate([x, x[:pad]]).reshape(chunks, c, *x.shape[1:])
        ys = jnp.concatenate([y, y[:pad]]).reshape(chunks, c, *y.shape[1:])
        valid = (jnp.arange(chunks * c) < n).reshape(chunks, c)

        def chunk(args):
            xc, yc, vc = args
            outputs, _ = self._model.apply(params, model_state, xc, False)
            return fn(outputs, yc, vc)

        return jnp.sum(jax.lax.map(chunk, (xs, ys, valid)), axis=0)

    def _objective(self, arrays: _Arrays, state: TrainState, meta: dict) -> jax.Array:
        del meta  # The objective depends on meta only through the trained state.
        x = arrays.x_val
        y = arrays.y_val
        if callable(self.objective):
            # A user objective sees the whole split at once (it need not be a mean).
            outputs, _ = self._model.apply(state.params, state.model_state, x, False)
            return self.objective(outputs, y)

        def summed(outputs, targets, valid):
            if self.objective == "val_margin":
                values = _margin(outputs, targets)
            elif self.objective == "val_error":
                values = _expected_error(outputs, targets)
            else:
                values = self._per_example("loss", outputs, targets)
            return jnp.sum(jnp.where(valid, values, 0))

        return self._split_sums(state.params, state.model_state, x, y, summed) / x.shape[0]

    # --- the public surface -------------------------------------------------------------------

    def init_meta(self) -> dict[str, jax.Array]:
        """The metaparameters of plain training, one entry per kind switched on in ``meta_spec``.

        Returns:
          A dict (possibly empty) of arrays in ``dtype``; see ``MetaSpec`` for keys and shapes.
        """
        return self.meta_spec.init(
            num_steps=self.num_steps,
            num_train=self.data.num_groups,
            input_shape=self.data.input_shape,
            dtype=self.dtype,
        )

    def init_state(self) -> TrainState:
        """The state before training (parameters from the setup's seed), a ``TrainState``.

        With a mesh, its leaves are replicated or, with ``param_axis``, sharded over the mesh.
        """
        return put_state(
            self._jitted["init"](replicate(jax.random.PRNGKey(self.seed), self.mesh), self._arrays),
            self.mesh,
            self.param_axis,
        )

    @functools.cached_property
    def step_fn(self) -> engine.GradientStep:
        """``step_fn(state, meta, t) -> state``: one training step, pure and jittable.

        ``t`` is the step index (int32 scalar); the step fetches batch ``t`` of the setup's
        batch order itself. An `mgd.engine.GradientStep` (the loss of step ``t`` and the
        optimizer update given its gradient), so the engine can differentiate it in mixed
        mode (``leaf="mixed"``); its functions are ``jax.tree_util.Partial`` objects holding the
        data and the batch order, so the engine passes them to its compiled programs as
        arguments instead of compiling them in as constants. The same object is returned on
        every access.
        """
        return engine.GradientStep(
            loss=jax.tree_util.Partial(
                self._jitted["loss"], self._arrays, self._batches, self._augment_key
            ),
            update=jax.tree_util.Partial(self._jitted["update"]),
            # A Partial, not the bare function: the step stays a pytree of arrays that a
            # user's own jitted code can take as an argument.
            params=jax.tree_util.Partial(_params),
        )

    @functools.cached_property
    def objective_fn(self) -> Callable[[TrainState, dict], jax.Array]:
        """``objective_fn(state, meta) -> scalar``: the objective on the validation split (a
        ``jax.tree_util.Partial`` holding the data, like ``step_fn``)."""
        return jax.tree_util.Partial(self._jitted["objective"], self._arrays)

    @functools.cached_property
    def _jitted(self) -> dict[str, Callable]:
        # The functions compiled once per recipe: by jax.jit here, and "loss", "update" and
        # "objective" by the engine (through step_fn / objective_fn). Everything
        # data-dependent comes in through the arguments (shapes included), never from
        # self.data: setups made by `replace(data=..., seed=...)` share these functions and
        # their compilations.
        def loss(arrays, batches, augment_key, params, state, meta, t):
            return self._loss(params, arrays, batches, augment_key, state, meta, t)

        def update(state, meta, t, grads, model_state):
            return self._update(state, meta, t, grads, model_state)

        def objective(arrays, state, meta):
            return self._objective(arrays, state, meta)

        def train(arrays, meta, key, batches):
            # batches: the explicit order's, or None for the key's (traced apart: no cost).
            if batches is None:
                batches = self._make_batches(key, arrays.y_train.shape[0])
            augment_key = jax.random.fold_in(key, _AUGMENT)

            def body(state, t):
                return self._step(arrays, batches, augment_key, state, meta, t), None

            steps = jnp.arange(self.num_steps, dtype=jnp.int32)
            return jax.lax.scan(body, self._init(key, arrays), steps)[0]

        def evaluate(params, model_state, x, y):
            names = ("loss",) if self._metric is None else ("loss", "metric")

            def sums(outputs, targets, valid):
                values = [self._per_example(name, outputs, targets) for name in names]
                return jnp.stack([jnp.sum(jnp.where(valid, v, 0)) for v in values])

            return self._split_sums(params, model_state, x, y, sums) / x.shape[0]

        return {
            "loss": loss,
            "update": update,
            "objective": objective,
            "batches": jax.jit(self._make_batches, static_argnums=1),
            "init": jax.jit(lambda key, arrays: self._init(key, arrays)),
            "train": jax.jit(train),
            "evaluate": jax.jit(evaluate),
        }

    def _checked_meta(self, meta: dict | None) -> dict[str, jax.Array]:
        expected = self.init_meta()
        if meta is None:
            return expected
        if not isinstance(meta, dict) or set(meta) != set(expected):
            got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(
                f"meta must be a dict with keys {sorted(expected)} (from setup.init_meta()), "
                f"got {got}"
            )
        for k, v in expected.items():
            if jnp.shape(meta[k]) != v.shape:
                raise ValueError(f'meta["{k}"] must have shape {v.shape}, got {jnp.shape(meta[k])}')
        return replicate({k: jnp.asarray(meta[k], self.dtype) for k in expected}, self.mesh)

    def train(self, meta: dict | None = None, seed: int | None = None) -> TrainState:
        """Plain training (one jitted ``lax.scan``), e.g. to evaluate or to retrain a victim.

        Args:
          meta: metaparameters as from ``init_meta()``; ``None`` is ``init_meta()``.
          seed: overrides the setup's seed (parameter init, batch order, augmentation; with a
            ``batch_order``, that order stays); new seeds do not recompile.

        Returns:
          The ``TrainState`` after ``num_steps`` steps; with the setup's seed it equals running
          ``step_fn`` from ``init_state()`` for ``t = 0 .. num_steps - 1``.
        """
        seed = self.seed if seed is None else seed
        if (
            isinstance(seed, bool)
            or not isinstance(seed, int | np.integer)
            or not (0 <= seed < 2**32)
        ):
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
        key = replicate(jax.random.PRNGKey(seed), self.mesh)
        batches = None if self.batch_order is None else self._batches
        return self._jitted["train"](self._arrays, self._checked_meta(meta), key, batches)

    def evaluate(self, state: TrainState, split: str = "test") -> dict[str, float]:
        """Mean loss and metric of a trained state on a split (batch norm in inference mode).

        Args:
          state: a ``TrainState`` (e.g. from ``train``).
          split: ``"train"``, ``"val"`` or ``"test"``.

        Returns:
          ``{"loss": mean loss}`` and, with a metric, its mean under the metric's name, as Python
          floats: ``{"loss": mean cross-entropy, "accuracy": fraction correct}`` by default.
          With ``loss=mgd.train.next_token_loss`` also ``"bits_per_byte"``: the cross-entropy
          in bits per real (unpadded) target token of the split, one token per byte for
          byte-level tokens.
        """
        x, y = self.data.split(split)
        if y.size == 0:
            raise ValueError(f"split {split!r} is empty; nothing to evaluate")
        xs, ys = replicate((self._inputs(x), self._targets(y)), self.mesh)
        means = self._jitted["evaluate"](state.params, state.model_state, xs, ys)
        names = ["loss"] if self._metric is None else ["loss", self._metric.__name__]
        out = {name: float(m) for name, m in zip(names, means, strict=True)}
        if self.loss is next_token_loss:
            # next_token_loss sums over real tokens and divides by the slots L, so the split's
            # mean times (windows * L / real tokens) is the mean per real token.
            out["bits_per_byte"] = (
                out["loss"] * float(y.size) / np.count_nonzero(y >= 0) / math.log(2)
            )
        return out

    def batch_indices(self) -> np.ndarray:
        """The training pool's examples each step trains on (the seed's or the explicit order).

        Returns:
          int array ``(num_steps, batch_size)`` of indices into the training pool; ``-1`` in the
          slots that fill an epoch's last partial batch (they carry no loss).
        """
        b = self._batches
        return np.where(np.asarray(b.mask) > 0, np.asarray(b.index), -1)

    def learning_rates(self, meta: dict | None = None) -> np.ndarray:
        """The factor ``lr(t)`` on the optimizer's update for every step, shape ``(num_steps,)``."""
        meta = self._checked_meta(meta)
        steps = jnp.arange(self.num_steps, dtype=jnp.int32)
        return np.asarray(jax.vmap(lambda t: self.meta_spec.learning_rate(meta, t))(steps))

    def metagradient(self, meta: dict | None = None, *, checkpoint: Any = None, **engine_options):
        """The exact metagradient of the objective through all ``num_steps`` training steps.

        Args:
          meta: metaparameters as from ``init_meta()``; ``None`` is ``init_meta()``.
          checkpoint: the engine's checkpoint policy (``mgd.StoreAll()``, ``mgd.KAryTree(k)``,
            ``mgd.Binomial(slots)``); ``None`` lets the engine choose.
          **engine_options: further keyword options of ``mgd.metagradient`` (e.g.
            ``check_finite``, ``store``), passed through.

        Returns:
          ``mgd.metagradient``'s result: ``.value`` (objective), ``.grad`` (same dict as
          ``meta``), ``.stats``.
        """
        return engine.metagradient(
            self.step_fn,
            self.objective_fn,
            self.init_state(),
            self._checked_meta(meta),
            self.num_steps,
            checkpoint=checkpoint,
            **engine_options,
        )

    def estimate_memory(self, meta: dict | None = None, **engine_options):
        """``mgd.estimate_memory`` for this setup: what ``metagradient(meta, **engine_options)``
        would run and its peak device bytes, from compiled programs, without training.

        Args:
          meta: metaparameters as from ``init_meta()``; ``None`` is ``init_meta()``.
          **engine_options: keyword options of ``mgd.estimate_memory`` (``checkpoint``,
            ``store``, ``memory_budget``, ``leaf``).

        Returns:
          An ``mgd.MemoryEstimate``.
        """
        return engine.estimate_memory(
            self.step_fn,
            self.objective_fn,
            self.init_state(),
            self._checked_meta(meta),
            self.num_steps,
            **engine_options,
        )
