"""Deep Dream (Mordvintsev, Olah & Tyka 2015): amplify what a layer sees in a photo.

Gradient *ascent* on the photo's pixels of the layer's energy ``mean(Phi_k(x)^2)``, with
each step normalised by the gradient's mean magnitude (so ``lr`` is the mean pixel
change per step) and a random jitter. The photo is processed over ``octaves`` scales,
smallest first: the detail added at one scale is enlarged and carried to the next, so
the patterns the layer likes appear at several sizes. The network runs at each octave's
own resolution (``native=True``), which is what makes the scales differ.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fooltools import io
from fooltools.models.base import Classifier
from fooltools.visualize import common, engine, layers, priors

STEPS, LR, OCTAVES, OCTAVE_SCALE = 20, 0.01, 3, 1.4
MIN_SIDE = 16  # smallest octave side the network still makes sense of


class Dream(NamedTuple):
    """A dreamed photo.

    Attributes:
        layer: The layer amplified.
        original: The photo at the working size, shape (H, W, 3), 8-bit grid.
        x: The dream, shape (H, W, 3), 8-bit grid.
        frames: Snapshots (each at its octave's size, (h_i, w_i, 3)), start first.
        frame_labels: A caption per frame, e.g. ``"octave 2/3, step 10"``.
        energy: ``mean(Phi(x)^2)`` of the original and of the dream, shape (2,).
    """

    layer: str
    original: np.ndarray
    x: np.ndarray
    frames: list[np.ndarray]
    frame_labels: list[str]
    energy: np.ndarray


def energy(maps: dict, layer: str) -> jax.Array:
    """The layer's mean squared activation per image, shape (N,)."""
    f = maps[layer]
    return jnp.mean(f * f, axis=tuple(range(1, f.ndim)))


def dream_loss(clf: Classifier, layer: str) -> engine.LossFn:
    """``-mean(Phi_layer(x)^2)`` per image (minimised, i.e. the energy is maximised)."""

    def loss(p, x, aux):
        del aux
        return -energy(clf.feature_maps(p, x, native=True), layer)

    return loss


@functools.lru_cache(maxsize=16)
def _optimizer(clf: Classifier, layer: str, jitter: int) -> engine.InputOptimizer:
    return engine.input_optimizer(
        dream_loss(clf, layer), clf.params, transform=engine.normalized_gradient(), jitter=jitter
    )


def _shrunk(side: int, scale: float, k: int) -> int:
    """``side / scale**k`` rounded, at least 1; 1 also where ``scale**k`` overflows a float."""
    try:
        return max(1, round(side / scale**k))
    except OverflowError:  # e.g. 1.4**5000, or 1e300**2: the side is far below 1
        return 1


def octave_shapes(shape: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """(h, w) of each octave, smallest first, the last one ``shape`` itself."""
    h, w = shape
    return [(_shrunk(h, scale, k), _shrunk(w, scale, k)) for k in reversed(range(octaves))]


def max_octaves(shape: tuple[int, int], scale: float) -> int:
    """How many octaves of an image of ``shape`` keep every side >= :data:`MIN_SIDE`.

    Args:
        shape: (H, W) of the image.
        scale: Size ratio between consecutive octaves, > 1.

    Returns:
        The largest such count; 0 when the image itself is smaller than ``MIN_SIDE``.
    """
    side = min(shape)
    if side < MIN_SIDE:
        return 0
    # round(x) >= MIN_SIDE exactly when x >= MIN_SIDE - 0.5: estimate the last k by logs
    # (a loop would take millions of steps for a scale near 1), then settle the rounding.
    k = max(0, math.floor(math.log(side / (MIN_SIDE - 0.5)) / math.log(scale)))
    while k > 0 and _shrunk(side, scale, k) < MIN_SIDE:
        k -= 1
    while _shrunk(side, scale, k + 1) >= MIN_SIDE:
        k += 1
    return k + 1


def default_every(steps: int) -> int:
    """The progress-strip period within an octave when none is given: ``steps // 2``."""
    return max(steps // 2, 1)


def _resize(x: np.ndarray | jax.Array, shape: tuple[int, int]) -> jax.Array:
    return jax.image.resize(jnp.asarray(x), (*shape, x.shape[-1]), method="linear")


def dream(
    key: jax.Array,
    clf: Classifier,
    image: np.ndarray,
    *,
    layer: str,
    octaves: int = OCTAVES,
    octave_scale: float = OCTAVE_SCALE,
    steps: int = STEPS,
    lr: float = LR,
    jitter: int | None = None,
    every: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Dream:
    """Dream on ``image`` at ``layer``.

    Args:
        key: PRNG key of the jitter.
        clf: The classifier.
        image: The photo, shape (H, W, 3) in [0, 1], used at its own size.
        layer: A name from :func:`.layers.layer_shapes`.
        octaves: Number of scales, >= 1.
        octave_scale: Size ratio between consecutive octaves, > 1.
        steps: Gradient steps per octave.
        lr: Mean pixel change per step (e.g. 0.01 = 2.55 levels of 255).
        jitter: Largest random shift per step, at most ``max(H, W)``; default
            ``max(h, w) // 16`` of each octave.
        every: Progress-strip period in steps within an octave; default ``steps // 2``.
        progress: Host callback ``progress(step)``, counting over all octaves.

    Returns:
        The :class:`Dream`; its energies measured on the 8-bit images.

    Raises:
        FoolError: Unknown layer.
        ValueError: Bad octaves, scale, lr or jitter, an octave smaller than MIN_SIDE, or
            an image of integer dtype or not in [0, 1] (see
            :func:`fooltools.io.require_pixel_range`).
    """
    layers.check_layer(clf, layer)
    common.positive("lr", lr)
    if octaves < 1 or not octave_scale > 1:
        raise ValueError("octaves must be >= 1 and octave_scale > 1")
    io.require_float(image)
    io.require_pixel_range(image)
    original = np.asarray(io.quantize(jnp.asarray(image)))
    if jitter is not None:
        # Bounded by the largest octave's side; smaller octaves wrap the same shift round.
        jitter = priors.check_jitter(jitter, max(original.shape[:2]))
    h, w = original.shape[:2]
    room = max_octaves((h, w), octave_scale)
    if room == 0:  # no number of octaves or scale helps
        raise ValueError(
            f"the image is {w}x{h} pixels, too small to dream on (each side must be >= "
            f"{MIN_SIDE}); use a larger image"
        )
    if octaves > room:
        low = (_shrunk(w, octave_scale, octaves - 1), _shrunk(h, octave_scale, octaves - 1))
        raise ValueError(
            f"the smallest of {octaves} octaves of a {w}x{h} image would be "
            f"{low[0]}x{low[1]} pixels (each side must stay >= {MIN_SIDE}); use fewer "
            f"octaves (at most {room} at scale {octave_scale:g}), a smaller octave scale "
            "or a larger image"
        )
    shapes = octave_shapes((h, w), octaves, octave_scale)
    every = default_every(steps) if every is None else every
    frames, labels = [original], ["photo"]
    detail = jnp.zeros((*shapes[0], 3), jnp.float32)
    x = original
    for k, shape in enumerate(shapes):
        # The photo at this scale plus the detail dreamed so far, enlarged to it.
        photo = _resize(original, shape)
        start = jnp.clip(photo + _resize(detail, shape), 0.0, 1.0)
        shift = max(shape) // 16 if jitter is None else jitter
        offset = k * steps
        report = None if progress is None else (lambda s, o=offset: progress(o + s))
        trace = _optimizer(clf, layer, shift).run(
            jax.random.fold_in(key, k),
            start[None],
            None,
            steps=steps,
            lr=lr,
            every=every,
            schedule="constant",
            progress=report,
        )
        for step, frame in zip(trace.frame_steps[1:], trace.frames[1:, 0], strict=True):
            frames.append(frame)
            labels.append(f"octave {k + 1}/{octaves}, step {step}")
        x = trace.x[0]
        detail = jnp.asarray(x) - photo
    maps = common.feature_fn(clf, True)(clf.params, np.stack([original, x]))
    return Dream(layer, original, x, frames, labels, np.asarray(energy(maps, layer)))
