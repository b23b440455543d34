"""Faster R-CNN (Ren et al. 2015) in torchvision's layout, in JAX/Flax (NHWC).

Loads torchvision state dicts through the torch-free
:func:`fooltools.checkpoints.load_state_dict`: ``fasterrcnn_resnet50_fpn`` and any ResNet-FPN
model with the same key names (widths and depths read off the weights), and
``fasterrcnn_mobilenet_v3_large_fpn`` / ``..._320_fpn`` (the backbone is told by its keys). It
reproduces torchvision's eval-mode forward stage by stage:

1. ``GeneralizedRCNNTransform``: ImageNet normalisation, bilinear resize so the short
   side is ``min_size`` and the long side at most ``max_size``, zero padding to a multiple
   of 32 (:func:`transform`);
2. the ResNet-FPN or MobileNetV3-FPN backbone (:mod:`fooltools.detection.resnet_fpn`,
   :mod:`fooltools.detection.mobilenet_fpn`);
3. the RPN head and proposal filtering (:mod:`fooltools.detection.rpn`);
4. ``MultiScaleRoIAlign`` (:mod:`fooltools.detection.roi_align`), ``TwoMLPHead`` and
   ``FastRCNNPredictor`` (:func:`box_head_outputs`);
5. ``RoIHeads.postprocess_detections`` and the transform's box rescaling
   (:func:`postprocess`).

Every variable-length step of torchvision (filtering, NMS) is fixed-size here, with
validity masks, so ``apply`` and ``detect`` jit once per input shape. ``apply`` returns the
raw head outputs (differentiable w.r.t. the input), ``detect`` the decoded detections.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fooltools import checkpoints
from fooltools.detection import boxes as box_ops
from fooltools.detection import mobilenet_fpn, resnet_fpn, roi_align, rpn
from fooltools.detection.rcnn_transform import resized_size, transform
from fooltools.errors import ModelError
from fooltools.models.registry import merge_params

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
POOLED = 7  # MultiScaleRoIAlign output size
SAMPLING_RATIO = 2
POOLED_LEVELS = ("0", "1", "2", "3")  # MultiScaleRoIAlign's featmap_names (those present)
BackboneSpec = resnet_fpn.ResNetFPNSpec | mobilenet_fpn.MobileNetFPNSpec


class _Family(NamedTuple):
    name: str
    module: Callable[..., nn.Module]
    infer_spec: Callable[[Mapping[str, np.ndarray]], Any]
    expected_keys: Callable[[Any], set[str]]
    convert: Callable[[Mapping[str, np.ndarray], Any], dict[str, Any]]
    levels: tuple[str, ...]
    key: str  # Variant.backbone of the variants that fit it


_RESNET = _Family(
    "Faster R-CNN (ResNet-FPN)",
    resnet_fpn.ResNetFPN,
    resnet_fpn.infer_spec,
    resnet_fpn.expected_keys,
    resnet_fpn.convert,
    resnet_fpn.LEVEL_NAMES,
    "resnet",
)
_MOBILENET = _Family(
    "Faster R-CNN (MobileNetV3-Large-FPN)",
    mobilenet_fpn.MobileNetFPN,
    mobilenet_fpn.infer_spec,
    mobilenet_fpn.expected_keys,
    mobilenet_fpn.convert,
    mobilenet_fpn.LEVEL_NAMES,
    "mobilenet",
)


def _family(spec: BackboneSpec) -> _Family:
    return _MOBILENET if isinstance(spec, mobilenet_fpn.MobileNetFPNSpec) else _RESNET


class Variant(NamedTuple):
    """Inference defaults of one of torchvision's Faster R-CNN builders."""

    backbone: str  # "resnet" or "mobilenet": the weights it fits
    min_size: int
    max_size: int
    rpn_pre_nms_top_n: int  # torchvision's rpn_pre_nms_top_n_test
    rpn_post_nms_top_n: int  # rpn_post_nms_top_n_test
    rpn_score_thresh: float
    anchor_sizes: tuple[tuple[int, ...], ...]


# The builders' defaults (torchvision models/detection/faster_rcnn.py), the first of each
# backbone being the one it loads with; the 320 model's weights have the same keys and
# shapes as the other mobilenet's, so only the caller can say which one a file is.
VARIANTS = {
    "fasterrcnn_resnet50_fpn": Variant("resnet", 800, 1333, 1000, 1000, 0.0, rpn.ANCHOR_SIZES),
    "fasterrcnn_mobilenet_v3_large_fpn": Variant(
        "mobilenet", 800, 1333, 1000, 1000, 0.05, mobilenet_fpn.ANCHOR_SIZES
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": Variant(
        "mobilenet", 320, 640, 150, 150, 0.05, mobilenet_fpn.ANCHOR_SIZES
    ),
}


class FasterRCNNConfig(NamedTuple):
    """Static architecture and inference settings (torchvision's eval defaults)."""

    backbone: BackboneSpec
    num_classes: int  # including background (index 0)
    representation: int  # TwoMLPHead width
    num_anchors: int = 3
    min_size: int = 800
    max_size: int = 1333
    size_divisible: int = 32
    image_mean: tuple[float, float, float] = IMAGE_MEAN
    image_std: tuple[float, float, float] = IMAGE_STD
    anchor_sizes: tuple[tuple[int, ...], ...] = rpn.ANCHOR_SIZES
    aspect_ratios: tuple[float, ...] = rpn.ASPECT_RATIOS
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_min_size: float = 1e-2


class RawOutputs(NamedTuple):
    """Raw head outputs of a batch (N images of one size); see :func:`apply`."""

    objectness: list[jax.Array]  # per level (N, h, w, A) logits
    rpn_deltas: list[jax.Array]  # per level (N, h, w, A, 4)
    proposals: jax.Array  # (N, P, 4) in resized-image pixels, by decreasing objectness
    proposal_scores: jax.Array  # (N, P) objectness probabilities
    proposal_valid: jax.Array  # (N, P) bool
    class_logits: jax.Array  # (N, P, K)
    box_regression: jax.Array  # (N, P, 4K)


class RCNNDetections(NamedTuple):
    """Fixed-size detections; rows where ``valid`` is False are padding (label -1)."""

    boxes: jax.Array  # (N, D, 4) (x1, y1, x2, y2) in original-image pixels
    scores: jax.Array  # (N, D)
    labels: jax.Array  # (N, D) int32, 1..K-1; -1 for padding
    valid: jax.Array  # (N, D) bool, a prefix of each row


class FasterRCNN(NamedTuple):
    """A loaded detector: ``apply(params, x) -> RawOutputs``, ``detect(params, x)``.

    ``x`` is a batch of RGB images in [0, 1], shape (N, H, W, 3), all of one size; both
    functions are jitted (once per input shape) and pure.
    """

    params: Any
    config: FasterRCNNConfig
    apply: Callable[[Any, jax.Array], RawOutputs]
    detect: Callable[[Any, jax.Array], RCNNDetections]


# --- the network -----------------------------------------------------------------------


class _BoxHead(nn.Module):
    """TwoMLPHead (fc6, fc7) + FastRCNNPredictor (cls_score, bbox_pred)."""

    representation: int
    num_classes: int

    @nn.compact
    def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = pooled.reshape(*pooled.shape[:-3], -1)  # (7, 7, C) flattened NHWC-wise
        x = nn.relu(nn.Dense(self.representation, name="fc6")(x))
        x = nn.relu(nn.Dense(self.representation, name="fc7")(x))
        logits = nn.Dense(self.num_classes, name="cls_score")(x)
        return logits, nn.Dense(4 * self.num_classes, name="bbox_pred")(x)


class _Net(nn.Module):
    config: FasterRCNNConfig

    def setup(self) -> None:
        c = self.config
        self.backbone = _family(c.backbone).module(c.backbone)
        self.rpn = rpn.RPNHead(c.backbone.fpn_channels, c.num_anchors)
        self.box_head = _BoxHead(c.representation, c.num_classes)

    def __call__(self, images: jax.Array, pooled: jax.Array) -> Any:
        feats = self.backbone(images)
        return feats, self.rpn(list(feats.values())), self.box_head(pooled)

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        return self.backbone(images)

    def rpn_head(self, feats: list[jax.Array]) -> Any:
        return self.rpn(feats)

    def predict(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.box_head(pooled)


def backbone_features(
    config: FasterRCNNConfig, params: Any, images: jax.Array
) -> dict[str, jax.Array]:
    """FPN features (N, h, w, C) of transformed images, by level name.

    ``{"0", "1", "2", "3", "pool"}`` (strides 4 to 64) for ResNet, ``{"0", "1", "pool"}``
    (strides 32, 32, 64) for MobileNetV3.
    """
    return _Net(config).apply({"params": params}, images, method=_Net.features)


def rpn_head_outputs(
    config: FasterRCNNConfig, params: Any, features: Mapping[str, jax.Array]
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per level objectness (N, h, w, A) and deltas (N, h, w, A, 4)."""
    return _Net(config).apply({"params": params}, list(features.values()), method=_Net.rpn_head)


def region_proposals(
    config: FasterRCNNConfig,
    objectness: list[jax.Array],
    deltas: list[jax.Array],
    padded: tuple[int, int],
    image_size: tuple[int, int],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Proposals of a batch: (N, P, 4) boxes, (N, P) scores, (N, P) valid; see ``rpn``."""
    anchors = rpn.grid_anchors(
        padded, [o.shape[1:3] for o in objectness], config.anchor_sizes, config.aspect_ratios
    )
    one = functools.partial(
        rpn.propose,
        anchors=anchors,
        image_size=image_size,
        pre_nms_top_n=config.rpn_pre_nms_top_n,
        post_nms_top_n=config.rpn_post_nms_top_n,
        nms_thresh=config.rpn_nms_thresh,
        score_thresh=config.rpn_score_thresh,
        min_size=config.rpn_min_size,
    )
    return jax.vmap(one)(objectness, deltas)


def box_head_outputs(
    config: FasterRCNNConfig,
    params: Any,
    features: Mapping[str, jax.Array],
    proposals: jax.Array,
    image_size: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """Box head on given proposals: RoIAlign on levels "0".."3" (if present), MLP, predictor.

    Args:
        config: The model's settings.
        params: The model's params.
        features: FPN features of the batch, (N, h, w, C) per level.
        proposals: (N, P, 4) boxes in resized-image pixels.
        image_size: Resized (h, w) before padding.

    Returns:
        ``(class_logits, box_regression)``: (N, P, K) and (N, P, 4K).
    """
    levels = [features[k] for k in POOLED_LEVELS if k in features]
    pool = functools.partial(
        roi_align.multiscale_roi_align,
        image_size=image_size,
        output_size=POOLED,
        sampling_ratio=SAMPLING_RATIO,
    )
    pooled = jax.vmap(lambda f, b: pool(f, b))(levels, proposals)
    return _Net(config).apply({"params": params}, pooled, method=_Net.predict)


def postprocess(
    config: FasterRCNNConfig,
    raw: RawOutputs,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
) -> RCNNDetections:
    """``RoIHeads.postprocess_detections`` + box rescaling, fixed-size, for a batch.

    Per proposal and foreground class: decode (weights 10, 10, 5, 5), clip to the resized
    image, softmax score; keep score > ``box_score_thresh`` and sides >= ``box_min_size``;
    per-class NMS at ``box_nms_thresh``; the best ``box_detections_per_img``; boxes scaled
    back to the original image.
    """
    k = config.num_classes
    ratio = np.float32(original_size) / np.float32(image_size)  # (h, w), float32 as torch
    scale = jnp.asarray([ratio[1], ratio[0], ratio[1], ratio[0]])

    def one(logits, regression, proposals, proposal_valid):
        codes = regression.reshape(-1, k, 4)
        boxes = box_ops.decode_boxes(codes, proposals[:, None], BOX_WEIGHTS, rpn.BBOX_XFORM_CLIP)
        boxes = box_ops.clip_boxes(boxes, *image_size)[:, 1:].reshape(-1, 4)
        scores = jax.nn.softmax(logits, axis=-1)[:, 1:].reshape(-1)
        labels = jnp.tile(jnp.arange(1, k, dtype=jnp.int32), proposals.shape[0])
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ok = jnp.repeat(proposal_valid, k - 1) & (scores > config.box_score_thresh)
        ok &= (w >= config.box_min_size) & (h >= config.box_min_size)
        keep, valid = box_ops.batched_nms(
            jax.lax.stop_gradient(boxes),
            jnp.where(ok, jax.lax.stop_gradient(scores), -jnp.inf),
            labels,
            iou_threshold=config.box_nms_thresh,
            max_outputs=config.box_detections_per_img,
        )
        keep = jnp.where(valid, keep, 0)
        return RCNNDetections(
            jnp.where(valid[:, None], boxes[keep] * scale, 0.0),
            jnp.where(valid, scores[keep], 0.0),
            jnp.where(valid, labels[keep], -1),
            valid,
        )

    return jax.vmap(one)(raw.class_logits, raw.box_regression, raw.proposals, raw.proposal_valid)


def apply(config: FasterRCNNConfig, params: Any, x: jax.Array) -> RawOutputs:
    """The whole forward up to the raw head outputs, for images (N, H, W, 3) in [0, 1].

    The proposals carry no gradient (as in torchvision); the objectness, RPN deltas, class
    logits and box regression do, w.r.t. ``x`` and ``params``.
    """
    images, image_size = transform(config, x)
    feats = backbone_features(config, params, images)
    objectness, deltas = rpn_head_outputs(config, params, feats)
    proposals, scores, valid = region_proposals(
        config, objectness, deltas, images.shape[1:3], image_size
    )
    logits, regression = box_head_outputs(config, params, feats, proposals, image_size)
    return RawOutputs(objectness, deltas, proposals, scores, valid, logits, regression)


def detect(config: FasterRCNNConfig, params: Any, x: jax.Array) -> RCNNDetections:
    """Detections of images (N, H, W, 3) in [0, 1], boxes in their own pixels."""
    raw = apply(config, params, x)
    image_size = resized_size(config, *x.shape[1:3])
    return postprocess(config, raw, image_size, x.shape[1:3])


# --- loading ---------------------------------------------------------------------------

# Checkpoints saved before torchvision 0.13 (the published COCO weights among them) name
# the FPN and RPN convs without the Conv2dNormActivation level; torchvision upgrades them
# in _load_from_state_dict, and so do we.
_LEGACY = (
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
)
_HEADS = (
    "rpn.head.conv.0.0",
    "rpn.head.cls_logits",
    "rpn.head.bbox_pred",
    "roi_heads.box_head.fc6",
    "roi_heads.box_head.fc7",
    "roi_heads.box_predictor.cls_score",
    "roi_heads.box_predictor.bbox_pred",
)


def _normalise_keys(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):  # BatchNorm2d bookkeeping, not a weight
            continue
        for pattern, repl in _LEGACY:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _linear(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    w = sd[f"{prefix}.weight"]
    return {"kernel": w.T.astype(np.float32), "bias": sd[f"{prefix}.bias"].astype(np.float32)}


def convert_state_dict(sd: Mapping[str, np.ndarray], config: FasterRCNNConfig) -> dict[str, Any]:
    """Convert a (key-normalised, complete) torchvision state dict to Flax params."""
    fc6 = _linear(sd, "roi_heads.box_head.fc6")
    c = config.backbone.fpn_channels
    # torch flattens pooled (C, 7, 7); we flatten (7, 7, C): permute fc6's input rows.
    k = fc6["kernel"].reshape(c, POOLED, POOLED, -1).transpose(1, 2, 0, 3)
    fc6["kernel"] = np.ascontiguousarray(k.reshape(c * POOLED * POOLED, -1))
    return {
        "backbone": _family(config.backbone).convert(sd, config.backbone),
        "rpn": {
            "conv": resnet_fpn.conv_entry(sd, "rpn.head.conv.0.0"),
            "cls_logits": resnet_fpn.conv_entry(sd, "rpn.head.cls_logits"),
            "bbox_pred": resnet_fpn.conv_entry(sd, "rpn.head.bbox_pred"),
        },
        "box_head": {
            "fc6": fc6,
            "fc7": _linear(sd, "roi_heads.box_head.fc7"),
            "cls_score": _linear(sd, "roi_heads.box_predictor.cls_score"),
            "bbox_pred": _linear(sd, "roi_heads.box_predictor.bbox_pred"),
        },
    }


def _check_keys(sd: Mapping[str, np.ndarray], expected: set[str], model: str) -> None:
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{what} {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
        raise ModelError(f"weights do not fit {model}: " + "; ".join(parts))


def _variant(variant: str | None, family: _Family) -> Variant:
    if variant is None:
        return next(v for v in VARIANTS.values() if v.backbone == family.key)
    if variant not in VARIANTS:
        raise ModelError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if VARIANTS[variant].backbone != family.key:
        raise ModelError(f"{variant} does not fit these weights, which are a {family.name}")
    return VARIANTS[variant]


# What inferring a network from tensors of the wrong rank or of empty dimensions raises
# (unpacking a shape, dividing by a width of 0 in flax's initialisers, a reshape).
_MISFIT = (ValueError, TypeError, IndexError, ZeroDivisionError)


def _misfit(model: str, err: Exception) -> ModelError:
    """The one-line error for weights whose shapes describe no ``model``."""
    detail = " ".join(f"{type(err).__name__}: {err}".split())[:160]
    return ModelError(
        f"weights do not fit {model}: their shapes describe no such network ({detail})"
    )


def load_faster_rcnn(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    variant: str | None = None,
    num_classes: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    box_score_thresh: float = 0.05,
    rpn_pre_nms_top_n: int | None = None,
    rpn_post_nms_top_n: int | None = None,
    rpn_score_thresh: float | None = None,
    anchor_sizes: Sequence[Sequence[int]] | None = None,
) -> FasterRCNN:
    """Load a torchvision Faster R-CNN state dict (ResNet-FPN or MobileNetV3-Large-FPN).

    The backbone is told by the keys (``backbone.body.conv1.weight``: ResNet;
    ``backbone.body.0.0.weight``: MobileNetV3), its widths and depths by the shapes.
    Settings left None take the ``variant``'s defaults (:data:`VARIANTS`).

    Args:
        path_or_state_dict: A ``torch.save`` file of the detector's state dict (read
            without torch), or the state dict itself (name -> array).
        variant: The torchvision builder whose inference defaults to use:
            ``"fasterrcnn_resnet50_fpn"`` (800/1333, 1000/1000 proposals, score threshold
            0, one anchor size per level), ``"fasterrcnn_mobilenet_v3_large_fpn"``
            (800/1333, 1000/1000, 0.05, sizes 32..512 at each of the three levels) or
            ``"fasterrcnn_mobilenet_v3_large_320_fpn"`` (320/640, 150/150, 0.05). None:
            the first that fits the backbone. The two mobilenet models' weights look
            alike, so a 320 checkpoint needs ``variant`` (or the settings) said.
        num_classes: Expected number of classes including background (e.g. 91 for COCO);
            None takes it from the weights.
        min_size: Short side after resizing (torchvision's ``min_size``).
        max_size: Upper bound on the long side after resizing.
        box_score_thresh: Minimum class score of a detection.
        rpn_pre_nms_top_n: Proposals per level before NMS.
        rpn_post_nms_top_n: Proposals kept after NMS.
        rpn_score_thresh: Minimum objectness probability of a proposal.
        anchor_sizes: Anchor sizes (pixels of the resized image) per pyramid level, one
            tuple for each level (five for ResNet, "0" to "pool"; three for MobileNet),
            as torchvision's ``AnchorGenerator(sizes=...)``. Models trained with other
            anchors (e.g. the bundled synthetic-data detector) must be loaded with theirs.

    Returns:
        The :class:`FasterRCNN`, with jitted ``apply`` and ``detect``.

    Raises:
        ModelError: The weights do not fit (lists missing and unexpected keys, or shapes),
            or ``variant`` is unknown or for the other backbone.
        CheckpointError: The file is missing, unreadable or unsafe.
    """
    if isinstance(path_or_state_dict, Mapping):
        raw_sd = path_or_state_dict
    else:
        raw_sd = checkpoints.load_state_dict(path_or_state_dict)
    sd = _normalise_keys(raw_sd)
    family = _MOBILENET if "backbone.body.0.0.weight" in sd else _RESNET
    model = family.name
    try:
        spec = family.infer_spec(sd)
        classes, representation = sd["roi_heads.box_predictor.cls_score.weight"].shape
    except KeyError as err:
        unexpected = sorted(k for k in sd if not k.startswith(("backbone.", "rpn.", "roi_heads.")))
        extra = f"; unexpected {', '.join(unexpected[:8])}" if unexpected else ""
        raise ModelError(f"weights do not fit {model}: missing {err.args[0]}{extra}") from None
    except _MISFIT as err:
        raise _misfit(model, err) from None
    expected = family.expected_keys(spec)
    expected |= {f"{head}.{p}" for head in _HEADS for p in ("weight", "bias")}
    _check_keys(sd, expected, model)
    if num_classes is not None and num_classes != classes:
        raise ModelError(f"weights have {classes} classes, expected num_classes={num_classes}")
    given = {
        "min_size": min_size,
        "max_size": max_size,
        "rpn_pre_nms_top_n": rpn_pre_nms_top_n,
        "rpn_post_nms_top_n": rpn_post_nms_top_n,
        "rpn_score_thresh": rpn_score_thresh,
        "anchor_sizes": anchor_sizes,
    }
    settings = _variant(variant, family)._replace(
        **{k: v for k, v in given.items() if v is not None}
    )
    anchor_sizes = tuple(tuple(int(a) for a in level) for level in settings.anchor_sizes)
    if np.ndim(sd["rpn.head.cls_logits.weight"]) == 0:
        raise _misfit(model, ValueError("rpn.head.cls_logits.weight is 0-d"))
    num_anchors = sd["rpn.head.cls_logits.weight"].shape[0]
    per_level = {len(level) * len(rpn.ASPECT_RATIOS) for level in anchor_sizes}
    if len(anchor_sizes) != len(family.levels) or per_level != {num_anchors}:
        raise ModelError(
            f"anchor_sizes {anchor_sizes} do not fit the weights: the RPN head predicts "
            f"{num_anchors} anchors per location at each of {len(family.levels)} "
            f"levels ({len(rpn.ASPECT_RATIOS)} aspect ratios per size)"
        )
    config = FasterRCNNConfig(
        backbone=spec,
        num_classes=int(classes),
        representation=int(representation),
        num_anchors=num_anchors,
        min_size=settings.min_size,
        max_size=settings.max_size,
        box_score_thresh=box_score_thresh,
        rpn_pre_nms_top_n=settings.rpn_pre_nms_top_n,
        rpn_post_nms_top_n=settings.rpn_post_nms_top_n,
        rpn_score_thresh=settings.rpn_score_thresh,
        anchor_sizes=anchor_sizes,
    )
    c = spec.fpn_channels
    try:
        template = jax.eval_shape(
            _Net(config).init,
            jax.random.key(0),
            jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
            jax.ShapeDtypeStruct((1, POOLED, POOLED, c), jnp.float32),
        )["params"]
        converted = convert_state_dict(sd, config)
    except _MISFIT as err:
        raise _misfit(model, err) from None
    params = merge_params(template, converted, model=model)
    return FasterRCNN(
        # device_put, not jnp.asarray per leaf: in JAX 0.10 that compiles an identity per
        # shape (the bundled detector: 42 programs for `fool detect` -> 3 with detect_images).
        params=jax.device_put(params),
        config=config,
        apply=jax.jit(functools.partial(apply, config)),
        detect=jax.jit(functools.partial(detect, config)),
    )
