"""torchvision's ``GeneralizedRCNNTransform`` (eval mode), differentiable, NHWC.

Normalise with the ImageNet mean/std, resize bilinearly (align_corners=False, no
antialiasing) so the short side is ``min_size`` and the long side at most ``max_size``,
and zero-pad to a multiple of ``size_divisible``. Output sizes follow torch's arithmetic
exactly (scale in Python double, sizes truncated) and the resize is two static
interpolation matrices with ATen's float32 weights, so it is a linear map of the input:
attacks differentiate through it and it jits once per input shape.
"""

from __future__ import annotations

import math
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np


class TransformConfig(Protocol):
    """The settings :func:`transform` reads (a ``FasterRCNNConfig`` has them)."""

    min_size: int
    max_size: int
    size_divisible: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


def resized_size(config: TransformConfig, height: int, width: int) -> tuple[int, int]:
    """Size after ``GeneralizedRCNNTransform.resize`` (Python double, truncated, as torch)."""
    scale = min(config.min_size / min(height, width), config.max_size / max(height, width))
    return int(height * scale), int(width * scale)


def padded_size(config: TransformConfig, size: tuple[int, int]) -> tuple[int, int]:
    """``size`` rounded up to a multiple of ``config.size_divisible``."""
    d = config.size_divisible
    return tuple(int(math.ceil(s / d) * d) for s in size)


def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of torch's bilinear resize (align_corners=False, no antialias).

    Mirrors ATen's ``area_pixel_compute_source_index`` + ``guard_index_and_lambda`` in
    float32: source ``(d + 0.5) * src / dst - 0.5``, clamped at 0, last row repeated.
    """
    m = np.zeros((dst, src), np.float32)
    if src == dst:
        return np.eye(src, dtype=np.float32)
    scale = np.float32(src) / np.float32(dst)
    real = np.maximum(scale * (np.arange(dst, dtype=np.float32) + np.float32(0.5)) - 0.5, 0)
    real = real.astype(np.float32)
    low = np.minimum(np.floor(real).astype(np.int64), src - 1)
    lam = np.clip(real - low.astype(np.float32), 0, 1).astype(np.float32)
    high = np.where(low < src - 1, low + 1, low)
    np.add.at(m, (np.arange(dst), low), 1 - lam)
    np.add.at(m, (np.arange(dst), high), lam)
    return m


def transform(config: TransformConfig, x: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
    """``GeneralizedRCNNTransform``: normalise, resize, pad (differentiable in ``x``).

    Args:
        config: The model's settings.
        x: RGB images in [0, 1], (N, H, W, 3).

    Returns:
        ``(images, image_size)``: (N, Hp, Wp, 3) normalised, resized, zero-padded images,
        and the resized (h, w) before padding (static).
    """
    n, h, w, _ = x.shape
    oh, ow = resized_size(config, h, w)
    mean, std = jnp.asarray(config.image_mean), jnp.asarray(config.image_std)
    x = (x - mean) / std
    hi = jax.lax.Precision.HIGHEST  # exact float32 sums on accelerators too
    x = jnp.einsum("ph,nhwc->npwc", bilinear_matrix(h, oh), x, precision=hi)
    x = jnp.einsum("qw,npwc->npqc", bilinear_matrix(w, ow), x, precision=hi)
    ph, pw = padded_size(config, (oh, ow))
    return jnp.pad(x, ((0, 0), (0, ph - oh), (0, pw - ow), (0, 0))), (oh, ow)
