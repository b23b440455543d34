"""Evolutionary searches for fooling images: single target and MAP-Elites.

DEAP supplies the toolbox, tournament/random selection, statistics, logbook and hall of
fame; the population itself lives on the device as one stacked pytree, and each
single-target generation is one jitted call that gathers the selected parents, varies
them (vmapped encoding operators), renders, quantizes to 8 bits and classifies the whole
brood, and forms the next population (see :func:`fuse`; MAP-Elites makes three calls).
The host only selects and keeps books, so the cost is dominated by the network's
forward pass. On accelerators the GA's truncation selection also runs on the device
(:func:`select_truncation`, DEAP's picks, which the host checks with DEAP itself), so a
generation can be queued before the last one is collected
(:func:`make_generation_ahead`).

Randomness: every generation's randomness derives from ``fold_in(key, generation)``;
DEAP's selection draws from Python's ``random``, which is re-seeded from that key each
generation, so a run is a pure function of (config, key) and a resumed run is
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from deap import base as deap_base
from deap import tools

from fooltools import io, sharding
from fooltools.models.base import Classifier

Genomes = Any  # a pytree of arrays with a leading population axis


class Encoding(Protocol):
    """What a search needs of an encoding (see ``direct.py`` and ``cppn.py``)."""

    def init(self, key: jax.Array) -> Any:
        """One random genome: a pytree of arrays without a population axis."""
        ...

    def mutate(self, key: jax.Array, genome: Any) -> Any:
        """One mutated genome, of ``genome``'s structure, shapes and dtypes (jittable)."""
        ...

    def render(self, genomes: Genomes, height: int, width: int) -> jax.Array:
        """Images of a population of P genomes, shape (P, height, width, 3) in [0, 1].

        Jittable, with ``height`` and ``width`` static. An encoding may also have
        ``crossover(key, a, b) -> (a', b')`` of two genomes; the GA uses it when present.
        """
        ...


class _Fitness(deap_base.Fitness):
    weights = (1.0,)


class Individual:
    """A host-side handle on one member of the device population (DEAP needs objects)."""

    __slots__ = ("fitness", "index")

    def __init__(self, index: int, fitness: float):
        self.index = index
        # DEAP's values setter multiplies by the weights, (1.0,): setting the weighted
        # values directly is the same fitness in a third of the time (200 a generation).
        self.fitness = _Fitness.__new__(_Fitness)
        self.fitness.wvalues = (fitness,)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of the searches.

    The GA (:func:`~fooltools.evolve.run.evolve_single`) uses every field; the evolution
    strategy (:func:`~fooltools.evolve.es.evolve_es`) ``population``, ``generations`` and
    ``stop_at``; MAP-Elites ``population``, ``generations`` and ``cxpb``. A search refuses
    a field it does not use that is set (see :meth:`check_used`).

    Attributes:
        population: Individuals per generation (single target) or offspring per
            generation (MAP-Elites).
        generations: Generations to run.
        selection: ``"truncation"``: the ``elites`` best are the parents of every child
            (a (mu + lambda) evolution strategy, strong pressure); ``"tournament"``: DEAP's
            tournament selection of size ``tournament`` (weaker pressure, more diversity).
        tournament: Tournament size of the tournament selection.
        elites: Best individuals copied unchanged into the next generation.
        cxpb: Probability that a pair of parents is recombined (encodings with a
            ``crossover`` only; the paper's 0.5 for the direct encoding).
        stop_at: Stop the single-target search once the best confidence reaches this
            (None, or above 1: run every generation; NaN is refused).
    """

    population: int = 100
    generations: int = 1000
    selection: str = "truncation"
    tournament: int = 3
    elites: int = 10
    cxpb: float = 0.5
    stop_at: float | None = 0.99

    def __post_init__(self) -> None:
        # Anything but "truncation" ran a tournament: a typo changed the search silently.
        if self.selection not in ("truncation", "tournament"):
            raise ValueError(
                f"selection must be 'truncation' or 'tournament', got {self.selection!r}"
            )
        # elites = -1 ran, DEAP's selBest(k=-1) slicing all but one as elites; tournament
        # = 0 was max() of an empty sequence inside DEAP; generations < 0 ran none.
        bad = [
            f"{name} must be >= {least}, got {value}"
            for name, value, least in (
                ("generations", self.generations, 0),
                ("elites", self.elites, 0),
                ("tournament", self.tournament, 1),
            )
            if value < least
        ]
        if not 0 <= self.cxpb <= 1:
            bad.append(f"cxpb must be in [0, 1], got {self.cxpb}")
        if self.stop_at is not None and math.isnan(self.stop_at):
            # Never reached, as None (no stop) or a stop above 1 is, but by accident.
            bad.append("stop_at must be a number (above 1: no stop) or None, got nan")
        if bad:
            raise ValueError("; ".join(bad))

    def check_used(self, used: Iterable[str], search: str) -> None:
        """Raise ValueError naming each field that ``search`` does not use and that is set.

        A field left at its default, or at the value that means "none" (``elites=0``,
        ``stop_at=None``), passes: one config may serve several searches. Before this, an
        evolution strategy given ``elites=5`` or ``cxpb=0.9`` ran as if they were not there.

        Args:
            used: The names of the fields ``search`` reads.
            search: The search, as the message names it.
        """
        used = set(used)
        default = SearchConfig()
        unused = [
            f"{f.name}={value!r}"
            for f in dataclasses.fields(self)
            if f.name not in used
            and (value := getattr(self, f.name)) != getattr(default, f.name)
            and (f.name not in _NONE or value != _NONE[f.name])
        ]
        if unused:
            raise ValueError(
                f"{search} does not use SearchConfig's {', '.join(unused)}: leave "
                f"{'it' if len(unused) == 1 else 'them'} out (it uses "
                f"{', '.join(f.name for f in dataclasses.fields(self) if f.name in used)})"
            )


# The value of a SearchConfig field that means "none": a search without elites or without
# a stop takes these as well as the defaults.
_NONE: dict[str, Any] = {"elites": 0, "stop_at": None}


def take(genomes: Genomes, idx: jax.Array) -> Genomes:
    """Gather individuals ``idx`` (shape (k,)) of a stacked population."""
    return jax.tree_util.tree_map(lambda a: a[idx], genomes)


@functools.partial(jax.jit, static_argnames=("encoding", "height", "width"))
def render_images(encoding: Encoding, genomes: Genomes, height: int, width: int) -> jax.Array:
    """Images (P, H, W, 3) of a stacked population, on the 8-bit grid a search scores."""
    return io.quantize(encoding.render(genomes, height, width))


def _evaluation(clf: Classifier, encoding: Encoding) -> Callable[..., tuple[jax.Array, jax.Array]]:
    h, w = clf.info.input_size

    def evaluate(params, genomes, columns):
        images = render_images(encoding, genomes, h, w)
        return images, jax.nn.softmax(clf.logits(params, images), axis=-1)[:, columns]

    return evaluate


@functools.lru_cache(maxsize=16)
def make_evaluator(
    clf: Classifier, encoding: Encoding
) -> Callable[[Genomes, jax.Array], tuple[jax.Array, jax.Array]]:
    """``evaluate(genomes, columns) -> (images, confidences)``, jitted.

    Images are rendered at the model's input size and snapped to the 8-bit grid, so the
    confidence a search reports is the confidence of the PNG it saves.

    Returns:
        A function of a stacked population (P, ...) and the class indices (K,) a search
        scores, returning images (P, H, W, 3) in [0, 1] and those classes' softmax
        probabilities (P, K) (the column gather inside the call: on a GPU every separate
        small op is a launch and a sync of the host). Memoised per (classifier, encoding),
        and the classes are an argument, so searches for other targets, repeated and
        resumed ones in one process compile once.
    """
    return sharding.data_parallel(jax.jit(_evaluation(clf, encoding)), clf.params)


def fuse(clf: Classifier, encoding: Encoding, step: Callable[..., Any]) -> Callable[..., Any]:
    """A generation ``step(evaluate, *args)`` as one jitted call of ``*args``.

    ``evaluate`` is :func:`make_evaluator`'s function. On one device the whole step
    (keys, variation, render, classifier, replacement) compiles into one executable, with
    the classifier's parameters an argument (as a closure they would be baked into it as
    constants): on a GPU each separate call is a dispatch while the device waits for the
    host. On several devices the step runs as its jitted parts, the evaluation split over
    the devices by :func:`fooltools.sharding.data_parallel`. Both give the same
    generation (the parts are the same functions).
    """
    if sharding.device_count() > 1:
        return functools.partial(step, make_evaluator(clf, encoding))
    evaluate = _evaluation(clf, encoding)
    joined = jax.jit(lambda params, *args: step(functools.partial(evaluate, params), *args))
    return functools.partial(joined, clf.params)


@functools.lru_cache(maxsize=16)
def make_breeder(
    encoding: Encoding, cxpb: float, sequential: bool | None = None
) -> Callable[..., Genomes]:
    """``breed(key, genomes, parents) -> offspring``: gather, recombine, mutate (jitted).

    ``parents`` (k,) indexes the population; with a ``crossover`` operator, consecutive
    pairs of parents are recombined with probability ``cxpb`` (an odd k's last child is
    only mutated, as in DEAP's ``varAnd``).

    ``sequential`` varies one pair or child at a time (``lax.map``) instead of the whole
    population at once (``vmap``); both give the same offspring. The default is
    sequential on CPU for genomes of >= 2^16 values (the direct encoding's): a pair that
    does not mate skips the dense SBX work (a ``cond``) and one genome's working set
    stays in cache (190 direct children: 815 ms vmapped, 416 sequential, 206 with each
    pair's gather, SBX and mutation fused). Small genomes (CPPNs) vary faster vmapped
    there (29 -> 15 ms), and on accelerators everything is vmapped: a loop of 200 small
    steps leaves the device idle between launches.
    """
    crossover = getattr(encoding, "crossover", None)

    @jax.jit
    def breed(key, genomes, parents):
        k_cx, k_mut, k_pair = jax.random.split(key, 3)
        k = parents.shape[0]
        seq = sequential
        if seq is None:
            one = sum(a[0].size for a in jax.tree_util.tree_leaves(genomes))  # genome size
            seq = jax.default_backend() == "cpu" and one >= 1 << 16

        def each(fn: Callable[..., Any], *args: Any) -> Any:
            return jax.lax.map(lambda a: fn(*a), args) if seq else jax.vmap(fn)(*args)

        mut_keys = jax.random.split(k_mut, k)
        if crossover is None or cxpb <= 0 or k < 2:
            return each(lambda i, km: encoding.mutate(km, take(genomes, i)), parents, mut_keys)

        def family(k_x, mates, ij, km):
            # Parents i, j -> (maybe) SBX -> two mutated children, in one step: no
            # population-sized copies of the gathered parents or of the pairs re-interleaved.
            x, y = take(genomes, ij[0]), take(genomes, ij[1])
            if seq:  # a pair that does not mate skips the dense crossover work
                x, y = jax.lax.cond(mates, crossover, lambda _, x, y: (x, y), k_x, x, y)
            else:
                new = crossover(k_x, x, y)
                x, y = jax.tree_util.tree_map(lambda n, o: jnp.where(mates, n, o), new, (x, y))
            kids = encoding.mutate(km[0], x), encoding.mutate(km[1], y)
            return jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), *kids)

        # As DEAP's varAnd: consecutive pairs mate; an odd last child is only mutated.
        n = k - k % 2
        mate = jax.random.uniform(k_pair, (n // 2,)) < cxpb
        pairs = (parents[:n].reshape(n // 2, 2), mut_keys[:n].reshape(n // 2, 2))
        kids = each(family, jax.random.split(k_cx, n // 2), mate, *pairs)
        kids = jax.tree_util.tree_map(lambda a: a.reshape(n, *a.shape[2:]), kids)
        if n == k:
            return kids
        last = encoding.mutate(mut_keys[n], take(genomes, parents[n]))
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]]), kids, last)

    return breed


@jax.jit
def _generation_keys(key: jax.Array, generation: jax.Array) -> tuple[jax.Array, jax.Array]:
    k_jax, k_py = jax.random.split(jax.random.fold_in(key, generation))
    return k_jax, jax.random.randint(k_py, (), 0, 2**31 - 1)


@functools.partial(jax.jit, static_argnames="n")
def _generation_seeds(key: jax.Array, first: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda g: _generation_keys(key, g)[1])(first + jnp.arange(n))


def generation_jax_key(key: jax.Array, generation: int | jax.Array) -> jax.Array:
    """The JAX key of one generation, derived from ``key`` (no sync with the host)."""
    return _generation_keys(key, generation)[0]


class PythonSeeds:
    """The seed of Python's ``random`` (DEAP's selection) for each generation of a run.

    Derived from the run's ``key`` beside the generation's JAX key. Computed on the
    device 64 generations at a time: fetching each generation's seed alone made the host
    wait for the device once more per generation (0.6 ms of a 13 ms generation on an
    H100).
    """

    BLOCK = 64

    def __init__(self, key: jax.Array):
        self.key = key
        self._first = -self.BLOCK
        self._seeds: list[int] = []

    def __call__(self, generation: int) -> int:
        """The seed of ``generation``; the same for any call order."""
        if not 0 <= generation - self._first < self.BLOCK:
            self._first = generation
            self._seeds = np.asarray(_generation_seeds(self.key, generation, self.BLOCK)).tolist()
        return self._seeds[generation - self._first]


@jax.jit
def survivors(genomes: Genomes, elites: jax.Array, kids: Genomes) -> Genomes:
    """The next population: individuals ``elites`` (k,) of ``genomes``, then ``kids``."""
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), take(genomes, elites), kids)


@jax.jit
def row_uint8(images: jax.Array, i: jax.Array) -> jax.Array:
    """Image ``i`` of images (P, H, W, 3) in [0, 1] as uint8 (H, W, 3), as ``io.to_uint8``.

    One dispatch, and the result stays on the device until it is saved: the host does
    not wait for it (fetching it each time the best improved cost ~1 ms on a GPU).
    """
    return jnp.round(jnp.clip(images[i], 0, 1) * jnp.float32(255)).astype(jnp.uint8)


def statistics() -> tools.Statistics:
    """DEAP statistics over a generation's fitness values: best, median, mean."""
    stats = tools.Statistics(float)
    stats.register("best", np.max)
    stats.register("median", np.median)
    stats.register("mean", np.mean)
    return stats


def select_parents(
    fitness: np.ndarray, cfg: SearchConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Elites and selected parents of the next generation (DEAP, seeded).

    Args:
        fitness: Shape (P,), the current population's fitness.
        cfg: The search configuration.
        seed: Seed of Python's ``random`` for this generation.

    Returns:
        ``(elites, parents)``: int32 indices, shapes (cfg.elites,) and
        (population - elites,), of the best and of the parents of the children (see
        ``SearchConfig.selection``).
    """
    with _seeded(seed):
        return _select_parents(fitness, cfg)


def _select_parents(fitness: np.ndarray, cfg: SearchConfig) -> tuple[np.ndarray, np.ndarray]:
    pool: Any = range(len(fitness))
    if cfg.selection == "truncation" and 0 < cfg.elites < len(fitness):
        # Only individuals at least as fit as the elites-th best can be picked, and DEAP's
        # stable sort orders them among themselves as among all: Python objects for those
        # alone pick the same parents (on a GPU the device waits for this host work).
        pool = np.flatnonzero(fitness >= np.partition(fitness, -cfg.elites)[-cfg.elites])
    inds = [Individual(int(i), float(fitness[i])) for i in pool]
    best = tools.selBest(inds, cfg.elites)
    n = cfg.population - cfg.elites
    if cfg.selection == "truncation":
        chosen = [best[i % len(best)] for i in range(n)]
    else:
        chosen = tools.selTournament(inds, n, tournsize=cfg.tournament)
    return _indices(ind.index for ind in best), _indices(ind.index for ind in chosen)


@functools.partial(jax.jit, static_argnames=("elites", "n"))
def select_truncation(fitness: jax.Array, elites: int, n: int) -> tuple[jax.Array, jax.Array]:
    """:func:`select_parents`' truncation picks, computed on the device.

    ``lax.top_k`` puts the lower index first among equal values, as DEAP's stable sort
    does, so the picks are DEAP's (tested, ties included). With them on the device a
    generation needs nothing from the host, and the next one can be queued before this
    one is collected (see :func:`make_generation_ahead`).

    Args:
        fitness: Shape (P,), the current population's fitness.
        elites: How many of the best are kept (1 <= elites <= P).
        n: How many parents to pick.

    Returns:
        ``(elites, parents)``: int32 indices, shapes (elites,) and (n,); parent i is the
        (i mod elites)-th best.
    """
    best = jax.lax.top_k(fitness, elites)[1].astype(jnp.int32)
    return best, best[jnp.arange(n) % elites]


def _indices(picks: Iterable[int]) -> np.ndarray:
    # An int32 array, not a list: jnp.asarray of a list of 200 Python ints types each
    # element on its own, 0.9 ms a call on this project's CPU, the device idle meanwhile.
    return np.fromiter(picks, np.int32)


def select_random(filled: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Draw ``k`` archive cells uniformly, with replacement, among the filled ones (DEAP).

    Returns:
        The cells' indices, int32 of shape (k,).
    """
    with _seeded(seed):
        # selRandom reads no fitness: it draws from the cell indices themselves (an
        # Individual per cell cost 2 ms a generation for 1000 cells).
        return _indices(tools.selRandom(np.flatnonzero(filled).tolist(), k))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python's ``random`` seeded with ``seed`` within, as it was outside.

    DEAP's operators draw from the module's global generator: seeding it for them
    changed the caller's own stream (``random.random()`` after a search gave another
    number than without it).
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


@jax.jit
def archive_update(
    archive: Genomes, fitness: jax.Array, kids: Genomes, conf: jax.Array
) -> tuple[Genomes, jax.Array, jax.Array]:
    """MAP-Elites insertion: each cell keeps the most confident image ever seen for it.

    Args:
        archive: Stacked elites, leading axis C (one cell per class).
        fitness: Shape (C,), the elites' confidences (-1 for an empty cell).
        kids: Stacked offspring, leading axis P.
        conf: Shape (P, C), each offspring's confidence for each cell's class.

    Returns:
        ``(archive, fitness, replaced)``; a cell changes only when an offspring is
        strictly better, so an elite is never replaced by a worse one.
    """
    best = jnp.argmax(conf, axis=0)
    best_conf = jnp.max(conf, axis=0)
    replaced = best_conf > fitness
    cand = take(kids, best)

    def put(old, new):
        m = replaced.reshape((-1,) + (1,) * (old.ndim - 1))
        return jnp.where(m, new, old)

    return (
        jax.tree_util.tree_map(put, archive, cand),
        jnp.where(replaced, best_conf, fitness),
        replaced,
    )


@functools.lru_cache(maxsize=16)
def make_generation(clf: Classifier, encoding: Encoding, cxpb: float) -> Callable[..., Any]:
    """One generation of the single-target search, as one call (see :func:`fuse`).

    ``generation(key, g, genomes, parents, elites, columns) -> (next, images, conf)``:
    the children of ``parents`` (k,) bred with generation ``g``'s key, their images
    (k, H, W, 3) and confidences (k, K) for ``columns`` (K,), and the next population:
    individuals ``elites`` of ``genomes`` then the children. Memoised per (classifier,
    encoding, cxpb).
    """
    return fuse(clf, encoding, _ga_step(make_breeder(encoding, cxpb)))


def _ga_step(breed: Callable[..., Genomes]) -> Callable[..., Any]:
    """The GA generation of :func:`make_generation`, bred by ``breed`` (a :func:`make_breeder`).

    ``step(evaluate, key, g, genomes, parents, elites, columns) -> (next, images, conf)``.
    """

    def step(evaluate, key, gen, genomes, parents, elites, columns):
        kids = breed(generation_jax_key(key, gen), genomes, parents)
        images, conf = evaluate(kids, columns)
        return survivors(genomes, elites, kids), images, conf

    return step


@functools.lru_cache(maxsize=16)
def make_generation_ahead(
    clf: Classifier, encoding: Encoding, cxpb: float, elites: int
) -> Callable[..., Any]:
    """:func:`make_generation` with truncation selection on the device.

    ``generation(key, g, genomes, fitness, columns) -> (next, next_fitness, images, conf,
    picks)``: the ``elites`` best of ``genomes`` by ``fitness`` (P,) (see
    :func:`select_truncation`) and the children of those best, bred with generation
    ``g``'s key; the children's images (k, H, W, 3) and confidences (k, K) for
    ``columns`` (K,); the next population with its fitness (P,), the best then the
    children (scored on ``columns[0]``); and the picks (P,), the elites then the parents.
    Every input of generation g + 1 is an output of generation g, so on an accelerator
    it can be queued before generation g is collected: the device does not wait for the
    host's books. Memoised per (classifier, encoding, cxpb, elites).
    """
    generation = _ga_step(make_breeder(encoding, cxpb))

    def step(evaluate, key, gen, genomes, fitness, columns):
        best, parents = select_truncation(fitness, elites, fitness.shape[0] - elites)
        nxt, images, conf = generation(evaluate, key, gen, genomes, parents, best, columns)
        nxt_fitness = jnp.concatenate([fitness[best], conf[:, 0]])
        return nxt, nxt_fitness, images, conf, jnp.concatenate([best, parents])

    return fuse(clf, encoding, step)


@functools.lru_cache(maxsize=16)
def make_map_elites_generation(
    clf: Classifier, encoding: Encoding, cxpb: float
) -> Callable[..., Any]:
    """One MAP-Elites generation: three jitted calls (breed, evaluate, archive update).

    ``generation(key, g, archive, fitness, parents, columns) -> (archive, fitness)``:
    children of the cells ``parents`` (k,) bred with generation ``g``'s key, scored for
    every cell's class ``columns`` (C,) and offered to the archive (C, ...) of
    confidences ``fitness`` (C,) by :func:`archive_update`. Not one call: the initial
    population is scored by :func:`make_evaluator` at the same batch size, and a
    generation of its own would compile the classifier a second time (~7 s on 2 CPU
    cores, once per run) to save two dispatches (~0.2 ms of a ~25 ms generation of 400
    on an H100).
    """
    breed = make_breeder(encoding, cxpb)

    def step(evaluate, key, gen, archive, fitness, parents, columns):
        kids = breed(generation_jax_key(key, gen), archive, parents)
        _, conf = evaluate(kids, columns)
        return archive_update(archive, fitness, kids, conf)[:2]

    return functools.partial(step, make_evaluator(clf, encoding))
