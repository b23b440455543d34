"""Batched classification of [0, 1] images at their own resolutions."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from fooltools import io
from fooltools.models.base import Classifier

CHUNK = 8  # images per forward pass; a fixed size so apply compiles once


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image.

    Attributes:
        indices: Class indices, most probable first, shape (k,).
        probs: Softmax probabilities of those classes, shape (k,).
        labels: Display names of those classes.
    """

    indices: tuple[int, ...]
    probs: tuple[float, ...]
    labels: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def _jitted(clf: Classifier):
    # Preprocessing jits once per image shape (cheap); the network once per chunk.
    return jax.jit(clf.preprocess), jax.jit(clf.apply)


def _one_image(img: np.ndarray) -> jax.Array:
    img = jnp.asarray(img)
    if img.ndim != 3:
        raise ValueError(f"expected one image of shape (H, W, 3), got shape {img.shape}")
    # Clipped nowhere: 8-bit values as floats were classified as a washed-out picture.
    io.require_float(img)
    io.require_pixel_range(img)
    return img


def probabilities(clf: Classifier, images: Iterable[np.ndarray]) -> np.ndarray:
    """Softmax class probabilities for images of any (possibly different) sizes.

    Args:
        clf: The classifier.
        images: Each shape (H_i, W_i, 3), float32 in [0, 1]; an iterator is consumed one
            image at a time, each reduced to the model's input before the next is drawn,
            so a generator of decoded files keeps one full-size image in memory.

    Returns:
        Shape (number of images, num_classes), float32; (0, num_classes) for no images.

    Raises:
        ValueError: ``images`` is one image, not an iterable of them; an image is not of
            shape (H, W, 3) (a batch would be cut to its first image), has an integer
            dtype, or values outside
            :data:`fooltools.io.PIXEL_RANGE`.
        ImageError: An image is too elongated for the model's resize (see
            :func:`fooltools.io.resize_shorter`); raised by the iterator's reads too.
    """
    if getattr(images, "ndim", None) == 3:
        # Iterated, one (H, W, 3) image was H images of shape (W, 3), refused as such.
        raise ValueError(
            f"expected images, one (H, W, 3) array each: for a single image of shape "
            f"{images.shape}, pass [image]"
        )
    preprocess, apply = _jitted(clf)
    inputs = [preprocess(_one_image(img))[0] for img in images]
    if not inputs:
        return np.zeros((0, len(clf.labels)), np.float32)
    out = []
    for start in range(0, len(inputs), CHUNK):
        chunk = inputs[start : start + CHUNK]
        pad = CHUNK - len(chunk)
        batch = jnp.stack(chunk + [jnp.zeros_like(chunk[0])] * pad)
        out.append(np.asarray(jax.nn.softmax(apply(clf.params, batch), axis=-1))[: len(chunk)])
    return np.concatenate(out)


def top_k(clf: Classifier, probs: np.ndarray, k: int) -> Prediction:
    """The k most probable classes of one probability vector of shape (num_classes,).

    Raises:
        ValueError: ``k`` is negative (a slice ``[:-1]`` gave all classes but one), or
            ``probs`` is not one vector (a batch: call it per row).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    probs = np.asarray(probs)
    if probs.ndim != 1:  # a batch's (N, K) was a TypeError from float() of a row
        raise ValueError(f"expected one probability vector (num_classes,), got {probs.shape}")
    idx = np.argsort(-probs, kind="stable")[:k]
    return Prediction(
        indices=tuple(int(i) for i in idx),
        probs=tuple(float(probs[i]) for i in idx),
        labels=tuple(clf.labels.name(int(i)) for i in idx),
    )
