"""Evolution throughput: search evaluations/s vs the classifier alone and vs a naive loop.

Run by ``make bench``. For the direct and the CPPN encoding under the genetic algorithm
(``--strategy ga``, the CLI's encodings) and for the evolution strategy on the layered
CPPN (``--strategy es``, the default of ``fool evolve --class``), at population 200 on
EfficientNet-Lite0 (224x224), it prints:

* the search's evaluations/s (a GA generation = DEAP selection on the host + one jitted
  breed call + one jitted render/quantize/classify call; an ES generation = one jitted
  sample call + the same evaluation + one jitted update), measured over generations
  after the first (which compiles): the median generation;
* the classifier's own batched forward throughput on the same batch size (the median of
  5 calls, measured just before each search), and the
  search overhead ``1 - search / forward`` (target <= 15%);
* a naive loop that mutates with DEAP's stock per-gene operator (direct:
  ``tools.mutPolynomialBounded`` on a Python list; CPPN: the encoding's mutate, one
  individual at a time) and renders and classifies one individual at a time, and the
  speed-up of the search over it (target >= 10x).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from deap import tools

from fooltools import io
from fooltools.evolve.cppn import SFERES2, cppn
from fooltools.evolve.direct import direct
from fooltools.evolve.es import ES_CPPN, ESConfig, evolve_es
from fooltools.evolve.run import evolve_single
from fooltools.evolve.search import SearchConfig
from fooltools.models import load_model


def forward_rate(clf, batch: int, repeats: int) -> float:
    """Images/s of the jitted classifier alone on (batch, 224, 224, 3): the median call."""
    apply = jax.jit(clf.logits)
    x = jax.random.uniform(jax.random.key(0), (batch, *clf.info.input_size, 3))
    apply(clf.params, x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        apply(clf.params, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def search_rate(clf, enc, name: str, strategy: str, population: int, generations: int) -> float:
    """Evaluations/s of the single-target search, excluding the first (compiling) generation."""
    cfg = SearchConfig(population=population, generations=generations, elites=2, stop_at=None)
    kwargs = {"seed": 0, "checkpoint_every": generations + 1}
    with tempfile.TemporaryDirectory() as tmp:
        if strategy == "es":
            out = evolve_es(clf, enc, name, 15, cfg, ESConfig(), out=Path(tmp), **kwargs)
        else:
            out = evolve_single(clf, enc, name, 15, cfg, out=Path(tmp), **kwargs)
    # The median generation, as the classifier's median call: a shared machine's
    # hiccups hit one or two of them, not the ratio.
    return float(np.median([h["evaluations"] / h["seconds"] for h in out["history"][1:]]))


def naive_rate(clf, enc, name: str, individuals: int) -> float:
    """Evaluations/s of mutating, rendering and classifying one individual at a time."""
    h, w = clf.info.input_size
    classify = jax.jit(clf.logits)
    render = jax.jit(lambda g: io.quantize(enc.render(g, h, w)))
    mutate = jax.jit(enc.mutate)
    random.seed(0)
    genome = enc.init(jax.random.key(0))
    flat = np.asarray(genome).ravel().tolist() if name == "direct" else None

    def one(i: int) -> None:
        nonlocal genome
        if name == "direct":
            (child,) = tools.mutPolynomialBounded(list(flat), eta=15, low=0.0, up=1.0, indpb=0.1)
            g = jnp.asarray(np.asarray(child, np.float32).reshape(h, w, 3))
        else:
            g = mutate(jax.random.key(i), genome)
        img = render(jax.tree_util.tree_map(lambda a: a[None], g))
        jax.nn.softmax(classify(clf.params, img))[0, 15].block_until_ready()

    one(0)  # compile
    t0 = time.perf_counter()
    for i in range(1, individuals + 1):
        one(i)
    return individuals / (time.perf_counter() - t0)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--naive", type=int, default=10, help="individuals timed in the loop")
    parser.add_argument(
        "--only",
        action="append",
        choices=("direct-ga", "cppn-ga", "cppn-es"),
        help="time only these rows (repeatable; default: all)",
    )
    args = parser.parse_args()
    clf = load_model("efficientnet_lite0.in1k")
    h, w = clf.info.input_size
    print(
        f"# evolution throughput, EfficientNet-Lite0 224x224, population {args.population}, "
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()}: {jax.devices()[0].device_kind})"
    )
    print(
        f"{'encoding':>8}  {'strategy':>8}  {'search ev/s':>11}  {'forward img/s':>13}  "
        f"{'overhead':>8}  {'naive ev/s':>10}  {'speed-up':>8}"
    )
    runs = (
        ("direct", "ga", direct(height=h, width=w)),
        ("cppn", "ga", cppn(**SFERES2)),
        ("cppn", "es", cppn(**ES_CPPN)),
    )
    for name, strategy, enc in runs:
        if args.only and f"{name}-{strategy}" not in args.only:
            continue
        # The classifier alone, measured next to each search (the machine drifts).
        fwd = forward_rate(clf, args.population - 2, repeats=5)
        rate = search_rate(clf, enc, name, strategy, args.population, args.generations)
        # The naive loop mutates one genome with the encoding's own operator (for the ES
        # genome too: a weight perturbation costs the same), renders and classifies it.
        naive = naive_rate(clf, enc, name, args.naive)
        print(
            f"{name:>8}  {strategy:>8}  {rate:>11.1f}  {fwd:>13.1f}  "
            f"{100 * (1 - rate / fwd):>7.1f}%  {naive:>10.2f}  {rate / naive:>7.1f}x"
        )


if __name__ == "__main__":
    main()
