"""Models: an MLP, a small CNN, ResNet-9 (standard and metasmooth) and a small decoder-only
transformer, flax linen modules.

Every image model maps a batch of inputs ``(b, *input_shape)`` to logits ``(b, num_classes)``;
the transformer maps token ids ``(b, L)`` to next-token logits ``(b, L, num_classes)``. Each
takes ``train: bool`` (batch norm uses batch statistics when ``True``, running averages
otherwise).
Each is built from a frozen config dataclass; ``make_model`` builds one from a config dict such as
the ``model:`` section of ``mgd/configs/models/*.yaml``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgd.train._conv import CONV_IMPLS, loop_friendly_conv

__all__ = [
    "MLP",
    "MLPConfig",
    "SmallCNN",
    "SmallCNNConfig",
    "ResNet9",
    "ResNet9Config",
    "Transformer",
    "TransformerConfig",
    "ModelConfig",
    "model_config",
    "make_model",
]

_ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "softplus": nn.softplus,
    "silu": nn.silu,
}
_POOLS = ("max", "avg")
# PyTorch's default convolution init (kaiming-uniform, a = sqrt(5)), as in the reference ResNet-9
# implementations.
_CONV_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _check_common(cls: str, num_classes: int, output_scale: float, activation: str | None = None):
    # One output is a scalar regression head (a classifier needs two or more).
    if num_classes < 1:
        raise ValueError(f"{cls}: num_classes must be at least 1, got {num_classes}")
    if not output_scale > 0:
        raise ValueError(f"{cls}: output_scale must be positive, got {output_scale}")
    if activation is not None and activation not in _ACTIVATIONS:
        raise ValueError(
            f"{cls}: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
        )


def _check_pool(cls: str, pool: str):
    if pool not in _POOLS:
        raise ValueError(f"{cls}: pool must be one of {_POOLS}, got {pool!r}")


def _check_conv(cls: str, conv: str | Callable):
    if not callable(conv) and conv not in CONV_IMPLS:
        raise ValueError(
            f"{cls}: conv must be one of {CONV_IMPLS} or a function with "
            f"lax.conv_general_dilated's signature, got {conv!r}"
        )


def _conv(conv: str | Callable, features: int, **kwargs: Any) -> nn.Conv:
    # A 3x3 convolution computed by mgd.train.loop_friendly_conv (see its docstring for why).
    if not callable(conv):
        conv = functools.partial(loop_friendly_conv, impl=conv)
    return nn.Conv(features, (3, 3), conv_general_dilated=conv, **kwargs)


def _pool2(x: jax.Array, kind: str) -> jax.Array:
    pool = nn.max_pool if kind == "max" else nn.avg_pool
    return pool(x, (2, 2), strides=(2, 2))


def _as_image(x: jax.Array) -> jax.Array:
    # Grey images may come without a channel axis: (b, h, w) -> (b, h, w, 1).
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise ValueError(f"convolutional models need inputs (b, h, w[, c]), got shape {x.shape}")
    return x


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Configuration of ``MLP``.

    Attributes:
      num_classes: number of output logits.
      hidden: widths of the hidden layers.
      activation: one of ``relu, gelu, tanh, softplus, silu``.
      output_scale: factor on the logits (below 1 makes metagradients smoother).
      normalize: layer norm (no scale or bias) on each hidden layer *before* its activation.
        Normalizing before the activation is one of the changes the paper found crucial for
        metasmooth training (there batch norm in a ResNet-9): each hidden layer becomes
        scale-invariant, so large weights only lower the effective learning rate, and a
        learning-rate search that tries a far too high rate recovers instead of blowing up.
    """

    config_name: ClassVar[str] = "mlp"
    num_classes: int = 10
    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"
    output_scale: float = 1.0
    normalize: bool = False

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        _check_common("MLPConfig", self.num_classes, self.output_scale, self.activation)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"MLPConfig: normalize must be true or false, got {self.normalize!r}")


class MLP(nn.Module):
    """Fully connected network on flattened inputs: ``(b, *input_shape) -> (b, num_classes)``."""

    config: MLPConfig = MLPConfig()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # No batch norm or dropout.
        act = _ACTIVATIONS[self.config.activation]
        x = x.reshape(x.shape[0], -1)
        for width in self.config.hidden:
            x = nn.Dense(width)(x)
            if self.config.normalize:
                x = nn.LayerNorm(use_scale=False, use_bias=False)(x)
            x = act(x)
        return nn.Dense(self.config.num_classes)(x) * self.config.output_scale


@dataclasses.dataclass(frozen=True)
class SmallCNNConfig:
    """Configuration of ``SmallCNN``.

    Attributes:
      num_classes: number of output logits.
      channels: output channels of the 3x3 convolutions, each followed by a 2x2 pooling.
      hidden: width of the dense layer before the output (0 for none).
      activation: one of ``relu, gelu, tanh, softplus, silu``.
      pool: ``"avg"`` or ``"max"`` pooling.
      output_scale: factor on the logits.
      conv: how the convolutions are computed: ``"auto"`` (the default: XLA:CPU's fast form
        inside loops on the CPU, the native convolution on GPU/TPU), ``"slices"`` or
        ``"native"`` (see ``mgd.train.loop_friendly_conv``), the same numbers either way; or
        a function with ``lax.conv_general_dilated``'s signature.
    """

    config_name: ClassVar[str] = "small_cnn"
    num_classes: int = 10
    channels: tuple[int, ...] = (16, 32)
    hidden: int = 64
    activation: str = "relu"
    pool: str = "avg"
    output_scale: float = 1.0
    conv: str | Callable = "auto"

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        _check_common("SmallCNNConfig", self.num_classes, self.output_scale, self.activation)
        _check_pool("SmallCNNConfig", self.pool)
        _check_conv("SmallCNNConfig", self.conv)


class SmallCNN(nn.Module):
    """Convolutions with pooling, then dense layers: ``(b, h, w, c) -> (b, num_classes)``."""

    config: SmallCNNConfig = SmallCNNConfig()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # No batch norm or dropout.
        cfg = self.config
        act = _ACTIVATIONS[cfg.activation]
        x = _as_image(x)
        for c in cfg.channels:
            x = _pool2(act(_conv(cfg.conv, c)(x)), cfg.pool)
        x = x.reshape(x.shape[0], -1)
        if cfg.hidden:
            x = act(nn.Dense(cfg.hidden)(x))
        return nn.Dense(cfg.num_classes)(x) * cfg.output_scale


@dataclasses.dataclass(frozen=True)
class ResNet9Config:
    """Configuration of ``ResNet9``; the defaults are the standard network.

    The metasmooth variant (``ResNet9Config.metasmooth()``, or
    ``mgd/configs/models/resnet9_metasmooth.yaml``) switches on the changes the MGD paper reports
    make metagradients informative; each is its own field so it can be ablated:

    Attributes:
      num_classes: number of output logits.
      width_multiplier: factor on the channel widths (64, 128, 256, 512); the metasmooth variant
        is wider (2.0).
      bn_before_activation: ``True``: conv -> batch norm -> ReLU (metasmooth); ``False``: conv ->
        ReLU -> batch norm (standard here).
      output_scale: factor on the logits; metasmooth scales them down to 0.1.
      pool: ``"max"`` (standard) or ``"avg"`` (metasmooth), for the 2x2 and the global pooling.
      bn_momentum: decay of batch norm's running averages.
      conv: how the convolutions are computed: ``"auto"`` (the default: XLA:CPU's fast form
        inside loops on the CPU, the native convolution on GPU/TPU), ``"slices"`` or
        ``"native"`` (see ``mgd.train.loop_friendly_conv``), the same numbers either way; or
        a function with ``lax.conv_general_dilated``'s signature.

    References:
      Engstrom et al., "Optimizing ML Training with Metagradient Descent", arXiv 2503.13751, 2025.
      Page, "How to train your ResNet", 2018 (the ResNet-9 layout).
    """

    config_name: ClassVar[str] = "resnet9"
    num_classes: int = 10
    width_multiplier: float = 1.0
    bn_before_activation: bool = False
    output_scale: float = 1.0
    pool: str = "max"
    bn_momentum: float = 0.9
    conv: str | Callable = "auto"

    def __post_init__(self):
        _check_common("ResNet9Config", self.num_classes, self.output_scale)
        _check_pool("ResNet9Config", self.pool)
        _check_conv("ResNet9Config", self.conv)
        if not self.width_multiplier > 0:
            raise ValueError(
                f"ResNet9Config: width_multiplier must be positive, got {self.width_multiplier}"
            )
        if not 0 <= self.bn_momentum < 1:
            raise ValueError(
                f"ResNet9Config: bn_momentum must lie in [0, 1), got {self.bn_momentum}"
            )

    @classmethod
    def metasmooth(cls, **overrides: Any) -> ResNet9Config:
        """The metasmooth variant: BN before ReLU, logits x 0.1, average pooling, width x 2."""
        fields = dict(bn_before_activation=True, output_scale=0.1, pool="avg", width_multiplier=2.0)
        return cls(**{**fields, **overrides})

    def widths(self) -> tuple[int, int, int, int]:
        """Channel widths of the four stages."""
        return tuple(max(1, round(c * self.width_multiplier)) for c in (64, 128, 256, 512))


class _ConvBlock(nn.Module):
    channels: int
    config: ResNet9Config

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = _conv(self.config.conv, self.channels, use_bias=False, kernel_init=_CONV_INIT)(x)
        bn = nn.BatchNorm(use_running_average=not train, momentum=self.config.bn_momentum)
        if self.config.bn_before_activation:
            return nn.relu(bn(x))
        return bn(nn.relu(x))


class ResNet9(nn.Module):
    """ResNet-9, the standard fast CIFAR-10 network: ``(b, h, w, c) -> (b, num_classes)``.

    prep conv(w0); conv(w1) + pool + residual(2 convs); conv(w2) + pool; conv(w3) + pool +
    residual(2 convs); global pool; linear; times ``output_scale``. Holds batch norm statistics
    in the ``batch_stats`` collection.
    """

    config: ResNet9Config = ResNet9Config()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        w0, w1, w2, w3 = cfg.widths()
        x = _ConvBlock(w0, cfg)(_as_image(x), train)
        x = _pool2(_ConvBlock(w1, cfg)(x, train), cfg.pool)
        x = x + _ConvBlock(w1, cfg)(_ConvBlock(w1, cfg)(x, train), train)
        x = _pool2(_ConvBlock(w2, cfg)(x, train), cfg.pool)
        x = _pool2(_ConvBlock(w3, cfg)(x, train), cfg.pool)
        x = x + _ConvBlock(w3, cfg)(_ConvBlock(w3, cfg)(x, train), train)
        x = jnp.max(x, axis=(1, 2)) if cfg.pool == "max" else jnp.mean(x, axis=(1, 2))
        return nn.Dense(cfg.num_classes, use_bias=False)(x) * cfg.output_scale


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Configuration of ``Transformer``, a small decoder-only (GPT-style) language model.

    Attributes:
      num_classes: output vocabulary (logits per position); 256 for byte-level tokens.
      vocab_size: input vocabulary, at least ``num_classes``; 257 for bytes and the
        beginning-of-document token of ``mgd.train.token_windows``.
      context: longest input sequence (positions of the learned position embedding).
      d_model: width of the residual stream.
      num_layers: transformer blocks.
      num_heads: attention heads; must divide ``d_model``.
      mlp_ratio: hidden width of each block's MLP as a multiple of ``d_model``.
      positions: ``"learned"`` (an embedding per position) or ``"rotary"`` (RoPE on queries
        and keys; no position parameters).
      output_scale: factor on the logits (below 1 makes metagradients smoother, as for the
        other models).
    """

    config_name: ClassVar[str] = "transformer"
    num_classes: int = 256
    vocab_size: int = 257
    context: int = 64
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    positions: str = "learned"
    output_scale: float = 1.0

    def __post_init__(self):
        _check_common("TransformerConfig", self.num_classes, self.output_scale)
        for name in ("vocab_size", "context", "d_model", "num_layers", "num_heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"TransformerConfig: {name} must be >= 1, got {getattr(self, name)}"
                )
        if self.vocab_size < self.num_classes:
            raise ValueError(
                f"TransformerConfig: vocab_size ({self.vocab_size}) must be >= num_classes "
                f"({self.num_classes}): every predicted token is also an input"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerConfig: num_heads ({self.num_heads}) must divide d_model "
                f"({self.d_model})"
            )
        if self.positions == "rotary" and (self.d_model // self.num_heads) % 2:
            raise ValueError("TransformerConfig: rotary positions need an even head width")
        if self.positions not in ("learned", "rotary"):
            raise ValueError(
                "TransformerConfig: positions must be 'learned' or 'rotary', got "
                f"{self.positions!r}"
            )


def _rotary(x: jax.Array) -> jax.Array:
    # RoPE (Su et al. 2021) on (b, L, heads, head_dim): rotate pairs of channels by angles
    # proportional to the position, so q.k depends on the relative position only.
    length, dim = x.shape[1], x.shape[-1]
    freq = 1.0 / (10_000 ** (jnp.arange(0, dim, 2, dtype=x.dtype) / dim))
    angle = jnp.arange(length, dtype=x.dtype)[:, None] * freq[None, :]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(x.shape)


class _Block(nn.Module):
    # Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x)).
    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        b, length, d = x.shape
        head = d // c.num_heads
        qkv = nn.Dense(3 * d, use_bias=False)(nn.LayerNorm()(x))
        q, k, v = jnp.split(qkv.reshape(b, length, 3 * c.num_heads, head), 3, axis=2)
        if c.positions == "rotary":
            q, k = _rotary(q), _rotary(k)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(head, x.dtype))
        causal = jnp.tril(jnp.ones((length, length), bool))
        # A large finite negative, not -inf: a masked entry then has an exact zero weight and
        # no NaN can reach the metagradient.
        scores = jnp.where(causal, scores, jnp.asarray(-1e9, scores.dtype))
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + nn.Dense(d, use_bias=False)(attn.reshape(b, length, d))
        h = nn.Dense(c.mlp_ratio * d)(nn.LayerNorm()(x))
        return x + nn.Dense(d)(nn.gelu(h))


class Transformer(nn.Module):
    """Decoder-only transformer: token ids ``(b, L)`` -> next-token logits ``(b, L, num_classes)``.

    Token embedding (plus a learned position embedding, or rotary positions in attention),
    ``num_layers`` pre-norm blocks of causal multi-head self-attention and a GELU MLP, a final
    layer norm and a linear head. Position ``j``'s logits see tokens ``0..j`` only. Token ids
    arrive as integers (``mgd.Dataset`` keeps integer inputs as ``int32``); ``L`` is at most
    ``context``.

    Example:
      >>> model = Transformer(TransformerConfig(context=64, d_model=64, num_layers=2))
      >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32))
    """

    config: TransformerConfig = TransformerConfig()

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        del train  # No batch norm or dropout.
        c = self.config
        if tokens.ndim != 2 or tokens.shape[1] > c.context:
            raise ValueError(
                f"Transformer: tokens must have shape (b, L) with L <= context={c.context}, "
                f"got {tokens.shape}"
            )
        tokens = tokens.astype(jnp.int32)
        x = nn.Embed(c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(0.02))(tokens)
        if c.positions == "learned":
            pos = self.param("positions", nn.initializers.normal(0.02), (c.context, c.d_model))
            x = x + pos[: tokens.shape[1]].astype(x.dtype)
        for _ in range(c.num_layers):
            x = _Block(c)(x)
        return nn.Dense(c.num_classes)(nn.LayerNorm()(x)) * c.output_scale


_MODELS = {
    "mlp": (MLP, MLPConfig),
    "small_cnn": (SmallCNN, SmallCNNConfig),
    "resnet9": (ResNet9, ResNet9Config),
    "transformer": (Transformer, TransformerConfig),
}

ModelConfig = MLPConfig | SmallCNNConfig | ResNet9Config | TransformerConfig
"""The config of any model: a union tagged by each class's ``config_name``."""


def model_config(
    config: Mapping[str, Any] | ModelConfig, *, num_classes: int | None = None
) -> ModelConfig:
    """The typed config of a model from a config dict, e.g. a YAML file's ``model:`` section.

    Args:
      config: ``{"name": "mlp" | "small_cnn" | "resnet9" | "transformer", **fields}``, the
        fields of the model's config dataclass (``{"name": "resnet9", "preset": "metasmooth",
        ...}`` starts from ``ResNet9Config.metasmooth()``), or a config dataclass, returned as
        it is.
      num_classes: overrides the config's ``num_classes`` (e.g. from the dataset).

    Returns:
      An ``MLPConfig``, ``SmallCNNConfig``, ``ResNet9Config`` or ``TransformerConfig``.

    Raises:
      ValueError: for an unknown name, preset or field, or a field the config refuses.
    """
    if isinstance(config, MLPConfig | SmallCNNConfig | ResNet9Config | TransformerConfig):
        if num_classes is None:
            return config
        return dataclasses.replace(config, num_classes=num_classes)
    if not isinstance(config, Mapping):
        raise ValueError(
            f"model config must be a mapping such as {{name: mlp, hidden: [128]}}, got {config!r}"
        )
    fields = dict(config)
    name = fields.pop("name", None)
    if name not in _MODELS:
        raise ValueError(f"model config: name must be one of {sorted(_MODELS)}, got {name!r}")
    config_cls = _MODELS[name][1]
    preset = fields.pop("preset", None)
    if preset not in (None, "standard") and not (name == "resnet9" and preset == "metasmooth"):
        raise ValueError(
            f"model config: preset {preset!r} is unknown; resnet9 takes 'standard' or 'metasmooth'"
        )
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"model config: unknown field(s) {', '.join(unknown)} for {name!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    if num_classes is not None:
        fields["num_classes"] = num_classes
    if preset == "metasmooth":
        return config_cls.metasmooth(**fields)
    return config_cls(**fields)


def make_model(
    config: Mapping[str, Any] | ModelConfig, *, num_classes: int | None = None
) -> nn.Module:
    """Builds a model from its config: a config dict (see :func:`model_config`) or dataclass.

    Args:
      config: ``{"name": "mlp" | "small_cnn" | "resnet9" | "transformer", **fields}`` or an
        ``MLPConfig``, ``SmallCNNConfig``, ``ResNet9Config`` or ``TransformerConfig``.
      num_classes: overrides the config's ``num_classes`` (e.g. from the dataset).

    Returns:
      The flax linen module.

    Raises:
      ValueError: for an unknown name, preset or field.

    Example:
      >>> model = make_model({"name": "mlp", "hidden": [64]}, num_classes=10)
    """
    typed = model_config(config, num_classes=num_classes)
    return _MODELS[type(typed).config_name][0](typed)
