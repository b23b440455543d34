"""Drivers of ``fool evolve``: run a search generation by generation, with checkpoints.

Each generation appends a line to ``history.jsonl``; every ``checkpoint_every``
generations, at the end, and on Ctrl-C (or SIGTERM, under ``fool``) the state is saved
atomically to ``checkpoint.npz``; ``resume=True`` continues from it and ends
bit-identical to an uninterrupted run with the same seed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import operator
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np

from fooltools import io
from fooltools.errors import FoolError, Interrupted, one_line
from fooltools.evolve import checkpoint, search
from fooltools.evolve.search import SearchConfig
from fooltools.models.base import Classifier

CHECKPOINT = "checkpoint.npz"
HISTORY = "history.jsonl"
# ``progress(generation, line)`` after each generation, with its history line (best,
# median and mean confidence, evaluations, seconds).
Progress = Callable[[int, dict[str, Any]], None]


def _is_history_line(record: Any) -> bool:
    """Whether ``record`` has what a history line has: an int generation, numeric figures."""
    if not isinstance(record, dict):
        return False
    keys = ("generation", "evaluations", "seconds", "best", "median", "mean")
    figures = [record.get(k) for k in keys]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in figures)
    return numbers and isinstance(record["generation"], int)


@dataclasses.dataclass
class Loop:
    """Book-keeping shared by both searches: history, checkpoints, interruption."""

    out: Path
    generations: int
    checkpoint_every: int
    progress: Progress | None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    _stats: Any = dataclasses.field(default_factory=search.statistics, repr=False)

    def resume_from(self, generation: int) -> None:
        """Continue from the checkpointed ``generation``, keeping history lines up to it.

        Raises:
            FoolError: A line other than the last is not JSON (the file is left as it is),
                or the checkpoint is past the run's last generation.
        """
        if generation > self.generations:
            # Resumed with fewer generations than it ran: nothing to do, and a report
            # would give two different lengths for the one run.
            raise FoolError(
                f"the run in {self.out} has {generation} generations already; resume it "
                f"with --generations {generation} or more"
            )
        path = self.out / HISTORY
        lines = [x for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        history = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError:
                # A run killed mid-append (SIGKILL, power loss) leaves a torn last line,
                # from a generation after the checkpoint; anything else is damage.
                if i < len(lines) - 1:
                    raise FoolError(f"corrupt {path} (line {i + 1}); left untouched") from None
                continue
            # JSON, but no history line (an edit by hand): it would be a traceback below.
            if not _is_history_line(record):
                raise FoolError(
                    f"corrupt {path} (line {i + 1}: not a generation's record); left untouched"
                )
            history.append(record)
        self.history = [h for h in history if h["generation"] <= generation]
        self.seconds = sum(h["seconds"] for h in self.history)
        text = "".join(json.dumps(h) + "\n" for h in self.history)
        io.write_bytes_atomic(path, text.encode())

    def run(
        self,
        start: int,
        step: Callable[[int], Callable[[], tuple[np.ndarray, int]]],
        save: Callable[[int], None],
        stop_at: float | None = None,
        *,
        lookahead: bool = False,
    ) -> int:
        """Run generations ``start+1 .. generations``; return the last one completed.

        The caller has saved generation ``start``'s state (the first population, before
        generation 1). A resumed run whose last generation already reached ``stop_at``
        runs no more.

        ``step(g)`` selects generation ``g``'s parents and dispatches its device work,
        leaving the state as it was, and returns ``collect``: ``collect()`` waits for that
        work, advances the state by one generation and returns the fitness values the
        statistics are computed over and the number of evaluations made. The books of
        generation ``g - 1`` (statistics, history line, progress, checkpoint) are kept
        between the two, while the device computes generation ``g``: on a GPU it would
        otherwise wait for them. A generation's ``seconds`` run from the previous
        generation's collection to its own.

        ``lookahead``: ``step(g + 1)`` is called before generation ``g`` is collected, so
        the device has the next generation queued while the host waits for, books and
        collects this one. Only for a search whose ``step`` needs nothing that ``collect``
        computes on the host (the ES: its next centre is a device output; the GA with
        truncation selection, picked on the device); a generation queued past a stop is
        discarded, and the state stays the last collected one's.

        Raises:
            Interrupted: On ``KeyboardInterrupt``, once the last collected generation's
                state and history line are saved (its message says where).
            FoolError: The history cannot be written (a full disk).
        """
        done, pending = start, None  # pending: the last generation collected, not booked
        last = self.history[-1] if self.history else None
        if stop_at is not None and last and last["generation"] == start and last["best"] >= stop_at:
            # Resumed after its stop was reached (killed before its outputs were written,
            # or the same command run again): the run is over, and more generations would
            # make it another run than the one its first outputs describe.
            return start

        def dispatch(gen: int) -> Callable[[], tuple[np.ndarray, int]] | None:
            return step(gen) if gen <= self.generations else None

        try:
            with _InterruptGate() as gate, open(self.out / HISTORY, "a") as log:
                t_last = time.perf_counter()
                collect = dispatch(start + 1)
                for gen in range(start + 1, self.generations + 1):
                    ahead = dispatch(gen + 1) if lookahead else None
                    if pending is not None:
                        self._book(log, *pending, save)
                        pending = None
                    with gate.closed():  # the state and ``done`` advance together
                        fitness, evals = collect()
                        now = time.perf_counter()
                        done, pending, t_last = gen, (gen, fitness, evals, now - t_last), now
                    if stop_at is not None and float(np.max(fitness)) >= stop_at:
                        break
                    collect = ahead if lookahead else dispatch(gen + 1)
                if pending is not None:
                    self._book(log, *pending, save)
            if done % self.checkpoint_every:  # in here: a Ctrl-C during it saves again
                save(done)
        except KeyboardInterrupt:
            if done > start:
                if pending is not None:  # collected: its line goes with its checkpoint
                    with open(self.out / HISTORY, "a") as log:
                        self._record(log, *pending)
                save(done)
            if done == 0:  # the searches save the first population before generation 1
                raise Interrupted(
                    f"interrupted in generation 1; the first population is saved in "
                    f"{self.out / CHECKPOINT}, continue with --resume"
                ) from None
            raise Interrupted(
                f"interrupted after generation {done}; state saved in {self.out / CHECKPOINT}, "
                "continue with --resume"
            ) from None
        except OSError as err:
            # The history's append (a disk full or gone); checkpoints are written whole
            # (io.write_bytes_atomic), so the last one is intact.
            raise FoolError(
                f"cannot write {self.out / HISTORY}: {one_line(err)}; the last "
                f"checkpoint is intact: continue with --resume once it can be written"
            ) from err
        return done

    def _record(
        self, log: IO[str], gen: int, fitness: np.ndarray, evals: int, seconds: float
    ) -> dict[str, Any]:
        """Append generation ``gen``'s history line (once: a repeat returns the first)."""
        if self.history and self.history[-1]["generation"] == gen:
            return self.history[-1]
        line = {"generation": gen, "evaluations": evals, "seconds": round(seconds, 4)}
        line.update({k: float(v) for k, v in self._stats.compile(fitness).items()})
        self.history.append(line)
        self.seconds += seconds
        log.write(json.dumps(line) + "\n")
        log.flush()
        return line

    def _book(
        self,
        log: IO[str],
        gen: int,
        fitness: np.ndarray,
        evals: int,
        seconds: float,
        save: Callable[[int], None],
    ) -> None:
        line = self._record(log, gen, fitness, evals, seconds)
        if self.progress is not None:
            self.progress(gen, line)
        if gen % self.checkpoint_every == 0:
            save(gen)


class _InterruptGate:
    """Holds Ctrl-C (and the SIGTERM that ``fool`` turns into one) while :meth:`closed`.

    ``collect()`` advances a search's state in several steps, and :meth:`Loop.run` its
    count of generations after it: a Ctrl-C between two of them saved one generation's
    population under the previous one's number, and the resumed run quietly differed
    from an uninterrupted one. Holding costs no responsiveness: a signal that arrives
    while JAX waits for the device is handled only once the wait is over anyway.

    Entered once per run, it puts its handler in front of the Python ones (default or
    ignored signals are left as they are; only the main thread may set handlers): each
    generation then only flips a flag, with no handler swapped on the hot path. Outside
    :meth:`closed`, and after the gate is left, a signal goes on as it would have.
    """

    def __init__(self) -> None:
        self.holding = False
        self.caught: list[int] = []
        self.previous: dict[int, Callable[[int, Any], Any]] = {}

    def __enter__(self) -> _InterruptGate:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if callable(handler):
                    self.previous[signum] = handler
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.holding:
            self.caught.append(signum)
        else:
            self.previous[signum](signum, frame)

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        """Hold signals until the block ends, then handle the first as it would have been."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.caught:
            signum = self.caught[0]
            self.caught.clear()
            self.previous[signum](signum, None)


def lookahead_by_default() -> bool:
    """Whether a search queues each generation before the last is collected, by default.

    On accelerators only (see :meth:`Loop.run`): on a CPU the "device" is the host's own
    cores, so nothing idles while the host keeps a generation's books, and a generation
    queued past the stop would cost seconds.
    """
    return jax.default_backend() != "cpu"


def genome_template(encoding: search.Encoding, n: int) -> Any:
    """``jax.ShapeDtypeStruct`` pytree of ``n`` stacked genomes (what a checkpoint holds)."""
    keys = jax.ShapeDtypeStruct((n,), jax.random.key(0).dtype)
    return jax.eval_shape(jax.vmap(encoding.init), keys)


def best_template(clf: Classifier) -> dict[str, jax.ShapeDtypeStruct]:
    """The hall of fame a checkpoint holds, as ``jax.ShapeDtypeStruct`` by name.

    ``best_image`` is (H, W, 3) uint8 at ``clf``'s input size; ``best`` is (3,) float64,
    ``[confidence, generation, evaluations]``.
    """
    h, w = clf.info.input_size
    return {
        "best_image": jax.ShapeDtypeStruct((h, w, 3), np.uint8),
        "best": jax.ShapeDtypeStruct((3,), np.float64),
    }


def _floats(n: int) -> jax.ShapeDtypeStruct:
    """A checkpoint's fitness: (n,) float32 confidences."""
    return jax.ShapeDtypeStruct((n,), np.float32)


_INT = jax.ShapeDtypeStruct((), np.int64)  # a count (a MAP-Elites run's evaluations)


def weights_digest(clf: Classifier) -> str | None:
    """What a checkpoint's meta records of the weights: a resume with others is refused.

    None for the registry's own weights (and in checkpoints written before weights were
    recorded, which were all the registry's or unchecked).
    """
    return None if clf.weights is None else clf.weights.digest


def encoding_settings(encoding: search.Encoding) -> dict[str, dict[str, Any]]:
    """What a checkpoint's meta records of the encoding's hyper-parameters.

    ``{"encoding_settings": {name: value}}`` for an encoding that is a NamedTuple of them
    (:class:`~fooltools.evolve.cppn.CPPN`, :class:`~fooltools.evolve.direct.Direct`), in
    their JSON form; empty for another. Passed as ``settings`` to
    :func:`~fooltools.evolve.checkpoint.load`: a run resumed with other mutation rates or
    another genome size would have gone on as another run (a genome size was refused as
    a "corrupt" genome array), and checkpoints written before the record resume as before.
    """
    fields = getattr(encoding, "_asdict", None)
    if fields is None:
        return {}
    # A tuple (CPPN.activations) reads back as a list, a NumPy integer (Direct's size)
    # as an int: compared in the form they take on disk.
    values = json.loads(json.dumps(fields(), default=lambda v: v.item()))
    return {"encoding_settings": values}


def run_length(cfg: SearchConfig) -> dict[str, Any]:
    """The meta entries a resume takes as its defaults, not checked against it.

    A resume may extend the run (more generations) or change its stop; without those
    options it continues the run as started, not with the CLI's defaults.
    """
    return {"generations": cfg.generations, "stop_at": cfg.stop_at}


def _meta(
    kind: str, clf: Classifier, enc_name: str, cfg: SearchConfig, seed: int, classes: list[int]
) -> dict[str, Any]:
    return {
        "kind": kind,
        "model": clf.name,
        "weights": weights_digest(clf),
        "encoding": enc_name,
        "seed": seed,
        "classes": classes,
        "population": cfg.population,
        "cxpb": cfg.cxpb,
        # A tournament run resumed with truncation (or the reverse) ran on as another run.
        # None for truncation, the default: checkpoints written before it was recorded
        # (the CLI only ever ran truncation) resume as truncation runs, as before.
        "selection": None if kind != "single" or cfg.selection == "truncation" else cfg.selection,
        # Only the GA's: MAP-Elites, which uses neither, refused a resume whose unused
        # elites differed from the run's (the CLI's 0 against SearchConfig's default 10).
        **({"elites": cfg.elites, "tournament": cfg.tournament} if kind == "single" else {}),
    }


def record_best(state: dict[str, Any], fitness: np.ndarray, images: jax.Array, gen: int) -> None:
    """Hall of fame of one: offer a generation's (P,) confidences and (P, H, W, 3) images.

    ``state["best"]`` is ``[confidence, generation, evaluations]``; ``state["best_image"]``
    the uint8 image of that confidence (a device array once replaced here). Both are
    replaced, never mutated in place, so a checkpoint written earlier keeps its arrays.
    """
    best = state["best"].copy()
    best[2] += len(fitness)
    i = int(fitness.argmax())
    if fitness[i] > best[0]:
        best[:2] = fitness[i], gen
        state["best_image"] = search.row_uint8(images, i)
    state["best"] = best


def single_summary(
    state: dict[str, Any], last: int, loop: Loop, size: tuple[int, int]
) -> dict[str, Any]:
    """What a single-target search returns (see :func:`evolve_single`)."""
    best = state["best"]
    return {
        "best_image": np.asarray(state["best_image"]).astype(np.float32) / 255.0,
        "best_confidence": float(best[0]),
        "best_generation": int(best[1]),
        "evaluations": int(best[2]),
        "generation": last,
        "seconds": loop.seconds,
        "history": loop.history,
        "size": size,
    }


def check_classes(clf: Classifier, classes: Sequence[int]) -> list[int]:
    """Python ints of ``classes``, refusing an empty list or a class outside the classifier's.

    Args:
        clf: The classifier.
        classes: Class indices: ints, numpy or 0-d JAX integers (``np.argmax``'s int64
            was a JSON TypeError when the run's meta was written).

    Returns:
        The indices as Python ints.

    Raises:
        FoolError: ``classes`` is empty, or holds an index not in 0..num_classes-1 (a
            device gather clamps it: 1000 or -1 evolved class 999 under another name).
        TypeError: An index that is not an integer.
    """
    classes = [operator.index(c) for c in classes]
    if not classes:
        raise FoolError("no classes to evolve")
    n = len(clf.labels)
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise FoolError(f"class indices must be in 0..{n - 1} for {clf.name}, got {bad[:8]}")
    return classes


def evolve_single(
    clf: Classifier,
    encoding: search.Encoding,
    enc_name: str,
    target: int,
    cfg: SearchConfig,
    *,
    seed: int,
    out: Path | str,
    resume: bool = False,
    checkpoint_every: int = 10,
    progress: Progress | None = None,
    lookahead: bool | None = None,
) -> dict[str, Any]:
    """Evolve one image that the classifier labels ``target`` with maximal confidence.

    ``lookahead`` (truncation selection only) picks each generation's parents on the
    device and queues the generation before the previous one is collected (see
    :meth:`Loop.run`); the host still runs DEAP's selection over the same fitness and
    checks that the device picked the same parents. The same run bit for bit. None: on
    accelerators, where the truncation selection allows it.

    Returns:
        A summary: ``best_image`` (H, W, 3) on the 8-bit grid, ``best_confidence``,
        ``best_generation``, ``generation`` (last completed), ``evaluations``, ``seconds``,
        ``history``.

    Raises:
        FoolError: A population < 2 or not larger than the elites, truncation selection
            without elites, or a bad checkpoint on resume.
        Interrupted: Ctrl-C, after saving the state (see :meth:`Loop.run`).
        FoolError: ``target`` is not a class of ``clf``.
        ValueError: ``lookahead=True`` without truncation selection and elites >= 1.
    """
    (target,) = check_classes(clf, [target])
    seed = operator.index(seed)
    out = Path(out)
    if cfg.population < 2 or cfg.elites >= cfg.population:
        raise FoolError("population must be >= 2 and larger than the number of elites")
    if cfg.selection == "truncation" and cfg.elites < 1:
        # The elites are the parents of every child: with none, the first generation's
        # selection was a ZeroDivisionError, after the first population was saved.
        raise FoolError("truncation selection needs elites >= 1 (the parents of every child)")
    device_picks = cfg.selection == "truncation" and cfg.elites >= 1
    if lookahead is None:
        lookahead = device_picks and lookahead_by_default()
    elif lookahead and not device_picks:
        raise ValueError(
            "lookahead needs truncation selection with elites >= 1 (a tournament draws "
            "from Python's random on the host)"
        )
    io.make_dir(out)
    key = jax.random.key(seed)
    seeds = search.PythonSeeds(key)
    evaluate = search.make_evaluator(clf, encoding)
    generation = search.make_generation(clf, encoding, cfg.cxpb)
    cols = jnp.asarray([target])
    meta = _meta("single", clf, enc_name, cfg, seed, [target])
    settings = encoding_settings(encoding)
    loop = Loop(out, cfg.generations, checkpoint_every, progress)
    h, w = clf.info.input_size
    if resume:
        genomes, arrays, saved = checkpoint.load(
            out / CHECKPOINT,
            genome_template(encoding, cfg.population),
            meta,
            state={"fitness": _floats(cfg.population), **best_template(clf)},
            settings=settings,
        )
        state = {k: arrays[k] for k in ("fitness", "best_image", "best")}
        start = saved["generation"]
        loop.resume_from(start)
    else:
        k_init = search.generation_jax_key(key, 0)
        genomes = jax.vmap(encoding.init)(jax.random.split(k_init, cfg.population))
        images, conf = evaluate(genomes, cols)
        fitness = np.asarray(conf)[:, 0]
        i = int(fitness.argmax())
        state = {
            "fitness": fitness,
            "best_image": search.row_uint8(images, i),
            "best": np.array([fitness[i], 0.0, cfg.population]),
        }
        start = 0
        (out / HISTORY).unlink(missing_ok=True)
    pop = {"genomes": genomes}
    # With lookahead: the last dispatched generation's population and fitness, device
    # arrays that may still be in flight (``pop`` and ``state`` are the last collected).
    ahead = {"genomes": genomes, "fitness": jnp.asarray(state["fitness"])}
    generation_ahead = (
        search.make_generation_ahead(clf, encoding, cfg.cxpb, cfg.elites) if lookahead else None
    )

    def step(gen: int) -> Callable[[], tuple[np.ndarray, int]]:
        # The seed before the dispatch: a block of seeds computed after it would be
        # queued behind this generation (and, with lookahead, the next), and wait for it.
        seed = seeds(gen)
        if generation_ahead is None:
            elites, parents = search.select_parents(state["fitness"], cfg, seed)
            nxt, images, conf = generation(key, gen, pop["genomes"], parents, elites, cols)
            picks = None
        else:
            nxt, fit, images, conf, picks = generation_ahead(
                key, gen, ahead["genomes"], ahead["fitness"], cols
            )
            ahead["genomes"], ahead["fitness"] = nxt, fit
            elites = None

        def collect() -> tuple[np.ndarray, int]:
            kid_fit = np.asarray(conf)[:, 0]
            kept = elites if picks is None else deap_checked(picks, gen, seed)
            pop["genomes"] = nxt
            state["fitness"] = np.concatenate([state["fitness"][kept], kid_fit])
            record_best(state, kid_fit, images, gen)  # elites are never re-evaluated
            return state["fitness"], len(kid_fit)

        return collect

    def deap_checked(picks: jax.Array, gen: int, seed: int) -> np.ndarray:
        # DEAP's selection over the fitness the device picked from (the state before
        # this generation is collected) must be the device's: return its elites.
        elites, parents = search.select_parents(state["fitness"], cfg, seed)
        if not np.array_equal(np.asarray(picks), np.concatenate([elites, parents])):
            raise RuntimeError(f"generation {gen}: the device's truncation picks are not DEAP's")
        return elites

    def save(gen: int) -> None:
        info = {**meta, **settings, **run_length(cfg), "generation": gen}
        checkpoint.save(out / CHECKPOINT, pop["genomes"], state, info)

    if not resume:
        save(0)
    last = loop.run(start, step, save, cfg.stop_at, lookahead=lookahead)
    return single_summary(state, last, loop, (h, w))


def evolve_map_elites(
    clf: Classifier,
    encoding: search.Encoding,
    enc_name: str,
    classes: Sequence[int],
    cfg: SearchConfig,
    *,
    seed: int,
    out: Path | str,
    resume: bool = False,
    checkpoint_every: int = 10,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """MAP-Elites with one archive cell per class in ``classes``.

    Each generation draws ``cfg.population`` parents uniformly from the filled cells,
    varies them and offers every offspring to every cell; a cell keeps the image with the
    highest confidence for its class.

    Returns:
        A summary with ``archive`` (stacked elite genomes), ``fitness`` (C,), ``images``
        (C, H, W, 3) of the elites, ``generation``, ``evaluations``, ``seconds``, ``history``.

    Raises:
        FoolError: ``classes`` empty, not all classes of ``clf`` or one given twice, a
            population < 2, or a bad checkpoint on resume.
        ValueError: ``cfg`` sets a field MAP-Elites does not use (elites, stop_at, ...).
    """
    cfg.check_used(("population", "generations", "cxpb"), "MAP-Elites")
    classes = check_classes(clf, classes)
    seed = operator.index(seed)
    out = Path(out)
    if cfg.population < 2:
        raise FoolError("population must be >= 2")
    twice = sorted(c for c, n in collections.Counter(classes).items() if n > 1)
    if twice:
        # Two cells of one class hold the same elite: the report counted it twice
        # ("3/3 cells" with two images, a median weighted towards it).
        raise FoolError(f"each class is one archive cell: {twice[:8]} given more than once")
    io.make_dir(out)
    key = jax.random.key(seed)
    seeds = search.PythonSeeds(key)
    cols = jnp.asarray(classes)
    evaluate = search.make_evaluator(clf, encoding)
    generation = search.make_map_elites_generation(clf, encoding, cfg.cxpb)
    meta = _meta("map-elites", clf, enc_name, cfg, seed, classes)
    settings = encoding_settings(encoding)
    loop = Loop(out, cfg.generations, checkpoint_every, progress)
    if resume:
        archive, arrays, saved = checkpoint.load(
            out / CHECKPOINT,
            genome_template(encoding, len(classes)),
            meta,
            state={"fitness": _floats(len(classes)), "evaluations": _INT},
            settings=settings,
        )
        state = {"fitness": arrays["fitness"], "evaluations": arrays["evaluations"]}
        start = saved["generation"]
        loop.resume_from(start)
    else:
        k_init = search.generation_jax_key(key, 0)
        genomes = jax.vmap(encoding.init)(jax.random.split(k_init, cfg.population))
        empty = search.take(genomes, jnp.zeros(len(classes), int))
        _, conf = evaluate(genomes, cols)
        archive, fit, _ = search.archive_update(empty, jnp.full(len(classes), -1.0), genomes, conf)
        state = {"fitness": np.asarray(fit), "evaluations": np.array(cfg.population)}
        start = 0
        (out / HISTORY).unlink(missing_ok=True)
    pop = {"archive": archive}

    def step(gen: int) -> Callable[[], tuple[np.ndarray, int]]:
        parents = search.select_random(state["fitness"] >= 0, cfg.population, seeds(gen))
        archive, fit = generation(key, gen, pop["archive"], state["fitness"], parents, cols)

        def collect() -> tuple[np.ndarray, int]:
            state["fitness"] = np.asarray(fit)
            pop["archive"] = archive
            state["evaluations"] = state["evaluations"] + cfg.population
            return state["fitness"], cfg.population

        return collect

    def save(gen: int) -> None:
        info = {**meta, **settings, **run_length(cfg), "generation": gen}
        checkpoint.save(out / CHECKPOINT, pop["archive"], state, info)

    if not resume:
        save(0)
    last = loop.run(start, step, save)
    # The elites' images only: their confidences are the archive's (and the report
    # re-reads the saved PNGs), so classifying them again here would be wasted.
    h, w = clf.info.input_size
    return {
        "archive": pop["archive"],
        "fitness": state["fitness"],
        "images": np.asarray(search.render_images(encoding, pop["archive"], h, w)),
        "generation": last,
        "evaluations": int(state["evaluations"]),
        "seconds": loop.seconds,
        "history": loop.history,
    }
