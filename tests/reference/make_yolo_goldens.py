"""Golden YOLO outputs from OpenCV's independent Darknet importer (``cv2.dnn``).

Run with ``make reference-yolo`` (a separate venv with ``opencv-python-headless`` 4.x and
numpy only; fooltools is deliberately not imported, so nothing of ours leaks into the
reference). It writes, for two tiny test networks that between them use every layer type
fooltools supports:

* ``tests/data/yolo/{name}.cfg``: the cfg (small channel counts, a 32 x 48 input: non-square
  so a swapped height/width shows up);
* ``tests/data/yolo/{name}.weights``: random Darknet weights from a fixed numpy seed (BN
  variances in [0.5, 1.5], scales near 1, He-scaled kernels, so activations stay O(1));
  ``tiny_v2`` uses the old header (version 0.1, int32 ``seen``), ``tiny_v3`` the new one
  (0.2, int64 ``seen``);
* ``tests/golden/yolo_{name}.npz``: ``images`` (B, H, W, 3) uint8 RGB; ``raw_{k}`` the
  output of the convolution feeding head ``k`` in NHWC, (B, gh, gw, A * (5 + C)); and
  ``det_{k}``, OpenCV's region-layer output for head ``k``, rows (B * gh * gw * A) of
  [x, y, w, h, objectness, class scores...].

RGB/BGR: the network input is ``images / 255`` as float32 in RGB order, transposed to an
NCHW blob and given to ``net.setInput`` directly (no ``blobFromImage``, so no swapRB,
resizing or mean), exactly the tensor fooltools' ``apply`` gets in NHWC.

OpenCV's region layer semantics (modules/dnn/src/layers/region_layer.cpp): x, y, w, h as
Darknet; class columns are objectness * class probability, zeroed where not above
``thresh``; then a per-class NMS (``nms_threshold``, default 0.4) zeroes the class scores of
suppressed boxes. For ``[yolo]`` the cfg sets ``thresh=0`` and ``nms_threshold=0`` (no
NMS), so every score is comparable; the importer does not pass ``nms_threshold`` for
``[region]``, so there only the scores of boxes that survive OpenCV's NMS are.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "yolo"
GOLDEN = ROOT / "tests" / "golden"
HEIGHT, WIDTH, BATCH = 32, 48, 2

# YOLOv2 style: conv+bn, maxpool 2/2 and 2/1 (Darknet's size - 1 padding), a strided conv,
# route of one layer, reorg, route of two layers, softmax region head.
TINY_V2 = f"""[net]
# fooltools test network (YOLOv2 layer types); regenerate: make reference-yolo
batch=1
width={WIDTH}
height={HEIGHT}
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=24
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=24
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-5

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[reorg]
stride=2

[route]
layers=-1,-4

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=27
activation=linear

[region]
anchors=0.6,0.9, 1.5,1.2, 2.8,3.1
bias_match=1
classes=4
coords=4
num=3
softmax=1
jitter=.2
rescore=1
thresh=0
random=1
"""

# YOLOv3 style: strided conv, residual shortcut, mish, maxpool 2/1, two yolo heads joined by
# route + upsample + route of two layers (one given by absolute index), scale_x_y.
TINY_V3 = f"""[net]
# fooltools test network (YOLOv3 layer types); regenerate: make reference-yolo
batch=1
width={WIDTH}
height={HEIGHT}
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=mish

[shortcut]
from=-3
activation=linear

[convolutional]
batch_normalize=1
filters=24
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=24
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask=3,4,5
anchors=4,6, 9,7, 12,15, 20,14, 30,26, 44,30
classes=3
num=6
jitter=.3
ignore_thresh=.7
truth_thresh=1
random=1
thresh=0
nms_threshold=0

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,6

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask=0,1,2
anchors=4,6, 9,7, 12,15, 20,14, 30,26, 44,30
classes=3
num=6
scale_x_y=1.05
thresh=0
nms_threshold=0
"""


def conv_specs(cfg: str, channels: int = 3) -> list[tuple[int, int, int, int, bool]]:
    """(darknet index, in channels, filters, size, batch_normalize) of every conv layer.

    A deliberately minimal re-derivation of channel counts (conv, maxpool, route, reorg,
    shortcut, upsample only), independent of fooltools' parser.
    """
    sections: list[dict[str, str]] = []
    for line in cfg.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            sections.append({"type": line[1:-1]})
        else:
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
    out_c: list[int] = []
    specs = []
    c = channels
    for i, sec in enumerate(sections[1:]):
        kind = sec["type"]
        if kind == "convolutional":
            f = int(sec["filters"])
            specs.append((i, c, f, int(sec["size"]), sec.get("batch_normalize") == "1"))
            c = f
        elif kind == "route":
            idx = [int(v) for v in sec["layers"].split(",")]
            c = sum(out_c[j if j >= 0 else i + j] for j in idx)
        elif kind == "reorg":
            c *= int(sec["stride"]) ** 2
        out_c.append(c)
    return specs


def write_weights(path: Path, cfg: str, rng: np.random.Generator, version: tuple[int, int]):
    """Random Darknet weights for ``cfg``: header, then per conv biases [, BN], kernel."""
    major, minor = version
    seen = struct.pack("<q", 12345) if major * 10 + minor >= 2 else struct.pack("<i", 12345)
    chunks = [struct.pack("<3i", major, minor, 0), seen]
    for _, cin, f, k, bn in conv_specs(cfg):
        chunks.append(rng.normal(0.0, 0.1, f).astype("<f4"))  # biases
        if bn:
            chunks.append(rng.uniform(0.8, 1.2, f).astype("<f4"))  # scales
            chunks.append(rng.normal(0.0, 0.1, f).astype("<f4"))  # rolling mean
            chunks.append(rng.uniform(0.5, 1.5, f).astype("<f4"))  # rolling variance
        w = rng.normal(0.0, np.sqrt(2.0 / (cin * k * k)), (f, cin, k, k))
        if not bn:  # a head: keep raw outputs small enough that exp(tw) stays a sane box
            w *= 0.25
        chunks.append(w.astype("<f4"))
    path.write_bytes(b"".join(c.tobytes() if isinstance(c, np.ndarray) else c for c in chunks))


def run_opencv(cfg_path: Path, weights_path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Raw head inputs and region-layer outputs of OpenCV's Darknet importer."""
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)  # exact direct convolution, not the faster approximation
    names = list(net.getLayerNames())
    heads = [n for n in names if n == "detection_out" or n.startswith("yolo_")]
    # The layer feeding each head: Darknet index of the head minus one, a linear conv.
    feeds = []
    for h in heads:
        if h == "detection_out":
            feeds.append([n for n in names if n.startswith("conv_")][-1])
        else:
            feeds.append(f"conv_{int(h.split('_')[1]) - 1}")
    blob = np.ascontiguousarray((images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2))
    net.setInput(blob)
    outs = net.forward(feeds + heads)
    result = {}
    for k, (raw, det) in enumerate(zip(outs[: len(heads)], outs[len(heads) :], strict=True)):
        result[f"raw_{k}"] = np.asarray(raw, np.float32).transpose(0, 2, 3, 1)
        result[f"det_{k}"] = np.asarray(det, np.float32).reshape(-1, det.shape[-1])
        print(f"  head {k}: {feeds[k]} {raw.shape} -> {heads[k]} {det.shape}")
    return result


def main() -> int:
    """Write the test cfgs, weights and goldens; print what was written."""
    print(f"OpenCV {cv2.__version__}, numpy {np.__version__}")
    DATA.mkdir(parents=True, exist_ok=True)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240605)
    for name, cfg, version in [("tiny_v2", TINY_V2, (0, 1)), ("tiny_v3", TINY_V3, (0, 2))]:
        cfg_path, weights_path = DATA / f"{name}.cfg", DATA / f"{name}.weights"
        cfg_path.write_text(cfg)
        write_weights(weights_path, cfg, rng, version)
        images = rng.integers(0, 256, (BATCH, HEIGHT, WIDTH, 3), dtype=np.uint8)
        print(name)
        result = run_opencv(cfg_path, weights_path, images)
        out = GOLDEN / f"yolo_{name}.npz"
        np.savez_compressed(out, images=images, opencv_version=cv2.__version__, **result)
        sizes = [p.stat().st_size for p in (cfg_path, weights_path, out)]
        print(f"  wrote {cfg_path.name}, {weights_path.name}, {out.name}: {sizes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
