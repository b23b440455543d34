"""Named layers of a registered classifier: their shapes, validation, style/content defaults.

Layer names are the keys of ``Classifier.features`` (for EfficientNet-Lite: ``stem``,
``block0`` .. ``block15``, ``head``, ``pool``, ``logits``), in network order. Shapes are
found with ``jax.eval_shape``, so listing them costs a trace, not a forward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fooltools.errors import FoolError
from fooltools.models.base import Classifier

# Sentinel names accepted where a layer name is expected.
ALL = "all"


@functools.lru_cache(maxsize=32)
def layer_shapes(clf: Classifier, size: tuple[int, int] | None = None) -> dict[str, tuple]:
    """Shapes of the named feature maps of one image, in network order.

    Args:
        clf: The classifier.
        size: (H, W) of the image the network runs on; default the model's input size.

    Returns:
        name -> shape without the batch axis: (h, w, C) for spatial maps, (C,) for
        pooled ones.
    """
    h, w = size or clf.info.input_size
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    order: list[str] = []

    def maps(p, x):
        out = clf.feature_maps(p, x, native=True)
        order.extend(out)  # the network's order; eval_shape's output dict is sorted
        return out

    shapes = jax.eval_shape(maps, clf.params, x)
    return {name: tuple(shapes[name].shape[1:]) for name in order}


def describe(shape: Sequence[int]) -> str:
    """``"7x7x1280"`` for a spatial map, ``"1000"`` for a vector."""
    return "x".join(str(d) for d in shape)


def spatial_layers(clf: Classifier) -> list[str]:
    """Names of the maps with spatial axes (h, w, C), in network order."""
    return [name for name, s in layer_shapes(clf).items() if len(s) == 3]


def check_layer(clf: Classifier, name: str, *, spatial: bool = False, option: str = "layer") -> str:
    """Return ``name`` if the model has that layer, else raise listing the valid ones.

    Args:
        clf: The classifier.
        name: A layer name (surrounding whitespace ignored).
        spatial: Require a map with spatial axes (e.g. for Gram matrices).
        option: What to call the argument in the message (e.g. ``"--style-layers"``).

    Raises:
        FoolError: Unknown or (when ``spatial``) non-spatial layer; the message lists
            the valid names and points at ``fool layers``.
    """
    name = name.strip()
    valid = spatial_layers(clf) if spatial else list(layer_shapes(clf))
    if name in valid:
        return name
    what = "spatial layer" if spatial and name in layer_shapes(clf) else "layer"
    raise FoolError(
        f"unknown {what} {name!r} for {option} of {clf.name}; valid: {', '.join(valid)} "
        f"(`fool layers --model {clf.name}` shows their shapes)"
    )


def resolution_groups(clf: Classifier) -> list[list[str]]:
    """Spatial layers grouped by resolution (one group per stride), finest first."""
    groups: dict[tuple, list[str]] = {}
    for name, shape in layer_shapes(clf).items():
        if len(shape) == 3:
            groups.setdefault(shape[:2], []).append(name)
    return sorted(groups.values(), key=lambda g: -np.prod(layer_shapes(clf)[g[0]][:2]))


def default_style_layers(clf: Classifier) -> tuple[str, ...]:
    """Gatys et al.'s choice transposed to any network: the first map of every resolution.

    For VGG-19 that rule gives their conv1_1, conv2_1, conv3_1, conv4_1, conv5_1.
    """
    return tuple(group[0] for group in resolution_groups(clf))


def default_content_layer(clf: Classifier) -> str:
    """Gatys et al.'s conv4_2 transposed: the second map of the stride-16 resolution.

    Falls back to the last map of the coarsest-but-one resolution for shallow networks.
    """
    groups = resolution_groups(clf)
    group = groups[3] if len(groups) > 3 else groups[-1]
    return group[1] if len(group) > 1 else group[0]
