"""Train the small detectors bundled with fooltools on the seeded synthetic shapes dataset.

Real COCO/VOC weights cannot be downloaded here (issue #5), so the package ships detectors
trained on :mod:`fooltools.detection.synthetic`: the training images come from
``TRAIN_SEED`` and the held-out mAP from ``TEST_SEED``.

    python experiments/train_detectors.py yolo                 # the bundled yolo-synth.weights
    python experiments/train_detectors.py yolo --steps 300 --out /tmp/y.weights  # quick look
    python experiments/train_detectors.py anchors              # k-means anchors for the cfg
    python experiments/train_detectors.py yolo --init old.weights --steps 500  # fine-tune
    python experiments/train_detectors.py faster-rcnn          # faster-rcnn-synth.pth

The defaults reproduce the bundled ``yolo-synth.weights``: 3500 steps of batch 16 took
23 min on a shared 2-core CPU and reached held-out mAP@0.5 = 0.956 on 500 TEST_SEED images
(see fooltools/detection/weights/README.md).

The Faster R-CNN defaults (7500 steps of batch 8; ``experiments/train_faster_rcnn.py``,
which also runs on its own) reproduce ``faster-rcnn-synth.pth``: 36 min on the same shared
machine, held-out mAP@0.5 = 0.976. Each detector is one entry of ``DETECTORS`` (name ->
trainer taking the parsed arguments, default output, its own option defaults over
``COMMON``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fooltools.detection import synthetic

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: its sibling module
import train_faster_rcnn  # noqa: E402

DETECTION_DIR = Path(__file__).resolve().parents[1] / "fooltools" / "detection"
YOLO_CFG = DETECTION_DIR / "cfg" / "yolo-synth.cfg"
YOLO_WEIGHTS = DETECTION_DIR / "weights" / "yolo-synth.weights"


def load_split(seed: int, n: int) -> synthetic.Dataset:
    """Images 0..n-1 of a synthetic set, kept as uint8 (exact: they lie on the 8-bit grid).

    A quarter of the memory of float32 (6000 images: 295 MB), converted back in the jitted
    step; same content as ``synthetic.make_dataset(seed, n)``.
    """
    h, w = synthetic.DEFAULT_SIZE
    m = 4
    images = np.zeros((n, h, w, 3), np.uint8)
    boxes = np.zeros((n, m, 4), np.float32)
    labels = np.full((n, m), -1, np.int32)
    counts = np.zeros(n, np.int32)
    t0 = time.perf_counter()
    for i in range(n):
        img, b, lab = synthetic.make_image(seed, i, max_objects=m)
        images[i] = np.round(img * 255).astype(np.uint8)
        boxes[i, : len(lab)], labels[i, : len(lab)], counts[i] = b, lab, len(lab)
    print(f"generated {n} images of seed {seed} in {time.perf_counter() - t0:.0f} s", flush=True)
    return synthetic.Dataset(images, boxes, labels, counts)


def print_map(result, title: str) -> None:
    """Print overall and per-class AP of a MapResult."""
    print(f"{title}: mAP@{result.iou_threshold:g} = {result.mean_ap:.4f}")
    for c, ap in result.per_class.items():
        print(f"  {synthetic.CLASSES[c]:>9s}  AP {ap:.4f}  ({result.num_gt[c]} boxes)")


def train_yolo(args: argparse.Namespace) -> None:
    """Train yolo-synth from scratch, evaluate it held out, write Darknet weights."""
    import jax

    from fooltools.detection import darknet, yolo, yolo_train

    t_start = time.perf_counter()
    train = load_split(synthetic.TRAIN_SEED, args.train_images)
    test = load_split(synthetic.TEST_SEED, args.test_images)
    net = yolo.load_darknet(args.cfg)  # random init: only the cfg matters here
    key = jax.random.key(args.seed)
    init_key, fit_key = jax.random.split(key)
    if args.init is None:
        params, bn_state = yolo_train.init_train_params(init_key, net.cfg)
        params = yolo_train.prior_bias_init(params, net.cfg)
    else:  # fine-tune: start from a .weights file, batch norm unfolded and trainable again
        raw = darknet.read_weights(args.init, net.cfg)
        params, bn_state = yolo_train.train_params_from_raw(raw, net.cfg)
    optimizer = yolo_train.make_optimizer(
        total_steps=args.steps, peak_lr=args.lr, warmup_steps=args.warmup
    )
    t_train = time.perf_counter()
    state = yolo_train.fit(
        net, fit_key, train.images, train.boxes, train.labels,
        steps=args.steps, params=params, bn_state=bn_state, batch_size=args.batch_size,
        optimizer=optimizer, log_every=args.log_every, log=lambda s: print(s, flush=True),
    )  # fmt: skip
    train_s = time.perf_counter() - t_train
    trained = net._replace(params=yolo_train.fold(state.params, state.bn_state, net.cfg))
    result = yolo_train.evaluate(
        trained, test.images, test.boxes, test.labels, score_threshold=args.score_threshold
    )
    print_map(result, f"held-out ({args.test_images} images of seed {synthetic.TEST_SEED})")
    raw = yolo_train.to_darknet_raw(state.params, state.bn_state, net.cfg)
    out = yolo.save_darknet_weights(args.out, raw, net.cfg, seen=args.steps * args.batch_size)
    # Read back through the path users take, so what was measured is what was written.
    reloaded = yolo.load_darknet(args.cfg, out)
    again = yolo_train.evaluate(
        reloaded, test.images, test.boxes, test.labels, score_threshold=args.score_threshold
    )
    print(f"wrote {out} ({Path(out).stat().st_size / 1e6:.2f} MB); reloaded mAP "
          f"{again.mean_ap:.4f}; training {train_s / 60:.1f} min, "
          f"total {(time.perf_counter() - t_start) / 60:.1f} min")  # fmt: skip


def anchors(args: argparse.Namespace) -> None:
    """Print k-means anchors of the training boxes, to paste into a cfg."""
    from fooltools.detection import yolo_loss

    data = load_split(synthetic.TRAIN_SEED, args.train_images)
    valid = data.labels >= 0
    wh = (data.boxes[..., 2:] - data.boxes[..., :2])[valid]
    found = yolo_loss.kmeans_anchors(wh, args.k, seed=args.seed)
    print(f"{len(wh)} boxes; mean best IoU {yolo_loss.mean_best_iou(wh, found):.4f}")
    print("anchors=" + ", ".join(f"{round(w)},{round(h)}" for w, h in found))


class Detector(NamedTuple):
    """One subcommand: its trainer, its default output and its option defaults."""

    train: Callable[[argparse.Namespace], None]
    out: Path
    defaults: dict[str, Any]
    extra: Callable[[argparse.ArgumentParser], None] | None = None  # model-specific options


def _yolo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=Path, default=YOLO_CFG)
    p.add_argument("--init", type=Path, help="start from these .weights (fine-tune)")


# The shared options every trainer gets, with these defaults unless its entry overrides them.
COMMON = {
    "steps": 3500,
    "seed": 0,
    "train_images": 6000,
    "test_images": 500,
    "batch_size": 16,
    "lr": 4e-3,
    "warmup": 300,
    "score_threshold": 0.05,
    "log_every": 100,
}

DETECTORS: dict[str, Detector] = {
    "yolo": Detector(train_yolo, YOLO_WEIGHTS, {}, _yolo_options),
    "faster-rcnn": Detector(
        train_faster_rcnn.train, train_faster_rcnn.DEFAULT_OUT, train_faster_rcnn.DEFAULTS
    ),
}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen trainer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, det in DETECTORS.items():
        d = COMMON | det.defaults
        p = sub.add_parser(name, help=f"train the bundled {name} detector")
        p.add_argument("--steps", type=int, default=d["steps"])
        p.add_argument("--out", type=Path, default=det.out)
        p.add_argument("--seed", type=int, default=d["seed"], help="init, batches, augmentation")
        p.add_argument("--train-images", type=int, default=d["train_images"])
        p.add_argument("--test-images", type=int, default=d["test_images"])
        p.add_argument("--batch-size", type=int, default=d["batch_size"])
        p.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate")
        p.add_argument("--warmup", type=int, default=d["warmup"])
        p.add_argument("--score-threshold", type=float, default=d["score_threshold"])
        p.add_argument("--log-every", type=int, default=d["log_every"])
        if det.extra is not None:
            det.extra(p)
    p = sub.add_parser("anchors", help="k-means anchors of the training boxes")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "anchors":
        anchors(args)
    else:
        DETECTORS[args.command].train(args)


if __name__ == "__main__":
    sys.exit(main())
