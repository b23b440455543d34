"""Validation and wiring behind ``fool evolve`` (kept out of the thin CLI layer)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax

from fooltools.errors import FoolError, Interrupted
from fooltools.evolve import checkpoint
from fooltools.evolve import report as outputs
from fooltools.evolve.cppn import SFERES2, cppn
from fooltools.evolve.direct import direct
from fooltools.evolve.es import ES_CPPN, ESConfig, evolve_es
from fooltools.evolve.run import CHECKPOINT, evolve_map_elites, evolve_single
from fooltools.evolve.search import SearchConfig
from fooltools.labels import LabelSet, imagenet
from fooltools.limits import INT32_MAX, host_memory
from fooltools.models import crops as crop_views
from fooltools.models.base import Classifier
from fooltools.perturb import default_out_dir
from fooltools.progress import Progress

ENCODINGS = ("cppn", "direct")
# The --strategy of a checkpoint's single-target search (its meta's kind).
SAVED_STRATEGY = {"single": "ga", "es": "es"}
# The options of each search a checkpoint's meta's kind names.
SAVED_SEARCH = {
    "single": "--class NAME --strategy ga",
    "es": "--class NAME --strategy es",
    "map-elites": "--map-elites",
}
# What --generations and --population default to: (one class, MAP-Elites).
GENERATIONS = (1000, 5000)
POPULATION = (100, 400)


def default_strategy(encoding: str, map_elites: bool) -> str:
    """The search a run left without ``--strategy`` gets (on a fresh start).

    The evolution strategy moves one CPPN's weights towards one class: the default there;
    the paper's genetic algorithm everywhere else.
    """
    return "es" if encoding == "cppn" and not map_elites else "ga"


def class_set(
    names: Sequence[str | int], labels: LabelSet, option: str = "--classes"
) -> tuple[int, ...]:
    """The class indices ``names`` lists (each once, in order); ``"all"`` alone: every class.

    Blank names are skipped; ``option`` names the setting in messages.

    Raises:
        FoolError: An unknown class, ``all`` beside other names, or no name at all.
    """
    names = [n.strip() if isinstance(n, str) else n for n in names]
    names = [n for n in names if n != ""]
    lowered = [n.lower() if isinstance(n, str) else n for n in names]
    if len(names) > 1 and "all" in lowered:
        # Looked up as a class name, it was "unknown class 'all'; did you mean ...".
        raise FoolError(f"{option} all stands alone (every class); or list classes only")
    if lowered == ["all"]:
        return tuple(range(len(labels)))
    if not names:
        raise FoolError(f"{option} is empty")
    return tuple(dict.fromkeys(labels.lookup(n) for n in names))


@dataclasses.dataclass(frozen=True)
class EvolveJob:
    """A validated ``fool evolve`` invocation."""

    classes: tuple[int, ...]
    map_elites: bool
    encoding: str
    strategy: str
    search: SearchConfig
    seed: int
    out: Path
    resume: bool
    checkpoint_every: int
    crops: int = 1
    # On a resume, the registry name of the run's model (for a left-out --model).
    model: str | None = None


def parse_job(
    *,
    target: str | None,
    map_elites: bool,
    classes: str | None,
    encoding: str | None,
    strategy: str | None = None,
    generations: int | None,
    population: int | None,
    stop_at: float | None,
    seed: int | None,
    out_dir: str | None,
    resume: bool,
    checkpoint_every: int,
    crops: int | None = None,
) -> EvolveJob:
    """Check the options and fill in defaults.

    On a resume, the options left out (None) are those of the run in ``out_dir``, read
    from its checkpoint; ``EvolveJob.model`` is then its model's registry name.

    Raises:
        FoolError: Unknown class, population < 2, generations < 1, --resume without --out,
            an --out that holds a run but no --resume, ...
    """
    labels = imagenet()
    if map_elites == (target is not None):
        raise FoolError("give exactly one of --class NAME or --map-elites")
    # Options of the other search are refused: silently ignored, a run would not be the
    # run its command line reads as.
    if map_elites and stop_at is not None:
        raise FoolError("--stop-at is for --class: MAP-Elites runs all its generations")
    if not map_elites and classes is not None:
        raise FoolError("--classes is for --map-elites (--class NAME evolves one class)")
    if out_dir is not None and not out_dir.strip():
        # An unset shell variable: the run's files would land in the current directory.
        raise FoolError("--out is empty; give the run's directory")
    if resume and out_dir is None:
        raise FoolError("--resume needs --out DIR, the run to continue")
    ckpt = None if out_dir is None else Path(out_dir) / CHECKPOINT
    held = ckpt is not None and checkpoint.exists(ckpt)
    if held and not resume:
        # Starting afresh would overwrite the checkpoint of a run that may have taken hours.
        raise FoolError(
            f"{out_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it "
            "or another --out for a new one"
        )
    # A resume continues the run as it was started: options left out are the run's own
    # (its length and stop are not checked against the checkpoint, so the CLI's defaults
    # would silently make it another run; its other settings would be refused), not the
    # CLI's defaults. Read on every resume: a missing checkpoint is refused here, before
    # the model's load and before the search makes an empty --out.
    saved = checkpoint.read_meta(ckpt) if resume and ckpt is not None else {}
    saved_cells = _saved_classes(saved, len(labels)) if saved.get("kind") == "map-elites" else None
    if map_elites and classes is None and saved_cells is not None:
        # The archive's own cells, not all 1000 (which the checkpoint would refuse).
        cls = saved_cells
    elif map_elites:
        # Only a left-out --classes means all: an empty one (an unset shell variable)
        # must not start a 1000-class run.
        cls = class_set(("all" if classes is None else classes).split(","), labels)
        if saved_cells is not None and sorted(cls) == sorted(saved_cells):
            # The same cells listed in another order are the same archive, whose cell i
            # is the checkpoint's class i.
            cls = saved_cells
    else:
        cls = (labels.lookup(target),)
    if encoding is None:
        # Left out: the run's own on a resume (a direct run was refused as cppn), else cppn.
        encoding = saved["encoding"] if saved.get("encoding") in ENCODINGS else "cppn"
    if encoding not in ENCODINGS:
        raise FoolError(f"--encoding must be cppn or direct, got {encoding!r}")
    # A resume keeps the run's own search: the default would refuse a GA run's checkpoint.
    strategy_given = strategy is not None
    if strategy is None and not map_elites and saved.get("kind") in SAVED_STRATEGY:
        strategy = SAVED_STRATEGY[saved["kind"]]
    if strategy is None:
        strategy = default_strategy(encoding, map_elites)
    # The checkpoint would refuse another search as "kind = 'single', this run has 'es'",
    # in its own terms and only once the model is loaded: say it in the options' terms.
    here = "--map-elites" if map_elites else f"--class NAME --strategy {strategy}"
    there = SAVED_SEARCH.get(saved.get("kind"))
    if there is not None and there != here:
        raise FoolError(
            f"{out_dir} holds a `{there}` run, not a `{here}` one; resume it with its own "
            "search, or use another --out"
        )
    if strategy == "es" and encoding != "cppn" and not strategy_given and not map_elites:
        # The search is the checkpoint's, not an option given: it was blamed on --strategy.
        raise FoolError(
            f"{out_dir} holds a CPPN run (--strategy es), not a {encoding} one; resume it "
            "without --encoding, or use another --out"
        )
    if strategy == "es" and (encoding != "cppn" or map_elites):
        raise FoolError(
            "--strategy es evolves one CPPN for one class: use it with --class "
            "and --encoding cppn (MAP-Elites and the direct encoding use ga)"
        )
    if seed is None:
        # The run's own on a resume: README's resume form gives no --seed.
        value = saved.get("seed")
        seed = value if isinstance(value, int) and not isinstance(value, bool) else 0
    if generations is None:
        generations = _saved_number(saved, "generations", GENERATIONS[map_elites])
    if population is None:
        population = _saved_number(saved, "population", POPULATION[map_elites])
    if stop_at is None and not map_elites and "stop_at" in saved:
        stop_at = _saved_number(saved, "stop_at", None) or 0.0  # None there: no stop
    if population < 2:
        raise FoolError(f"population must be >= 2, got {population}")
    if generations < 1:
        raise FoolError(f"generations must be >= 1, got {generations}")
    for name, value in (("population", population), ("generations", generations)):
        if value > INT32_MAX:  # counted and indexed in int32 on the device
            raise FoolError(f"{name} must be at most {INT32_MAX}, got {value}")
    if strategy == "es" and population % 2:
        raise FoolError(
            f"--strategy es samples mirrored pairs: population must be even, got {population}"
        )
    # The checkpoint's model is the scorer's name, "NAME, mean of N crops" over crops: a
    # left-out --crops or --model on a resume is the run's own.
    model, n_crops = _saved_model(saved)
    crops = crop_views.check(n_crops if crops is None else crops)
    stop_at = 0.99 if stop_at is None else stop_at
    if not 0 <= stop_at <= 1:
        raise FoolError(f"--stop-at must be in [0, 1], got {stop_at}")
    if out_dir is None:
        out_dir = default_out_dir(kind="evolve")
    # Only the GA keeps elites (the searches refuse settings they do not use).
    elites = min(2, population - 1) if strategy == "ga" and not map_elites else 0
    cfg = SearchConfig(
        population=population,
        generations=generations,
        elites=elites,
        stop_at=None if map_elites or stop_at == 0 else stop_at,
    )
    return EvolveJob(
        classes=cls,
        map_elites=map_elites,
        encoding=encoding,
        strategy=strategy,
        search=cfg,
        seed=seed,
        out=Path(out_dir),
        resume=resume,
        checkpoint_every=checkpoint_every,
        crops=crops,
        model=model,
    )


def _saved_model(saved: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """A checkpoint meta's model: its registry name and crops (None, None: none recorded)."""
    name = saved.get("model")
    if not isinstance(name, str):
        return None, None
    return crop_views.split_name(name)


def _saved_classes(saved: Mapping[str, Any], n: int) -> tuple[int, ...] | None:
    """A MAP-Elites checkpoint meta's classes, if a non-empty list of class indices."""
    value = saved.get("classes")
    if not isinstance(value, list) or not value:
        return None
    ok = all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n for c in value)
    return tuple(value) if ok else None


def _saved_number(saved: Mapping[str, Any], key: str, default: Any) -> Any:
    """``saved[key]`` if it is a number (a checkpoint's meta), else ``default``."""
    value = saved.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return value if ok else default


def _clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class GenerationBar(Progress):
    """``label: generation g/total  best 45.12%  1:03, 2:10 left`` redrawn on a terminal.

    The time left is paced from the first generation reported, so it leaves out the
    compilation before it (and, on ``--resume``, the generations run before).

    Args:
        total: The run's last generation.
        label: Text before the line (the class, or ``MAP-Elites``).
        median: Also show the median (MAP-Elites: of the cells, the paper's summary).
        stream: Where to draw; default stderr, and only if it is a terminal.
        clock: Seconds, for tests.
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        median: bool = False,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(total, label, stream, force=stream is not None)
        self.median, self.clock = median, clock
        self.first: tuple[int, float] | None = None
        self.shown = 0  # length of the line drawn last

    def __call__(self, gen: int, line: Mapping[str, float]) -> None:  # type: ignore[override]
        """Generation ``gen`` (1-based) has finished; ``line``: its history line."""
        if not self.enabled:
            return
        now = self.clock()
        self.first = self.first or (gen, now)
        best = outputs.percent(line["best"], 2)  # cut: 99.00% only once the stop is reached
        text = f"\r{self.label}: generation {gen}/{self.total}  best {best:>7}"
        if self.median:
            text += f"  median {outputs.percent(line['median'], 2):>7}"
        done, elapsed = gen - self.first[0], now - self.first[1]
        if done:
            left = elapsed / done * (self.total - gen)
            text += f"  {_clock(elapsed)}, {_clock(left)} left"
        # "\r" only moves back: a line shorter than the last (the time left from 10:00 to
        # 9:59) blanks the last one's end, which read on as "9:59 leftt".
        self.stream.write(text + " " * (self.shown - len(text)))
        self.shown = len(text)
        self.stream.flush()
        self.done = gen  # Progress.close ends the line once something was drawn


def device_memory() -> int | None:
    """Bytes of memory of the first JAX device (a CPU: the machine's RAM); None: unknown."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return host_memory() if device.platform == "cpu" else None


def check_memory(population: int, size: tuple[int, int]) -> None:
    """Refuse a population whose rendered images alone exceed the device's memory.

    A lower bound (the classifier's activations come on top), so it refuses only what
    cannot run: past it, a CPU run would be killed by the kernel without a word and a GPU
    run fail deep inside XLA.

    Raises:
        FoolError: Naming the memory needed and the memory there is.
    """
    h, w = size
    need, have = population * h * w * 3 * 4, device_memory()  # float32 RGB images
    if have is not None and need > have:
        raise FoolError(
            f"a population of {population} needs at least {need / 2**30:.1f} GiB for one "
            f"generation's {h}x{w} images, more than the {have / 2**30:.1f} GiB of "
            f"{jax.devices()[0].platform}: use a smaller --population"
        )


def run_job(clf: Classifier, job: EvolveJob) -> dict[str, Any]:
    """Run the search and write its outputs; returns the report."""
    model = clf.name
    clf = crop_views.averaged(clf, job.crops)  # from here on, the (crop-averaged) scorer
    h, w = clf.info.input_size  # the size images are rendered, scored and saved at
    check_memory(job.search.population, (h, w))
    # The paper's sferes2 weight handling gives the structured CPPN images it reports; the
    # evolution strategy starts from a layered CPPN (its topology never changes).
    if job.encoding == "direct":
        enc = direct(height=h, width=w)
    else:
        enc = cppn(**(ES_CPPN if job.strategy == "es" else SFERES2))
    common = {
        "model": model,
        "weights": clf.weights_record,
        "crops": job.crops,
        "encoding": job.encoding,
        "strategy": job.strategy,
        "seed": job.seed,
        "population": job.search.population,
        "generations": job.search.generations,
    }
    if not job.map_elites:
        common["stop_at"] = job.search.stop_at  # None: ran all its generations
    label = "MAP-Elites" if job.map_elites else clf.labels.name(job.classes[0])
    bar = GenerationBar(job.search.generations, label, median=job.map_elites)
    kwargs = {
        "seed": job.seed,
        "out": job.out,
        "resume": job.resume,
        "checkpoint_every": job.checkpoint_every,
        "progress": bar,
    }
    try:
        if job.map_elites:
            summary = evolve_map_elites(
                clf, enc, job.encoding, list(job.classes), job.search, **kwargs
            )
        elif job.strategy == "es":
            summary = evolve_es(
                clf, enc, job.encoding, job.classes[0], job.search, ESConfig(), **kwargs
            )
        else:
            summary = evolve_single(clf, enc, job.encoding, job.classes[0], job.search, **kwargs)
    finally:
        bar.close()
    try:
        if job.map_elites:
            return outputs.write_map_elites(job.out, clf, list(job.classes), summary, common)
        return outputs.write_single(job.out, clf, job.classes[0], summary, common)
    except KeyboardInterrupt:
        # The search is over and saved; only its outputs are missing (re-reading 1000
        # cells takes a while): a bare "interrupted" left no way on.
        raise Interrupted(
            f"interrupted while writing the outputs; the finished run is saved in "
            f"{job.out / CHECKPOINT}: --resume writes them"
        ) from None
