"""YOLOv2 / YOLOv3 from Darknet ``.cfg`` + ``.weights`` files, as pure JAX functions.

``load_darknet("yolov3-tiny.cfg", "yolov3-tiny.weights")`` returns a :class:`YOLO`:
``apply(params, x)`` maps RGB images in [0, 1], shape (B, H, W, 3), to the raw output of
the convolution feeding each ``[region]`` / ``[yolo]`` head, NHWC, before any sigmoid, exp
or softmax (attack losses differentiate through these), and ``decode(raw, image_hw)``
turns those into dense, fixed-size predictions exactly as Darknet's region/yolo layers
do, ready for a fixed-size NMS; :func:`detect` adds that NMS (fooltools.detection.boxes).
Darknet feeds the network an RGB image scaled to [0, 1] and resized (plainly, or letterboxed
by pjreddie's detector) to the cfg's width and height; that step is the caller's, and
``image_hw`` assumes a plain resize. Any H, W divisible by the network's total stride (32 for
the YOLOs) also run. Architecture cfgs for yolov2-voc, yolov2-tiny(-voc), yolov3 and
yolov3-tiny ship in ``fooltools/detection/cfg/``; the weights are the user's files.

Batch norm is folded into the convolutions at load time (see
:func:`fooltools.detection.darknet.fold_batchnorm`), so ``params`` is
``{"conv{i}": {"kernel": (k, k, Cin, F), "bias": (F,)}}`` with Darknet's layer index ``i``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fooltools import rng
from fooltools.detection import boxes as box_ops
from fooltools.detection import darknet
from fooltools.detection.darknet import DarknetCfg, parse_cfg, parse_cfg_text
from fooltools.errors import ModelError
from fooltools.models import layers

__all__ = [
    "YOLO",
    "Detected",
    "Detections",
    "Head",
    "DarknetCfg",
    "apply",
    "conv2d",
    "decode",
    "detect",
    "heads",
    "init_params",
    "load_darknet",
    "parse_cfg",
    "parse_cfg_text",
    "save_darknet_weights",
]

Params = Any  # {"conv{i}": {"kernel": ..., "bias": ...}}


class Head(NamedTuple):
    """What :func:`decode` needs to know about one ``[region]`` / ``[yolo]`` layer.

    Attributes:
        kind: ``"region"`` (YOLOv2: anchors in grid cells, softmax classes) or ``"yolo"``
            (YOLOv3: anchors in input pixels, independent sigmoid classes).
        anchors: The head's (w, h) anchor pairs, in the order of its output channels.
        classes: Number of classes.
        softmax: Class probabilities by softmax (``[region] softmax=1``) or by sigmoid.
        scale_x_y: Darknet's ``scale_x_y`` (1 for plain YOLOv2/v3).
        stride: Input pixels per grid cell at the cfg's input size (the width's, rounded
            down; for the training loss, whose inputs are multiples of it).
        cell: Input pixels per grid cell (height, width) exactly, the cfg's size over the
            head's grid: ``[yolo]`` anchors are divided by the grid size times these, which
            is the network input's size, as Darknet divides by its ``net.w`` and ``net.h``
            (with the stride, a 70 x 50 cfg's boxes came out 1.3 times too large). None:
            ``(stride, stride)``.
    """

    kind: str
    anchors: tuple[tuple[float, float], ...]
    classes: int
    softmax: bool
    scale_x_y: float
    stride: int
    cell: tuple[float, float] | None = None


class Detections(NamedTuple):
    """Dense predictions of every anchor of every head, heads concatenated in cfg order.

    For each head with grid (gh, gw) and A anchors, entries run over (row, col, anchor),
    anchor fastest, as in OpenCV's region-layer output.

    Attributes:
        boxes: (B, N, 4) corners (x1, y1, x2, y2), in pixels of ``image_hw`` or, without
            it, as fractions of the network input.
        objectness: (B, N) sigmoid objectness.
        class_probs: (B, N, C) conditional class probabilities (softmax or sigmoid).
        scores: (B, N, C) ``objectness * class_probs``, Darknet's detection score.
    """

    boxes: jax.Array
    objectness: jax.Array
    class_probs: jax.Array
    scores: jax.Array


class YOLO(NamedTuple):
    """A loaded Darknet YOLO detector.

    Attributes:
        cfg: The parsed cfg.
        params: Folded weights pytree passed to ``apply``.
        apply: ``apply(params, x) -> list of raw head maps``; x (B, H, W, 3) RGB in [0, 1];
            head ``k`` has shape (B, H / stride_k, W / stride_k, A_k * (5 + C)). Pure, jittable.
        decode: ``decode(raw, image_hw=None) -> Detections``; pure and jittable.
        input_hw: The cfg's (height, width).
        num_classes: C.
        heads: Per-head decode settings (anchors, stride, ...).
        weights: Path of the loaded weights file, or None for the random init.
    """

    cfg: DarknetCfg
    params: Params
    apply: Callable[[Params, jax.Array], list[jax.Array]]
    decode: Callable[..., Detections]
    input_hw: tuple[int, int]
    num_classes: int
    heads: tuple[Head, ...]
    weights: str | None

    @property
    def anchors(self) -> tuple[tuple[tuple[float, float], ...], ...]:
        """Each head's anchors (grid cells for ``[region]``, input pixels for ``[yolo]``)."""
        return tuple(h.anchors for h in self.heads)


def heads(cfg: DarknetCfg) -> tuple[Head, ...]:
    """The decode settings of every head of ``cfg``, in cfg order."""
    out = []
    for i in cfg.head_indices:
        layer = cfg.layers[i]
        gh, gw = layer.out_shape[:2]
        cell = (cfg.height / gh, cfg.width / gw)
        out.append(Head(layer.kind, layer.anchors, layer.classes, layer.softmax,
                        layer.scale_x_y, cfg.width // gw, cell))  # fmt: skip
    return tuple(out)


def _activate(x: jax.Array, kind: str) -> jax.Array:
    if kind == "leaky":
        return jnp.where(x > 0, x, 0.1 * x)
    if kind == "relu":
        return jax.nn.relu(x)
    if kind == "logistic":
        return jax.nn.sigmoid(x)
    if kind == "mish":
        return x * jnp.tanh(jax.nn.softplus(x))
    if kind == "swish":
        return x * jax.nn.sigmoid(x)
    return x


def _maxpool(x: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
    # Darknet: output (n + padding - size) // stride + 1, window starting padding // 2 before
    # the input; padded cells never win. The far side may need cropping (negative pad).
    pads = [(0, 0, 0)]
    for n in x.shape[1:3]:
        out = (n + padding - size) // stride + 1
        pads.append((padding // 2, (out - 1) * stride + size - n - padding // 2, 0))
    pads.append((0, 0, 0))
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype), pads)
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, size, size, 1), (1, stride, stride, 1), "VALID"
    )


def _reorg(x: jax.Array, s: int) -> jax.Array:
    # Darknet's reorg_cpu(forward=0) reads its (C, H, W) input buffer as if it were
    # (C / s^2, H * s, W * s) and writes out[(dy * s + dx) * C / s^2 + c, j, i] =
    # in'[c, j * s + dy, i * s + dx]; that buffer is then read as (C * s^2, H / s, W / s).
    # Not the "space to depth" the paper describes, but what the weights were trained with.
    b, h, w, c = x.shape
    buf = x.transpose(0, 3, 1, 2).reshape(b, c // (s * s), h, s, w, s)
    buf = buf.transpose(0, 3, 5, 1, 2, 4).reshape(b, c * s * s, h // s, w // s)
    return buf.transpose(0, 2, 3, 1)


def conv2d(x: jax.Array, kernel: jax.Array, layer: darknet.Layer) -> jax.Array:
    """A cfg convolution without bias: x (B, H, W, Cin), kernel (k, k, Cin, F), NHWC out."""
    pad = ((layer.padding, layer.padding),) * 2
    return layers.conv_general_dilated(
        x, kernel, (layer.stride, layer.stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def apply(
    cfg: DarknetCfg,
    params: Params,
    x: jax.Array,
    *,
    conv: Callable[[int, darknet.Layer, jax.Array], jax.Array] | None = None,
) -> list[jax.Array]:
    """Run the network up to each detection head.

    Args:
        cfg: The parsed cfg (static).
        params: Folded weights, ``{"conv{i}": {"kernel", "bias"}}``.
        x: RGB images in [0, 1], shape (B, H, W, channels); H, W divisible by the total stride.
        conv: Optional replacement for each convolution up to (not including) its activation,
            ``conv(i, layer, x) -> y``; training uses it to run batch norm on batch
            statistics (:mod:`fooltools.detection.yolo_train`). None: the folded convolution.

    Returns:
        One raw map per head, (B, gh, gw, A * (5 + C)): the output of the layer feeding the
        head, before Darknet's sigmoid / exp / softmax.
    """
    outputs: list[jax.Array] = []
    raw: list[jax.Array] = []
    x0 = x
    for i, layer in enumerate(cfg.layers):
        if layer.kind == "convolutional":
            if conv is None:
                x = conv2d(x, params[f"conv{i}"]["kernel"], layer) + params[f"conv{i}"]["bias"]
            else:
                x = conv(i, layer, x)
            x = _activate(x, layer.activation)
        elif layer.kind == "maxpool":
            x = _maxpool(x, layer.size, layer.stride, layer.padding)
        elif layer.kind == "route":
            parts = [outputs[s] for s in layer.sources]
            if len({p.shape[1:3] for p in parts}) > 1:
                raise _misfit(cfg, i, x0, "joins maps of different sizes")
            x = jnp.concatenate(parts, axis=-1)
        elif layer.kind == "reorg":
            if x.shape[1] % layer.stride or x.shape[2] % layer.stride:
                raise _misfit(cfg, i, x0, f"needs a map size divisible by {layer.stride}")
            x = _reorg(x, layer.stride)
        elif layer.kind == "shortcut":
            x = _activate(x + outputs[layer.sources[0]], layer.activation)
        elif layer.kind == "upsample":
            x = jnp.repeat(jnp.repeat(x, layer.stride, axis=1), layer.stride, axis=2)
        else:  # region / yolo: the head's input is what attacks and decode need
            raw.append(x)
        outputs.append(x)
    return raw


def _misfit(cfg: DarknetCfg, i: int, x: jax.Array, why: str) -> ModelError:
    layer = cfg.layers[i]
    return ModelError(f"a {x.shape[1]}x{x.shape[2]} input does not fit {cfg.name}: layer {i} "
                      f"([{layer.kind}], line {layer.line}) {why}; use the cfg's "
                      f"{cfg.height}x{cfg.width} or multiples of the network stride")  # fmt: skip


def decode(
    raw: Sequence[jax.Array],
    head_info: Sequence[Head],
    image_hw: tuple[int, int] | None = None,
) -> Detections:
    """Darknet's region / yolo layer maths on the raw head maps, for every anchor.

    Per cell (row, col) of a (gh, gw) grid and anchor (aw, ah) with raw (tx, ty, tw, th, to,
    t_classes): centre x = (col + s(tx)) / gw, y = (row + s(ty)) / gh, with
    s(t) = sigmoid(t) * scale_x_y - (scale_x_y - 1) / 2; w = exp(tw) * aw / norm_w and
    h = exp(th) * ah / norm_h, where norm is the grid size for ``[region]`` (anchors in cells)
    and the network input size, (gw, gh) times the head's ``cell``, for ``[yolo]`` (anchors
    in pixels);
    objectness = sigmoid(to); class probabilities softmax or sigmoid of t_classes.

    Args:
        raw: Per-head maps from ``apply``, (B, gh, gw, A * (5 + C)).
        head_info: Matching :class:`Head` settings (``YOLO.heads``).
        image_hw: (H, W) of the image the input was resized from, to get boxes in its
            pixels; None gives fractions of the input.

    Returns:
        :class:`Detections` with N = sum over heads of gh * gw * A.
    """
    boxes, objs, probs = [], [], []
    for r, head in zip(raw, head_info, strict=True):
        b, gh, gw, _ = r.shape
        t = r.reshape(b, gh, gw, len(head.anchors), -1)
        anchors = jnp.asarray(head.anchors, dtype=r.dtype)
        grid_x = jnp.arange(gw, dtype=r.dtype)[None, None, :, None]
        grid_y = jnp.arange(gh, dtype=r.dtype)[None, :, None, None]
        offset = 0.5 * (head.scale_x_y - 1.0)
        cx = (grid_x + jax.nn.sigmoid(t[..., 0]) * head.scale_x_y - offset) / gw
        cy = (grid_y + jax.nn.sigmoid(t[..., 1]) * head.scale_x_y - offset) / gh
        cell_h, cell_w = head.cell or (head.stride, head.stride)
        norm_w, norm_h = (gw, gh) if head.kind == "region" else (gw * cell_w, gh * cell_h)
        w = jnp.exp(t[..., 2]) * anchors[:, 0] / norm_w
        h = jnp.exp(t[..., 3]) * anchors[:, 1] / norm_h
        cls = t[..., 5 : 5 + head.classes]
        p = jax.nn.softmax(cls, axis=-1) if head.softmax else jax.nn.sigmoid(cls)
        corners = jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
        boxes.append(corners.reshape(b, -1, 4))
        objs.append(jax.nn.sigmoid(t[..., 4]).reshape(b, -1))
        probs.append(p.reshape(b, -1, head.classes))
    box = jnp.concatenate(boxes, axis=1)
    if image_hw is not None:
        box = box * jnp.asarray([image_hw[1], image_hw[0], image_hw[1], image_hw[0]], box.dtype)
    obj = jnp.concatenate(objs, axis=1)
    prob = jnp.concatenate(probs, axis=1)
    return Detections(box, obj, prob, obj[..., None] * prob)


class Detected(NamedTuple):
    """Fixed-size detections after NMS; entries with ``valid`` False are padding.

    Attributes:
        boxes: (B, K, 4) corners (x1, y1, x2, y2), as in :class:`Detections`.
        scores: (B, K) objectness * class probability of the box's label, 0 for padding.
        labels: (B, K) int32 class index.
        valid: (B, K) bool, a prefix of each row, in decreasing score order.
    """

    boxes: jax.Array
    scores: jax.Array
    labels: jax.Array
    valid: jax.Array


def detect(
    net: YOLO,
    x: jax.Array,
    *,
    image_hw: tuple[int, int] | None = None,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_outputs: int = 100,
) -> Detected:
    """Boxes for images: ``apply``, ``decode``, then per-class NMS with a fixed-size output.

    Each anchor box is labelled with its best-scoring class (Darknet instead lists a box once
    per class above the threshold; the best class is what its drawing code shows).

    Args:
        net: The loaded :class:`YOLO`.
        x: RGB images in [0, 1], (B, H, W, 3).
        image_hw: Scale boxes to an image of this (H, W); None: fractions of the input.
        score_threshold: Keep boxes scoring strictly above this (Darknet's ``-thresh``).
        iou_threshold: Suppress same-class boxes overlapping a better one by more (Darknet's
            ``-nms`` 0.45).
        max_outputs: K, the number of output slots per image.

    Returns:
        :class:`Detected`.
    """
    det = net.decode(net.apply(net.params, x), image_hw)
    scores, labels = det.scores.max(-1), det.scores.argmax(-1).astype(jnp.int32)

    def one(b: jax.Array, s: jax.Array, c: jax.Array) -> tuple[jax.Array, ...]:
        idx, valid = box_ops.batched_nms(
            b, s, c, iou_threshold=iou_threshold, max_outputs=max_outputs,
            score_threshold=score_threshold,
        )  # fmt: skip
        return b[idx], jnp.where(valid, s[idx], 0.0), c[idx], valid

    return Detected(*jax.vmap(one)(det.boxes, scores, labels))


def init_params(key: jax.Array, cfg: DarknetCfg) -> Params:
    """Random (He-normal kernels, zero biases) params for ``cfg``: for tests and shapes only.

    Args:
        key: PRNG key.
        cfg: The parsed cfg.

    Returns:
        ``{"conv{i}": {"kernel": (k, k, Cin, F), "bias": (F,)}}`` as jax arrays.
    """
    # One program for all the draws: run eagerly, each kernel shape compiled a sampler.
    return jax.jit(functools.partial(_init_params, cfg=cfg))(key)


def _init_params(key: jax.Array, cfg: DarknetCfg) -> Params:
    params = {}
    keys = jax.random.split(key, max(len(cfg.conv_indices), 1))[: len(cfg.conv_indices)]
    for k, i in zip(keys, cfg.conv_indices, strict=True):
        layer = cfg.layers[i]
        fan_in = layer.size * layer.size * darknet.in_channels(cfg, i)
        shape = (layer.size, layer.size, darknet.in_channels(cfg, i), layer.filters)
        params[f"conv{i}"] = {
            "kernel": rng.normal(k, shape) * np.sqrt(2.0 / fan_in),
            "bias": jnp.zeros((layer.filters,)),
        }
    return params


def load_darknet(
    cfg_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str] | None = None,
    *,
    bn_eps: float = darknet.BN_EPS,
) -> YOLO:
    """Load a Darknet YOLO (v2 ``[region]`` or v3 ``[yolo]`` heads) from the user's files.

    Args:
        cfg_path: The network's ``.cfg``.
        weights_path: Its Darknet ``.weights``. None gives :func:`init_params` with key 0, a
            deterministic random init whose detections mean nothing (for tests, shapes and
            training from scratch).
        bn_eps: Batch-norm epsilon folded into the weights: 1e-5 as the maintained
            Darknet (AlexeyAB) fuses it; OpenCV uses 1e-6.

    Returns:
        The :class:`YOLO`.

    Raises:
        ModelError: Missing files, unsupported cfg contents (with the cfg line), or
            weights that do not fit the cfg (with expected and found value counts).
    """
    cfg = parse_cfg(cfg_path)
    if cfg.channels != 3:
        # apply takes RGB images: a grey (channels=1) network was a JAX shape traceback.
        raise ModelError(
            f"{cfg.name}: [net] channels={cfg.channels} is unsupported: the detectors take RGB "
            "images (channels=3)"
        )
    if weights_path is None:
        params = init_params(jax.random.key(0), cfg)
    else:
        raw = darknet.read_weights(weights_path, cfg)
        # device_put, not jnp.asarray per leaf: in JAX 0.10 that compiles an identity per shape.
        params = jax.device_put(darknet.fold_batchnorm(raw, cfg, bn_eps=bn_eps))
    info = heads(cfg)
    return YOLO(
        cfg=cfg,
        params=params,
        apply=functools.partial(apply, cfg),
        decode=functools.partial(_decode_bound, info),
        input_hw=(cfg.height, cfg.width),
        num_classes=info[0].classes,
        heads=info,
        weights=None if weights_path is None else os.fspath(weights_path),
    )


def _decode_bound(
    head_info: tuple[Head, ...], raw: Sequence[jax.Array], image_hw: tuple[int, int] | None = None
) -> Detections:
    return decode(raw, head_info, image_hw)


def save_darknet_weights(
    path: str | os.PathLike[str],
    params_or_raw: Params,
    cfg: DarknetCfg | str | os.PathLike[str],
    *,
    seen: int = 0,
) -> os.PathLike[str]:
    """Write weights as a Darknet ``.weights`` file that Darknet, OpenCV and we load.

    Args:
        path: Destination; written atomically.
        params_or_raw: ``YOLO.params`` (folded; batch-normalised layers are written with
            mean 0, variance 1) or raw weights from :func:`darknet.read_weights`.
        cfg: The parsed cfg or its path.
        seen: Training images seen, for the header.

    Returns:
        The written path.

    Raises:
        ModelError: Weights that do not fit the cfg, or an unwritable path.
    """
    if not isinstance(cfg, DarknetCfg):
        cfg = parse_cfg(cfg)
    host = jax.tree_util.tree_map(np.asarray, params_or_raw)
    return darknet.save_weights(path, host, cfg, seen=seen)
