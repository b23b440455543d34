"""Where a generation's time goes: each part of each search timed alone, on this backend.

Not part of ``make bench`` (it prints no ratio against a peer): a diagnostic for the
search overhead of ``bench_evolve.py``, written for the GPU, where a generation is a few
milliseconds and the parts beside the classifier decide the overhead. For each search at
``--population`` on EfficientNet-Lite0 it prints the median over ``--repeats`` calls,
each call blocked until its results are ready, of:

* the generation's parts as the searches call them: the host's DEAP selection (GA,
  MAP-Elites), breeding (GA, MAP-Elites) or sampling (ES), render + 8-bit quantization,
  the classifier, and forming the next population (GA survivors, ES update, MAP-Elites
  archive update);
* ``fused``: the whole generation as the search dispatches it on this backend (one
  jitted call for the GA and ES, the three calls of MAP-Elites; on accelerators the GA's
  call picks its parents itself, see ``search.make_generation_ahead``), and its excess
  over the parts' sum;
* ``loop``: a generation of the real search, with its host work (selection, fetching
  the fitness, books): the median of ``history.jsonl``'s seconds over ``--generations``
  from the third (the first compiles; with lookahead the second ran beside the first's
  one-off book work and reads too short).

``overhead`` is ``1 - classifier / loop``, the figure ``bench_evolve.py`` targets
(<= 15%). Run: ``python benchmarks/evolve_phases.py [--only cppn-es] [--population 200]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from bench_evolve import check_sizes  # the script's own directory is on sys.path

from fooltools import hugepages
from fooltools.evolve import cppn_pallas, es, search
from fooltools.evolve.cppn import SFERES2, cppn
from fooltools.evolve.direct import direct
from fooltools.evolve.run import evolve_map_elites, evolve_single, lookahead_by_default
from fooltools.evolve.search import SearchConfig
from fooltools.models import load_model

TARGET = 15  # robin


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in ms, its result blocked on; one untimed call first."""
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def loop_ms(run: Callable[[Path, int], dict[str, Any]], generations: int) -> float:
    """Median ms of the real search's generations from the third (see the module doc)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = run(Path(tmp), generations)
    seconds = [h["seconds"] for h in out["history"] if h["generation"] > 2]
    return 1e3 * float(np.median(seconds))


# A search's phases: its parts as calls to time, and ``run(out, generations)``, the real
# search (whose generations give "loop").
Phases = tuple[dict[str, Callable[[], Any]], Callable[[Path, int], dict[str, Any]]]


def ga_phases(clf, enc, name: str, population: int) -> Phases:
    """The parts of a single-target GA generation (the bench's 2 elites)."""
    h, w = clf.info.input_size
    cfg = SearchConfig(population=population, elites=2, stop_at=None)
    key, cols = jax.random.key(0), jnp.asarray([TARGET])
    genomes = jax.vmap(enc.init)(jax.random.split(key, population))
    _, conf = search.make_evaluator(clf, enc)(genomes, cols)
    fitness = np.asarray(conf)[:, 0]
    elites, parents = search.select_parents(fitness, cfg, 0)
    breed = search.make_breeder(enc, cfg.cxpb)
    kids = jax.block_until_ready(breed(key, genomes, parents))
    images = search.render_images(enc, kids, h, w)
    if lookahead_by_default():  # as evolve_single picks, with truncation selection
        ahead = search.make_generation_ahead(clf, enc, cfg.cxpb, cfg.elites)
        fused = functools.partial(ahead, key, 1, genomes, jnp.asarray(fitness), cols)
    else:
        plain = search.make_generation(clf, enc, cfg.cxpb)
        fused = functools.partial(plain, key, 1, genomes, parents, elites, cols)
    parts = {
        "select (host)": lambda: search.select_parents(fitness, cfg, 0),
        "breed": lambda: breed(key, genomes, parents),
        "render": lambda: search.render_images(enc, kids, h, w),
        "classify": lambda: _logits(clf)(clf.params, images),
        "next population": lambda: search.survivors(genomes, elites, kids),
        "fused": fused,
    }

    def run(out: Path, n: int) -> dict[str, Any]:
        cfg_n = dataclasses.replace(cfg, generations=n)
        return evolve_single(clf, enc, name, TARGET, cfg_n, seed=0, out=out, checkpoint_every=n)

    return parts, run


def es_phases(clf, population: int) -> Phases:
    """The parts of an evolution-strategy generation on the layered CPPN."""
    h, w = clf.info.input_size
    enc = cppn(**es.ES_CPPN)
    key, cols = jax.random.key(0), jnp.asarray([TARGET])
    center = enc.init(key)
    renderer = es.plan_renderer(center, enc)
    cfg = es.ESConfig()
    sample, update, opt = es.make_strategy(population, cfg)
    opt_state = opt.init(center.weight)
    pop = jax.block_until_ready(sample(key, center))
    images = search.render_images(renderer, pop, h, w)
    conf = jax.nn.softmax(_logits(clf)(clf.params, images))[:, TARGET]
    generation = es.make_generation(clf, renderer, population, cfg)
    parts = {
        "sample": lambda: sample(key, center),
        "render": lambda: search.render_images(renderer, pop, h, w),
        "classify": lambda: _logits(clf)(clf.params, images),
        "next population": lambda: update(key, center, opt_state, conf),
        "fused": lambda: generation(key, 1, center, opt_state, cols),
    }

    def run(out: Path, n: int) -> dict[str, Any]:
        cfg_n = SearchConfig(population=population, generations=n, elites=0, stop_at=None)
        return es.evolve_es(
            clf, enc, "cppn", TARGET, cfg_n, cfg, seed=0, out=out, checkpoint_every=n
        )

    return parts, run


def map_elites_phases(clf, population: int) -> Phases:
    """The parts of a MAP-Elites generation over all 1000 classes (sferes2 CPPN)."""
    h, w = clf.info.input_size
    enc = cppn(**SFERES2)
    cells = list(range(1000))
    key, cols = jax.random.key(0), jnp.asarray(cells)
    genomes = jax.vmap(enc.init)(jax.random.split(key, population))
    _, conf = search.make_evaluator(clf, enc)(genomes, cols)
    empty = search.take(genomes, jnp.zeros(len(cells), int))
    archive, fit, _ = search.archive_update(empty, jnp.full(len(cells), -1.0), genomes, conf)
    filled = np.asarray(fit) >= 0
    parents = search.select_random(filled, population, 0)
    breed = search.make_breeder(enc, 0.5)
    kids = jax.block_until_ready(breed(key, archive, parents))
    images = search.render_images(enc, kids, h, w)
    generation = search.make_map_elites_generation(clf, enc, 0.5)
    parts = {
        "select (host)": lambda: search.select_random(filled, population, 0),
        "breed": lambda: breed(key, archive, parents),
        "render": lambda: search.render_images(enc, kids, h, w),
        "classify": lambda: _logits(clf)(clf.params, images),
        "next population": lambda: search.archive_update(archive, fit, kids, conf),
        "fused": lambda: generation(key, 1, archive, fit, parents, cols),
    }

    def run(out: Path, n: int) -> dict[str, Any]:
        cfg_n = SearchConfig(population=population, generations=n, elites=0, stop_at=None)
        return evolve_map_elites(
            clf, enc, "cppn", cells, cfg_n, seed=0, out=out, checkpoint_every=n
        )

    return parts, run


@functools.cache
def _logits(clf) -> Callable[..., jax.Array]:
    """The classifier alone, jitted once for every row."""
    return jax.jit(clf.logits)


def main() -> None:
    """Time the parts and print one row per search."""
    hugepages.ensure()  # as `fool evolve` and bench_evolve.py: may restart the process
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument("--map-elites-population", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per part")
    parser.add_argument("--generations", type=int, default=10, help="of each real search")
    rows = ("direct-ga", "cppn-ga", "cppn-es", "map-elites")
    parser.add_argument("--only", action="append", choices=rows, help="repeatable")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(
            f"--repeats must be >= 1 (the figures are medians of the repeats), got {args.repeats}"
        )
    if args.generations < 3:
        parser.error("--generations must be >= 3 (the first two are not timed)")
    selected = args.only or rows
    check_sizes(parser, selected, args.population, args.map_elites_population)
    clf = load_model("efficientnet_lite0.in1k")
    h, w = clf.info.input_size
    print(
        f"# evolution phases, ms (median of {args.repeats}), EfficientNet-Lite0 {h}x{w}, "
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()}: {jax.devices()[0].device_kind}), {hugepages.describe()}, "
        f"CPPN renders: {'Pallas kernels' if cppn_pallas.available() else 'XLA'}"
    )
    parts = ("select (host)", "sample", "breed", "render", "classify", "next population")
    print(
        "| search | "
        + " | ".join(parts)
        + " | fused | fused - parts | loop | loop - fused | overhead |"
    )
    print("|---" * (len(parts) + 6) + "|")
    pop = args.population
    jobs = {
        "direct-ga": lambda: ga_phases(clf, direct(height=h, width=w), "direct", pop),
        "cppn-ga": lambda: ga_phases(clf, cppn(**SFERES2), "cppn", pop),
        "cppn-es": lambda: es_phases(clf, pop),
        "map-elites": lambda: map_elites_phases(clf, args.map_elites_population),
    }
    for row, job in jobs.items():
        if args.only and row not in args.only:
            continue
        calls, run = job()
        t = {part: median_ms(fn, args.repeats) for part, fn in calls.items()}
        t["loop"] = loop_ms(run, args.generations)
        device = sum(t.get(p, 0.0) for p in parts if p != "select (host)")
        cells = [f"{t[p]:.2f}" if p in t else "-" for p in parts]
        print(
            f"| {row} | "
            + " | ".join(cells)
            + f" | {t['fused']:.2f} | {t['fused'] - device:+.2f} | {t['loop']:.2f} | "
            f"{t['loop'] - t['fused']:+.2f} | {100 * (1 - t['classify'] / t['loop']):.1f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
