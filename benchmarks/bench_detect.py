"""Detector attack cost: TOG iterations per second and one iteration vs one forward pass.

Run by ``make bench``. For each bundled detector (YOLO and Faster R-CNN trained on the
synthetic shapes, at their 128x128 input size) and a batch of held-out images, measures

* forward: the jitted raw-output forward pass (``Detector.dense``), images/s;
* attack: TOG-vanishing (L-inf 8/255, step 2/255) iterations, image-iterations/s, from the
  difference between an 11-step and a 1-step run (so the clean detection pass and the
  final re-detection are not counted as iterations);
* ratio: seconds per attack iteration / seconds per forward pass (target <= 3.5).

The forward pass of Faster R-CNN includes its proposal stage (top-k, fixed-size NMS), which
an attack iteration repeats, as torchvision-based attacks do.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

from fooltools import hugepages
from fooltools.detection import attacks, synthetic
from fooltools.detection.detectors import load_detector


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` (blocking on its result) after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(kind: str, x, repeats: int) -> tuple[float, float]:
    """Seconds per forward pass and per TOG-vanishing iteration of detector ``kind`` on ``x``."""
    det = load_detector(kind)
    forward = jax.jit(det.dense)
    t_fwd = median_seconds(lambda: forward(det.params, x), repeats)
    key = jax.random.key(0)
    run1 = attacks.detection_attack(det, mode="vanish", steps=1)
    run11 = attacks.detection_attack(det, mode="vanish", steps=11)
    t1 = median_seconds(lambda: run1(key, x).x, repeats)
    t11 = median_seconds(lambda: run11(key, x).x, repeats)
    return t_fwd, (t11 - t1) / 10


def main() -> None:
    """Measure and print one table row per detector."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.batch < 1:
        parser.error(f"--batch must be >= 1 (images per forward pass), got {args.batch}")
    if args.repeats < 1:
        parser.error(
            f"--repeats must be >= 1 (the figures are medians of the repeats), got {args.repeats}"
        )
    x = synthetic.make_dataset(synthetic.TEST_SEED, args.batch).images
    print(
        f"# detector attack cost, batch {args.batch}, 128x128, {platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), "
        f"{hugepages.describe()}"
    )
    print(f"{'detector':>12}  {'forward img/s':>13}  {'attack img-it/s':>15}  {'ratio':>5}")
    for kind in ("yolo", "faster-rcnn"):
        t_fwd, t_it = measure(kind, x, args.repeats)
        if t_it <= 0:
            # An iteration's cost is a difference of two medians: noise can swamp it.
            print(f"{kind:>12}  {args.batch / t_fwd:13.1f}  {'noise':>15}  {'-':>5}")
            continue
        print(
            f"{kind:>12}  {args.batch / t_fwd:13.1f}  {args.batch / t_it:15.1f}  "
            f"{t_it / t_fwd:5.2f}"
        )


if __name__ == "__main__":
    main()
