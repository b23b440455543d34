"""A classifier averaged over crops (``--crops`` of ``fool evolve`` and ``fool classify``).

Nguyen et al. (2015, and their code, Evolving-AI-Lab/fooling) score fitness as the softmax
confidence averaged over crops: Caffe-era ImageNet models were evaluated on crops of a
256-pixel image (Caffe's "oversample": the four corners and the centre, and their mirror
images). :func:`averaged` wraps a classifier so that it sees an image that way: it takes
images ``1/0.875`` times its input size (256 for a 224-pixel model, timm's default crop
fraction), and its softmax is the mean of the wrapped classifier's softmax over the
crops. Everything downstream (the searches, the saved PNG's re-read confidence, the
report) then scores the averaged confidence with no other change: the wrapper is a
:class:`~fooltools.models.base.Classifier` like any other.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from fooltools.errors import FoolError
from fooltools.models.base import Classifier

CROPS = (1, 5, 10)  # the model's own view; corners and centre; and their mirror images
CROP_FRACTION = 0.875  # crop side / image side (224 of 256)


def check(crops: int | None, option: str = "--crops") -> int:
    """``crops`` as given on a command line (None: 1), or a FoolError naming the choices.

    ``option`` names the setting in the message (a batch spec's says "it", after the key).
    """
    crops = 1 if crops is None else crops
    if crops not in CROPS:
        raise FoolError(
            f"{option} must be 1 (the model's own view), 5 (corners and centre) or 10 "
            f"(and their mirror images), got {crops}"
        )
    return crops


def averaged_name(name: str, crops: int) -> str:
    """The name of ``name``'s classifier averaged over ``crops`` crops (1: ``name`` itself)."""
    return name if crops == 1 else f"{name}, mean of {crops} crops"


def split_name(name: str) -> tuple[str, int]:
    """``(model name, crops)`` of a name :func:`averaged_name` gave (crops 1: a bare name)."""
    m = re.fullmatch(r"(.+), mean of (\d+) crops", name)
    return (m[1], int(m[2])) if m else (name, 1)


def view_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """The side of the image the crops are cut from: ``input_size / 0.875``, rounded."""
    h, w = input_size
    return round(h / CROP_FRACTION), round(w / CROP_FRACTION)


def crop_offsets(size: tuple[int, int], crop: tuple[int, int], crops: int) -> np.ndarray:
    """Top-left corners and mirror flags of the crops, as torchvision's ``TenCrop`` orders them.

    Args:
        size: (H, W) of the image.
        crop: (h, w) of each crop.
        crops: 5 (top-left, top-right, bottom-left, bottom-right, centre) or 10 (the same,
            then each mirrored left to right).

    Returns:
        int32 array of shape (crops, 3): (top, left, mirrored) per crop.
    """
    (hh, ww), (h, w) = size, crop
    dy, dx = hh - h, ww - w
    corners = [(0, 0), (0, dx), (dy, 0), (dy, dx), (int(round(dy / 2)), int(round(dx / 2)))]
    rows = [(t, left, 0) for t, left in corners]
    if crops == 10:
        rows += [(t, left, 1) for t, left in corners]
    return np.asarray(rows, np.int32)


def averaged(clf: Classifier, crops: int) -> Classifier:
    """``clf`` scoring each image by its softmax averaged over ``crops`` crops of it.

    Args:
        clf: The classifier whose input size is the crops' size.
        crops: One of :data:`CROPS`; 1 returns ``clf`` itself.

    Returns:
        A classifier of images :func:`view_size` ``(clf.info.input_size)`` (its
        ``preprocess`` resizes others to that size, as ``clf``'s does to its own).
        ``softmax(logits(params, x))`` of images x (N, H, W, 3) is the mean over the crops
        of ``clf``'s softmax, shape (N, classes): the logits are the log of that mean.
        Its ``features`` are those of the centre crop. Its name says the number of crops,
        so a checkpoint of a run with other crops is not resumed by this one.

    Raises:
        ValueError: ``crops`` is not in :data:`CROPS`.
    """
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}, got {crops}")
    if crops == 1:
        return clf
    crop = clf.info.input_size
    size = view_size(crop)
    rows = crop_offsets(size, crop, crops)
    offsets, centre = jnp.asarray(rows), rows[4]
    h, w = crop

    def apply(params, x):
        def one(view):
            top, left, mirrored = view[0], view[1], view[2]
            v = jax.lax.dynamic_slice(x, (0, top, left, 0), (x.shape[0], h, w, x.shape[3]))
            v = jnp.where(mirrored == 1, v[:, :, ::-1], v)
            return jax.nn.log_softmax(clf.apply(params, v), axis=-1)

        # One crop per pass (lax.map): the forward pass compiles once, and the activations
        # held at a time are those of one crop of the batch, not of all of them.
        logp = jax.lax.map(one, offsets)  # (crops, N, classes)
        return jax.nn.logsumexp(logp, axis=0) - jnp.log(crops)

    def features(params, x):
        return clf.features(params, x[:, centre[0] : centre[0] + h, centre[1] : centre[1] + w])

    info = dataclasses.replace(
        clf.info, name=averaged_name(clf.name, crops), input_size=size, resize=min(size)
    )
    return Classifier(
        info=info,
        apply=apply,
        params=clf.params,
        labels=clf.labels,
        features=features,
        weights=clf.weights,
    )
