"""Convolution primitives shared by the ported model families.

All functions take NHWC activations and are pure, so they jit, vmap and differentiate.
Padding follows TensorFlow's "SAME" rule computed from the actual input shape, which is
what the EfficientNet-Lite weights were trained with (asymmetric: the extra pixel goes
bottom/right), so a model runs at any input resolution.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
# The same kernel stored with its feature axes swapped, (k, k, Cout, Cin): "HWOI".
_NHWC_HWOI = lax.ConvDimensionNumbers((0, 3, 1, 2), (2, 3, 0, 1), (0, 3, 1, 2))


def conv_general_dilated(
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
) -> jax.Array:
    """``lax.conv_general_dilated`` whose input gradient XLA:CPU runs as fast in a loop.

    The input gradient of a convolution is a convolution with the kernel's feature axes
    swapped ("HWOI"). XLA:CPU's fast (Eigen) convolution takes only HWIO kernels: in a
    straight-line program it hoists one transposed copy of each kernel, but inside a
    rolled while loop (an attack's iterations) it ran the HWOI convolutions with its
    generic loops, ~3x slower (3 convs on 8 x 128 x 128 images, 10 gradient steps: 7.8 s
    rolled vs 2.8 s unrolled). Here the backward pass takes the vjp of the same
    convolution written on an explicitly transposed kernel, so its input-gradient
    convolution reads an HWIO array: the same numbers (JAX's own transpose rule, on the
    same function), as fast in a loop as unrolled.

    Same arguments and result as ``lax.conv_general_dilated``; NHWC/HWIO convolutions
    without groups take this path, the others are passed through.
    """
    kw = {
        "window_strides": tuple(window_strides),
        "padding": padding if isinstance(padding, str) else tuple(map(tuple, padding)),
        "lhs_dilation": None if lhs_dilation is None else tuple(lhs_dilation),
        "rhs_dilation": None if rhs_dilation is None else tuple(rhs_dilation),
        "precision": precision,
        "preferred_element_type": preferred_element_type,
    }
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != _NHWC_HWIO or feature_group_count != 1 or batch_group_count != 1:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            dimension_numbers=dn,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            **kw,
        )
    return _conv(tuple(kw.items()), lhs, rhs)


def _lax_conv(kw: tuple, dn: lax.ConvDimensionNumbers, x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, dimension_numbers=dn, **dict(kw))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(kw: tuple, x: jax.Array, w: jax.Array) -> jax.Array:
    return _lax_conv(kw, _NHWC_HWIO, x, w)


def _conv_fwd(kw: tuple, x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple]:
    return _lax_conv(kw, _NHWC_HWIO, x, w), (x, w)


def _conv_bwd(kw: tuple, res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    wt = jnp.swapaxes(w, 2, 3)  # HWOI storage of the same kernel
    # Two vjps: what is not needed (the kernel's gradient in an attack, the input's in
    # the first layer's training) is dead code to XLA.
    gx = jax.vjp(lambda x: _lax_conv(kw, _NHWC_HWOI, x, wt), x)[1](g)[0]
    gw = jax.vjp(lambda w: _lax_conv(kw, _NHWC_HWIO, x, w), w)[1](g)[0]
    return gx, gw


_conv.defvjp(_conv_fwd, _conv_bwd)

# flax's nn.Conv on the convolution above: the detectors' torch-ported modules take it.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding along one axis.

    Args:
        size: Input length along the axis.
        kernel: Kernel length.
        stride: Stride.

    Returns:
        ``(before, after)`` padding; ``after`` gets the odd pixel, as in TensorFlow.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: jax.Array, kernel: int, stride: int) -> jax.Array:
    """Zero-pad ``x`` of shape (N, H, W, C) for a TF-"SAME" k x k convolution."""
    ph = same_padding(x.shape[1], kernel, stride)
    pw = same_padding(x.shape[2], kernel, stride)
    return jnp.pad(x, ((0, 0), ph, pw, (0, 0)))


def conv2d_same(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """Dense TF-"SAME" convolution.

    Args:
        x: Input, shape (N, H, W, Cin).
        kernel: Weights, shape (k, k, Cin, Cout) (HWIO).
        bias: Shape (Cout,).
        stride: Stride along both spatial axes.

    Returns:
        Shape (N, ceil(H / stride), ceil(W / stride), Cout).
    """
    k = kernel.shape[0]
    y = conv_general_dilated(
        pad_same(x, k, stride),
        kernel,
        window_strides=(stride, stride),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + bias


def pointwise(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """1 x 1 convolution as a matmul over channels: (N, H, W, Cin) @ (Cin, Cout) + (Cout,)."""
    return jnp.dot(x, kernel) + bias


def _taps(xp: jax.Array, kernel: jax.Array, stride: int, oh: int, ow: int) -> jax.Array:
    # sum_{i,j} xp[:, s*y + i, s*x + j, :] * kernel[i, j]: one fused elementwise kernel.
    n, _, _, c = xp.shape
    k = kernel.shape[0]
    out = None
    for i in range(k):
        for j in range(k):
            tap = lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1, c),
                (1, stride, stride, 1),
            )
            term = tap * kernel[i, j]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def depthwise_shifted(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """Depthwise TF-"SAME" convolution as a sum of k*k shifted, channel-scaled slices.

    XLA:CPU lowers grouped convolutions (``feature_group_count = C``) to a slow generic
    loop; this form fuses into one elementwise kernel and is 10-30x faster there. Its
    gradient is written by hand in the same form (a stride-1 depthwise correlation of the
    stride-dilated output gradient with the flipped kernel): JAX's automatic transpose of
    the k*k strided slices is k*k full-size pads, about 3x slower for a whole network.

    Args:
        x: Input, shape (N, H, W, C).
        kernel: Per-channel weights, shape (k, k, C).
        bias: Shape (C,).
        stride: Stride along both spatial axes.

    Returns:
        Shape (N, ceil(H / stride), ceil(W / stride), C).
    """
    oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    return _taps(pad_same(x, kernel.shape[0], stride), kernel, stride, oh, ow) + bias


def _depthwise_fwd(x, kernel, bias, stride):
    return depthwise_shifted(x, kernel, bias, stride), (x, kernel)


def _depthwise_bwd(stride, res, gy):
    x, kernel = res
    k = kernel.shape[0]
    n, h, w, c = x.shape
    oh, ow = gy.shape[1], gy.shape[2]
    ph, pw = same_padding(h, k, stride), same_padding(w, k, stride)
    hp, wp = h + sum(ph), w + sum(pw)
    # Dilate gy by the stride and pad by k - 1 so that a VALID stride-1 correlation with the
    # flipped kernel yields the gradient of every padded input position.
    gd = lax.pad(
        gy,
        jnp.zeros((), gy.dtype),
        (
            (0, 0, 0),
            (k - 1, hp - (oh - 1) * stride - 1, stride - 1),
            (k - 1, wp - (ow - 1) * stride - 1, stride - 1),
            (0, 0, 0),
        ),
    )
    gx = _taps(gd, kernel[::-1, ::-1], 1, hp, wp)[:, ph[0] : ph[0] + h, pw[0] : pw[0] + w]
    # Kernel and bias cotangents; XLA drops them when only the input gradient is used.
    xp = pad_same(x, k, stride)
    taps = [
        [
            jnp.sum(
                lax.slice(
                    xp,
                    (0, i, j, 0),
                    (n, i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1, c),
                    (1, stride, stride, 1),
                )
                * gy,
                axis=(0, 1, 2),
            )
            for j in range(k)
        ]
        for i in range(k)
    ]
    gk = jnp.stack([jnp.stack(row) for row in taps])
    return gx, gk, jnp.sum(gy, axis=(0, 1, 2))


depthwise_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_grouped(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """Depthwise TF-"SAME" convolution via ``feature_group_count`` (fast on GPU/TPU).

    Args and returns as :func:`depthwise_shifted`.
    """
    k, _, c = kernel.shape
    y = lax.conv_general_dilated(
        pad_same(x, k, stride),
        kernel.reshape(k, k, 1, c),
        window_strides=(stride, stride),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )
    return y + bias


def depthwise(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """Depthwise convolution, choosing the fast implementation for the default backend.

    The choice is made at trace time; both implementations compute the same function
    (tests check them against each other).
    """
    if jax.default_backend() == "cpu":
        return depthwise_shifted(x, kernel, bias, stride)
    return depthwise_grouped(x, kernel, bias, stride)


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6), the activation of the Lite family (quantisation friendly)."""
    return jnp.clip(x, 0.0, 6.0)
