"""Bounding-box utilities: IoU, box coding, fixed-size NMS (jitted JAX) and mAP (numpy).

Boxes are float arrays ``[..., 4]`` of pixel corners ``(x1, y1, x2, y2)`` with ``x1 <= x2``
and ``y1 <= y2`` unless a function says otherwise; a box's width is ``x2 - x1`` (no "+1").

Everything above :func:`average_precision` is pure ``jax.numpy``: jittable, vmappable and
differentiable where that makes sense, so that a detector's ``decode`` can be written with it
and attacked end to end. NMS returns a fixed number of indices plus a validity mask instead
of a variable-length list, which is what ``jit`` needs. The evaluation code at the bottom runs
on the host in numpy: it works on variable-length per-image lists and is never differentiated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's default for Faster R-CNN's box head (RPN uses (1, 1, 1, 1)).
DEFAULT_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Largest log-scale change decode_boxes applies (torchvision's bbox_xform_clip): exp of it is
# 62.5, which keeps a wild regression from producing an infinite box.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: jax.Array) -> jax.Array:
    """Area of boxes ``[..., 4]`` -> ``[...]``; inverted (degenerate) boxes have area 0."""
    boxes = jnp.asarray(boxes)
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0)
    return w * h


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    # 0 where den is 0 (two zero-area boxes). The inner where keeps the gradient finite too:
    # jnp.where alone would still differentiate num / 0.
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise intersection over union.

    Args:
        a: boxes ``[..., N, 4]``.
        b: boxes ``[..., M, 4]`` (leading dimensions broadcast with ``a``'s).

    Returns:
        IoU ``[..., N, M]`` in [0, 1]. A pair whose union is empty (two zero-area boxes) has
        IoU 0, where torchvision's ``box_iou`` gives NaN.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.maximum(hi - lo, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return _safe_div(inter, union)


def xywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """Centre form ``(cx, cy, w, h)`` ``[..., 4]`` to corners ``(x1, y1, x2, y2)`` ``[..., 4]``."""
    boxes = jnp.asarray(boxes)
    ctr, half = boxes[..., :2], 0.5 * boxes[..., 2:]
    return jnp.concatenate([ctr - half, ctr + half], axis=-1)


def xyxy_to_xywh(boxes: jax.Array) -> jax.Array:
    """Corners ``(x1, y1, x2, y2)`` ``[..., 4]`` to centre form ``(cx, cy, w, h)`` ``[..., 4]``."""
    boxes = jnp.asarray(boxes)
    wh = boxes[..., 2:] - boxes[..., :2]
    return jnp.concatenate([boxes[..., :2] + 0.5 * wh, wh], axis=-1)


def clip_boxes(boxes: jax.Array, height: float, width: float) -> jax.Array:
    """Clip boxes ``[..., 4]`` to the image: x to [0, width], y to [0, height]."""
    boxes = jnp.asarray(boxes)
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def _centres(boxes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(
    reference_boxes: jax.Array,
    proposals: jax.Array,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> jax.Array:
    """Regression targets that take ``proposals`` to ``reference_boxes`` (torchvision BoxCoder).

    ``dx = wx * (gx - px) / pw``, ``dy = wy * (gy - py) / ph``, ``dw = ww * log(gw / pw)``,
    ``dh = wh * log(gh / ph)``, with centres ``x1 + 0.5 * w`` and widths ``x2 - x1``.

    Args:
        reference_boxes: the targets (ground truth) ``[..., 4]``.
        proposals: the anchors or proposals being refined ``[..., 4]`` (broadcasts).
        weights: ``(wx, wy, ww, wh)``.

    Returns:
        Codes ``[..., 4]`` ``(dx, dy, dw, dh)``.
    """
    gx, gy, gw, gh = _centres(jnp.asarray(reference_boxes))
    px, py, pw, ph = _centres(jnp.asarray(proposals))
    wx, wy, ww, wh = weights
    return jnp.stack(
        [
            wx * (gx - px) / pw,
            wy * (gy - py) / ph,
            ww * jnp.log(gw / pw),
            wh * jnp.log(gh / ph),
        ],
        axis=-1,
    )


def decode_boxes(
    rel_codes: jax.Array,
    boxes: jax.Array,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    bbox_xform_clip: float = BBOX_XFORM_CLIP,
) -> jax.Array:
    """Apply regression codes to boxes: the inverse of :func:`encode_boxes` (torchvision BoxCoder).

    The scale codes are divided by their weights and clamped from above at
    ``bbox_xform_clip`` before ``exp``, exactly as torchvision's ``decode_single``. For a
    per-class head with codes ``[N, C * 4]``, reshape them to ``[N, C, 4]`` and pass
    ``boxes[:, None]``.

    Args:
        rel_codes: ``(dx, dy, dw, dh)`` ``[..., 4]``.
        boxes: the anchors or proposals ``[..., 4]`` (broadcasts with ``rel_codes``).
        weights: ``(wx, wy, ww, wh)``, the same as used to encode.
        bbox_xform_clip: upper clamp on ``dw / ww`` and ``dh / wh``.

    Returns:
        Decoded boxes ``[..., 4]`` ``(x1, y1, x2, y2)`` (not clipped to the image).
    """
    rel_codes = jnp.asarray(rel_codes)
    cx, cy, w, h = _centres(jnp.asarray(boxes, dtype=rel_codes.dtype))
    wx, wy, ww, wh = weights
    dw = jnp.minimum(rel_codes[..., 2] / ww, bbox_xform_clip)
    dh = jnp.minimum(rel_codes[..., 3] / wh, bbox_xform_clip)
    pcx = rel_codes[..., 0] / wx * w + cx
    pcy = rel_codes[..., 1] / wy * h + cy
    half_w, half_h = 0.5 * jnp.exp(dw) * w, 0.5 * jnp.exp(dh) * h
    return jnp.stack([pcx - half_w, pcy - half_h, pcx + half_w, pcy + half_h], axis=-1)


# --- non-maximum suppression -----------------------------------------------------------------


def _greedy_nms(
    boxes: jax.Array,
    scores: jax.Array,
    classes: jax.Array | None,
    iou_threshold: jax.Array,
    max_outputs: int,
    score_threshold: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    boxes = jnp.asarray(boxes)
    scores = jnp.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected boxes [N, 4] and scores [N], got {boxes.shape}, {scores.shape}")
    n = boxes.shape[0]
    empty = jnp.full((max_outputs,), -1, jnp.int32)
    if n == 0 or max_outputs == 0:
        return empty, empty >= 0
    # Stable descending sort: of two equal scores the lower index comes first.
    order = jnp.argsort(scores, descending=True, stable=True)
    sboxes, sscores = boxes[order], scores[order]
    sclasses = None if classes is None else jnp.asarray(classes)[order]
    areas = box_area(sboxes)

    # Instead of an N x N IoU matrix, each step takes the best remaining candidate and compares
    # it with all boxes: max_outputs steps of O(N) work and O(N) memory, and the loop stops
    # as soon as no candidate is left.
    def cond(state: tuple) -> jax.Array:
        k, alive, _ = state
        return (k < max_outputs) & jnp.any(alive)

    def body(state: tuple) -> tuple:
        k, alive, out = state
        i = jnp.argmax(alive)  # the first True: highest score, then lowest original index
        lo = jnp.maximum(sboxes[i, :2], sboxes[:, :2])
        hi = jnp.minimum(sboxes[i, 2:], sboxes[:, 2:])
        wh = jnp.maximum(hi - lo, 0)
        inter = wh[:, 0] * wh[:, 1]
        iou = _safe_div(inter, areas[i] + areas - inter)
        suppress = iou > iou_threshold
        if sclasses is not None:
            suppress &= sclasses == sclasses[i]
        # The kept box leaves the pool even when its IoU with itself is 0 (zero area).
        alive = alive & ~suppress & (jnp.arange(n) != i)
        return k + 1, alive, out.at[k].set(order[i].astype(jnp.int32))

    alive = sscores > score_threshold
    _, _, out = jax.lax.while_loop(cond, body, (jnp.int32(0), alive, empty))
    return out, out >= 0


@functools.partial(jax.jit, static_argnames=("max_outputs",))
def nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    iou_threshold: float,
    max_outputs: int,
    score_threshold: float = -math.inf,
) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression with a fixed-size output, like ``torchvision.ops.nms``.

    Boxes are visited by decreasing score (equal scores: lower index first); a box is kept
    unless its IoU with an already kept box is greater than ``iou_threshold``. Only boxes
    with ``score > score_threshold`` take part (so a score of -inf or NaN marks padding).
    Jitted once per shape and ``max_outputs``; the thresholds are traced, so changing them
    does not recompile. Use ``jax.vmap`` for a batch of images.

    Args:
        boxes: ``[N, 4]`` corners.
        scores: ``[N]``.
        iou_threshold: suppression threshold on IoU.
        max_outputs: number of output slots (static).
        score_threshold: candidates must score strictly above this.

    Returns:
        ``(indices, valid)``: ``indices`` int32 ``[max_outputs]`` into ``boxes`` of the kept
        boxes in decreasing score order, padded with -1; ``valid`` bool ``[max_outputs]``,
        True for the real entries (a prefix).
    """
    return _greedy_nms(boxes, scores, None, iou_threshold, max_outputs, score_threshold)


@functools.partial(jax.jit, static_argnames=("max_outputs",))
def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    classes: jax.Array,
    *,
    iou_threshold: float,
    max_outputs: int,
    score_threshold: float = -math.inf,
) -> tuple[jax.Array, jax.Array]:
    """Per-class NMS: as :func:`nms`, but a box only suppresses boxes of its own class.

    This is ``torchvision.ops.batched_nms``. torchvision gets it by shifting each class's boxes
    by ``class * (max_coordinate + 1)`` so that classes cannot overlap; here the suppression
    test is simply masked by class equality, which is the same in exact arithmetic and avoids
    the float32 rounding of large offsets (at an offset of 8e4 the spacing of float32 is 8e-3
    px, enough to change the IoU of small boxes). The output interleaves classes by score.

    Args:
        boxes: ``[N, 4]`` corners.
        scores: ``[N]``.
        classes: integer class of each box ``[N]``.
        iou_threshold: suppression threshold on IoU.
        max_outputs: number of output slots (static).
        score_threshold: candidates must score strictly above this.

    Returns:
        ``(indices, valid)`` as for :func:`nms`.
    """
    classes = jnp.asarray(classes)
    if classes.shape != jnp.shape(scores):
        raise ValueError(f"classes must have the shape of scores, got {classes.shape}")
    return _greedy_nms(boxes, scores, classes, iou_threshold, max_outputs, score_threshold)


# --- evaluation (host side, numpy) -----------------------------------------------------------


class Detections(NamedTuple):
    """One image's detections (a dict with these keys is accepted too).

    Attributes:
        boxes: ``[K, 4]`` corners in pixels.
        scores: ``[K]`` confidences; higher is more confident.
        labels: ``[K]`` integer classes; rows with a negative label are padding, ignored.
    """

    boxes: Any
    scores: Any
    labels: Any


class GroundTruth(NamedTuple):
    """One image's ground truth (a dict with these keys is accepted too).

    Attributes:
        boxes: ``[G, 4]`` corners in pixels.
        labels: ``[G]`` integer classes; rows with a negative label are padding, ignored
            (the convention of :func:`fooltools.detection.synthetic.make_dataset`).
        difficult: optional ``[G]`` bool: objects that neither count as misses nor turn the
            detections that find them into false positives (PASCAL VOC's "difficult").
    """

    boxes: Any
    labels: Any
    difficult: Any = None


class MapResult(NamedTuple):
    """What :func:`evaluate_map` returns.

    Attributes:
        mean_ap: mean of ``per_class`` (0.0 when no class has ground truth).
        per_class: AP of each class index with at least one (non-difficult) ground truth.
        num_gt: number of non-difficult ground-truth boxes of every class index.
        iou_threshold: the IoU a detection needed to count as a hit.
    """

    mean_ap: float
    per_class: dict[int, float]
    num_gt: dict[int, int]
    iou_threshold: float


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (PASCAL VOC 2010 and later).

    The area under the monotone envelope of the precision-recall curve: precision at recall
    ``r`` is replaced by the best precision at any recall ``>= r``, and that step function is
    integrated over recall from 0 to the last recall reached (beyond it precision is 0).

    Args:
        recall: ``[D]`` non-decreasing recall after each detection, by decreasing score.
        precision: ``[D]`` precision after each detection.

    Returns:
        AP in [0, 1]; 0.0 for an empty curve.
    """
    rec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    pre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    pre = np.maximum.accumulate(pre[::-1])[::-1]  # the envelope, right to left
    steps = np.nonzero(rec[1:] != rec[:-1])[0]
    return float(np.sum((rec[steps + 1] - rec[steps]) * pre[steps + 1]))


def _get(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _as_arrays(item: Any, names: tuple[str, ...], what: str, i: int) -> list[np.ndarray]:
    out = []
    for name in names:
        value = _get(item, name)
        if value is None:
            raise ValueError(f"{what} {i} has no {name!r}")
        out.append(np.asarray(value))
    # An empty image may come as shape (0,) rather than (0, 4).
    boxes = out[0].reshape(-1, 4) if out[0].size == 0 else out[0]
    rest = [a.astype(np.int64) if a.dtype.kind in "iub" else a for a in out[1:]]
    if "labels" in names:
        # Whole-number float labels (0.0, 1.0, as from a float array) were a TypeError from
        # indexing the per-class lists with them.
        k = names.index("labels") - 1
        labels = rest[k]
        whole = labels.dtype.kind == "f" and np.all(np.round(labels) == labels)
        if whole:
            rest[k] = labels.astype(np.int64)
        elif labels.dtype.kind != "i":
            bad = (
                labels[np.round(labels) != labels][0] if labels.dtype.kind == "f" else labels.dtype
            )
            raise ValueError(f"{what} {i}: labels must be whole numbers, got {bad}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or any(a.shape != boxes.shape[:1] for a in rest):
        shapes = ", ".join(str(a.shape) for a in out)
        raise ValueError(f"{what} {i}: expected boxes [K, 4] and [K] fields, got {shapes}")
    return [boxes.astype(np.float64), *rest]


def evaluate_map(
    detections: Sequence[Detections | Mapping[str, Any]],
    ground_truths: Sequence[GroundTruth | Mapping[str, Any]],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
) -> MapResult:
    """Mean average precision over a set of images (VOC's all-point AP, mAP@0.5 by default).

    For each class, all its detections over all images are sorted by decreasing score
    (stable: ties keep image order, then detection order). Each detection is matched to the
    unmatched ground truth of its class in its image with the highest IoU, provided that
    IoU is ``>= iou_threshold`` (and > 0): a true positive. This is COCO's matching; the
    VOC devkit's takes the object of highest IoU even if already matched, and then counts
    a false positive, which differs only where objects of one class overlap. Otherwise it is a false
    positive (so a duplicate detection of an already found object is one), unless it
    overlaps a "difficult" object by the threshold, in which case it is ignored. AP is
    :func:`average_precision`; the mean is over classes with at least one non-difficult
    ground truth, and a class with ground truth but no detections scores 0.

    Args:
        detections: per image, :class:`Detections` or a dict with ``boxes``, ``scores``,
            ``labels``.
        ground_truths: per image (same order and length), :class:`GroundTruth` or a dict
            with ``boxes``, ``labels`` and optionally ``difficult``.
        num_classes: labels must lie in ``[0, num_classes)`` (negative: padding).
        iou_threshold: IoU needed for a hit.

    Returns:
        A :class:`MapResult`.

    Raises:
        ValueError: the lists differ in length, an entry has inconsistent shapes, a label
            is ``>= num_classes``, or ``iou_threshold`` is not in [0, 1].
    """
    if not 0 <= iou_threshold <= 1:  # NaN too: no detection would ever be a hit
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"{len(detections)} detection entries but {len(ground_truths)} ground-truth entries"
        )
    # Per class: (score, is_tp, is_ignored) for every detection, and the positive count.
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    keep: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    num_gt = dict.fromkeys(range(num_classes), 0)
    for i, (det, gt) in enumerate(zip(detections, ground_truths, strict=True)):
        dboxes, dscores, dlabels = _as_arrays(det, ("boxes", "scores", "labels"), "detections", i)
        gboxes, glabels = _as_arrays(gt, ("boxes", "labels"), "ground truth", i)
        diff = _get(gt, "difficult")
        gdiff = np.zeros(len(glabels), bool) if diff is None else np.asarray(diff, bool)
        if gdiff.shape != glabels.shape:
            raise ValueError(f"ground truth {i}: difficult has shape {gdiff.shape}")
        for labels, what in ((dlabels, "detection"), (glabels, "ground-truth")):
            if labels.size and labels.max() >= num_classes:
                raise ValueError(f"image {i}: {what} label {labels.max()} >= {num_classes}")
        for c in np.unique(np.concatenate([dlabels, glabels])):
            if c < 0:
                continue
            d = np.nonzero(dlabels == c)[0]
            d = d[np.argsort(-dscores[d], kind="stable")]
            g = np.nonzero(glabels == c)[0]
            num_gt[int(c)] += int(np.sum(~gdiff[g]))
            tp, ignored = _match_image(dboxes[d], gboxes[g], gdiff[g], iou_threshold)
            scores[c].append(dscores[d].astype(np.float64))
            hits[c].append(tp)
            keep[c].append(~ignored)

    per_class = {}
    for c in range(num_classes):
        if num_gt[c] == 0:
            continue
        if not scores[c]:
            per_class[c] = 0.0
            continue
        s, tp, k = (np.concatenate(x) for x in (scores[c], hits[c], keep[c]))
        order = np.argsort(-s[k], kind="stable")
        tp = tp[k][order]
        ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
        precision = ctp / np.maximum(ctp + cfp, 1)
        per_class[c] = average_precision(ctp / num_gt[c], precision)
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return MapResult(mean, per_class, num_gt, float(iou_threshold))


def np_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`box_iou` in float64 NumPy for host-side metrics: ``[N, 4], [M, 4] -> [N, M]``.

    Eager JAX would dispatch, and compile for each new (N, M), once per image: hundreds of
    compilations in one evaluation over 200 images.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.maximum(hi - lo, 0), axis=-1)
    area_a = np.prod(np.maximum(a[:, 2:] - a[:, :2], 0), axis=-1)
    area_b = np.prod(np.maximum(b[:, 2:] - b[:, :2], 0), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def np_labels_over(
    boxes: Any, other_boxes: Any, other_labels: Any, iou: float = 0.5
) -> list[set[int]]:
    """Per box of ``boxes``, the labels of the ``other_boxes`` over it (IoU >= ``iou``).

    Any such box, as VOC counts a detection (with the one overlapping most alone, an object
    still detected with its own label read as fooled beside a closer fabricated box).
    ``[N, 4], [M, 4], [M] -> N sets``.
    """
    if len(boxes) == 0 or len(other_boxes) == 0:
        return [set() for _ in range(len(boxes))]
    over = np_box_iou(np.asarray(boxes), np.asarray(other_boxes)) >= iou
    labels = np.asarray(other_labels)
    return [set(labels[row].tolist()) for row in over]


def _match_image(
    dboxes: np.ndarray, gboxes: np.ndarray, gdiff: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in one image and class; detections already sorted by score.

    Returns ``(tp, ignored)``, both bool ``[D]``.
    """
    tp = np.zeros(len(dboxes), bool)
    ignored = np.zeros(len(dboxes), bool)
    if len(gboxes) == 0 or len(dboxes) == 0:
        return tp, ignored
    iou = np_box_iou(dboxes, gboxes)
    # A box that does not overlap is no hit, even at iou_threshold=0 (it found every
    # object anywhere in the image, and mAP@0 was 1 for any detections).
    close = (iou >= iou_threshold) & (iou > 0)
    taken = gdiff.copy()  # difficult objects are never matched, only absorb detections
    for j in range(len(dboxes)):
        free = np.where(taken | ~close[j], -1.0, iou[j])
        best = int(np.argmax(free))
        if free[best] >= 0:
            tp[j], taken[best] = True, True
        elif np.any(gdiff & close[j]):
            ignored[j] = True
    return tp, ignored
