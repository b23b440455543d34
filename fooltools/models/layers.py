"""Convolution primitives shared by the ported model families.

All functions take NHWC activations and are pure, so they jit, vmap and differentiate.
Padding follows TensorFlow's "SAME" rule computed from the actual input shape, which is
what the EfficientNet-Lite weights were trained with (asymmetric: the extra pixel goes
bottom/right), so a model runs at any input resolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


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
    y = lax.conv_general_dilated(
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


def depthwise_shifted(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """Depthwise TF-"SAME" convolution as a sum of k*k shifted, channel-scaled slices.

    XLA:CPU lowers grouped convolutions (``feature_group_count = C``) to a slow generic
    loop; this form fuses into one elementwise kernel and is 10-30x faster there.

    Args:
        x: Input, shape (N, H, W, C).
        kernel: Per-channel weights, shape (k, k, C).
        bias: Shape (C,).
        stride: Stride along both spatial axes.

    Returns:
        Shape (N, ceil(H / stride), ceil(W / stride), C).
    """
    k = kernel.shape[0]
    n, h, w, c = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    xp = pad_same(x, k, stride)
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
    return out + bias


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
