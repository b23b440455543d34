"""Small pieces the visualisation methods share: working images and jitted feature maps."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fooltools import io
from fooltools.models.base import Classifier, Params


@functools.lru_cache(maxsize=16)
def feature_fn(clf: Classifier, native: bool) -> Callable[[Params, jax.Array], dict]:
    """``jit(clf.feature_maps)``: all named maps of (N, H, W, 3) images, compiled per shape."""
    return jax.jit(lambda p, x: clf.feature_maps(p, x, native=native))


def model_view(clf: Classifier, image: np.ndarray, size: int | None = None) -> np.ndarray:
    """The part of a photo the classifier sees, as a [0, 1] image on the 8-bit grid.

    Args:
        clf: The classifier (its resize and centre crop are applied).
        image: Shape (H, W, 3) in [0, 1].
        size: Side of the square result; default the model's input size (then this is
            exactly ``preprocess`` without the normalisation).

    Returns:
        Shape (size, size, 3) (or the input size), float32.
    """
    io.require_float(image)
    io.require_pixel_range(image)
    h, w = clf.info.input_size
    x = io.center_crop(io.resize_shorter(jnp.asarray(image), clf.info.resize), (h, w))
    if size is not None and size != h:
        x = io.resize_shorter(io.center_crop(x, min(h, w)), size)
    return np.asarray(io.quantize(x))


def fit(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink an image so that its longer side is at most ``max_side``, on the 8-bit grid.

    Args:
        image: Shape (H, W, 3) in [0, 1].
        max_side: Longest side allowed; None keeps the size.

    Returns:
        Shape (H', W', 3), aspect ratio kept (to the pixel).
    """
    io.require_float(image)
    io.require_pixel_range(image)
    shape = fitted_shape(image.shape[:2], max_side)
    if shape != image.shape[:2]:
        image = jax.image.resize(jnp.asarray(image), (*shape, 3), method="linear", antialias=True)
    return np.asarray(io.quantize(jnp.asarray(image)))


def fitted_shape(shape: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The (H, W) :func:`fit` gives an image of ``shape``: shrunk to ``max_side`` at most."""
    h, w = shape
    if max_side is None or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def flat_norm(a: np.ndarray | jax.Array) -> np.ndarray:
    """Per-example L2 norm of an array with a leading batch axis, as float64, shape (N,)."""
    a = np.asarray(a, np.float64)
    return np.sqrt(np.sum(a.reshape(a.shape[0], -1) ** 2, axis=1))


def positive(name: str, value: float) -> float:
    """``value`` if it is a finite number > 0, else raise ValueError naming it."""
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)
