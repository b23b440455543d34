"""Inverting a representation (Mahendran & Vedaldi, CVPR 2015).

Given a photo ``I0`` and a layer ``k``, find images whose layer-``k`` features match
``Phi_k(I0)``::

    min_I ||Phi_k(I) - Phi_k(I0)||^2 / ||Phi_k(I0)||^2
          + tv_weight * R_TV^beta(I) / (H W) + alpha_weight * R_alpha(I) / (3 H W 0.5^alpha)

with the total-variation prior and the L-alpha bound of :mod:`.priors` (normalised so that
a saturated pixel costs 1), from several random starts at once. Different starts end at
different images with (nearly) the same features: the reconstruction is not unique, and
what the reconstructions do not share is what the layer has thrown away.

Several layers can be inverted in one batch (one image per layer and start, each with
its own layer's loss), which compiles once for the whole set: Mahendran & Vedaldi's
figure of one photo reconstructed from every layer is one call.

The network runs on the working image at its own size (``feature_maps(native=True)``);
at the default size, the model's input size, that is exactly what the classifier sees.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools import rng
from fooltools.models.base import Classifier
from fooltools.visualize import common, engine, layers, priors

STEPS, STARTS, LR = 300, 3, 0.1
TV_WEIGHT, ALPHA_WEIGHT, BETA, ALPHA = 1.0, 1e-4, 2.0, 6.0
# The largest beta and alpha. A pixel's TV term reaches 2^(beta/2), and float32 holds an
# image's sum of them up to beta ~ 200 (beta 1000 wrote NaN images, as did inf); the bound's
# normaliser 0.5^alpha leaves float32 near alpha ~ 130. Mahendran & Vedaldi use 1-2 and 6.
MAX_EXPONENT = 100.0
# Adam with a short second-moment memory: the gradient's scale grows by orders of
# magnitude as noise turns into an image, and b2 = 0.999 lags behind (measured: about
# twice the feature distance after the same number of steps).
ADAM_B2 = 0.9


class Inversion(NamedTuple):
    """Reconstructions of one photo from one layer.

    Attributes:
        layer: The layer inverted.
        original: The photo as the network saw it, shape (H, W, 3), 8-bit grid.
        trace: The optimisation of this layer's images (``trace.x``: reconstructions,
            shape (S, H, W, 3), one per random start; ``trace.frames[0]``: the starts).
        distance: ``||Phi(x) - Phi(I0)||`` of each reconstruction, shape (S,).
        random_distance: The same for each random start (a random image), shape (S,).
        ratio: ``distance / random_distance``, shape (S,).
    """

    layer: str
    original: np.ndarray
    trace: engine.Trace
    distance: np.ndarray
    random_distance: np.ndarray
    ratio: np.ndarray


def inversion_loss(
    clf: Classifier, names: tuple[str, ...], beta: float, alpha: float
) -> engine.LossFn:
    """The objective above as ``loss(params, x, aux) -> (N,)``, image n on its own layer.

    ``aux`` holds ``targets`` and ``norms`` (layer -> features of I0 with batch axis 1,
    and their squared norm), ``select`` (N, len(names)) one-hot: which layer image n
    inverts, and the weights ``tv_weight`` and ``alpha_weight``.
    """

    def loss(p, x, aux):
        maps = clf.feature_maps(p, x, native=True)
        match = 0.0
        for k, name in enumerate(names):
            f = maps[name]
            d = jnp.sum((f - aux["targets"][name]) ** 2, axis=tuple(range(1, f.ndim)))
            match = match + aux["select"][:, k] * d / aux["norms"][name]
        tv = priors.per_pixel(priors.total_variation(x, beta), x)
        bound = priors.per_pixel(priors.l_alpha(x, alpha), x, 3 * 0.5**alpha)
        return match + aux["tv_weight"] * tv + aux["alpha_weight"] * bound

    return loss


@functools.lru_cache(maxsize=16)
def _optimizer(
    clf: Classifier, names: tuple[str, ...], beta: float, alpha: float
) -> engine.InputOptimizer:
    # One compiled loop per (model, layer set, prior shape), whatever the steps or weights.
    return engine.input_optimizer(
        inversion_loss(clf, names, beta, alpha),
        clf.params,
        transform=optax.scale_by_adam(b2=ADAM_B2),
    )


def invert(
    key: jax.Array,
    clf: Classifier,
    image: np.ndarray,
    *,
    layer: str | Sequence[str],
    starts: int = STARTS,
    steps: int = STEPS,
    size: int | None = None,
    tv_weight: float = TV_WEIGHT,
    alpha_weight: float = ALPHA_WEIGHT,
    beta: float = BETA,
    alpha: float = ALPHA,
    lr: float = LR,
    every: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Inversion]:
    """Reconstruct ``image`` from its features at one or more layers, from random starts.

    Args:
        key: PRNG key (the random starts: uniform noise in [0, 1]).
        clf: The classifier.
        image: The photo, shape (H, W, 3) in [0, 1]; its model view (resize and
            centre crop, :func:`.common.model_view`) is inverted.
        layer: A name from :func:`.layers.layer_shapes`, or several (inverted together,
            ``starts`` images each).
        starts: Random starts per layer, >= 1.
        steps: Optimiser steps.
        size: Side of the square working image; default the model's input size.
            Smaller is faster (the network runs at this size).
        tv_weight: Weight of the total-variation prior, > 0.
        alpha_weight: Weight of the L-alpha bound, > 0.
        beta: TV exponent (2: smooth; towards 1: sharper edges), 1 to :data:`MAX_EXPONENT`.
        alpha: Exponent of the L-alpha bound, 1 to :data:`MAX_EXPONENT`.
        lr: Adam's learning rate (cosine decay to 0), in pixel units.
        every: Progress-strip period in steps; default ``ceil(steps / 8)``.
        progress: Host callback ``progress(step)``.

    Returns:
        One :class:`Inversion` per layer, in the order given; distances are measured on
        the 8-bit reconstructions.

    Raises:
        FoolError: Unknown layer.
        ValueError: Non-positive weights or lr, starts < 1, beta or alpha outside
            [1, MAX_EXPONENT], no layer, or an image of integer dtype or not in [0, 1].
    """
    names = (layer,) if isinstance(layer, str) else tuple(layer)
    if not names:
        raise ValueError("give at least one layer")
    names = tuple(layers.check_layer(clf, name) for name in names)
    for name, value in (("tv_weight", tv_weight), ("alpha_weight", alpha_weight), ("lr", lr)):
        common.positive(name, value)
    if starts < 1 or not 1 <= beta <= MAX_EXPONENT or not 1 <= alpha <= MAX_EXPONENT:
        raise ValueError(f"starts must be >= 1 and beta, alpha in [1, {MAX_EXPONENT:g}]")
    original = common.model_view(clf, image, size)
    feats = common.feature_fn(clf, True)
    maps = feats(clf.params, original[None])
    targets = {name: maps[name] for name in names}
    n = len(names) * starts
    x0 = rng.uniform(key, (n, *original.shape))
    aux = {
        "targets": targets,
        "norms": {k: jnp.maximum(jnp.sum(t**2), 1e-12) for k, t in targets.items()},
        "select": jnp.repeat(jnp.eye(len(names), dtype=jnp.float32), starts, axis=0),
        "tv_weight": jnp.float32(tv_weight),
        "alpha_weight": jnp.float32(alpha_weight),
    }
    trace = _optimizer(clf, names, float(beta), float(alpha)).run(
        key, x0, aux, steps=steps, lr=lr, every=every, progress=progress
    )
    # Starts and results in one batch of a fixed size: one compiled forward pass.
    after = feats(clf.params, np.concatenate([trace.frames[0], trace.x]))
    out = []
    for k, name in enumerate(names):
        rows = slice(k * starts, (k + 1) * starts)
        d = common.flat_norm(after[name][n:][rows] - targets[name])
        d0 = common.flat_norm(after[name][:n][rows] - targets[name])
        sub = engine.Trace(
            trace.x[rows], trace.frames[:, rows], trace.frame_steps, trace.losses[:, rows]
        )
        out.append(Inversion(name, original, sub, d, d0, d / d0))
    return out
