"""Evolution throughput: search evaluations/s vs the classifier alone and vs a naive loop.

Run by ``make bench``. For the direct and the CPPN encoding under the genetic algorithm
(``--strategy ga``, the CLI's encodings) and for the evolution strategy on the layered
CPPN (``--strategy es``, the default of ``fool evolve --class``), at population 200 on
EfficientNet-Lite0 (224x224), it prints:

* the search's evaluations/s (a GA generation = DEAP selection on the host + one jitted
  call that breeds, renders, quantizes, classifies and replaces; an ES generation = one
  jitted call that samples, evaluates and updates), measured over ``--generations``
  generations after a 2-generation warm-up call (which compiles): the median generation;
* the classifier's own batched forward throughput on the same batch size, timed once
  after every second generation (the search runs two generations per call), and the
  search overhead ``1 - search / forward`` of each such generation against the forward
  pass that follows it: the median (target <= 15%);
* a naive loop that mutates with DEAP's stock per-gene operator (direct:
  ``tools.mutPolynomialBounded`` on a Python list; CPPN: the encoding's mutate, one
  individual at a time) and renders and classifies one individual at a time, and the
  speed-up of the search over it (target >= 10x);
* the same search figures for the paper's MAP-Elites run (sferes2 CPPN, one cell per
  ImageNet class, 400 offspring a generation), and the time its 400 x 5000 evaluations
  would take at that rate: a lower bound, since genomes, and the render with them, grow
  over a run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from deap import tools

from fooltools import hugepages, io
from fooltools.evolve import cppn_pallas
from fooltools.evolve.cppn import SFERES2, cppn
from fooltools.evolve.direct import direct
from fooltools.evolve.es import ES_CPPN, ESConfig, evolve_es
from fooltools.evolve.run import evolve_map_elites, evolve_single
from fooltools.evolve.search import SearchConfig
from fooltools.models import load_model


def forward_timer(clf, batch: int) -> Callable[[], float]:
    """A function timing one call of the jitted classifier alone on (batch, 224, 224, 3)."""
    apply = jax.jit(clf.logits)
    x = jax.random.uniform(jax.random.key(0), (batch, *clf.info.input_size, 3))
    apply(clf.params, x).block_until_ready()

    def once() -> float:
        t0 = time.perf_counter()
        apply(clf.params, x).block_until_ready()
        return time.perf_counter() - t0

    return once


def search_vs_forward(
    clf,
    enc,
    name: str,
    strategy: str,
    population: int,
    generations: int,
    lookahead: bool | None = None,
) -> tuple[float, float, float]:
    """The search's evaluations/s, the classifier's images/s and the overhead, paired.

    The search runs two generations per call (each call resumes the last one's
    checkpoint, outside the generations' timing), and after each call, with no search
    work in flight, the classifier alone classifies a batch of a generation's size: each
    call's second generation is compared with a forward pass made seconds later, so a
    shared machine's drift over minutes (the classifier alone moved by 15% between rows)
    cancels. Only second generations are paired: they follow a generation, as in a
    search, while on XLA:CPU the generation right after a call of the separate
    classifier executable ran 15% slower (2.77 against 2.41 s for the direct GA).
    The first call (generations 1-2) is a warm-up, not paired: it compiles, and its
    books do one-off work (compiling the best image's fetch) that, with ``lookahead``,
    generation 2 runs beside on the device, so its seconds flattered the search (on CPU,
    population 8, ``--lookahead on --generations 4``: 1,250 evaluations/s against 141
    img/s for the classifier alone, a -1,084% overhead; RESULTS.md, s18).
    ``generations`` are timed after it, in ``generations / 2`` pairs.
    ``lookahead`` is the GA's and the ES's (None: their default, on accelerators only).
    Returns the medians over the pairs of the search rate, the forward rate and the
    paired overhead ``1 - search / forward``.
    """
    elites = 2 if strategy == "ga" else 0  # the ES and MAP-Elites evaluate all P
    batch = population - elites
    forward = forward_timer(clf, batch)
    fwd_seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for end in range(2, generations + 3, 2):
            cfg = SearchConfig(population=population, generations=end, elites=elites, stop_at=None)
            kwargs = {"seed": 0, "out": Path(tmp), "resume": end > 2, "checkpoint_every": 2}
            if strategy == "es":
                out = evolve_es(clf, enc, name, 15, cfg, ESConfig(), lookahead=lookahead, **kwargs)
            elif strategy == "map-elites":
                cells = list(range(1000))  # one per ImageNet class, as the paper's run
                out = evolve_map_elites(clf, enc, name, cells, cfg, **kwargs)
            else:
                out = evolve_single(clf, enc, name, 15, cfg, lookahead=lookahead, **kwargs)
            fwd_seconds[end] = forward()
    history = {h["generation"]: h for h in out["history"]}
    pairs = [
        (history[g]["evaluations"] / history[g]["seconds"], batch / f)
        for g, f in fwd_seconds.items()
        if g > 2  # the warm-up call
    ]
    search, fwd = (float(np.median(v)) for v in zip(*pairs, strict=True))
    return search, fwd, float(np.median([1 - s / f for s, f in pairs]))


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


def check_sizes(
    parser: argparse.ArgumentParser, rows: Sequence[str], population: int, map_elites: int
) -> None:
    """Exit through ``parser`` with the population the selected ``rows`` would refuse.

    Refused here, not by the search after the rows before it have run for minutes
    (``evolve_phases.py`` checks its rows with this too).
    """
    if {"direct-ga", "cppn-ga"} & set(rows) and population < 3:
        parser.error(f"--population must be >= 3 for the GA's 2 elites, got {population}")
    if "cppn-es" in rows and (population < 2 or population % 2):
        parser.error(f"--population must be even and >= 2 for the ES, got {population}")
    if "map-elites" in rows and map_elites < 2:
        parser.error(f"--map-elites-population must be >= 2, got {map_elites}")


def main() -> None:
    """Measure and print the table."""
    hugepages.ensure()  # before any work: the process may restart with huge pages
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument(
        "--generations",
        type=int,
        default=10,
        help="timed per search, after a 2-generation warm-up; even (every second one is paired)",
    )
    parser.add_argument("--naive", type=int, default=10, help="individuals timed in the loop")
    parser.add_argument(
        "--only",
        action="append",
        choices=("direct-ga", "cppn-ga", "cppn-es", "map-elites"),
        help="time only these rows (repeatable; default: all)",
    )
    parser.add_argument(
        "--map-elites-population",
        type=int,
        default=400,
        help="offspring per generation of the MAP-Elites row (the paper's 400)",
    )
    parser.add_argument(
        "--lookahead",
        choices=("auto", "on", "off"),
        default="auto",
        help="GA and ES: queue each generation before the last is collected "
        "(auto: on accelerators only, as fool evolve)",
    )
    args = parser.parse_args()
    lookahead = {"auto": None, "on": True, "off": False}[args.lookahead]
    if args.generations < 2 or args.generations % 2:
        parser.error(f"--generations must be even and >= 2, got {args.generations}")
    rows = args.only or ("direct-ga", "cppn-ga", "cppn-es", "map-elites")
    check_sizes(parser, rows, args.population, args.map_elites_population)
    if set(rows) - {"map-elites"} and args.naive < 1:
        parser.error(f"--naive must be >= 1 (the speed-up divides by its rate), got {args.naive}")
    clf = load_model("efficientnet_lite0.in1k")
    h, w = clf.info.input_size
    print(
        f"# evolution throughput, EfficientNet-Lite0 224x224, population {args.population}, "
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()}: {jax.devices()[0].device_kind}), {hugepages.describe()}, "
        f"CPPN renders: {'Pallas kernels' if cppn_pallas.available() else 'XLA'}, "
        f"GA/ES lookahead: {args.lookahead}"
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
        rate, fwd, overhead = search_vs_forward(
            clf, enc, name, strategy, args.population, args.generations, lookahead
        )
        # The naive loop mutates one genome with the encoding's own operator (for the ES
        # genome too: a weight perturbation costs the same), renders and classifies it.
        naive = naive_rate(clf, enc, name, args.naive)
        print(
            f"{name:>8}  {strategy:>8}  {rate:>11.1f}  {fwd:>13.1f}  "
            f"{100 * overhead:>7.1f}%  {naive:>10.2f}  {rate / naive:>7.1f}x"
        )
    if not args.only or "map-elites" in args.only:
        # The paper's run: MAP-Elites over all 1000 classes with the sferes2 CPPN, 400
        # offspring x 5000 generations. Generation time grows with the genomes (the
        # render loops to each batch's largest), so a few generations give a lower bound.
        pop = args.map_elites_population
        rate, fwd, overhead = search_vs_forward(
            clf, cppn(**SFERES2), "cppn", "map-elites", pop, args.generations
        )
        print(
            f"{'cppn':>8}  {'me-1000':>8}  {rate:>11.1f}  {fwd:>13.1f}  "
            f"{100 * overhead:>7.1f}%  {'-':>10}  {'-':>8}"
        )
        hours = 400 * 5000 / rate / 3600
        print(
            f"# MAP-Elites, 1000 cells, population {pop}: the paper's 400 x 5000 = 2M "
            f"evaluations at {rate:.0f} ev/s take {hours:.2f} h ({60 * hours:.1f} min) here "
            f"(a lower bound: generations {args.generations + 2} and less, genomes still small)"
        )


if __name__ == "__main__":
    main()
