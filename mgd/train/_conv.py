"""A convolution that XLA:CPU runs fast inside loops, for flax's ``nn.Conv(conv_general_dilated=)``.

XLA:CPU runs ``lax.conv_general_dilated`` and its gradients fast at the top level of a program
but up to 25x slower inside a loop body (``lax.scan``, ``fori_loop``; jax-ml/jax issue #12868),
and every program mgd runs keeps its training steps in loops. The same convolution written as a
zero pad, one strided slice of the input per kernel offset concatenated along the channels, and
one matrix product with the reshaped kernel (a 3x3 window: nine slices, one matmul) runs at the
native convolution's top-level speed inside loops, and so do its derivatives (slices transpose to
pads, the matmul to matmuls).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["loop_friendly_conv"]

CONV_IMPLS = ("auto", "slices", "native")


def _check_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"loop_friendly_conv: impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        # Decided when traced: GPU and TPU convolutions are fast in loops, keep them native.
        return "slices" if jax.default_backend() == "cpu" else "native"
    return impl


def _pads(padding, in_shape, kernel_shape, strides, lhs_dilation, rhs_dilation):
    # Exactly lax.conv_general_dilated's resolution of the padding argument.
    if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
        raise ValueError(
            "loop_friendly_conv: padding must be 'SAME', 'VALID', 'SAME_LOWER' or (low, high) "
            f"pairs, got {padding!r}"
        )
    if isinstance(padding, str):
        if any(d != 1 for d in lhs_dilation):
            raise ValueError(
                "loop_friendly_conv: string padding with lhs_dilation is not defined (as in "
                "lax.conv_general_dilated); pass explicit (low, high) pairs"
            )
        effective = [(k - 1) * r + 1 for k, r in zip(kernel_shape, rhs_dilation, strict=True)]
        return tuple(lax.padtype_to_pads(in_shape, effective, strides, padding))
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(
            "loop_friendly_conv: padding must be 'SAME', 'VALID', 'SAME_LOWER' or a sequence of "
            f"(low, high) pairs, one per spatial dimension, got {padding!r}"
        ) from None
    if len(pads) != len(in_shape):
        raise ValueError(
            f"loop_friendly_conv: padding has {len(pads)} (low, high) pairs for "
            f"{len(in_shape)} spatial dimensions; pass one pair per spatial dimension"
        )
    return pads


def _slices_conv(x, w, strides, pads, lhs_dilation, rhs_dilation, groups, precision, out_dtype):
    # x: (n, *spatial, c) channels last; w: (*window, c // groups, o).
    window, (c_in, c_out) = w.shape[:-2], w.shape[-2:]
    config = [(0, 0, 0)]
    config += [(lo, hi, d - 1) for (lo, hi), d in zip(pads, lhs_dilation, strict=True)]
    x = lax.pad(x, jnp.zeros((), x.dtype), config + [(0, 0, 0)])
    size = x.shape[1:-1]
    out = [
        (s - (k - 1) * r - 1) // st + 1
        for s, k, r, st in zip(size, window, rhs_dilation, strides, strict=True)
    ]
    if any(o <= 0 for o in out):
        raise ValueError(
            f"loop_friendly_conv: the (dilated) window {tuple(window)} does not fit the padded "
            f"input {tuple(size)}; pad more or use a smaller window"
        )
    # One strided slice per window offset, offsets in the kernel's row-major order, so that the
    # concatenated channels line up with w reshaped to (prod(window) * c_in, c_out).
    taps = []
    for offset in itertools.product(*(range(k) for k in window)):
        start = [i * r for i, r in zip(offset, rhs_dilation, strict=True)]
        limit = [b + (o - 1) * st + 1 for b, o, st in zip(start, out, strides, strict=True)]
        taps.append(
            lax.slice(x, [0, *start, 0], [x.shape[0], *limit, x.shape[-1]], [1, *strides, 1])
        )
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    k = math.prod(window)
    if groups == 1:
        return jnp.dot(
            patches,
            w.reshape(k * c_in, c_out),
            precision=precision,
            preferred_element_type=out_dtype,
        )
    # Grouped: the patch channels are (offset, group, channel in group); one batched product.
    lead = patches.shape[:-1]
    patches = patches.reshape(*lead, k, groups, c_in)
    w = w.reshape(k, c_in, groups, c_out // groups)
    y = jnp.einsum(
        "...kgi,kigo->...go", patches, w, precision=precision, preferred_element_type=out_dtype
    )
    return y.reshape(*lead, c_out)


def loop_friendly_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    impl: str = "auto",
) -> jax.Array:
    """``lax.conv_general_dilated`` in a form XLA:CPU runs fast inside loops; a drop-in for it.

    Same signature and the same numbers (up to float rounding) as ``lax.conv_general_dilated``,
    derivatives of every order included, so it can be handed to flax:
    ``nn.Conv(features, (3, 3), conv_general_dilated=mgd.train.loop_friendly_conv)``.

    XLA:CPU runs a native convolution, and above all its kernel and input gradients, up to 25x
    slower inside a ``lax.scan`` or ``fori_loop`` body than at the top level of a program
    (jax-ml/jax issue #12868), and ``TrainingSetup.train`` and ``mgd.metagradient`` run every step
    inside loops. On the CPU this function zero-pads the input, takes one strided slice per
    window offset (9 for a 3x3 window), concatenates them along the channels and multiplies by the
    kernel reshaped to a matrix: a small CNN then trains as fast in a loop as its native
    convolution does outside one. The slices hold ``prod(window)`` times the input, kept as a
    residual for the kernel gradient.

    Args:
      lhs: input, e.g. ``(n, h, w, c)`` with ``dimension_numbers=("NHWC", "HWIO", "NHWC")``
        (flax's layout); any layout ``lax.conv_general_dilated`` takes.
      rhs: kernel, e.g. ``(kh, kw, c // feature_group_count, o)``.
      window_strides: one stride per spatial dimension.
      padding: ``"SAME"``, ``"VALID"``, ``"SAME_LOWER"`` or one ``(low, high)`` pair per spatial
        dimension (negative values crop).
      lhs_dilation: input dilation per spatial dimension (transposed convolutions); default 1.
      rhs_dilation: kernel (atrous) dilation per spatial dimension; default 1.
      dimension_numbers: as for ``lax.conv_general_dilated``; ``None`` means NCHW / OIHW.
      feature_group_count: number of feature groups (depthwise: the input channels).
      batch_group_count: must be 1.
      precision: passed to the matrix product (or the native convolution).
      preferred_element_type: output dtype of the products, as for ``lax.conv_general_dilated``.
      impl: ``"auto"`` (default): the slices on the CPU, the native convolution on GPU and TPU,
        decided by ``jax.default_backend()`` when traced; ``"slices"`` or ``"native"`` force one
        (``functools.partial(loop_friendly_conv, impl="native")`` for flax).

    Returns:
      The convolution, laid out as ``dimension_numbers`` says, e.g. ``(n, h', w', o)``.

    Raises:
      ValueError: for an unknown ``impl``, ``batch_group_count != 1``, an unknown padding
        string or malformed pairs, string padding with ``lhs_dilation``, entries that do not
        match the spatial dimensions or feature groups, or a window larger than the padded input.

    Example:
      >>> import flax.linen as nn
      >>> conv = nn.Conv(16, (3, 3), conv_general_dilated=loop_friendly_conv)
    """
    impl = _check_impl(impl)
    if batch_group_count != 1:
        raise ValueError(
            f"loop_friendly_conv: batch_group_count must be 1, got {batch_group_count}; "
            "use lax.conv_general_dilated (impl='native') for batch-grouped convolutions"
        )
    if impl == "native":
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    n_spatial = lhs.ndim - 2
    strides = tuple(int(s) for s in window_strides)
    lhs_dilation = (1,) * n_spatial if lhs_dilation is None else tuple(lhs_dilation)
    rhs_dilation = (1,) * n_spatial if rhs_dilation is None else tuple(rhs_dilation)
    if not len(strides) == len(lhs_dilation) == len(rhs_dilation) == n_spatial:
        raise ValueError(
            f"loop_friendly_conv: window_strides, lhs_dilation and rhs_dilation need one entry "
            f"per spatial dimension ({n_spatial}), got {strides}, {lhs_dilation}, {rhs_dilation}"
        )
    dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    lhs_perm, rhs_perm, out_perm = dnums
    # Work channels last: x (n, *spatial, c), w (*window, i, o), y (n, *spatial, o).
    x_axes = (lhs_perm[0], *lhs_perm[2:], lhs_perm[1])
    w_axes = (*rhs_perm[2:], rhs_perm[1], rhs_perm[0])
    x = lhs if x_axes == tuple(range(lhs.ndim)) else jnp.transpose(lhs, x_axes)
    w = rhs if w_axes == tuple(range(rhs.ndim)) else jnp.transpose(rhs, w_axes)
    c_in, c_out = x.shape[-1], w.shape[-1]
    if c_in != w.shape[-2] * feature_group_count or c_out % feature_group_count:
        raise ValueError(
            f"loop_friendly_conv: {c_in} input channels and {c_out} kernel outputs do not fit "
            f"feature_group_count={feature_group_count} with kernel input size {w.shape[-2]}; "
            "the input channels must equal kernel inputs x groups, the outputs divide by groups"
        )
    pads = _pads(padding, x.shape[1:-1], w.shape[:-2], strides, lhs_dilation, rhs_dilation)
    out_dtype = None if preferred_element_type is None else jnp.dtype(preferred_element_type)
    y = _slices_conv(
        x, w, strides, pads, lhs_dilation, rhs_dilation, feature_group_count, precision, out_dtype
    )
    y_axes = (out_perm[0], *out_perm[2:], out_perm[1])
    return y if y_axes == tuple(range(y.ndim)) else jnp.transpose(y, np.argsort(y_axes))
