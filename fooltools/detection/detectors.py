"""One face for both detector families, so attacks and evaluation never ask which it is.

A :class:`Detector` wraps a loaded YOLO or Faster R-CNN as two pure functions of
``(params, x)`` on RGB images in [0, 1] at their *own* resolution, shape (B, H, W, 3):

* ``dense(params, x) -> Dense``: every candidate the detector scores (each anchor of each
  YOLO head; each Faster R-CNN proposal) with its box, objectness logit and class
  logits, differentiable w.r.t. ``x``: what attack losses are written on;
* ``detect(params, x) -> Found``: the final, fixed-size detections after NMS, with
  foreground labels counted from 0 for both families (Faster R-CNN's background 0 is
  dropped), boxes in ``x``'s pixels.

:func:`load_detector` loads the bundled detectors (trained on
:mod:`fooltools.detection.synthetic`) or the user's files through the same loaders.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fooltools.detection import boxes as box_ops
from fooltools.detection import faster_rcnn, synthetic, yolo
from fooltools.errors import ModelError

KINDS = ("yolo", "faster-rcnn")
WEIGHTS_DIR = Path(__file__).parent / "weights"
CFG_DIR = Path(__file__).parent / "cfg"
# Score thresholds at which the bundled detectors report objects: each maximises F1
# (IoU >= 0.5) on 200 validation images of synthetic seed 2, neither training (0) nor
# test (1) data; recomputed by evaluate.operating_point (tests/test_detection_eval.py).
# Other weights get 0.5 unless the caller says otherwise.
OPERATING_POINTS = {"yolo": 0.7, "faster-rcnn": 0.8}
# Objects of the synthetic set are 10-60 px: the bundled Faster R-CNN's anchors are 4x
# the stride of their level (half of torchvision's 8x, whose 32..512 would not fit a
# 128 px image).
SYNTH_ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
# What load_faster_rcnn needs to rebuild the bundled detector (its state dict holds
# only weights); the trainer (rcnn_train) builds its config from the same settings.
SYNTH_LOAD_KWARGS: dict[str, Any] = {
    "min_size": 128,
    "max_size": 128,
    "anchor_sizes": SYNTH_ANCHOR_SIZES,
    "rpn_pre_nms_top_n": 1000,
    "rpn_post_nms_top_n": 1000,
}
BUNDLED = {
    "yolo": (CFG_DIR / "yolo-synth.cfg", WEIGHTS_DIR / "yolo-synth.weights"),
    "faster-rcnn": (None, WEIGHTS_DIR / "faster-rcnn-synth.pth"),
}


class Dense(NamedTuple):
    """Every scored candidate of a batch.

    Attributes:
        boxes: (B, N, 4) corners (x1, y1, x2, y2) in pixels of the input images.
        obj: (B, N) objectness logits (YOLO's ``t_o``; for Faster R-CNN the log-odds of
            "not background" from the box head's softmax).
        cls: (B, N, K) class logits over the K foreground classes (softmax or, where
            ``Detector.multilabel``, independent sigmoids).
        valid: (B, N) bool, False for padding candidates (unfilled proposals).
        extra_obj: (B, M) further objectness logits that vanishing and fabrication also
            drive (Faster R-CNN's RPN anchors; M = 0 for YOLO).
    """

    boxes: jax.Array
    obj: jax.Array
    cls: jax.Array
    valid: jax.Array
    extra_obj: jax.Array


class Found(NamedTuple):
    """Fixed-size detections; rows where ``valid`` is False are padding.

    Attributes:
        boxes: (B, D, 4) corners in pixels of the input images.
        scores: (B, D) confidence in [0, 1] (0 for padding).
        labels: (B, D) int32 foreground class in [0, K) (-1 for padding).
        valid: (B, D) bool.
    """

    boxes: jax.Array
    scores: jax.Array
    labels: jax.Array
    valid: jax.Array


class Detector(NamedTuple):
    """A loaded detector of either family; see the module docstring.

    Attributes:
        name: Short description for reports, e.g. ``"yolo (yolo-synth.weights)"``.
        kind: ``"yolo"`` or ``"faster-rcnn"``.
        class_names: The K foreground class names.
        params: Weights pytree passed to ``dense`` and ``detect``.
        dense: ``dense(params, x) -> Dense``, pure and differentiable.
        detect: ``detect(params, x) -> Found``, pure.
        multilabel: Whether classes are independent sigmoids (YOLOv3) rather than a softmax.
        sources: The files the weights came from.
        confidence: Operating point: the score at which a detection is reported as an
            object (drawn, counted, attacked); see :data:`OPERATING_POINTS`.
    """

    name: str
    kind: str
    class_names: tuple[str, ...]
    params: Any
    dense: Callable[[Any, jax.Array], Dense]
    detect: Callable[[Any, jax.Array], Found]
    multilabel: bool
    sources: tuple[str, ...]
    confidence: float = 0.5


@functools.lru_cache(maxsize=8)
def jitted_detect(
    detect: Callable[[Any, jax.Array], Found],
) -> Callable[[Any, jax.Array], Found]:
    """``jax.jit(detect)`` for a detector's ``detect``, kept: traced once per shape per process."""
    return jax.jit(detect)


def detect_images(detector: Detector, x: jax.Array) -> Found:
    """``detector.detect(detector.params, x)`` for images x (B, H, W, 3), as one program.

    Compiled once per detector and shape in a process: called eagerly, each of the
    network's ops was compiled and run on its own (`fool detect` on the bundled YOLO,
    no compilation cache: 12.7 -> 6.7 s).
    """
    return jitted_detect(detector.detect)(detector.params, x)


def _to_input(net: yolo.YOLO, x: jax.Array) -> jax.Array:
    # Darknet (and OpenCV's blobFromImage) resize plainly to the cfg's size: bilinear
    # without jax's default antialiasing, which on a 256 -> 64 shrink moved pixels by up
    # to 0.27. Bilinear keeps this differentiable.
    h, w = net.input_hw
    if x.shape[1:3] == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=False)


def _yolo_dense(net: yolo.YOLO, params: Any, x: jax.Array) -> Dense:
    raw = net.apply(params, _to_input(net, x))
    boxes = net.decode(raw, x.shape[1:3]).boxes
    obj, cls = [], []
    for r, head in zip(raw, net.heads, strict=True):
        t = r.reshape(r.shape[0], -1, 5 + head.classes)  # (row, col, anchor) as decode
        obj.append(t[..., 4])
        cls.append(t[..., 5:])
    obj, cls = jnp.concatenate(obj, axis=1), jnp.concatenate(cls, axis=1)
    empty = jnp.zeros((x.shape[0], 0), x.dtype)
    return Dense(boxes, obj, cls, jnp.ones(obj.shape, bool), empty)


def _yolo_detect(net: yolo.YOLO, score_threshold: float, params: Any, x: jax.Array) -> Found:
    found = yolo.detect(
        net._replace(params=params),
        _to_input(net, x),
        image_hw=x.shape[1:3],
        score_threshold=score_threshold,
    )
    # Darknet clips boxes to the image when it draws them; so do we, for every consumer.
    boxes = box_ops.clip_boxes(found.boxes, *x.shape[1:3])
    return Found(boxes, found.scores, jnp.where(found.valid, found.labels, -1), found.valid)


def _rcnn_dense(model: faster_rcnn.FasterRCNN, params: Any, x: jax.Array) -> Dense:
    raw = model.apply(params, x)
    rh, rw = faster_rcnn.resized_size(model.config, *x.shape[1:3])
    scale = jnp.asarray([x.shape[2] / rw, x.shape[1] / rh] * 2, x.dtype)
    fg = raw.class_logits[..., 1:]
    obj = jax.nn.logsumexp(fg, axis=-1) - raw.class_logits[..., 0]
    rpn = jnp.concatenate([o.reshape(o.shape[0], -1) for o in raw.objectness], axis=1)
    return Dense(raw.proposals * scale, obj, fg, raw.proposal_valid, rpn)


def _rcnn_detect(model: faster_rcnn.FasterRCNN, params: Any, x: jax.Array) -> Found:
    found = model.detect(params, x)
    labels = jnp.where(found.valid, found.labels - 1, -1)
    return Found(found.boxes, jnp.where(found.valid, found.scores, 0.0), labels, found.valid)


def from_yolo(
    net: yolo.YOLO,
    class_names: tuple[str, ...],
    *,
    score_threshold: float = 0.05,
    confidence: float = 0.5,
) -> Detector:
    """Wrap a loaded YOLO; ``detect`` keeps scores above ``score_threshold`` (for mAP)."""
    if len(class_names) != net.num_classes:
        raise ModelError(f"{len(class_names)} class names for a {net.num_classes}-class YOLO")
    return Detector(
        name=f"yolo ({Path(net.weights).name if net.weights else 'random init'})",
        kind="yolo",
        class_names=tuple(class_names),
        params=net.params,
        dense=functools.partial(_yolo_dense, net),
        detect=functools.partial(_yolo_detect, net, score_threshold),
        multilabel=not net.heads[0].softmax,
        sources=tuple(str(p) for p in (net.cfg.name, net.weights) if p),
        confidence=confidence,
    )


def from_faster_rcnn(
    model: faster_rcnn.FasterRCNN,
    class_names: tuple[str, ...],
    source: str = "",
    *,
    confidence: float = 0.5,
) -> Detector:
    """Wrap a loaded Faster R-CNN (its class 0, background, is not in ``class_names``)."""
    if len(class_names) != model.config.num_classes - 1:
        raise ModelError(
            f"{len(class_names)} class names for a Faster R-CNN with "
            f"{model.config.num_classes - 1} foreground classes"
        )
    return Detector(
        name=f"faster-rcnn ({Path(source).name if source else 'state dict'})",
        kind="faster-rcnn",
        class_names=tuple(class_names),
        params=model.params,
        dense=functools.partial(_rcnn_dense, model),
        detect=functools.partial(_rcnn_detect, model),
        multilabel=False,
        sources=(source,) if source else (),
        confidence=confidence,
    )


# A class names file larger than this is not one (Darknet's coco.names is 625 bytes).
MAX_NAMES_BYTES = 1 << 20


def read_class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names from a text file, one per line, as Darknet's ``.names`` files hold them.

    Surrounding whitespace is stripped and blank lines are skipped.

    Raises:
        ModelError: The file cannot be read, is not UTF-8 text, or names no class.
    """
    from fooltools import checkpoints

    try:
        with checkpoints.open_regular(path) as f:
            data = f.read(MAX_NAMES_BYTES + 1)
    except OSError as err:
        raise ModelError(f"cannot read class names {path}: {err.strerror or err}") from None
    try:
        if len(data) > MAX_NAMES_BYTES or b"\0" in data:
            raise UnicodeError
        text = data.decode("utf-8-sig")
    except UnicodeError:
        raise ModelError(f"{path} is not a class names file (one name per line)") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ModelError(f"{path} names no class (one name per line)")
    return names


def check_pair(
    kind: str, cfg: str | os.PathLike[str] | None, weights: str | os.PathLike[str] | None
) -> None:
    """Refuse a YOLO cfg given without its weights, or weights without their cfg.

    Either alone was read with the bundled other half: "yolo-synth.weights does not fit
    my.cfg", naming a file the user never gave. The bundled files alone are the bundled
    detector.

    Raises:
        ModelError: Naming what is missing.
    """
    if kind != "yolo":
        return
    bundled_cfg, bundled_weights = BUNDLED["yolo"]
    if cfg is None and weights is not None and not _same_file(weights, bundled_weights):
        raise ModelError(f"the weights {Path(weights).name} need their Darknet cfg: give both")
    if cfg is not None and weights is None and not _same_file(cfg, bundled_cfg):
        raise ModelError(f"the cfg {Path(cfg).name} needs its Darknet weights: give both")


def _same_file(path: str | os.PathLike[str], other: Path) -> bool:
    """Whether ``path`` is the file ``other`` (False when either is missing)."""
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def load_detector(
    kind: str = "yolo",
    *,
    cfg: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    class_names: tuple[str, ...] | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    variant: str | None = None,
) -> Detector:
    """Load a detector: the bundled synthetic-data one, or the user's files.

    Args:
        kind: ``"yolo"`` or ``"faster-rcnn"``.
        cfg: Darknet ``.cfg`` (YOLO only); default the bundled one.
        weights: Darknet ``.weights`` or torchvision ``.pth``; default the bundled one.
        class_names: Foreground class names; default the synthetic classes for the
            bundled weights, else ``class0, class1, ...``.
        min_size: Faster R-CNN resize (short side); default: what the bundled detector was
            trained at (its anchors too), else the ``variant``'s (torchvision's 800).
        max_size: Faster R-CNN long-side bound; default: the bundled one's, or the variant's.
        variant: For other Faster R-CNN weights, the torchvision builder whose inference
            settings to use (see :data:`fooltools.detection.faster_rcnn.VARIANTS`); None:
            the first that fits the weights' backbone.

    The bundled weights, whether named or not, load with the bundled detector's class
    names, operating point and (Faster R-CNN) resize and anchor settings.

    Returns:
        The :class:`Detector`.

    Raises:
        ModelError: Unknown kind, missing or unfitting files, a cfg for a Faster R-CNN, a
            variant for the bundled one.
    """
    if kind not in KINDS:
        raise ModelError(f"unknown detector {kind!r}; choose one of {', '.join(KINDS)}")
    if cfg is not None and kind != "yolo":
        raise ModelError("a cfg is for yolo (a Faster R-CNN is built from its weights alone)")
    bundled_cfg, bundled_weights = BUNDLED[kind]
    weights_given = weights is not None
    if weights is None:
        if not bundled_weights.exists():
            raise ModelError(f"the bundled {kind} weights {bundled_weights} are not installed")
        weights = bundled_weights
    # What the weights were trained on decides their class names, operating point and
    # (Faster R-CNN) resize and anchors: the bundled file named explicitly, or with its cfg
    # given explicitly, is still the bundled detector.
    bundled = _same_file(weights, bundled_weights)
    if bundled and variant is not None:
        raise ModelError("a variant is for other Faster R-CNN weights; the bundled one has its own")
    check_pair(kind, cfg, weights if weights_given else None)
    names = class_names or (synthetic.CLASSES if bundled else None)
    confidence = OPERATING_POINTS[kind] if bundled else 0.5
    if kind == "yolo":
        net = yolo.load_darknet(cfg or bundled_cfg, weights)
        names = names or tuple(f"class{i}" for i in range(net.num_classes))
        return from_yolo(net, tuple(names), confidence=confidence)
    settings: dict[str, Any] = {"variant": variant}
    if bundled:
        settings = dict(SYNTH_LOAD_KWARGS)
    settings.update({k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v})
    model = faster_rcnn.load_faster_rcnn(weights, **settings)
    names = names or tuple(f"class{i}" for i in range(1, model.config.num_classes))
    return from_faster_rcnn(model, tuple(names), os.fspath(weights), confidence=confidence)
