"""Neural style transfer (Gatys, Ecker & Bethge, CVPR 2016) on any registered classifier.

Find an image with the *content* of one photo and the *style* of another::

    min_x  content_weight * ||Phi_c(x) - Phi_c(content)||^2 / ||Phi_c(content)||^2
         + style_weight * mean_l ||G_l(x) - G_l(style)||^2 / ||G_l(style)||^2
         + tv_weight * R_TV(x) / (H W)

where ``Phi_c`` is a higher layer's feature map and ``G_l = F_l^T F_l / (h w)`` is the
Gram matrix (channel co-occurrence, position-free) of a lower layer's map ``F_l`` of
shape (h w, C). Each term is normalised by its target's size, so the default weights
do not depend on the network. Layers default to the rule of :mod:`.layers` (Gatys's
VGG choice transposed: the first map of every resolution for style, the second map at
stride 16 for content). The network runs at the image's own size (``native=True``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools import io
from fooltools.errors import ImageError
from fooltools.models.base import Classifier
from fooltools.visualize import common, engine, layers, priors

STEPS, LR, SIZE = 300, 0.02, 256
CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = 1.0, 10.0, 0.3
ADAM_B2 = 0.9  # as in .inversion: the gradient's scale changes fast, b2 = 0.999 lags


class Stylization(NamedTuple):
    """A stylised image and the losses that judge it (all on 8-bit images).

    Attributes:
        content_layer: The content layer.
        style_layers: The style layers.
        content: The content image at the working size, shape (H, W, 3).
        style: The style image cropped and resized to (H, W, 3).
        trace: The optimisation (``trace.x[0]``: the result, shape (H, W, 3)).
        style_loss: Style loss (the mean relative Gram distance above) of the result.
        content_style_loss: Style loss of the content image itself (the starting point).
        content_loss: Relative content distance of the result.
    """

    content_layer: str
    style_layers: tuple[str, ...]
    content: np.ndarray
    style: np.ndarray
    trace: engine.Trace
    style_loss: float
    content_style_loss: float
    content_loss: float


def gram(f: jax.Array) -> jax.Array:
    """Gram matrices ``F^T F / (h w)`` of maps (N, h, w, C), shape (N, C, C)."""
    n, h, w, c = f.shape
    f = f.reshape(n, h * w, c)
    return jnp.einsum("npc,npd->ncd", f, f) / (h * w)


def relative(a: jax.Array, target: jax.Array) -> jax.Array:
    """``||a - target||^2 / ||target||^2`` per example, shape (N,); target has batch 1."""
    axes = tuple(range(1, a.ndim))
    return jnp.sum((a - target) ** 2, axis=axes) / jnp.maximum(jnp.sum(target**2), 1e-12)


def style_distance(maps: dict, targets: dict, style_layers: Sequence[str]) -> jax.Array:
    """Mean over ``style_layers`` of the relative Gram distance to ``targets``, shape (N,).

    Args:
        maps: Feature maps of the images (name -> (N, h, w, C)).
        targets: Layer name -> target Gram matrix, shape (1, C, C).
        style_layers: Which layers count.
    """
    return sum(relative(gram(maps[k]), targets[k]) for k in style_layers) / len(style_layers)


def style_loss(clf: Classifier, content_layer: str, style_layers: tuple[str, ...]) -> engine.LossFn:
    """The objective above as ``loss(params, x, aux) -> (N,)``.

    ``aux`` holds ``content`` (the content layer's map, batch 1), ``grams`` (layer ->
    (1, C, C)) and the three weights.
    """

    def loss(p, x, aux):
        maps = clf.feature_maps(p, x, native=True)
        content = relative(maps[content_layer], aux["content"])
        style = style_distance(maps, aux["grams"], style_layers)
        tv = priors.per_pixel(priors.total_variation(x), x)
        return aux["content_weight"] * content + aux["style_weight"] * style + aux["tv_weight"] * tv

    return loss


@functools.lru_cache(maxsize=16)
def _optimizer(
    clf: Classifier, content_layer: str, style_layers: tuple[str, ...]
) -> engine.InputOptimizer:
    return engine.input_optimizer(
        style_loss(clf, content_layer, style_layers),
        clf.params,
        transform=optax.scale_by_adam(b2=ADAM_B2),
    )


def match_size(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (shorter side) and centre-crop ``image`` to exactly ``shape`` = (H, W).

    Args:
        image: The style image, (H0, W0, 3) in [0, 1].
        shape: (H, W) of the content image.

    Returns:
        (H, W, 3) on the 8-bit grid.

    Raises:
        ImageError: ``image`` is more than :data:`fooltools.io.MAX_ASPECT`
            times as elongated as ``shape``: the resize before the crop would be that many
            times the content's size (a 1 x 20000 strip for 512 x 512 asked for 63 GB).
    """
    io.require_float(image, "the style image")
    io.require_pixel_range(image, "the style image")
    h, w = shape
    x = jnp.asarray(image)
    scale = max(h / x.shape[0], w / x.shape[1])
    stretch = max(x.shape[0] * scale / h, x.shape[1] * scale / w)
    if stretch > io.MAX_ASPECT:
        raise ImageError(
            f"the style image of {x.shape[1]}x{x.shape[0]} pixels is {stretch:.0f} times as "
            f"elongated as the {w}x{h} content (at most {io.MAX_ASPECT}): crop it nearer to "
            "the content's shape"
        )
    size = (max(h, round(x.shape[0] * scale)), max(w, round(x.shape[1] * scale)), 3)
    x = jax.image.resize(x, size, method="linear", antialias=True)
    return np.asarray(io.quantize(io.center_crop(x, (h, w))))


def stylize(
    key: jax.Array,
    clf: Classifier,
    content: np.ndarray,
    style: np.ndarray,
    *,
    content_layer: str | None = None,
    style_layers: str | Sequence[str] | None = None,
    size: int | None = SIZE,
    steps: int = STEPS,
    content_weight: float = CONTENT_WEIGHT,
    style_weight: float = STYLE_WEIGHT,
    tv_weight: float = TV_WEIGHT,
    lr: float = LR,
    every: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Stylization:
    """Paint ``content`` in the style of ``style``, starting from the content image.

    Args:
        key: PRNG key (kept for the common signature; the start is the content image).
        clf: The classifier whose feature maps define content and style.
        content: Shape (H, W, 3) in [0, 1].
        style: Shape (H', W', 3) in [0, 1]; resized and cropped to the content's size.
        content_layer: Layer name; default :func:`.layers.default_content_layer`.
        style_layers: Spatial layer names (a repeated one counts once), or one name; default
            :func:`.layers.default_style_layers`.
        size: Longest side of the working image (the content is shrunk to it); None
            keeps the content's size.
        steps: Optimiser steps.
        content_weight: Weight of the content loss, > 0.
        style_weight: Weight of the style loss, > 0.
        tv_weight: Weight of the total-variation prior, > 0.
        lr: Adam's learning rate (cosine decay to 0).
        every: Progress-strip period in steps; default ``ceil(steps / 8)``.
        progress: Host callback ``progress(step)``.

    Returns:
        The :class:`Stylization`.

    Raises:
        FoolError: Unknown layer, or a style layer without spatial axes.
        ValueError: Non-positive weights, no style layers, or an image of integer dtype or
            not in [0, 1] (see :func:`fooltools.io.require_pixel_range`).
    """
    content_layer = layers.check_layer(
        clf, content_layer or layers.default_content_layer(clf), option="the content layer"
    )
    # One name is one layer (tuple("block3") was its letters), and an empty list is the
    # ValueError documented below, not the defaults.
    if style_layers is None:
        chosen = layers.default_style_layers(clf)
    else:
        chosen = (style_layers,) if isinstance(style_layers, str) else tuple(style_layers)
        if not chosen:
            raise ValueError("give at least one style layer (None: the defaults)")
    # Each layer once: the style loss is a mean over the layers, and a repeated one
    # ("stem,stem,block1") silently counted twice in it.
    chosen = tuple(
        dict.fromkeys(
            layers.check_layer(clf, k, spatial=True, option="the style layers") for k in chosen
        )
    )
    for name, value in (
        ("content_weight", content_weight),
        ("style_weight", style_weight),
        ("tv_weight", tv_weight),
        ("lr", lr),
    ):
        common.positive(name, value)
    content = common.fit(content, size)
    style = match_size(style, content.shape[:2])
    feats = common.feature_fn(clf, True)
    # style, content, and (after the run) the result in one batch: one compiled forward.
    maps = feats(clf.params, np.stack([style, content, content]))
    aux = {
        "content": maps[content_layer][1:2],
        "grams": {k: gram(maps[k][:1]) for k in chosen},
        "content_weight": jnp.float32(content_weight),
        "style_weight": jnp.float32(style_weight),
        "tv_weight": jnp.float32(tv_weight),
    }
    trace = _optimizer(clf, content_layer, chosen).run(
        key, content[None], aux, steps=steps, lr=lr, every=every, progress=progress
    )
    maps = feats(clf.params, np.stack([style, content, trace.x[0]]))
    s = np.asarray(style_distance(maps, aux["grams"], chosen))
    c = np.asarray(relative(maps[content_layer], aux["content"]))
    return Stylization(
        content_layer, chosen, content, style, trace, float(s[2]), float(s[1]), float(c[2])
    )
