"""torchvision's ``MultiScaleRoIAlign`` (``aligned=False``), fixed-size and differentiable.

Each box is assigned a pyramid level by ``LevelMapper`` (canonical scale 224 at level 4,
eps 1e-6) and pooled by RoIAlign on that level only. Instead of torchvision's per-level
gather-and-scatter (variable-size index sets), the levels are flattened into one table
and every box reads its own level's rows through per-box offsets: one gather for all
boxes, at the cost of one level, with no dynamic shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6


def infer_scales(feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> list:
    """Per-level ``spatial_scale``: 2 ** round(log2(feature / image)), from the heights.

    Args:
        feature_sizes: (h, w) of each pooled level.
        image_size: (height, width) of the resized, unpadded image (torchvision uses the
            largest image of the batch; here all images of a batch share one size).

    Returns:
        One power of two per level, as torchvision's ``_infer_scale``.
    """
    return [
        2.0 ** float(np.round(np.log2(np.float32(h / image_size[0])))) for h, _ in feature_sizes
    ]


def map_levels(boxes: jax.Array, k_min: int, k_max: int) -> jax.Array:
    """``LevelMapper``: the pyramid level index (0 = ``k_min``) of each box.

    Args:
        boxes: (..., 4) ``(x1, y1, x2, y2)`` in image pixels.
        k_min: Level of the finest pooled map (2 for stride 4).
        k_max: Level of the coarsest pooled map.

    Returns:
        (...,) int32 in [0, k_max - k_min].
    """
    s = jnp.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    lvl = jnp.floor(CANONICAL_LEVEL + jnp.log2(s / CANONICAL_SCALE) + jnp.float32(LEVEL_EPS))
    return (jnp.clip(lvl, k_min, k_max) - k_min).astype(jnp.int32)


def multiscale_roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    image_size: tuple[int, int],
    *,
    output_size: int = 7,
    sampling_ratio: int = 2,
) -> jax.Array:
    """Pool each box from its pyramid level, as ``MultiScaleRoIAlign`` for one image.

    Args:
        features: Per pooled level (h, w, C) of one image (levels "0".."3").
        boxes: (P, 4) ``(x1, y1, x2, y2)`` in resized-image pixels.
        image_size: (height, width) of the resized, unpadded image.
        output_size: Pooled height and width.
        sampling_ratio: Bilinear samples per bin along each axis (> 0).

    Returns:
        (P, output_size, output_size, C), differentiable w.r.t. ``features``.
    """
    sizes = [f.shape[:2] for f in features]
    scales = infer_scales(sizes, image_size)
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    level = map_levels(boxes, k_min, k_max)
    table = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features])
    starts = np.cumsum([0] + [h * w for h, w in sizes[:-1]])
    scale = jnp.asarray(scales, jnp.float32)[level]
    height = jnp.asarray([h for h, _ in sizes], jnp.int32)[level]
    width = jnp.asarray([w for _, w in sizes], jnp.int32)[level]
    offset = jnp.asarray(starts, jnp.int32)[level]

    # roi_align's geometry (aligned=False): no half-pixel shift, boxes at least 1x1.
    x1, y1, x2, y2 = (boxes[:, i] * scale for i in range(4))
    roi_w = jnp.maximum(x2 - x1, 1.0)
    roi_h = jnp.maximum(y2 - y1, 1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    grid = jnp.arange(output_size, dtype=jnp.float32)
    sub = (jnp.arange(sampling_ratio, dtype=jnp.float32) + 0.5) / sampling_ratio
    # Sample coordinates: (P, bins, samples) along each axis.
    ys = y1[:, None, None] + grid[None, :, None] * bin_h[:, None, None]
    ys = ys + sub[None, None, :] * bin_h[:, None, None]
    xs = x1[:, None, None] + grid[None, :, None] * bin_w[:, None, None]
    xs = xs + sub[None, None, :] * bin_w[:, None, None]

    def axis_taps(c: jax.Array, size: jax.Array) -> tuple[jax.Array, ...]:
        # bilinear_interpolate's per-axis rule: outside [-1, size] contributes 0; clamp
        # to 0 from below; at or past the last row, both taps are the last row.
        size = size[:, None, None]
        inside = (c >= -1.0) & (c <= size.astype(jnp.float32))
        c = jnp.maximum(c, 0.0)
        low = jnp.floor(c).astype(jnp.int32)
        at_end = low >= size - 1
        low = jnp.where(at_end, size - 1, low)
        high = jnp.where(at_end, size - 1, low + 1)
        frac = jnp.where(at_end, 0.0, c - low.astype(jnp.float32))
        return low, high, frac, inside

    y_lo, y_hi, ly, y_in = axis_taps(ys, height)
    x_lo, x_hi, lx, x_in = axis_taps(xs, width)
    # Broadcast to (P, by, bx, sy, sx): y indices vary on axes 1 and 3, x on 2 and 4.
    yi = lambda a: a[:, :, None, :, None]  # noqa: E731
    xi = lambda a: a[:, None, :, None, :]  # noqa: E731
    base = offset[:, None, None, None, None]
    w_row = width[:, None, None, None, None]

    def tap(y: jax.Array, x: jax.Array) -> jax.Array:
        return table[base + yi(y) * w_row + xi(x)]  # (P, by, bx, sy, sx, C)

    hy, hx = 1.0 - ly, 1.0 - lx
    value = (
        (yi(hy) * xi(hx))[..., None] * tap(y_lo, x_lo)
        + (yi(hy) * xi(lx))[..., None] * tap(y_lo, x_hi)
        + (yi(ly) * xi(hx))[..., None] * tap(y_hi, x_lo)
        + (yi(ly) * xi(lx))[..., None] * tap(y_hi, x_hi)
    )
    value = jnp.where((yi(y_in) & xi(x_in))[..., None], value, 0.0)
    return value.mean(axis=(3, 4))  # average over the sampling_ratio**2 samples per bin
