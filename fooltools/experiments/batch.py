"""A batch: a spec's runs executed into one output directory, resumable.

Layout of the output directory::

    batch.json           what the batch is: name, kind, grid keys, every run's id/params
    spec.resolved.toml   the spec with defaults filled in (``fool run`` reads it back)
    runs/<id>/           one directory per run: the task's outputs, then result.json
    results.csv          the results table (``fool run`` at the end, ``fool results``)
    gallery/             ``fool results``: HTML gallery and contact sheet

``resume=True`` skips runs whose ``result.json`` says "ok" and runs the others again:
the unfinished ones (no ``result.json``, e.g. killed) and the failed ones, since failures
on a cluster are often transient (a lost node, memory) and a deterministic one fails
again in seconds.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fooltools import __version__, words
from fooltools.errors import FoolError
from fooltools.experiments.executors import Executor, Job, LocalExecutor
from fooltools.experiments.spec import Run, Spec, identity_key, resolved_toml
from fooltools.experiments.tasks import RESULT, relative_paths
from fooltools.io import make_dir, write_bytes_atomic

BATCH, RESOLVED, RUNS = "batch.json", "spec.resolved.toml", "runs"


def default_out(spec: Spec) -> Path:
    """``runs/<spec name>``: the same every time, so ``--resume`` needs no ``--out``."""
    return Path("runs") / spec.name


def read_result(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run's ``result.json``, or None while it is unfinished.

    ``result.json`` is written atomically, so it is complete or absent; an unreadable one
    (edited by hand, a full disk) also counts as unfinished, to be run again.

    Raises:
        FoolError: A ``result.json`` that is JSON but not a run's result (edited by hand):
            neither trusted nor replaced, since someone wrote it.
    """
    path = Path(run_dir) / RESULT
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    problem = _result_problem(result)
    if problem:
        raise FoolError(f"{path} is not a run's result ({problem}); delete it to run it again")
    return result


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _result_problem(result: Any) -> str | None:
    """What makes ``result`` no run result, or None: the fields the results table reads."""
    if not isinstance(result, dict):
        return "not a JSON object"
    if result.get("status") not in ("ok", "failed"):
        return "status is not ok or failed"
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        return "metrics is not an object"
    for key in ("confidence", "linf", "l2", "seconds"):  # as load_results reads them
        if not _number_or_none(metrics.get(key, result.get(key))):
            return f"{key} is not a number"
    if metrics.get("success") not in (True, False, None):
        return "success is not true, false or null"
    if not isinstance(result.get("error"), (str, type(None))):
        return "error is not a string"
    return None


def _batch_record(spec: Spec, runs: list[Run], base_dir: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "spec": str(spec.path) if spec.path else None,
        "base_dir": base_dir,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "fooltools": __version__,
        "grid": list(spec.grid),
        "runs": [
            {"id": r.id, "dir": f"{RUNS}/{r.id}", "params": r.params, "varying": r.varying}
            for r in runs
        ],
    }


def run_batch(
    spec: Spec,
    out: str | os.PathLike[str] | None = None,
    *,
    executor: Executor | None = None,
    resume: bool = False,
    echo: Callable[[str], None] = print,
) -> Path:
    """Execute a spec's runs into ``out``.

    Args:
        spec: The validated spec.
        out: Output directory; default :func:`default_out`.
        executor: Where runs execute; default :class:`LocalExecutor`.
        resume: Continue the batch already in ``out``: skip its finished runs.
        echo: Receives one progress line per run (``[3/16] perturb ... ok 4.1s``).

    Returns:
        The output directory (read it with :func:`fooltools.experiments.load_results`).

    Raises:
        FoolError: ``out`` already holds a batch and ``resume`` is false, or it holds a
            batch of another task kind or with runs the spec does not have (whose record
            resuming would replace), or a result edited by hand (see :func:`read_result`).
            A spec may extend the grid of the batch it resumes.
    """
    out = Path(out) if out is not None else default_out(spec)
    executor = executor or LocalExecutor()
    # A directory that cannot be made (a name too long for the file system) is one line
    # here; checking it for a batch would raise OSError. So is a file named runs in it,
    # found before the batch is recorded (each run's mkdir was a traceback after).
    make_dir(out)
    make_dir(out / RUNS)
    if (out / BATCH).exists() and not resume:
        raise FoolError(
            f"{out} already holds a batch; pass --resume to continue it or --out for a new one"
        )
    held = _held_record(out) if resume else None
    held_kind = held.get("kind") if held else None
    if isinstance(held_kind, str) and held_kind != spec.kind:
        # An edited grid may resume a batch; another kind is another spec given by mistake.
        raise FoolError(
            f"{out} holds a {held_kind} batch and {spec.name} is {spec.kind}: "
            "resume it with its own spec, or use another --out"
        )

    @functools.cache
    def finished_ok(rid: str) -> bool:
        # Each run's result.json read once, whether the record or the spec names it.
        result = read_result(out / RUNS / rid)
        return bool(result and _ok(result))

    recorded = _recorded(held, spec.kind, finished_ok)
    # A recorded run keeps its id (its directory), whichever grid point stands for it now,
    # so a recorded id missing from the runs is a run the spec does not have.
    runs = spec.runs(keep=recorded)
    have = {r.id for r in runs}
    dropped = [rid for rid, _ in recorded.values() if rid not in have]
    if dropped:
        # The record follows the spec: these runs would vanish from it and from the results.
        raise FoolError(
            f"{out} holds {words.count(len(dropped), 'run')} that {spec.name} does not have "
            f"(such as {dropped[0]}): resume it with a spec whose grid keeps them, or use "
            "another --out"
        )
    # Read before the record is rewritten: a result.json edited by hand stops it here.
    finished = {r.id for r in runs if resume and finished_ok(r.id)}
    base_dir = _base_dir(held, out, [r for r in runs if r.id not in finished])
    record = _batch_record(spec, runs, base_dir)
    # A resumed batch may come from an edited spec (a grid extended): the record follows
    # the spec, and runs it shares with the old one are reused by id.
    write_bytes_atomic(out / BATCH, json.dumps(record, indent=2).encode())
    write_bytes_atomic(out / RESOLVED, resolved_toml(spec, len(record["runs"])).encode())
    jobs = [Job(r, out / RUNS / r.id) for r in runs if r.id not in finished]
    echo(
        f"{spec.name}: {words.count(len(runs), 'run')}"
        + (f", {len(finished)} finished before" if finished else "")
        + f"; running {len(jobs)} on {executor.name} -> {out}"
    )
    count = len(finished)

    def done(job: Job, result: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        secs = "" if result.get("seconds") is None else f" {result['seconds']:.1f}s"
        line = f"[{count}/{len(runs)}] {job.run.describe()} ... {result['status']}{secs}"
        echo(line + (f": {result['error']}" if result.get("error") else ""))

    executor.execute(jobs, base_dir=base_dir, resources=spec.resources, done=done)
    return out


def _base_dir(held: dict[str, Any] | None, out: Path, todo: list[Run]) -> str:
    """The directory the batch's relative paths are read from: where it was started.

    A resume from another working directory read a spec's relative image or weights
    paths there: other files under the same run ids.

    Args:
        held: The batch record, or None for a new batch.
        out: The output directory (for messages).
        todo: The runs about to run.

    Raises:
        FoolError: The recorded directory is gone and a run of ``todo`` reads a relative
            path (a batch of sample images, or absolute paths, resumes anywhere: one
            copied to another machine was refused).
    """
    recorded = held.get("base_dir") if held else None
    if not isinstance(recorded, str):
        return str(Path.cwd())
    relative = [p for r in todo for p in relative_paths(r.kind, r.params)]
    if relative and not Path(recorded).is_dir():
        raise FoolError(
            f"{out} was started in {recorded}, which is gone: its runs read relative paths "
            f"there ({relative[0]}); restore it or start a new batch"
        )
    return recorded


def _held_record(out: Path) -> dict[str, Any] | None:
    """The batch record in ``out``, or None: none, or unreadable (rewritten from the spec)."""
    try:
        record = json.loads((out / BATCH).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _recorded(
    record: dict[str, Any] | None, kind: str, finished_ok: Callable[[str], bool]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The runs a batch record lists, ``(id, params)`` by :func:`identity_key`.

    Of several that are one run (recorded before such grid points became one), a
    finished one (``finished_ok(id)``). Entries that are not a run of ``kind`` (a record
    edited by hand) are left out.
    """
    entries = record.get("runs") if record else None
    if not isinstance(entries, list):
        return {}
    runs = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        rid, params = entry.get("id"), entry.get("params")
        # An id is run_id's 12 hex digits: "../../x" (a record edited by hand) was a run
        # directory outside the batch, written and its result.json deleted there.
        if not is_run_id(rid) or not isinstance(params, dict):
            continue
        try:
            key = identity_key(kind, params)
        except (TypeError, ValueError, AttributeError):
            continue  # values no spec could give
        runs.append((not finished_ok(rid), key, rid, params))
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for _, key, rid, params in sorted(runs, key=lambda r: r[0]):  # stable: finished first
        found.setdefault(key, (rid, params))
    return found


def is_run_id(value: Any) -> bool:
    """Whether ``value`` is a run id as :func:`.spec.run_id` makes them: 12 hex digits."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{12}", value) is not None


def _ok(result: dict[str, Any]) -> bool:
    return result.get("status") == "ok"
