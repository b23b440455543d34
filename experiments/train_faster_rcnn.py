r"""Train the bundled Faster R-CNN on the synthetic shapes set and write its weights.

Command (from the repository root; about 25 minutes on 2 shared CPU cores)::

    .venv/bin/python experiments/train_faster_rcnn.py \
        --out fooltools/detection/weights/faster-rcnn-synth.pth

(also ``experiments/train_detectors.py faster-rcnn ...`` with the same options).

It generates ``--train-images`` images of :data:`~fooltools.detection.synthetic.TRAIN_SEED`
in memory, trains :data:`~fooltools.detection.rcnn_train.SYNTH_SPEC` (ResNet-FPN with
torchvision's key names) from scratch with AdamW (linear warm-up, cosine decay) and random
flips/transposes, prints progress, evaluates mAP@0.5 on a few held-out images every
``--eval-every`` steps (saving the weights each time), then writes the final weights with
:func:`fooltools.checkpoints.save_state_dict` (atomically), loads them back through
:func:`~fooltools.detection.faster_rcnn.load_faster_rcnn` exactly as real weights, checks
that the loaded model detects exactly what the trained one does, and reports mAP@0.5 on
``--test-images`` images of :data:`~fooltools.detection.synthetic.TEST_SEED`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools import checkpoints
from fooltools.detection import detectors, synthetic
from fooltools.detection import faster_rcnn as fr
from fooltools.detection import rcnn_train as rt

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "fooltools" / "detection" / "weights" / "faster-rcnn-synth.pth"
_LEVELS8 = np.arange(256, dtype=np.float32) / np.float32(255)  # synthetic's exact 8-bit grid


# Options of parse_args that train() also finds on another parser's namespace (that of
# experiments/train_detectors.py, whose shared options have other defaults).
DEFAULTS = {
    "steps": 7500,
    "batch_size": 8,
    "lr": 1e-3,
    "warmup": 300,
    "train_images": 6000,
    "test_images": 500,
    "log_every": 100,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="train_faster_rcnn", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="weights file to write")
    p.add_argument("--train-images", type=int, default=DEFAULTS["train_images"])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    p.add_argument("--eval-every", type=int, default=1500)
    p.add_argument(
        "--test-images",
        type=int,
        default=DEFAULTS["test_images"],
        help="held-out images at the end",
    )
    p.add_argument("--log-every", type=int, default=DEFAULTS["log_every"])
    return p.parse_args(argv)


def make_data(seed: int, n: int, chunk: int = 500) -> synthetic.Dataset:
    """``synthetic.make_dataset(seed, n)`` with the images as uint8 (4x less memory)."""
    h, w = synthetic.DEFAULT_SIZE
    images = np.zeros((n, h, w, 3), np.uint8)
    boxes = np.zeros((n, 4, 4), np.float32)
    labels = np.full((n, 4), -1, np.int32)
    counts = np.zeros(n, np.int32)
    for i in range(n):
        img, b, lab = synthetic.make_image(seed, i)
        images[i] = np.round(img * 255).astype(np.uint8)
        boxes[i, : len(lab)], labels[i, : len(lab)], counts[i] = b, lab, len(lab)
        if (i + 1) % chunk == 0 or i + 1 == n:
            print(f"  data: {i + 1}/{n} images of seed {seed}", flush=True)
    return synthetic.Dataset(images, boxes, labels, counts)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images back to the exact float32 values the dataset produced."""
    return _LEVELS8[images]


def train(args: argparse.Namespace) -> bool:
    """Train, save, reload and evaluate as the options say (see :func:`parse_args`).

    Returns:
        Whether the reloaded model detects exactly what the trained one did.
    """
    for name, value in (("eval_every", 1500), ("weight_decay", 1e-4), ("seed", 0)):
        if not hasattr(args, name):
            setattr(args, name, value)
    t0 = time.time()
    print(f"generating {args.train_images} training images", flush=True)
    train = make_data(synthetic.TRAIN_SEED, args.train_images)
    test = make_data(synthetic.TEST_SEED, args.test_images)
    quick = slice(0, min(100, args.test_images))
    print(f"data ready in {time.time() - t0:.0f} s", flush=True)

    config = rt.synth_config(num_classes=len(synthetic.CLASSES) + 1)
    key = jax.random.key(args.seed)
    key, init_key = jax.random.split(key)
    params = rt.init_params(init_key, config)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, min(args.warmup, args.steps // 2), args.steps, end_value=args.lr * 1e-2
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(10.0),
        optax.adamw(schedule, weight_decay=args.weight_decay),
    )
    opt_state = optimizer.init(params)
    step_fn = rt.make_train_step(config, optimizer)
    augment = jax.jit(rt.augment)
    detect = jax.jit(lambda p, x: fr.detect(config, p, x))

    def quick_map(params) -> float:
        result = rt.evaluate(
            detect,
            params,
            to_float(test.images[quick]),
            test.boxes[quick],
            test.labels[quick],
            num_classes=len(synthetic.CLASSES),
            batch=50,
        )
        return result.mean_ap

    n = len(train.counts)
    order = np.zeros(0, np.int64)
    sums, seen, t_log = np.zeros(4), 0, time.time()
    t_train = time.time()
    for step in range(1, args.steps + 1):
        if len(order) < args.batch_size:
            key, k = jax.random.split(key)
            order = np.concatenate([order, np.asarray(jax.random.permutation(k, n))])
        idx, order = order[: args.batch_size], order[args.batch_size :]
        key, k_aug, k_step = jax.random.split(key, 3)
        images, boxes = augment(k_aug, to_float(train.images[idx]), train.boxes[idx])
        params, opt_state, losses = step_fn(
            params, opt_state, k_step, images, boxes, train.labels[idx]
        )
        sums += np.asarray(losses)
        seen += args.batch_size
        if step % args.log_every == 0 or step == args.steps:
            dt = time.time() - t_log
            m = sums / (seen / args.batch_size)
            print(
                f"step {step:5d}  lr {float(schedule(step)):.2e}  loss {m.sum():.4f}  "
                f"(rpn obj {m[0]:.4f} box {m[1]:.4f}, cls {m[2]:.4f} box {m[3]:.4f})  "
                f"{seen / dt:.1f} img/s  {(time.time() - t_train) / 60:.1f} min",
                flush=True,
            )
            sums, seen, t_log = np.zeros(4), 0, time.time()
        if step % args.eval_every == 0 and step < args.steps:
            checkpoints.save_state_dict(args.out, rt.to_state_dict(config, params))
            print(f"  held-out mAP@0.5 ({quick.stop} images): {quick_map(params):.4f}", flush=True)
            t_log = time.time()
    train_minutes = (time.time() - t_train) / 60
    print(f"trained {args.steps} steps in {train_minutes:.1f} min", flush=True)

    path = checkpoints.save_state_dict(args.out, rt.to_state_dict(config, params))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)
    model = fr.load_faster_rcnn(path, **detectors.SYNTH_LOAD_KWARGS)
    x = jnp.asarray(to_float(test.images[:16]))
    ours, theirs = detect(params, x), model.detect(model.params, x)
    same = all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    print(f"loaded model's detections identical to the trained model's: {same}", flush=True)
    result = rt.evaluate(
        model.detect,
        model.params,
        to_float(test.images),
        test.boxes,
        test.labels,
        num_classes=len(synthetic.CLASSES),
        batch=50,
    )
    print(f"held-out mAP@0.5 on {args.test_images} TEST_SEED images: {result.mean_ap:.4f}")
    for c, ap in result.per_class.items():
        print(f"  {synthetic.CLASSES[c]:>8s}: AP {ap:.4f}  ({result.num_gt[c]} objects)")
    print(f"total {(time.time() - t0) / 60:.1f} min", flush=True)
    return same


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    return 0 if train(parse_args(argv)) else 1


if __name__ == "__main__":
    sys.exit(main())
