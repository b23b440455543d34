"""Results of a batch: the per-run table, the grouped summary, CSV and gallery.

The table has one row per run of ``batch.json``, in grid order, whichever executor ran
them and in whatever order they finished. Columns: ``id``, ``status`` (ok / failed /
unfinished), the grid's parameters (``param_<key>`` where a key is also a metric
column), the task metrics (:data:`~.tasks.METRICS`), ``seconds`` (the run's attack or search,
as its report times it) and ``error``. Floats are
rounded (confidence to 6 decimals, distortions to 3, seconds to 2) so tables from two
executors compare equal; ``seconds`` is the only column that differs between them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fooltools import words
from fooltools.errors import FoolError, one_line
from fooltools.experiments.batch import BATCH, RUNS, is_run_id, read_result
from fooltools.experiments.spec import Run
from fooltools.experiments.tasks import METRICS, TASKS

TIMING = ("seconds",)
_ROUND = {"confidence": 6, "linf": 3, "l2": 3, "seconds": 2}


def load_batch(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``out/batch.json``.

    Raises:
        FoolError: ``out`` holds no batch, or a ``batch.json`` that ``fool run`` did not
            write (edited by hand: not of its shape).
    """
    path = Path(out) / BATCH
    try:
        batch = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        # A run directory of a batch given for the batch: its advice to run a batch into
        # the run directory misled.
        above = next((d for d in Path(out).absolute().parents if (d / BATCH).is_file()), None)
        if above is not None:
            raise FoolError(
                f"no batch in {out} (no {BATCH}); it is inside the batch in {above}: "
                f"`fool results {shlex.quote(str(above))}`"
            ) from None
        raise FoolError(f"no batch in {out} (no {BATCH}); run `fool run SPEC --out DIR`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FoolError(f"cannot read {path}: {one_line(err)}") from None
    problem = _batch_problem(batch)
    if problem:
        raise FoolError(f"{path} is not a batch record: {problem}")
    return batch


def _batch_problem(batch: Any) -> str | None:
    """What makes ``batch`` no batch record, or None: the fields the table reads."""
    if not isinstance(batch, dict):
        return "not a JSON object"
    for key, kind in (("name", str), ("kind", str), ("grid", list), ("runs", list)):
        if not isinstance(batch.get(key), kind):
            return f"{key} is missing or not a {kind.__name__}"
    if not all(isinstance(key, str) for key in batch["grid"]):
        return "grid is not a list of names"
    fields = (("id", str), ("dir", str), ("params", dict), ("varying", dict))
    for i, entry in enumerate(batch["runs"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), t) for k, t in fields):
            return f"runs[{i}] is not a run (id, dir, params, varying)"
        # Read (and the gallery written) from out / dir: "../x" or "/x" was outside it.
        if not is_run_id(entry["id"]) or entry["dir"] != f"{RUNS}/{entry['id']}":
            rid, where = entry["id"], entry["dir"]
            return f"runs[{i}] is not a run of this batch (id {rid!r}, dir {where!r})"
    return None


def _columns(grid: list[str]) -> list[str]:
    return [f"param_{k}" if k in METRICS else k for k in grid]


def _round(key: str, value: Any) -> Any:
    if isinstance(value, float) and key in _ROUND:
        return round(value, _ROUND[key])
    return value


def load_results(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The results table of the batch in ``out``: one dict per run, in grid order.

    Each row also carries ``dir`` (the run directory) and ``label`` (its progress label),
    which the CSV leaves out.
    """
    batch, out = load_batch(out), Path(out)
    rows = []
    for entry in batch["runs"]:
        result = read_result(out / entry["dir"]) or {"status": "unfinished", "metrics": {}}
        row: dict[str, Any] = {"id": entry["id"], "status": result["status"]}
        for key, column in zip(batch["grid"], _columns(batch["grid"]), strict=True):
            # Not entry["params"]: a grid value the run does not take is not shown.
            row[column] = entry["varying"].get(key)
        for key in (*METRICS, *TIMING):
            row[key] = _round(key, (result.get("metrics") or {}).get(key, result.get(key)))
        row["error"] = result.get("error")
        row["dir"] = str(out / entry["dir"])
        row["label"] = Run(entry["id"], batch["kind"], entry["params"], entry["varying"]).describe()
        rows.append(row)
    return rows


def table_columns(batch: dict[str, Any]) -> list[str]:
    """The CSV's columns for a batch, given its record (:func:`load_batch`)."""
    return ["id", "status", *_columns(batch["grid"]), *METRICS, *TIMING, "error"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The rows as CSV text (booleans as true/false, missing values empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _median(values: list[float]) -> str:
    return f"{np.median(values):.4g}" if values else "-"


def split_columns(batch: dict[str, Any]) -> list[str]:
    """The table columns of ``batch``'s grid parameters that split the summary's rows.

    Those whose :class:`~.tasks.Param` ``splits``: a grid over a budget compares budgets,
    which one row per model/method/class would merge.
    """
    params = TASKS[batch["kind"]].params if batch["kind"] in TASKS else {}
    return [
        column
        for key, column in zip(batch["grid"], _columns(batch["grid"]), strict=True)
        if key in params and params[key].splits
    ]


def _shown(value: Any) -> str:
    # 6 digits: at 4, thresholds 0.99999 and 0.999995 both read "1".
    return f"{value:.6g}" if isinstance(value, float) else _cell(value) or "-"


def summarize(rows: list[dict[str, Any]], by: Sequence[str] = ()) -> list[dict[str, str]]:
    """One summary row per (model, method, class) over the runs that finished without error.

    ``by`` names more columns to group by (see :func:`split_columns`), shown after class.
    Each has ``runs``, ``success`` (count and rate over the runs with a verdict: a detector
    attack on an image with nothing to attack has none), the medians of ``linf``/``l2``
    (0-255 units), confidence median and 10th/90th percentiles, and the median ``seconds``.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            key = (str(row["model"]), str(row["method"]), str(row["class"]))
            # By the exact values, not as shown: two budgets never share a row.
            split = tuple(json.dumps(row.get(c)) for c in by)
            groups.setdefault(key + split, []).append(row)
    table = []
    for (model, method, cls, *_), members in groups.items():
        judged = [r for r in members if r["success"] is not None]
        wins = sum(r["success"] is True for r in judged)
        confs = [r["confidence"] for r in members if r["confidence"] is not None]
        pct = np.percentile(confs, [10, 90]) if confs else None
        table.append(
            {
                "model": model,
                "method": method,
                "class": cls,
                **{c: _shown(members[0].get(c)) for c in by},
                "runs": str(len(members)),
                "success": f"{wins}/{len(judged)} {100 * wins / len(judged):.0f}%"
                if judged
                else "-",
                "L-inf": _median([r["linf"] for r in members if r["linf"] is not None]),
                "L2": _median([r["l2"] for r in members if r["l2"] is not None]),
                "conf": _median(confs),
                "conf p10-p90": "-" if pct is None else f"{pct[0]:.3g}-{pct[1]:.3g}",
                "seconds": _median([r["seconds"] for r in members if r["seconds"] is not None]),
            }
        )
    return table


def format_summary(rows: list[dict[str, Any]], by: Sequence[str] = ()) -> str:
    """The summary as text: a table per group, a totals line, then each failure's message.

    ``by``: as for :func:`summarize`.
    """
    table = summarize(rows, by)
    lines = []
    if table:
        header = list(table[0])
        cells = [header, *([r[c] for c in header] for r in table)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "unfinished")}
    total = f"{words.count(len(rows), 'run')}: {counts['ok']} ok, {counts['failed']} failed"
    if counts["unfinished"]:
        total += f", {counts['unfinished']} unfinished (continue with --resume)"
    lines.append(total)
    for row in rows:
        if row["status"] == "failed":
            lines.append(f"failed {row['id']} {row['label']}: {row['error']}")
    return "\n".join(lines)


def write_results(out: str | os.PathLike[str], *, gallery: bool = True) -> dict[str, Any]:
    """Write ``out/results.csv`` and (``gallery``) ``out/gallery/``; return what was written.

    A finished run whose report is broken (an image of it deleted, the JSON edited) is
    left out of the gallery and listed on its page and in ``skipped``, as ``fool gallery``
    does with a broken run below a directory: one bad run costs its card, not the gallery.

    Returns:
        ``{"rows": table rows, "summary": text, "csv": path, "gallery": page path or None,
        "skipped": one line per run left out of the gallery}``.
    """
    from fooltools.io import write_bytes_atomic

    rows = load_results(out)
    out = Path(out)
    batch = load_batch(out)  # once, for the columns, the summary's split and the title
    csv_path = write_bytes_atomic(out / "results.csv", to_csv(rows, table_columns(batch)).encode())
    page, skipped = None, []
    finished = [r["dir"] for r in rows if r["status"] == "ok"]
    shown = [d for d in finished if (Path(d) / "report.json").is_file()]
    # A kind that writes no reports has no gallery.
    if gallery and shown:
        from fooltools.gallery import build_gallery, load_report

        # A finished run whose report.json was deleted vanished from the page unlisted.
        gone = [f"{d}: no report.json in {d}" for d in finished if d not in shown]
        skipped.extend(gone)
        for run_dir in shown:
            try:
                load_report(run_dir)
            except FoolError as err:
                skipped.append(f"{run_dir}: {err}")
        title = f"{batch['name']}: {words.count(len(finished) - len(skipped), 'run')}"
        # The runs' titles are alike (a seed sweep's are one): each card says its grid
        # values, after the kind the card shows already ("seed=1" of "perturb seed=1").
        labels = {r["dir"]: r["label"].removeprefix(batch["kind"]).strip() for r in rows}
        page = build_gallery(shown, out / "gallery", title=title, skip_broken=True,
                             labels=labels, left_out=gone)  # fmt: skip
    return {
        "rows": rows,
        "summary": format_summary(rows, split_columns(batch)),
        "csv": csv_path,
        "gallery": page,
        "skipped": skipped,
    }
