"""Training for the Faster R-CNN of :mod:`fooltools.detection.faster_rcnn`, jitted, fixed-size.

torchvision's training recipe (Ren et al. 2015, as in ``torchvision.models.detection``)
with every variable-length step replaced by masks and ``top_k`` so that one train step
jits once per batch shape:

- **RPN targets** (:func:`match` + :func:`sample`): an anchor is positive when its IoU with
  some ground-truth box is >= 0.7, negative when < 0.3 with all, ignored in between, and
  each ground-truth box's best anchors (ties included) are positive too
  (``allow_low_quality_matches``); 256 anchors per image are sampled with at most half
  positives. Losses: binary cross-entropy of the objectness over the sampled anchors and
  smooth-L1 (beta 1/9, summed) of the box deltas over the sampled positives, both divided
  by the number sampled, as torchvision does.
- **Box head targets**: the current RPN's proposals (no gradient) plus the ground-truth
  boxes; IoU >= 0.5 is the matched box's class, anything else background; 128 RoIs per
  image with at most 25% positives. Losses: cross-entropy over the sampled RoIs and
  smooth-L1 (beta 1/9, summed, divided by the number sampled) of the matched class's
  deltas, encoded with weights (10, 10, 5, 5).

The trained parameters are the inference model's own (``faster_rcnn._Net``): the ResNet
convolutions carry the bias that BatchNorm folding gives them at load time, i.e. the
network trains as a ResNet with a learnt affine after each convolution (FrozenBatchNorm2d
with identity statistics, whose weight and bias are trainable), which on these small
models and this data trains without batch statistics. :func:`to_state_dict` writes them
with torchvision's key names, each conv's affine as its BatchNorm's ``bias`` with weight 1,
mean 0 and a variance for which folding is exactly the identity in float32, so
``load_faster_rcnn`` of the saved file gives back the very same parameters and the very
same detections as the model evaluated during training.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools import rng
from fooltools.detection import boxes as box_ops
from fooltools.detection import faster_rcnn as fr
from fooltools.detection import resnet_fpn, rpn
from fooltools.detection.detectors import SYNTH_ANCHOR_SIZES, SYNTH_LOAD_KWARGS
from fooltools.detection.rcnn_transform import transform
from fooltools.detection.resnet_fpn import ResNetFPNSpec, StageSpec

# float32 variance v with 1 / sqrt(float64(v) + 1e-5) = 1 + 7e-9: within half an ulp of 1
# relative, so resnet_fpn._fold's float32 product W * scale rounds back to W exactly.
IDENTITY_VAR = np.float32(1 - resnet_fpn.BN_EPS)

# The bundled detector trained on fooltools.detection.synthetic (128 x 128 images).
SYNTH_SPEC = ResNetFPNSpec(
    stem=16,
    stages=(
        StageSpec(True, 16, 64, 1, 1, 1),
        StageSpec(True, 32, 128, 1, 2, 1),
        StageSpec(True, 48, 192, 1, 2, 1),
        StageSpec(True, 64, 256, 1, 2, 1),
    ),
    fpn_channels=32,
)
SYNTH_REPRESENTATION = 128


class TrainSettings(NamedTuple):
    """Target assignment and sampling (torchvision's defaults unless noted)."""

    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    # Proposals per level before NMS and kept after it while training (torchvision: 2000,
    # 2000); a few objects per small image need far fewer, and NMS is a serial loop.
    rpn_pre_nms_top_n: int = 300
    rpn_post_nms_top_n: int = 200
    box_fg_iou: float = 0.5
    box_batch_per_image: int = 128  # torchvision: 512
    box_positive_fraction: float = 0.25


class Losses(NamedTuple):
    """The four loss terms of a batch (scalars)."""

    rpn_objectness: jax.Array
    rpn_box: jax.Array
    classifier: jax.Array
    box: jax.Array


def synth_config(num_classes: int = 6) -> fr.FasterRCNNConfig:
    """The bundled synthetic-data detector's config (background + 5 shapes by default)."""
    return fr.FasterRCNNConfig(
        backbone=SYNTH_SPEC,
        num_classes=num_classes,
        representation=SYNTH_REPRESENTATION,
        num_anchors=len(SYNTH_ANCHOR_SIZES[0]) * len(rpn.ASPECT_RATIOS),
        **SYNTH_LOAD_KWARGS,
    )


# --- targets -----------------------------------------------------------------------------


def match(
    iou: jax.Array,
    gt_valid: jax.Array,
    *,
    fg_iou: float,
    bg_iou: float,
    allow_low_quality: bool,
) -> tuple[jax.Array, jax.Array]:
    """Assign each candidate box to a ground-truth box (torchvision's ``Matcher``).

    Args:
        iou: (B, G) IoU of B candidates (anchors, proposals) with G ground-truth boxes.
        gt_valid: (G,) bool, False for padding rows of the ground truth.
        fg_iou: Candidates with best IoU >= this are foreground.
        bg_iou: Candidates with best IoU < this are background; in between: ignored.
        allow_low_quality: Also make each ground-truth box's best candidates (all ties)
            foreground, whatever their IoU (> 0).

    Returns:
        ``(matched, labels)``: (B,) int32 index of the best ground-truth box, and (B,)
        int32 1 (foreground), 0 (background) or -1 (ignored).
    """
    iou = jnp.where(gt_valid[None, :], iou, -1.0)
    best = iou.max(axis=1)
    matched = iou.argmax(axis=1).astype(jnp.int32)
    labels = jnp.where(best >= fg_iou, 1, jnp.where(best < bg_iou, 0, -1))
    if allow_low_quality:
        per_gt = iou.max(axis=0)
        is_best = (iou == per_gt[None, :]) & (per_gt > 0)[None, :] & gt_valid[None, :]
        labels = jnp.where(is_best.any(axis=1), 1, labels)
    return matched, labels.astype(jnp.int32)


def sample(
    key: jax.Array, labels: jax.Array, *, batch: int, positive_fraction: float
) -> tuple[jax.Array, jax.Array]:
    """``BalancedPositiveNegativeSampler`` for one image, with random keys and ``top_k``.

    Takes ``min(#positives, int(batch * positive_fraction))`` random positives and fills
    up to ``batch`` with random negatives (fewer where there are not enough).

    Args:
        key: PRNG key.
        labels: (B,) 1 foreground, 0 background, -1 ignored (or invalid).
        batch: Candidates sampled per image (at most; needs ``batch <= B``).
        positive_fraction: Largest share of foreground in the sample.

    Returns:
        ``(positive, negative)``: (B,) bool masks of the sampled candidates.
    """
    n = labels.shape[0]
    max_pos = min(int(batch * positive_fraction), n)
    u_pos, u_neg = rng.uniform(key, (2, n))
    # Random priorities in [0, 1) for the eligible, -1 for the rest: the top k are a
    # uniformly random subset of the eligible (or all of them, when fewer than k).
    pv, pi = jax.lax.top_k(jnp.where(labels == 1, u_pos, -1.0), max_pos)
    take_pos = pv >= 0
    nv, ni = jax.lax.top_k(jnp.where(labels == 0, u_neg, -1.0), min(batch, n))
    take_neg = (nv >= 0) & (jnp.arange(ni.shape[0]) < batch - take_pos.sum())
    positive = jnp.zeros(n, bool).at[pi].set(take_pos)  # top_k indices are distinct
    negative = jnp.zeros(n, bool).at[ni].set(take_neg)
    return positive, negative


def smooth_l1(x: jax.Array, beta: float = 1.0 / 9) -> jax.Array:
    """Elementwise smooth-L1 (Huber / beta) as ``torch.nn.functional.smooth_l1_loss``."""
    a = jnp.abs(x)
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


# --- the loss ----------------------------------------------------------------------------


def _rpn_loss(
    key: jax.Array,
    settings: TrainSettings,
    anchors: jax.Array,
    objectness: jax.Array,
    deltas: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """RPN losses of a batch: objectness (N, A) logits, deltas (N, A, 4), anchors (A, 4)."""

    def targets(key, boxes, valid):
        matched, labels = match(
            box_ops.box_iou(anchors, boxes),
            valid,
            fg_iou=settings.rpn_fg_iou,
            bg_iou=settings.rpn_bg_iou,
            allow_low_quality=True,
        )
        pos, neg = sample(
            key,
            labels,
            batch=settings.rpn_batch_per_image,
            positive_fraction=settings.rpn_positive_fraction,
        )
        codes = box_ops.encode_boxes(boxes[matched], anchors, rpn.RPN_WEIGHTS)
        return pos, neg, codes

    keys = jax.random.split(key, objectness.shape[0])
    pos, neg, codes = jax.vmap(targets)(keys, gt_boxes, gt_valid)
    sampled = pos | neg
    count = jnp.maximum(sampled.sum(), 1)
    bce = optax.sigmoid_binary_cross_entropy(objectness, pos.astype(objectness.dtype))
    obj_loss = jnp.where(sampled, bce, 0.0).sum() / count
    box_loss = jnp.where(pos[..., None], smooth_l1(deltas - codes), 0.0).sum() / count
    return obj_loss, box_loss


def _box_targets(
    settings: TrainSettings,
    key: jax.Array,
    candidates: jax.Array,
    cand_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Sample RoIs of one image; returns rois (S, 4), classes (S,), codes (S, 4), taken (S,)."""
    gt_valid = gt_labels >= 0
    matched, fg = match(
        box_ops.box_iou(candidates, gt_boxes),
        gt_valid,
        fg_iou=settings.box_fg_iou,
        bg_iou=settings.box_fg_iou,  # no ignore band in the box head
        allow_low_quality=False,
    )
    fg = jnp.where(cand_valid, fg, -1)
    k1, k2 = jax.random.split(key)
    s = settings.box_batch_per_image
    pos, neg = sample(k1, fg, batch=s, positive_fraction=settings.box_positive_fraction)
    # Gather the sampled candidates into s fixed slots (random order; unused slots masked).
    pv, idx = jax.lax.top_k(jnp.where(pos | neg, rng.uniform(k2, fg.shape), -1.0), s)
    taken = pv >= 0
    rois = candidates[idx]
    classes = jnp.where(pos[idx], gt_labels[matched[idx]] + 1, 0)
    codes = box_ops.encode_boxes(gt_boxes[matched[idx]], rois, fr.BOX_WEIGHTS)
    return rois, jnp.where(taken, classes, 0), codes, taken


def loss_fn(
    config: fr.FasterRCNNConfig,
    settings: TrainSettings,
    params: Any,
    key: jax.Array,
    images: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
) -> tuple[jax.Array, Losses]:
    """Faster R-CNN's training loss of a batch (the sum of the four terms).

    Args:
        config: The model's settings (its transform, anchors and box coding are used).
        settings: Target assignment and sampling.
        params: The model's params (``faster_rcnn._Net``'s).
        key: PRNG key for the samplers.
        images: (N, H, W, 3) in [0, 1].
        gt_boxes: (N, G, 4) ``(x1, y1, x2, y2)`` in image pixels; padding rows arbitrary.
        gt_labels: (N, G) int32 classes 0..K-2 (background excluded), -1 for padding.

    Returns:
        ``(total, Losses)``.
    """
    x, image_size = transform(config, images)
    scale = np.float32(image_size) / np.float32(images.shape[1:3])
    gt_boxes = gt_boxes * jnp.asarray([scale[1], scale[0], scale[1], scale[0]])
    gt_valid = gt_labels >= 0
    feats = fr.backbone_features(config, params, x)
    objectness, deltas = fr.rpn_head_outputs(config, params, feats)
    n = images.shape[0]
    anchors = rpn.grid_anchors(
        x.shape[1:3], [o.shape[1:3] for o in objectness], config.anchor_sizes, config.aspect_ratios
    )
    k_rpn, k_box = jax.random.split(key)
    rpn_obj, rpn_box = _rpn_loss(
        k_rpn,
        settings,
        jnp.asarray(np.concatenate(anchors)),
        jnp.concatenate([o.reshape(n, -1) for o in objectness], axis=1),
        jnp.concatenate([d.reshape(n, -1, 4) for d in deltas], axis=1),
        gt_boxes,
        gt_valid,
    )

    proposal_config = config._replace(
        rpn_pre_nms_top_n=settings.rpn_pre_nms_top_n,
        rpn_post_nms_top_n=settings.rpn_post_nms_top_n,
    )
    proposals, _, valid = fr.region_proposals(
        proposal_config,
        jax.lax.stop_gradient(objectness),
        jax.lax.stop_gradient(deltas),
        x.shape[1:3],
        image_size,
    )
    candidates = jnp.concatenate([proposals, gt_boxes], axis=1)
    cand_valid = jnp.concatenate([valid, gt_valid], axis=1)
    keys = jax.random.split(k_box, n)
    rois, classes, codes, taken = jax.vmap(functools.partial(_box_targets, settings))(
        keys, candidates, cand_valid, gt_boxes, gt_labels
    )
    rois = jax.lax.stop_gradient(rois)
    logits, regression = fr.box_head_outputs(config, params, feats, rois, image_size)
    count = jnp.maximum(taken.sum(), 1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, classes)
    cls_loss = jnp.where(taken, ce, 0.0).sum() / count
    per_class = regression.reshape(*regression.shape[:2], config.num_classes, 4)
    pred = jnp.take_along_axis(per_class, classes[..., None, None], axis=2)[..., 0, :]
    fg = taken & (classes > 0)
    box_loss = jnp.where(fg[..., None], smooth_l1(pred - codes), 0.0).sum() / count
    losses = Losses(rpn_obj, rpn_box, cls_loss, box_loss)
    return sum(losses), losses


def make_train_step(
    config: fr.FasterRCNNConfig,
    optimizer: optax.GradientTransformation,
    settings: TrainSettings | None = None,
) -> Callable[..., tuple[Any, Any, Losses]]:
    """A jitted ``step(params, opt_state, key, images, gt_boxes, gt_labels)``.

    Returns:
        The step, which returns ``(params, opt_state, Losses)``; shapes as :func:`loss_fn`.
    """
    settings = settings or TrainSettings()
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, config, settings), has_aux=True)

    @jax.jit
    def step(params, opt_state, key, images, gt_boxes, gt_labels):
        (_, losses), grads = grad_fn(params, key, images, gt_boxes, gt_labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, losses

    return step


# --- initialisation, augmentation, export --------------------------------------------------


def init_params(key: jax.Array, config: fr.FasterRCNNConfig) -> Any:
    """Fresh params for ``config``: He-normal ResNet convs, torchvision's head inits.

    The last conv of each residual branch starts at zero (each block starts as its
    shortcut), which keeps activations O(1) without normalisation layers. FPN convs and
    linear layers get torch's default ranges, the RPN head N(0, 0.01), the class scores
    N(0, 0.01) and the box deltas N(0, 0.001), as in torchvision.
    """
    # One program for all the draws: run eagerly, each parameter shape compiled a sampler.
    return jax.jit(functools.partial(_init_params, config=config))(key)


def _init_params(key: jax.Array, config: fr.FasterRCNNConfig) -> Any:
    c = config.backbone.fpn_channels
    template = jax.eval_shape(
        fr._Net(config).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
        jax.ShapeDtypeStruct((1, fr.POOLED, fr.POOLED, c), jnp.float32),
    )["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        names = [p.key for p in path]
        module, kind = names[-2], names[-1]
        if kind == "bias":
            out.append(jnp.zeros(leaf.shape, leaf.dtype))
            continue
        fan_in = int(np.prod(leaf.shape[:-1]))
        resnet_conv = module == "conv1" or re.fullmatch(r"layer\d+_\d+_\w+", module)
        if names[0] == "backbone" and resnet_conv:
            std = 0.0 if module.endswith("conv3") else np.sqrt(2.0 / fan_in)
            out.append(std * rng.normal(k, leaf.shape))
        elif names[0] == "rpn" and module != "conv":
            out.append(0.01 * rng.normal(k, leaf.shape))
        elif module in ("cls_score", "bbox_pred"):
            std = 0.01 if module == "cls_score" else 0.001
            out.append(std * rng.normal(k, leaf.shape))
        else:  # kaiming_uniform(a=sqrt(5)) / a=1: U(+-sqrt(3 / fan_in))
            bound = np.sqrt(3.0 / fan_in)
            out.append(rng.uniform(k, leaf.shape, -bound, bound))
    return jax.tree_util.tree_unflatten(treedef, out)


def augment(key: jax.Array, images: jax.Array, gt_boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Random flips (and transposes for square images), each image on its own draw.

    The synthetic shapes are drawn at uniformly random angles, so the eight symmetries of
    the square keep every label valid.

    Args:
        key: PRNG key.
        images: (N, H, W, 3).
        gt_boxes: (N, G, 4) ``(x1, y1, x2, y2)`` pixels.

    Returns:
        The transformed ``(images, gt_boxes)``, same shapes.
    """
    n, h, w, _ = images.shape
    flip_x, flip_y, swap = rng.bernoulli(key, 0.5, (3, n))
    if h != w:
        swap = jnp.zeros_like(swap)
    sel = lambda m, a, b: jnp.where(m.reshape(-1, *([1] * (a.ndim - 1))), a, b)  # noqa: E731
    x1, y1, x2, y2 = (gt_boxes[..., i] for i in range(4))
    images = sel(flip_x, images[:, :, ::-1], images)
    x1, x2 = sel(flip_x, w - x2, x1), sel(flip_x, w - x1, x2)
    images = sel(flip_y, images[:, ::-1], images)
    y1, y2 = sel(flip_y, h - y2, y1), sel(flip_y, h - y1, y2)
    images = sel(swap, jnp.swapaxes(images, 1, 2), images)
    x1, y1, x2, y2 = sel(swap, y1, x1), sel(swap, x1, y1), sel(swap, y2, x2), sel(swap, x2, y2)
    return images, jnp.stack([x1, y1, x2, y2], axis=-1)


def _conv_weight(entry: dict[str, Any]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(entry["kernel"], np.float32).transpose(3, 2, 0, 1))


def _conv_bn(sd: dict, conv: str, bn: str, entry: dict[str, Any]) -> None:
    sd[conv] = _conv_weight(entry)
    bias = np.asarray(entry["bias"], np.float32)
    sd[f"{bn}.weight"] = np.ones_like(bias)
    sd[f"{bn}.bias"] = bias.copy()
    sd[f"{bn}.running_mean"] = np.zeros_like(bias)
    sd[f"{bn}.running_var"] = np.full_like(bias, IDENTITY_VAR)


def to_state_dict(config: fr.FasterRCNNConfig, params: Any) -> dict[str, np.ndarray]:
    """Trained params as a torchvision ``FasterRCNN`` state dict (FrozenBatchNorm2d backbone).

    Keys, order and shapes are torchvision's (``backbone.body.*``, ``backbone.fpn.*``,
    ``rpn.head.*``, ``roi_heads.*``); conv weights OIHW, linear weights (out, in). Each
    ResNet conv's bias becomes its BatchNorm's bias, with weight 1, mean 0 and variance
    :data:`IDENTITY_VAR`, so ``load_faster_rcnn`` folds it back to exactly these params.

    Returns:
        An ordered dict name -> float32 array.

    Raises:
        RuntimeError: If folding the result would not give back ``params`` bit for bit.
    """
    spec = config.backbone
    bb = jax.tree_util.tree_map(np.asarray, params["backbone"])
    sd: dict[str, np.ndarray] = collections.OrderedDict()
    body, fpn = resnet_fpn.BODY, resnet_fpn.FPN
    _conv_bn(sd, f"{body}.conv1.weight", f"{body}.bn1", bb["conv1"])
    for si, s in enumerate(spec.stages):
        for bi in range(s.blocks):
            p = f"{body}.layer{si + 1}.{bi}"
            for conv in resnet_fpn._block_convs(spec, si, bi):
                entry = bb[f"layer{si + 1}_{bi}_{conv}"]
                if conv == "downsample":
                    _conv_bn(sd, f"{p}.downsample.0.weight", f"{p}.downsample.1", entry)
                else:
                    _conv_bn(sd, f"{p}.{conv}.weight", f"{p}.bn{conv[-1]}", entry)
    for kind, name in (("inner_blocks", "inner"), ("layer_blocks", "layer")):
        for i in range(len(spec.stages)):
            sd[f"{fpn}.{kind}.{i}.0.weight"] = _conv_weight(bb[f"{name}_{i}"])
            sd[f"{fpn}.{kind}.{i}.0.bias"] = np.asarray(bb[f"{name}_{i}"]["bias"], np.float32)
    heads = {
        "rpn.head.conv.0.0": params["rpn"]["conv"],
        "rpn.head.cls_logits": params["rpn"]["cls_logits"],
        "rpn.head.bbox_pred": params["rpn"]["bbox_pred"],
    }
    for prefix, entry in heads.items():
        sd[f"{prefix}.weight"] = _conv_weight(entry)
        sd[f"{prefix}.bias"] = np.asarray(entry["bias"], np.float32)
    head = params["box_head"]
    c = spec.fpn_channels
    # Our fc6 reads the pooled (7, 7, C) flattened; torch's reads (C, 7, 7).
    fc6 = np.asarray(head["fc6"]["kernel"], np.float32).reshape(fr.POOLED, fr.POOLED, c, -1)
    linears = {
        "roi_heads.box_head.fc6": fc6.transpose(2, 0, 1, 3).reshape(c * fr.POOLED**2, -1),
        "roi_heads.box_head.fc7": head["fc7"]["kernel"],
        "roi_heads.box_predictor.cls_score": head["cls_score"]["kernel"],
        "roi_heads.box_predictor.bbox_pred": head["bbox_pred"]["kernel"],
    }
    for prefix, kernel in linears.items():
        sd[f"{prefix}.weight"] = np.ascontiguousarray(np.asarray(kernel, np.float32).T)
        sd[f"{prefix}.bias"] = np.asarray(head[prefix.split(".")[-1]]["bias"], np.float32)
    back = fr.convert_state_dict(sd, config)
    same = jax.tree_util.tree_map(
        lambda a, b: np.array_equal(np.asarray(a, np.float32), b), params, back
    )
    if not all(jax.tree_util.tree_leaves(same)):
        raise RuntimeError("the state dict does not fold back to the trained params exactly")
    return sd


# --- evaluation ----------------------------------------------------------------------------


def evaluate(
    detect: Callable[[Any, jax.Array], fr.RCNNDetections],
    params: Any,
    images: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    *,
    num_classes: int,
    batch: int = 32,
) -> box_ops.MapResult:
    """VOC mAP of a detector on a labelled set (detection labels 1..K-1 = classes 0..K-2).

    Args:
        detect: ``FasterRCNN.detect`` (or any function with its signature).
        params: Its params.
        images: (n, H, W, 3) in [0, 1].
        gt_boxes: (n, G, 4) pixels.
        gt_labels: (n, G) classes 0..num_classes-1, -1 for padding.
        num_classes: Object classes (background excluded).
        batch: Images per ``detect`` call (the last batch is padded, so one compile).

    Returns:
        :func:`fooltools.detection.boxes.evaluate_map`'s result at IoU 0.5.
    """
    dets = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out = jax.device_get(detect(params, jnp.asarray(chunk)))
        for i in range(batch - pad):
            dets.append(
                {"boxes": out.boxes[i], "scores": out.scores[i], "labels": out.labels[i] - 1}
            )
    truths = [{"boxes": b, "labels": lab} for b, lab in zip(gt_boxes, gt_labels, strict=True)]
    return box_ops.evaluate_map(dets, truths, num_classes=num_classes)
