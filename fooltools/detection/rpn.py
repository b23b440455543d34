"""torchvision's region proposal network (``rpn.*``), fixed-size and jittable.

``AnchorGenerator`` anchors are static numpy constants (they depend only on shapes);
``RPNHead`` is a Flax module shared across pyramid levels; ``propose`` reproduces
``RegionProposalNetwork.filter_proposals`` with fixed-size arrays: per-level top-k instead
of dynamic filtering, and a validity mask instead of dropping boxes, so it jits once per
input shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fooltools.detection import boxes as box_ops
from fooltools.models import layers

ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def cell_anchors(sizes: Sequence[int], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors of one level, rounded as torchvision does.

    Returns:
        (len(aspect_ratios) * len(sizes), 4) float32 ``(x1, y1, x2, y2)``, ratio-major.
    """
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    # float32 arithmetic, then round half to even (torch.round), as in generate_anchors.
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def grid_anchors(
    padded_size: tuple[int, int],
    grid_sizes: Sequence[tuple[int, int]],
    sizes: Sequence[Sequence[int]] = ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
) -> list[np.ndarray]:
    """Anchors of every level for a padded input, in the RPN head's output order.

    Args:
        padded_size: (H, W) of the padded image batch.
        grid_sizes: (h, w) of each pyramid level.
        sizes: Anchor sizes per level.
        aspect_ratios: Height / width ratios (the same at every level).

    Returns:
        Per level, (h * w * A, 4) float32 anchors, ordered (y, x, anchor).
    """
    out = []
    for (gh, gw), level_sizes in zip(grid_sizes, sizes, strict=True):
        stride_h, stride_w = padded_size[0] // gh, padded_size[1] // gw  # integer, as torch
        shift_y, shift_x = np.meshgrid(
            np.arange(gh) * stride_h, np.arange(gw) * stride_w, indexing="ij"
        )
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
        base = cell_anchors(level_sizes, aspect_ratios)
        out.append((shifts.astype(np.float32) + base[None]).reshape(-1, 4))
    return out


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness and box-delta convs, shared over levels.

    Attributes:
        channels: Feature channels (the FPN width).
        num_anchors: Anchors per location.
    """

    channels: int
    num_anchors: int

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """Raw RPN outputs per level.

        Args:
            features: Per level (N, h, w, C).

        Returns:
            ``(objectness, deltas)``: per level (N, h, w, A) logits and (N, h, w, A, 4)
            ``(dx, dy, dw, dh)``; torchvision's channel ``a * 4 + k`` is ``[..., a, k]``.
        """
        conv = layers.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), name="conv")
        cls = layers.Conv(self.num_anchors, (1, 1), name="cls_logits")
        bbox = layers.Conv(4 * self.num_anchors, (1, 1), name="bbox_pred")
        objectness, deltas = [], []
        for f in features:
            t = nn.relu(conv(f))
            objectness.append(cls(t))
            d = bbox(t)
            deltas.append(d.reshape(*d.shape[:3], self.num_anchors, 4))
        return objectness, deltas


def propose(
    objectness: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    anchors: Sequence[np.ndarray],
    image_size: tuple[int, int],
    *,
    pre_nms_top_n: int = 1000,
    post_nms_top_n: int = 1000,
    nms_thresh: float = 0.7,
    score_thresh: float = 0.0,
    min_size: float = 1e-3,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``RegionProposalNetwork.filter_proposals`` for one image, fixed-size.

    Per level, the ``pre_nms_top_n`` best anchors by objectness are decoded, clipped to
    the (resized, unpadded) image, filtered (both sides >= ``min_size``, probability >=
    ``score_thresh``) and suppressed per level at IoU > ``nms_thresh``; the best
    ``post_nms_top_n`` survivors over all levels are the proposals. Gradients do not flow
    into the proposal coordinates (torchvision detaches them too).

    Args:
        objectness: Per level (h, w, A) logits of one image.
        deltas: Per level (h, w, A, 4).
        anchors: Per level (h * w * A, 4), from :func:`grid_anchors`.
        image_size: (height, width) of the resized image before padding.
        pre_nms_top_n: Candidates kept per level before NMS.
        post_nms_top_n: Proposals returned.
        nms_thresh: IoU threshold of the per-level NMS.
        score_thresh: Minimum objectness probability.
        min_size: Minimum box side in pixels.

    Returns:
        ``(proposals, scores, valid)``: (post_nms_top_n, 4) boxes by decreasing score,
        (post_nms_top_n,) probabilities, (post_nms_top_n,) bool; invalid rows are padding.
    """
    cand_boxes, cand_logits, cand_levels = [], [], []
    for level, (obj, delta, anc) in enumerate(zip(objectness, deltas, anchors, strict=True)):
        logits = obj.reshape(-1)
        k = min(pre_nms_top_n, logits.shape[0])
        top, idx = jax.lax.top_k(jax.lax.stop_gradient(logits), k)
        codes = jax.lax.stop_gradient(delta.reshape(-1, 4))[idx]
        cand_boxes.append(
            box_ops.decode_boxes(codes, jnp.asarray(anc)[idx], RPN_WEIGHTS, BBOX_XFORM_CLIP)
        )
        cand_logits.append(logits[idx])  # keeps the gradient w.r.t. the objectness
        cand_levels.append(np.full(k, level, np.int32))
    boxes = box_ops.clip_boxes(jnp.concatenate(cand_boxes), *image_size)
    scores = jax.nn.sigmoid(jnp.concatenate(cand_logits))
    levels = jnp.asarray(np.concatenate(cand_levels))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ok = (w >= min_size) & (h >= min_size) & (scores >= score_thresh)
    keep, valid = box_ops.batched_nms(
        boxes,
        jnp.where(ok, jax.lax.stop_gradient(scores), -jnp.inf),
        levels,
        iou_threshold=nms_thresh,
        max_outputs=post_nms_top_n,
    )
    keep = jnp.where(valid, keep, 0)
    return boxes[keep], jnp.where(valid, scores[keep], 0.0), valid
