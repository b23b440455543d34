"""YOLOv3's training targets and loss for Darknet ``[yolo]`` heads, and anchor fitting.

The loss is YOLOv3's (Redmon & Farhadi 2018; Darknet's ``yolo_layer.c`` assignment, with the
BCE centre term of the paper and of most re-implementations):

* each ground-truth box goes to the single anchor, over all heads, whose (w, h) has the best
  IoU with its own (both centred), in the grid cell of that head holding the box centre;
* that anchor learns its centre offset by BCE on ``sigmoid(tx), sigmoid(ty)``, its size by a
  squared error on ``tw, th`` against ``log(box / anchor)``, both weighted by ``2 - w * h``
  (box area as a fraction of the input, so small boxes count more), objectness 1 by BCE
  and its class by per-class BCE (independent sigmoids, as ``[yolo]`` decodes them);
* every other anchor learns objectness 0, except those whose decoded box already overlaps
  some ground truth by more than ``ignore_thresh``: they are left alone.

Everything is fixed-size (ground truth padded to ``[B, M]`` with label -1, as
:func:`fooltools.detection.synthetic.make_dataset` pads it), so the loss jits once per batch
shape. Training itself is in :mod:`fooltools.detection.yolo_train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools.detection import boxes as box_ops
from fooltools.detection import yolo
from fooltools.detection.yolo import Head

__all__ = [
    "HeadTargets",
    "build_targets",
    "check_heads",
    "kmeans_anchors",
    "mean_best_iou",
    "yolo_loss",
]


# --- anchors ---------------------------------------------------------------------------------


def _wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    return inter / (wh[:, None].prod(-1) + anchors[None].prod(-1) - inter)


def kmeans_anchors(wh: np.ndarray, k: int, *, seed: int = 0, iters: int = 300) -> np.ndarray:
    """YOLOv2's anchor clustering: k-medians of box sizes under the distance ``1 - IoU``.

    Args:
        wh: ``[N, 2]`` box widths and heights (pixels), N >= k.
        k: number of anchors.
        seed: seeds the choice of the initial centres among the boxes.
        iters: iteration cap (it usually converges in a few dozen).

    Returns:
        ``[k, 2]`` float64 anchors, sorted by area (Darknet's ``mask`` order: small first).
    """
    wh = np.asarray(wh, np.float64)
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), k, replace=False)]
    for _ in range(iters):
        assign = _wh_iou(wh, centres).argmax(1)
        # Medians, not means, as the common Darknet tooling does: robust to the cut boxes.
        new = np.array(
            [np.median(wh[assign == j], 0) if np.any(assign == j) else centres[j] for j in range(k)]
        )
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres.prod(1))]


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the best (centred) IoU with any anchor: the k-means objective."""
    return float(_wh_iou(np.asarray(wh, np.float64), np.asarray(anchors, np.float64)).max(1).mean())


# --- targets and loss ------------------------------------------------------------------------


class HeadTargets(NamedTuple):
    """Dense training targets of one ``[yolo]`` head, each ``[B, gh, gw, A, ...]``.

    Attributes:
        obj: ``[B, gh, gw, A]`` 1.0 where an anchor is responsible for a ground truth.
        xy: ``[B, gh, gw, A, 2]`` wanted ``sigmoid(tx), sigmoid(ty)`` (in (0, 1)).
        wh: ``[B, gh, gw, A, 2]`` wanted ``tw, th`` = log(box size / anchor size).
        weight: ``[B, gh, gw, A]`` box-loss weight ``2 - w * h`` (w, h as input fractions).
        label: ``[B, gh, gw, A]`` int32 class of the assigned box, -1 elsewhere.
    """

    obj: jax.Array
    xy: jax.Array
    wh: jax.Array
    weight: jax.Array
    label: jax.Array


def check_heads(heads: Sequence[Head]) -> None:
    """Raise ValueError unless every head is a ``[yolo]`` head (the only kind trained)."""
    for h in heads:
        if h.kind != "yolo":
            raise ValueError(f"yolo_train handles [yolo] heads only, got a [{h.kind}] head")


def build_targets(
    boxes: jax.Array,
    labels: jax.Array,
    heads: Sequence[Head],
    input_hw: tuple[int, int],
) -> list[HeadTargets]:
    """Assign every ground-truth box to one anchor of one head (see the module docstring).

    If two boxes land on the same cell and anchor, one of them wins (the scatter does not say
    which; rare: it takes two centres in one cell with the same best anchor).

    Args:
        boxes: ``[B, M, 4]`` (x1, y1, x2, y2) in input pixels.
        labels: ``[B, M]`` int classes, negative for padding.
        heads: the model's heads (``YOLO.heads``), all ``[yolo]``.
        input_hw: the network input (H, W).

    Returns:
        One :class:`HeadTargets` per head.
    """
    check_heads(heads)
    boxes = jnp.asarray(boxes, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    b, m = labels.shape
    height, width = input_hw
    anchors = jnp.asarray([a for h in heads for a in h.anchors], jnp.float32)  # [A_all, 2]
    head_of = np.concatenate([np.full(len(h.anchors), k) for k, h in enumerate(heads)])
    local = np.concatenate([np.arange(len(h.anchors)) for h in heads])
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 1e-3)
    h_ = jnp.maximum(boxes[..., 3] - boxes[..., 1], 1e-3)
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    inter = jnp.minimum(w[..., None], anchors[:, 0]) * jnp.minimum(h_[..., None], anchors[:, 1])
    iou = inter / (w[..., None] * h_[..., None] + anchors.prod(-1) - inter)  # [B, M, A_all]
    best = jnp.argmax(iou, axis=-1)
    valid = labels >= 0
    bidx = jnp.broadcast_to(jnp.arange(b)[:, None], (b, m))
    out = []
    for k, head in enumerate(heads):
        gh, gw = height // head.stride, width // head.stride
        na = len(head.anchors)
        mine = valid & (jnp.asarray(head_of)[best] == k)
        a = jnp.asarray(local)[best]
        gx, gy = cx / head.stride, cy / head.stride
        col = jnp.clip(jnp.floor(gx), 0, gw - 1).astype(jnp.int32)
        row = jnp.clip(jnp.floor(gy), 0, gh - 1).astype(jnp.int32)
        # Boxes of other heads (and padding) get an out-of-range row, which the scatter drops.
        idx = (bidx, jnp.where(mine, row, gh), col, a)
        # Invert decode's s(t) = sigmoid(t) * scale - (scale - 1) / 2; clip off 0 and 1.
        s = head.scale_x_y
        frac = jnp.stack([gx - col, gy - row], -1)
        xy = jnp.clip((frac + 0.5 * (s - 1.0)) / s, 1e-4, 1 - 1e-4)
        aw, ah = anchors[best, 0], anchors[best, 1]
        twh = jnp.stack([jnp.log(w / aw), jnp.log(h_ / ah)], -1)
        weight = 2.0 - (w * h_) / (width * height)
        out.append(
            HeadTargets(
                obj=jnp.zeros((b, gh, gw, na)).at[idx].set(1.0, mode="drop"),
                xy=jnp.zeros((b, gh, gw, na, 2)).at[idx].set(xy, mode="drop"),
                wh=jnp.zeros((b, gh, gw, na, 2)).at[idx].set(twh, mode="drop"),
                weight=jnp.zeros((b, gh, gw, na)).at[idx].set(weight, mode="drop"),
                label=jnp.full((b, gh, gw, na), -1, jnp.int32).at[idx].set(labels, mode="drop"),
            )
        )
    return out


def yolo_loss(
    raw: Sequence[jax.Array],
    boxes: jax.Array,
    labels: jax.Array,
    heads: Sequence[Head],
    input_hw: tuple[int, int],
    *,
    ignore_thresh: float = 0.5,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv3 loss of raw head maps against padded ground truth, summed and divided by B.

    Args:
        raw: per head ``[B, gh, gw, A * (5 + C)]`` raw maps (``YOLO.apply``'s output).
        boxes: ``[B, M, 4]`` ground-truth corners in input pixels.
        labels: ``[B, M]`` classes, negative for padding.
        heads: ``YOLO.heads`` (``[yolo]`` only).
        input_hw: network input (H, W).
        ignore_thresh: predictions whose box overlaps a ground truth by more than this get
            no objectness-0 loss (Darknet's ``ignore_thresh``, 0.5 to 0.7 in its cfgs).

    Returns:
        ``(loss, parts)``: the scalar loss and its ``xy``, ``wh``, ``obj``, ``noobj``,
        ``cls`` terms (each summed over the batch and divided by B).
    """
    targets = build_targets(boxes, labels, heads, input_hw)
    b = raw[0].shape[0]
    height, width = input_hw
    gt = jnp.asarray(boxes, jnp.float32)
    gt_valid = jnp.asarray(labels) >= 0
    bce = optax.sigmoid_binary_cross_entropy
    parts = dict.fromkeys(("xy", "wh", "obj", "noobj", "cls"), jnp.zeros(()))
    for r, head, tg in zip(raw, heads, targets, strict=True):
        _, gh, gw, _ = r.shape
        t = r.reshape(b, gh, gw, len(head.anchors), 5 + head.classes)
        # Ignore mask: IoU of each decoded prediction with the image's ground truths.
        pred = yolo.decode([r], [head], (height, width)).boxes  # [B, gh * gw * A, 4]
        ious = jax.vmap(box_ops.box_iou)(pred, gt)  # [B, N, M]
        best = jnp.max(jnp.where(gt_valid[:, None, :], ious, 0.0), axis=-1)
        ignore = jax.lax.stop_gradient(best.reshape(tg.obj.shape) > ignore_thresh)
        pos = tg.obj
        wgt = pos * tg.weight
        parts["xy"] += jnp.sum(bce(t[..., 0:2], tg.xy).sum(-1) * wgt)
        parts["wh"] += jnp.sum(jnp.square(t[..., 2:4] - tg.wh).sum(-1) * wgt)
        obj_bce = bce(t[..., 4], pos)
        parts["obj"] += jnp.sum(obj_bce * pos)
        parts["noobj"] += jnp.sum(obj_bce * (1.0 - pos) * (1.0 - ignore))
        onehot = jax.nn.one_hot(tg.label, head.classes)  # all zeros where label is -1
        parts["cls"] += jnp.sum(bce(t[..., 5:], onehot).sum(-1) * pos)
    parts = {k: v / b for k, v in parts.items()}
    return sum(parts.values()), parts
