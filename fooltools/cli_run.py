"""``fool run`` and ``fool results``: batch experiments from a TOML spec (click commands).

The logic lives in :mod:`fooltools.experiments`; this module parses, calls and prints.
"""

from __future__ import annotations

import shlex
import sys

import click

from fooltools.cli import OUT_DIR
from fooltools.experiments.executors import EXECUTORS


@click.command()
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="local",
    show_default=True,
    help="local: in this process, one run after another; ray: one Ray task per run.",
)
@click.option("--address", help="Ray cluster address (ray://HOST:10001, HOST:6379 or auto).")
@click.option("--resume", is_flag=True, help="Continue the batch in --out: skip finished runs.")
@click.option(
    "--out",
    "out_dir",
    type=OUT_DIR,
    help="Output directory [default: runs/<spec name>].",
)
def run(
    spec_path: str,
    executor: str,
    address: str | None,
    resume: bool,
    out_dir: str | None,
) -> None:
    """Run every point of the grid in SPEC.toml and print the results summary.

    Each run gets a directory runs/<id> under --out (the id is a hash of its parameters)
    with the task's outputs and result.json, written last. --resume skips the runs that
    finished ok and runs the rest again (unfinished and failed). A failing run is recorded
    and the others go on; the exit status is 1 if any run failed.
    """
    from fooltools.experiments import (
        default_out,
        get_executor,
        load_spec,
        run_batch,
        write_results,
    )
    from fooltools.perturb import claim_out_dir

    spec = load_spec(spec_path)
    chosen = get_executor(executor, address)
    # The default, runs/<spec name>, is the same every time: two batches of one spec
    # (or two resumes) ran the same runs into the same directories.
    out = claim_out_dir(out_dir or default_out(spec))
    out = run_batch(spec, out, executor=chosen, resume=resume, echo=click.echo)
    written = write_results(out, gallery=False)
    click.echo(written["summary"])
    # Quoted: a batch named "eps sweep" is runs/eps sweep, two arguments when pasted.
    click.echo(f"wrote {written['csv']}; `fool results {shlex.quote(str(out))}` adds the gallery")
    if any(row["status"] != "ok" for row in written["rows"]):
        sys.exit(1)  # click's ctx.exit code is dropped by fool's non-standalone main


@click.command()
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, exists=True))
@click.option("--no-gallery", is_flag=True, help="Only the summary and results.csv.")
def results(out_dir: str, no_gallery: bool) -> None:
    """Summarise the batch in DIR: a table per model/method/class, results.csv, gallery/.

    A grid over a budget, steps, population, generations, threshold, weights or MAP-Elites
    class set splits the rows.

    The table gives, over the runs that finished without error, the success rate, median
    L-inf/L2 distortion (0-255 units), median and 10th-90th percentile confidence, and
    median seconds; then every failed run with its error. A finished run whose report or
    images are broken is left out of the gallery and listed.
    """
    from fooltools.experiments import write_results

    written = write_results(out_dir, gallery=not no_gallery)
    click.echo(written["summary"])
    click.echo(f"wrote {written['csv']}")
    for line in written["skipped"]:
        click.echo(f"not in the gallery: {line}")
    if written["gallery"] is not None:
        click.echo(f"open {written['gallery']}")
