"""Darknet ``.cfg`` parsing and ``.weights`` reading/writing, without any model code.

A cfg is parsed into a :class:`DarknetCfg`: the ``[net]`` input size and one :class:`Layer`
per section, with every layer's output shape worked out at the cfg's input size, so a bad
cfg fails here with its file name and line number rather than deep inside a jitted
function. Only what inference needs is kept; training-only options (jitter, loss scales,
...) are accepted and ignored; any other option or layer type is a :class:`ModelError`.

A ``.weights`` file is a header (major, minor, revision as int32; ``seen`` as int64 when
``major * 10 + minor >= 2``, else int32) followed by float32 values, per convolutional
layer in cfg order: biases (filters), then scales, rolling means and rolling variances
(filters each) when the layer has ``batch_normalize=1``, then the kernel in
(out, in, kh, kw) order. :func:`read_weights` returns them "raw" (Darknet's names and
layout); :func:`fold_batchnorm` turns them into the HWIO kernel + bias that the model uses.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import struct
from collections.abc import Mapping

import numpy as np

from fooltools import checkpoints, io
from fooltools.errors import ImageError, ModelError

# Batch norm divides by sqrt(var + eps). Implementations disagree on eps: cuDNN training and
# AlexeyAB's fuse_conv_batchnorm (the maintained Darknet's inference path) use 1e-5, OpenCV
# 1e-6, and pjreddie's normalize_cpu/_gpu sqrt(var) + 1e-6. They agree to ~1e-5 relative
# for variances of order 1 but part ways on near-dead channels (var ~ 1e-4: 5%), so the
# value is a keyword; the default is the maintained Darknet's.
BN_EPS = 1e-5

# yolov3.cfg is 8 KB, the largest cfgs of AlexeyAB's darknet about 40 KB.
MAX_CFG_BYTES = 1 << 20

ACTIVATIONS = ("linear", "leaky", "relu", "logistic", "mish", "swish")

# Darknet's alternative section names.
_ALIASES = {"network": "net", "conv": "convolutional", "max": "maxpool"}

# Options that only steer training (loss weights, augmentation, label assignment) or
# post-processing Darknet does outside the network: accepted, and ignored.
_TRAINING_ONLY = {
    "region": {
        "bias_match", "jitter", "rescore", "object_scale", "noobject_scale", "class_scale",
        "coord_scale", "absolute", "thresh", "random", "classfix", "nms_threshold",
    },
    "yolo": {
        "jitter", "ignore_thresh", "truth_thresh", "random", "thresh", "nms_threshold",
        "iou_normalizer", "iou_loss", "cls_normalizer", "obj_normalizer", "max_delta",
        "label_smooth_eps", "beta_nms", "nms_kind", "iou_thresh", "iou_thresh_kind",
        "resize", "counters_per_class", "focal_loss", "max", "uc_normalizer",
    },
    "convolutional": {"stopbackward", "dontload", "dontloadscales", "train_only_bn"},
}  # fmt: skip

_OPTIONS = {
    "convolutional": {
        "batch_normalize", "filters", "size", "stride", "pad", "padding", "activation", "groups",
    },
    "maxpool": {"size", "stride", "padding"},
    "route": {"layers"},
    "reorg": {"stride"},
    "shortcut": {"from", "activation"},
    "upsample": {"stride"},
    "region": {"anchors", "classes", "num", "coords", "softmax"},
    "yolo": {"mask", "anchors", "classes", "num", "scale_x_y"},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Layer:
    """One cfg section after the ``[net]`` one (hashable, so jitted code can close over it).

    Attributes:
        kind: Canonical section type: ``convolutional``, ``maxpool``, ``route``, ``reorg``,
            ``shortcut``, ``upsample``, ``region`` or ``yolo``.
        line: 1-based cfg line of the section header, for messages.
        out_shape: Output (H, W, C) at the cfg's input size.
        filters, size, stride, padding, batch_normalize, activation: Convolution /
            pooling settings; ``padding`` is the resolved total padding per side for a
            convolution and Darknet's total (before + after) padding for a maxpool.
        sources: Absolute indices of the layers a route concatenates or a shortcut adds.
        classes, coords, softmax, anchors, scale_x_y: Head settings; ``anchors`` are the
            head's own (w, h) pairs (after ``mask`` for ``[yolo]``), in grid cells for
            ``[region]`` and in input pixels for ``[yolo]``.
    """

    kind: str
    line: int
    out_shape: tuple[int, int, int]
    filters: int = 0
    size: int = 1
    stride: int = 1
    padding: int = 0
    batch_normalize: bool = False
    activation: str = "linear"
    sources: tuple[int, ...] = ()
    classes: int = 0
    coords: int = 4
    softmax: bool = False
    anchors: tuple[tuple[float, float], ...] = ()
    scale_x_y: float = 1.0


@dataclasses.dataclass(frozen=True)
class DarknetCfg:
    """A parsed Darknet network description.

    Attributes:
        name: File name, used in messages.
        height, width, channels: Input size from ``[net]``.
        layers: One :class:`Layer` per section, Darknet's layer numbering (0-based).
    """

    name: str
    height: int
    width: int
    channels: int
    layers: tuple[Layer, ...]

    @property
    def conv_indices(self) -> tuple[int, ...]:
        """Indices of the convolutional layers, the only ones holding weights."""
        return tuple(i for i, layer in enumerate(self.layers) if layer.kind == "convolutional")

    @property
    def head_indices(self) -> tuple[int, ...]:
        """Indices of the ``[region]`` / ``[yolo]`` layers."""
        return tuple(i for i, layer in enumerate(self.layers) if layer.kind in ("region", "yolo"))


def _cut(line: str) -> str:
    """A cfg line as quoted in a message: its repr, at most 60 characters of it."""
    line = line.strip()
    return repr(line) if len(line) <= 60 else f"{line[:60]!r}..."


def _sections(text: str, name: str) -> list[tuple[str, int, dict[str, tuple[str, int]]]]:
    sections: list[tuple[str, int, dict[str, tuple[str, int]]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        # Darknet deletes every whitespace character of a line before reading it.
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise ModelError(f"{name} line {lineno}: malformed section header {_cut(raw)}")
            sections.append((line[1:-1], lineno, {}))
        elif "=" in line and sections and not line.startswith("="):
            key, value = line.split("=", 1)
            # Darknet's option_find returns a key's first value (OpenCV's map keeps the
            # first too): a later duplicate is ignored, not the one that counts.
            sections[-1][2].setdefault(key, (value, lineno))
        else:
            raise ModelError(
                f"{name} line {lineno}: expected [section] or key=value, got {_cut(raw)}"
            )
    return sections


class _Options:
    """Typed access to one section's options, with errors naming file and line."""

    def __init__(self, name: str, kind: str, line: int, opts: dict[str, tuple[str, int]]):
        self.name, self.kind, self.line, self.opts = name, kind, line, opts

    def error(self, msg: str, key: str | None = None) -> ModelError:
        line = self.opts[key][1] if key in self.opts else self.line
        return ModelError(f"{self.name} line {line}: [{self.kind}] {msg}")

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.opts:
            if default is None:
                raise self.error(f"needs {key}=")
            return default
        try:
            return int(self.opts[key][0])
        except ValueError:
            raise self.error(f"{key}={self.opts[key][0]} is not an integer", key) from None

    def floats(self, key: str) -> list[float]:
        if key not in self.opts:
            raise self.error(f"needs {key}=")
        try:
            return [float(v) for v in self.opts[key][0].split(",") if v]
        except ValueError:
            raise self.error(f"{key}={self.opts[key][0]} is not a list of numbers", key) from None

    def float(self, key: str, default: float) -> float:
        return self.floats(key)[0] if key in self.opts else default


def parse_cfg(path: str | os.PathLike[str]) -> DarknetCfg:
    """Parse a Darknet ``.cfg`` file and infer every layer's output shape.

    Args:
        path: The cfg file.

    Returns:
        The parsed :class:`DarknetCfg`.

    Raises:
        ModelError: Missing or unreadable file, unsupported layer type or option (naming
            the section and cfg line), or layers whose shapes do not fit together.
    """
    path = pathlib.Path(path)
    try:
        # /dev/zero was read until memory ran out, a FIFO blocked forever.
        with checkpoints.open_regular(path) as f:
            data = f.read(MAX_CFG_BYTES + 1)
    except OSError as err:
        raise ModelError(f"cannot read Darknet cfg {path}: {err.strerror or err}") from None
    if len(data) > MAX_CFG_BYTES:
        # A 1 GB (sparse) file was read whole, 18 GB at its peak; a larger, MemoryError.
        raise ModelError(f"{path.name} is over {MAX_CFG_BYTES >> 10} KiB: not a Darknet cfg")
    return parse_cfg_text(data.decode("utf-8", errors="replace"), name=path.name)


def parse_cfg_text(text: str, *, name: str = "<cfg>") -> DarknetCfg:
    """Parse the text of a Darknet cfg; see :func:`parse_cfg`.

    Args:
        text: The cfg contents.
        name: Shown in error messages in place of a file name.
    """
    sections = _sections(text, name)
    if not sections or _ALIASES.get(sections[0][0], sections[0][0]) != "net":
        raise ModelError(f"{name}: the first section must be [net]")
    net = _Options(name, "net", sections[0][1], sections[0][2])
    height, width, channels = net.int("height", 416), net.int("width", 416), net.int("channels", 3)
    if min(height, width, channels) <= 0:
        raise net.error("needs positive width, height and channels")
    if net.int("letter_box", 0):
        # AlexeyAB's letterboxed input (aspect kept, padded): images here are stretched to
        # width x height, which such a network was not trained on.
        raise net.error("letter_box=1 is unsupported: images are resized to width x height "
                        "without letterboxing", "letter_box")  # fmt: skip
    layers: list[Layer] = []
    shape = (height, width, channels)
    for kind_raw, line, opts in sections[1:]:
        kind = _ALIASES.get(kind_raw, kind_raw)
        if kind not in _OPTIONS:
            raise ModelError(f"{name} line {line}: unsupported layer [{kind_raw}]")
        o = _Options(name, kind, line, opts)
        for key in opts:
            if key not in _OPTIONS[kind] and key not in _TRAINING_ONLY.get(kind, ()):
                raise o.error(f"unsupported option {key}", key)
        layer = _LAYER_PARSERS[kind](o, len(layers), shape, layers)
        layers.append(layer)
        shape = layer.out_shape
    heads = [layer for layer in layers if layer.kind in ("region", "yolo")]
    if not heads:
        raise ModelError(f"{name}: no [region] or [yolo] layer, so not a YOLO detector")
    for head in heads[1:]:
        if head.classes != heads[0].classes:
            # Each anchor's class scores are one row of the detections: a traceback later.
            raise ModelError(
                f"{name} line {head.line}: [{head.kind}] classes={head.classes}, where the "
                f"head at line {heads[0].line} has classes={heads[0].classes}: every head "
                "must detect the same classes"
            )
    return DarknetCfg(name, height, width, channels, tuple(layers))


def _activation(o: _Options, default: str) -> str:
    act = o.opts.get("activation", (default, 0))[0]
    if act not in ACTIVATIONS:
        raise o.error(f"unsupported activation={act}", "activation")
    return act


def _conv(o: _Options, index: int, shape, layers) -> Layer:
    size, stride, filters = o.int("size", 1), o.int("stride", 1), o.int("filters", 1)
    if o.int("groups", 1) != 1:
        raise o.error("unsupported option groups (only groups=1)", "groups")
    if size < 1 or stride < 1 or filters < 1:
        raise o.error("needs positive size, stride and filters")
    padding = size // 2 if o.int("pad", 0) else o.int("padding", 0)
    h, w = ((n + 2 * padding - size) // stride + 1 for n in shape[:2])
    if h < 1 or w < 1:
        raise o.error(f"input {shape[0]}x{shape[1]} is smaller than the kernel")
    bn = bool(o.int("batch_normalize", 0))
    # Darknet's parse_convolutional defaults to logistic (OpenCV's importer to linear):
    # weights trained in Darknet were trained with Darknet's.
    return Layer("convolutional", o.line, (h, w, filters), filters, size, stride, padding, bn,
                 _activation(o, default="logistic"))  # fmt: skip


def _maxpool(o: _Options, index: int, shape, layers) -> Layer:
    stride = o.int("stride", 1)
    size = o.int("size", stride)  # Darknet's defaults, in this order
    padding = o.int("padding", size - 1)  # Darknet: size - 1 in total, the odd one after
    fits = size >= 1 and stride >= 1  # checked first: stride=0 was a ZeroDivisionError
    h, w = ((n + padding - size) // stride + 1 if fits else 0 for n in shape[:2])
    if h < 1 or w < 1:
        raise o.error(f"size={size} stride={stride} does not fit a {shape[0]}x{shape[1]} input")
    return Layer("maxpool", o.line, (h, w, shape[2]), size=size, stride=stride, padding=padding)


def _source(o: _Options, key: str, value: int, index: int, layers) -> int:
    src = value + index if value < 0 else value
    if not 0 <= src < index:
        raise o.error(f"{key} refers to layer {value}, not an earlier layer", key)
    if layers[src].kind in ("region", "yolo"):
        raise o.error(f"{key} refers to the detection layer {src}, which is unsupported", key)
    return src


def _route(o: _Options, index: int, shape, layers) -> Layer:
    values = o.floats("layers")
    if not values or any(v != int(v) for v in values):
        raise o.error("layers= must list layer indices", "layers")
    sources = tuple(_source(o, "layers", int(v), index, layers) for v in values)
    hw = {layers[s].out_shape[:2] for s in sources}
    if len(hw) != 1:
        raise o.error(f"routes layers of different sizes {sorted(hw)}", "layers")
    c = sum(layers[s].out_shape[2] for s in sources)
    return Layer("route", o.line, (*hw.pop(), c), sources=sources)


def _reorg(o: _Options, index: int, shape, layers) -> Layer:
    s = o.int("stride", 1)
    h, w, c = shape
    if s < 1 or h % s or w % s:
        raise o.error(f"stride={s} does not divide the {h}x{w} input", "stride")
    return Layer("reorg", o.line, (h // s, w // s, c * s * s), stride=s)


def _shortcut(o: _Options, index: int, shape, layers) -> Layer:
    src = _source(o, "from", o.int("from"), index, layers)
    if layers[src].out_shape != shape:
        # Darknet would add the overlapping part of differently sized maps; no YOLO does.
        raise o.error(f"adds shape {layers[src].out_shape} to {shape}, unsupported", "from")
    return Layer(
        "shortcut", o.line, shape, activation=_activation(o, default="linear"), sources=(src,)
    )


def _upsample(o: _Options, index: int, shape, layers) -> Layer:
    s = o.int("stride", 2)
    if s < 1:
        raise o.error(f"unsupported stride={s} (downsampling)", "stride")
    return Layer("upsample", o.line, (shape[0] * s, shape[1] * s, shape[2]), stride=s)


def _head(o: _Options, index: int, shape, layers) -> Layer:
    classes, num = o.int("classes"), o.int("num", 1)
    pairs = o.floats("anchors")
    if len(pairs) != 2 * num:
        raise o.error(f"num={num} needs {2 * num} anchor values, found {len(pairs)}", "anchors")
    anchors = [(pairs[2 * i], pairs[2 * i + 1]) for i in range(num)]
    coords = 4
    if o.kind == "yolo":
        mask = [int(v) for v in o.floats("mask")] if "mask" in o.opts else list(range(num))
        if not mask:
            raise o.error("mask= lists no anchors", "mask")
        if any(not 0 <= m < num for m in mask):
            raise o.error(f"mask {mask} indexes past num={num} anchors", "mask")
        anchors = [anchors[m] for m in mask]
        softmax, scale_x_y = False, o.float("scale_x_y", 1.0)
    else:
        coords = o.int("coords", 4)
        if coords != 4:
            raise o.error(f"unsupported coords={coords} (only 4)", "coords")
        softmax, scale_x_y = bool(o.int("softmax", 0)), 1.0
    want = len(anchors) * (coords + 1 + classes)
    if shape[2] != want:
        raise o.error(f"expects {want} input channels ({len(anchors)} anchors x "
                      f"(5 + {classes} classes)), the previous layer gives {shape[2]}")  # fmt: skip
    return Layer(o.kind, o.line, shape, classes=classes, coords=coords, softmax=softmax,
                 anchors=tuple(anchors), scale_x_y=scale_x_y)  # fmt: skip


_LAYER_PARSERS = {
    "convolutional": _conv,
    "maxpool": _maxpool,
    "route": _route,
    "reorg": _reorg,
    "shortcut": _shortcut,
    "upsample": _upsample,
    "region": _head,
    "yolo": _head,
}


def in_channels(cfg: DarknetCfg, index: int) -> int:
    """Input channels of layer ``index`` (the previous layer's output, or the image's)."""
    return cfg.layers[index - 1].out_shape[2] if index else cfg.channels


def raw_shapes(cfg: DarknetCfg) -> dict[str, dict[str, tuple[int, ...]]]:
    """Shapes of the raw (Darknet-layout) weights of every convolutional layer.

    Returns:
        ``{"conv{i}": {"biases": (F,), ["scales", "rolling_mean", "rolling_variance": (F,)],
        "weights": (F, Cin, k, k)}}`` in file order.
    """
    out = {}
    for i in cfg.conv_indices:
        layer = cfg.layers[i]
        f = layer.filters
        shapes = {"biases": (f,)}
        if layer.batch_normalize:
            shapes |= {"scales": (f,), "rolling_mean": (f,), "rolling_variance": (f,)}
        shapes["weights"] = (f, in_channels(cfg, i), layer.size, layer.size)
        out[f"conv{i}"] = shapes
    return out


# First bytes of image files, given as --weights by mistake (--weights small.png).
_IMAGE_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
                (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))  # fmt: skip


def _header_size(data: bytes, path: pathlib.Path) -> int:
    """Bytes of the Darknet header that ``data`` (at least 16 bytes) starts."""
    # A torch.save file (zip, or a legacy pickle stream) read as Darknet's header was
    # reported as "transposed Darknet weights (version 67324752.20)".
    if data.startswith((b"PK\x03\x04", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")):
        raise ModelError(f"{path.name} is a PyTorch checkpoint, not Darknet weights "
                         "(for a Faster R-CNN: --detector faster-rcnn)")  # fmt: skip
    for magic, kind in _IMAGE_MAGIC:
        if data.startswith(magic):  # was "transposed Darknet weights (version 1196314761.x)"
            raise ModelError(f"{path.name} is a {kind} image, not Darknet weights")
    major, minor, _revision = struct.unpack_from("<3i", data)
    if major > 1000 or minor > 1000:
        # Darknet reads such a header as its transposed layout; no file of ours is one,
        # and other bytes (a file of another kind) read the same.
        raise ModelError(f"{path.name} is not Darknet weights we read: its header says "
                         f"version {major}.{minor} (Darknet's own are 0.x and 1.x; over "
                         "1000, its transposed layout, is unsupported)")  # fmt: skip
    return 20 if major * 10 + minor >= 2 else 16


def _check_count(path: pathlib.Path, cfg: DarknetCfg, header: int, expected: int, size: int) -> int:
    """The number of float values in a file of ``size`` bytes, if ``cfg`` needs that many."""
    found, rest = divmod(size - header, 4)
    if found != expected or rest:
        tail = f" and {rest} stray bytes" if rest else ""
        raise ModelError(f"{path.name} does not fit {cfg.name}: expected {expected} float values "
                         f"after the {header}-byte header, found {found}{tail}")  # fmt: skip
    return found


def read_weights(path: str | os.PathLike[str], cfg: DarknetCfg) -> dict[str, dict[str, np.ndarray]]:
    """Read a Darknet ``.weights`` file laid out for ``cfg``.

    Args:
        path: The weights file.
        cfg: The parsed cfg it belongs to.

    Returns:
        Raw weights, float32, with the names and shapes of :func:`raw_shapes`.

    Raises:
        ModelError: Missing/unreadable file, unsupported header, or a number of float values
            other than the cfg needs (the message gives both counts).
    """
    path = pathlib.Path(path)
    shapes = raw_shapes(cfg)
    expected = sum(int(np.prod(s)) for layer in shapes.values() for s in layer.values())
    try:
        # Only a regular file, its size checked before the body is read: /dev/zero, a
        # FIFO or a huge unrelated file was read whole into memory first (or forever).
        with checkpoints.open_regular(path) as f:
            data = f.read(20)
            if len(data) >= 16:
                header, size = _header_size(data, path), os.fstat(f.fileno()).st_size
                _check_count(path, cfg, header, expected, size)
                data += f.read(size - len(data))
    except OSError as err:
        raise ModelError(f"cannot read Darknet weights {path}: {err.strerror or err}") from None
    if len(data) < 16:
        raise ModelError(f"{path.name}: {len(data)} bytes is too short for a Darknet header")
    header = _header_size(data, path)
    found = _check_count(path, cfg, header, expected, len(data))  # the file may have changed
    values = np.frombuffer(data, dtype="<f4", offset=header, count=found).astype(np.float32)
    if not np.isfinite(values).all():
        # Loaded, every score was NaN: "0 objects", exit 0 (the classifiers refuse such).
        bad = int(np.argmin(np.isfinite(values)))
        raise ModelError(
            f"{path.name} holds NaN or infinite values (the first is value {bad} after the "
            "header): not usable weights"
        )
    out, pos = {}, 0
    for name, layer in shapes.items():
        out[name] = {}
        for key, shape in layer.items():
            n = int(np.prod(shape))
            out[name][key] = values[pos : pos + n].reshape(shape)
            pos += n
    return out


def fold_batchnorm(
    raw: Mapping[str, Mapping[str, np.ndarray]], cfg: DarknetCfg, *, bn_eps: float = BN_EPS
) -> dict:
    """Fold batch norm into the convolutions and convert kernels to HWIO.

    Args:
        raw: Weights as returned by :func:`read_weights`.
        cfg: The cfg they belong to.
        bn_eps: Added to the rolling variance (see ``BN_EPS``).

    Returns:
        ``{"conv{i}": {"kernel": (k, k, Cin, F), "bias": (F,)}}``, float32 numpy.
    """
    params = {}
    for i in cfg.conv_indices:
        r = raw[f"conv{i}"]
        w = np.asarray(r["weights"], np.float64)
        b = np.asarray(r["biases"], np.float64)
        if cfg.layers[i].batch_normalize:
            # y = scale * (conv(x) - mean) / sqrt(var + eps) + bias
            g = np.asarray(r["scales"], np.float64) / np.sqrt(
                np.asarray(r["rolling_variance"], np.float64) + bn_eps
            )
            w = w * g[:, None, None, None]
            b = b - np.asarray(r["rolling_mean"], np.float64) * g
        params[f"conv{i}"] = {
            "kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32),
            "bias": b.astype(np.float32),
        }
    return params


def unfold_params(
    params: Mapping[str, Mapping[str, np.ndarray]], cfg: DarknetCfg, *, bn_eps: float = BN_EPS
) -> dict:
    """Raw Darknet weights that fold back to ``params`` (inverse of :func:`fold_batchnorm`).

    Batch-normalised layers get mean 0, variance 1 and scale sqrt(1 + eps), so that the
    fold with the same ``bn_eps`` reproduces the kernel and bias (to float32 rounding).
    """
    raw = {}
    for i in cfg.conv_indices:
        p = params[f"conv{i}"]
        f = cfg.layers[i].filters
        r = {"biases": np.asarray(p["bias"], np.float32)}
        if cfg.layers[i].batch_normalize:
            r["scales"] = np.full(f, np.sqrt(1.0 + bn_eps), np.float32)
            r["rolling_mean"] = np.zeros(f, np.float32)
            r["rolling_variance"] = np.ones(f, np.float32)
        r["weights"] = np.asarray(p["kernel"], np.float32).transpose(3, 2, 0, 1)
        raw[f"conv{i}"] = r
    return raw


def save_weights(
    path: str | os.PathLike[str],
    params_or_raw: Mapping[str, Mapping[str, np.ndarray]],
    cfg: DarknetCfg,
    *,
    seen: int = 0,
) -> pathlib.Path:
    """Write weights in Darknet's ``.weights`` format (version 0.2, int64 ``seen``), atomically.

    Args:
        path: Destination file.
        params_or_raw: Either folded model params (``kernel``/``bias`` per layer, as
            ``YOLO.params``) or raw Darknet weights (as :func:`read_weights` returns).
        cfg: The cfg the weights belong to.
        seen: Number of training images seen, stored in the header.

    Returns:
        The written path.

    Raises:
        ModelError: Weights whose names or shapes do not fit ``cfg``, or an unwritable path.
    """
    first = params_or_raw[f"conv{cfg.conv_indices[0]}"] if cfg.conv_indices else {}
    raw = unfold_params(params_or_raw, cfg) if "kernel" in first else params_or_raw
    chunks = [struct.pack("<3iq", 0, 2, 0, seen)]
    for name, shapes in raw_shapes(cfg).items():
        for key, shape in shapes.items():
            value = np.asarray(raw.get(name, {}).get(key, np.zeros(0)), dtype="<f4")
            if value.shape != shape:
                raise ModelError(f"cannot save {name}.{key} of shape {value.shape} for "
                                 f"{cfg.name}, which needs {shape}")  # fmt: skip
            chunks.append(value.tobytes())
    try:
        return io.write_bytes_atomic(path, b"".join(chunks))
    except ImageError as err:
        raise ModelError(str(err)) from None
