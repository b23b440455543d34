"""Browsable HTML pages and PNG contact sheets for the result directories of experiments.

A run directory holds a ``report.json`` (any experiment: perturbation, evolution, detector
attack). Required: ``title`` and ``images``, a list of panels with a ``file`` relative to the run
directory and optional ``caption`` and ``top`` (``[{"index", "label", "prob"}]``). ``kind``,
``success`` and a flat ``metrics`` dict are shown when present; other keys are ignored. Pages
are static and self-contained (inline CSS, no scripts, nothing external), all text escaped.

Contact sheet: one block per run, a header line (title, success) over its panels, each scaled
to ``THUMB_H`` pixels high with its caption below, ``SHEET_WRAP`` per line and the first
``SHEET_PANELS`` only (a 1000-panel map-elites run shows 16 and says so). At most ``SHEET_RUNS``
runs and ``SHEET_MAX_H`` pixels; the page still lists every run and notes the truncation.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import pathlib
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from fooltools import words
from fooltools.errors import FoolError, ImageError, one_line
from fooltools.io import read_image, to_uint8, write_bytes_atomic

REPORT, PAGE, SHEET = "report.json", "index.html", "contact_sheet.png"
THUMB_H, MAX_THUMB_W = 160, 320  # contact-sheet thumbnail height and widest allowed thumbnail
CAPTION_H, HEADER_H, PAD = 18, 20, 6  # caption band under a line of panels, run header, margins
SHEET_WRAP, SHEET_PANELS, SHEET_RUNS, SHEET_MAX_H = 8, 16, 64, 20000
_CARD_THUMBS, _CARD_METRICS = 6, 4  # what one gallery card shows of a run
_MANY = 12  # above this many panels a run page switches to small thumbnails

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1em;margin:.4em 0}a{color:#1565c0}
.badge{padding:.1em .6em;border-radius:1em;color:#fff;font-size:.7em;vertical-align:middle}
.badge.success{background:#2e7d32}.badge.failed{background:#c62828}.kind{color:#666}
.mark.success{color:#2e7d32}.mark.failed{color:#c62828}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:1em}
.panels.many{grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:.5em}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:.5em;min-width:0}
figure img{display:block;width:100%;height:224px;object-fit:contain;background:#eee}
.many figure img{height:112px}figcaption{font-size:.9em;overflow-wrap:anywhere;margin:.3em 0}
.bar{position:relative;background:#eee;height:1.35em;margin:2px 0;font-size:.8em}
.bar i{position:absolute;left:0;top:0;bottom:0;background:#90caf9}
.bar span{position:relative;padding-left:.3em;white-space:nowrap}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:.2em .6em}
th{text-align:left;font-weight:normal;color:#555}.cards{display:grid;gap:1em}
.card{background:#fff;border:1px solid #ddd;padding:.6em;min-width:0}
.thumbs{display:grid;grid-template-columns:repeat(3,1fr);gap:3px}
.thumbs img{width:100%;height:96px;object-fit:contain;background:#eee}
.card table{font-size:.85em;margin:.3em 0}.note,.skipped{color:#a15c00}.sheet{max-width:100%}
"""


def load_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a run directory's ``report.json``; its panels' files are known to exist.

    Raises:
        FoolError: no report, invalid JSON, no ``title``/``images``, a bad or missing panel file.
    """
    run = pathlib.Path(run_dir)
    if not (path := run / REPORT).is_file():
        raise FoolError(f"no {REPORT} in {run}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FoolError(f"cannot read {path}: {one_line(err)}") from None
    if not isinstance(report, dict) or not isinstance(report.get("title"), str):
        raise FoolError(f'{path}: needs a string "title"')
    if not isinstance(report.get("images"), list):
        raise FoolError(f'{path}: needs an "images" list')
    for i, panel in enumerate(report["images"]):
        file = panel.get("file") if isinstance(panel, dict) else None
        # Absolute paths would break the promise that a gallery folder can be moved or zipped.
        if not isinstance(file, str) or not file or os.path.isabs(file):
            raise FoolError(f'{path}: images[{i}] needs a "file" relative to the run directory')
        if not (run / file).is_file():
            raise FoolError(f"{path}: images[{i}] file not found: {run / file}")
    return report


def _href(target: pathlib.Path, start: pathlib.Path) -> str:
    rel = os.path.relpath(target, start).replace(os.sep, "/")
    # File names may hold spaces, '#', '?', '%', and bytes that are not UTF-8 (which
    # Python's file names carry as lone surrogates): quoted as those bytes, %E9 for b"\xe9".
    return html.escape(urllib.parse.quote(rel, errors="surrogateescape"))


def _caption(panel: dict[str, Any]) -> str:
    caption = panel.get("caption")
    return panel["file"] if caption is None else str(caption)


def _metrics_table(metrics: Any, limit: int | None = None) -> str:
    rows = []
    for key, value in list(metrics.items())[:limit] if isinstance(metrics, dict) else []:
        text = f"{value:.5g}" if isinstance(value, float) else json.dumps(value)
        text = value if isinstance(value, str) else text
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(text)}</td></tr>")
    return f"<table>{''.join(rows)}</table>" if rows else ""


def _bars(top: Any) -> str:
    """Top-k bar chart in plain HTML: each bar's width is the class probability."""
    rows = []
    for entry in top if isinstance(top, list) else []:
        try:
            prob = float(entry["prob"])
        except (TypeError, KeyError, ValueError):
            continue  # a malformed entry costs one bar, not the page
        if not math.isfinite(prob):
            continue
        pct = 100 * min(max(prob, 0.0), 1.0)
        label = html.escape(f"{entry.get('label', entry.get('index', '?'))} {pct:.1f}%")
        tip = html.escape(f"class {entry.get('index', '?')}: {prob:.6g}")
        rows.append(f'<div class="bar" title="{tip}"><i style="width:{pct:.1f}%"></i>')
        rows.append(f"<span>{label}</span></div>")
    return f'<div class="top">{"".join(rows)}</div>' if rows else ""


def _success(report: dict[str, Any]) -> str:
    """Return "success", "failed" or "" (for anything but a real bool: 1, "yes", null)."""
    success = report.get("success")
    return ("success" if success else "failed") if isinstance(success, bool) else ""


def _badge(report: dict[str, Any], mark: bool = False) -> str:
    word = _success(report)
    text = {"success": "&#10003;", "failed": "&#10007;"}.get(word, "") if mark else word
    return f'<span class="{"mark" if mark else "badge"} {word}">{text}</span>' if word else ""


def _document(title: str, body: str, css: str = "") -> bytes:
    """The page as UTF-8; a lone surrogate in its text is written as "?".

    Titles and captions name the input image, and a file name that is not UTF-8 reaches
    them as lone surrogates, which strict UTF-8 cannot encode: ``fool perturb`` on such a
    file stopped with a traceback after writing the run, without its index.html.
    """
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}{css}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    ).encode("utf-8", "replace")


def _run_html(run: pathlib.Path, report: dict[str, Any]) -> bytes:
    panels = report["images"]
    figures = []
    for panel in panels:
        src, cap = _href(run / panel["file"], run), html.escape(_caption(panel))
        figures.append(
            f'<figure><a href="{src}"><img src="{src}" alt="{cap}" loading="lazy"></a>'
            f"<figcaption>{cap}</figcaption>{_bars(panel.get('top'))}</figure>"
        )
    kind, many = html.escape(str(report.get("kind", ""))), " many" * (len(panels) > _MANY)
    body = (
        f'<h1>{html.escape(report["title"])} {_badge(report)}</h1><p class="kind">{kind}</p>\n'
        f'<div class="panels{many}">\n' + "\n".join(figures) + "\n</div>\n"
        f'{_metrics_table(report.get("metrics"))}\n<p><a href="{REPORT}">{REPORT}</a></p>'
    )
    return _document(report["title"], body)


def write_run_page(run_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Write ``run_dir/index.html``: title, success badge, panels with top-k bars, metrics.

    Returns:
        The path of the page written.

    Raises:
        FoolError: the directory or its report is missing or invalid (see :func:`load_report`).
    """
    run = pathlib.Path(os.path.abspath(run_dir))
    if not run.is_dir():
        raise FoolError(f"no such directory: {run_dir}")
    return write_bytes_atomic(run / PAGE, _run_html(run, load_report(run)))


def _runs_below(root: pathlib.Path) -> list[pathlib.Path]:
    """The directories in or below ``root`` holding a report, sorted.

    Symbolic links to directories are followed (a batch kept on scratch storage and linked
    into runs/ was left out without a word), each directory once: a link back up, or a
    second link to one directory (runs/latest), adds nothing.
    """
    hits, seen = [], set()
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()  # which of two links to one directory is walked: the first by name
        if (real := os.path.realpath(d)) in seen:
            dirs.clear()
            continue
        seen.add(real)
        if REPORT in files:
            hits.append(pathlib.Path(d))
    return sorted(hits)


def _scan(paths: Sequence[str | os.PathLike[str]]) -> dict[pathlib.Path, bool]:
    """Map every run directory found in or below ``paths`` to whether it was named itself.

    In the order of ``paths`` (the runs below one path sorted): ``fool results`` names a
    batch's runs in grid order, and its gallery showed them in the order of their hashed ids.
    """
    found: dict[pathlib.Path, bool] = {}
    for given in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        if not os.fspath(given):  # abspath("") is the working directory: `fool gallery "$UNSET"`
            raise FoolError("an empty path names no directory")
        root = pathlib.Path(os.path.abspath(given))
        if root.name == REPORT and root.is_file():
            root = root.parent
        if not root.is_dir():
            problem = "not a directory" if root.exists() else "no such file or directory"
            raise FoolError(f"{problem}: {given}")
        hits = _runs_below(root)
        if not hits:
            raise FoolError(f"no {REPORT} found in or below {given}")
        for hit in hits:  # a run found twice keeps its first place
            found[hit] = found.get(hit, False) or hit == root
    return found


def collect_runs(paths: Sequence[str | os.PathLike[str]]) -> list[pathlib.Path]:
    """Find every directory in or below ``paths`` (runs, their parents) holding a ``report.json``.

    Returns:
        Absolute run directories (symlinks not resolved), deduplicated, in the order of
        ``paths`` (the runs below one path sorted).

    Raises:
        FoolError: a path does not exist, is not a directory, or has no report below it.
    """
    return list(_scan(paths))


def _cell(path: pathlib.Path, unreadable: list[str]) -> Image.Image:
    """A contact-sheet cell: the image scaled to THUMB_H high, centred on white if narrow.

    A file that cannot be read gets a grey cell, and its error is appended to ``unreadable``.
    """
    try:
        image = Image.fromarray(to_uint8(read_image(path)))
    except ImageError as err:
        # The file exists (load_report checked); a corrupt one gets a grey cell, not an
        # abort, and is listed on the page (a grey box alone read as a grey image).
        unreadable.append(str(err))
        return Image.new("RGB", (THUMB_H, THUMB_H), (190, 190, 190))
    scale = min(THUMB_H / image.height, MAX_THUMB_W / image.width)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    # Enlarging with NEAREST shows a small adversarial image's real pixels instead of a blur.
    image = image.resize((w, h), Image.NEAREST if scale > 1 else Image.LANCZOS)
    cell = Image.new("RGB", (max(w, THUMB_H // 2), THUMB_H), "white")  # room for a caption
    cell.paste(image, ((cell.width - w) // 2, (THUMB_H - h) // 2))
    return cell


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float, font: Any) -> str:
    text = " ".join(text.split())[:300]
    if not isinstance(font, ImageFont.FreeTypeFont):
        text = text.encode("latin-1", "replace").decode("latin-1")  # Pillow's bitmap fallback
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _write_sheet(
    path: pathlib.Path,
    runs: list[tuple[pathlib.Path, dict[str, Any]]],
    labels: Mapping[pathlib.Path, str],
) -> tuple[int, list[str]]:
    """Draw the contact sheet (layout in the module docstring).

    A run's header line gives its title, its ``labels`` entry (if any) and its success.

    Returns:
        How many runs it shows, and the errors of the images it could not read.
    """
    blocks, height, unreadable = [], PAD, []
    for run, report in runs[:SHEET_RUNS]:
        panels = report["images"][:SHEET_PANELS]
        lines = [panels[i : i + SHEET_WRAP] for i in range(0, len(panels), SHEET_WRAP)]
        block_h = HEADER_H + len(lines) * (THUMB_H + CAPTION_H) + PAD
        if height + block_h > SHEET_MAX_H:
            break
        head = "  ".join(filter(None, [report["title"], labels.get(run)]))
        head += f"  [{word}]" if (word := _success(report)) else ""
        if len(report["images"]) > len(panels):
            head += f"  (first {len(panels)} of {len(report['images'])} panels)"
        cells = [
            [(_cell(run / p["file"], unreadable), _caption(p)) for p in line] for line in lines
        ]
        blocks.append((height, head, cells))
        height += block_h
    widths = [PAD + sum(c.width + PAD for c, _ in line) for _, _, ls in blocks for line in ls]
    width = max([2 * THUMB_H, *widths])
    sheet = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for y, head, lines in blocks:
        draw.rectangle((0, y, width, y + HEADER_H - 2), fill=(232, 236, 240))
        draw.text((PAD, y + 3), _fit(draw, head, width - 2 * PAD, font), fill="black", font=font)
        y += HEADER_H
        for line in lines:
            x = PAD
            for cell, caption in line:
                sheet.paste(cell, (x, y))
                text = _fit(draw, caption, cell.width, font)
                draw.text((x, y + THUMB_H + 3), text, fill=(40, 40, 40), font=font)
                x += cell.width + PAD
            y += THUMB_H + CAPTION_H
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    # Not write_png: it takes floats, and a float copy of a 20000-pixel sheet costs gigabytes.
    write_bytes_atomic(path, buffer.getvalue())
    return len(blocks), unreadable


def _card(run: pathlib.Path, report: dict[str, Any], out: pathlib.Path, label: str = "") -> str:
    page, panels = _href(run / PAGE, out), report["images"]
    thumbs = "".join(
        f'<img src="{_href(run / p["file"], out)}" alt="{cap}" title="{cap}" loading="lazy">'
        for p in panels[:_CARD_THUMBS]
        for cap in [html.escape(_caption(p))]
    )
    more, kind = len(panels) - _CARD_THUMBS, html.escape(str(report.get("kind", "")))
    return (
        f'<article class="card"><a href="{page}"><div class="thumbs">{thumbs}</div></a>'
        + (f'<p class="kind">+{more} more panels</p>' if more > 0 else "")
        + f'<h2><a href="{page}">{html.escape(report["title"])}</a> '
        f'{_badge(report, mark=True)} <span class="kind">{kind}</span></h2>'
        + (f'<p class="kind">{html.escape(label)}</p>' if label else "")
        + _metrics_table(report.get("metrics"), _CARD_METRICS)
        + f'<a href="{_href(run / REPORT, out)}">{REPORT}</a></article>'
    )


def _tally(reports: list[dict[str, Any]]) -> str:
    """The page's tally of runs and successes, the latter over runs with a verdict only.

    A verdict is a boolean ``success``. Inversions, channel visualisations, dreams and
    style transfers have no verdict, nor has a detector attack with nothing to attack
    (``"success": null``): counting them as failures would say "4 runs, 0 successful" of
    four style transfers.
    """
    wins = sum(r.get("success") is True for r in reports)
    judged = sum(isinstance(r.get("success"), bool) for r in reports)
    runs = words.count(len(reports), "run")
    if judged == len(reports):
        return f"{runs}, {wins} successful."
    if not judged:
        return f"{runs}, none with a success verdict."
    return f"{runs}, {wins} of the {judged} with a success verdict successful."


def build_gallery(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    title: str = "fooltools gallery",
    columns: int = 4,
    skip_broken: bool = False,
    labels: Mapping[str | os.PathLike[str], str] | None = None,
    left_out: Sequence[str] = (),
) -> pathlib.Path:
    """Write ``out_dir/index.html`` linking every run, and ``out_dir/contact_sheet.png``.

    Links are relative to ``out_dir``, so a folder holding both the gallery and the runs can be
    moved or zipped. Runs without an ``index.html`` get one (:func:`write_run_page`).

    Args:
        run_dirs: run directories and/or parents of runs, searched by :func:`collect_runs`.
        out_dir: where the page and the contact sheet go; created if missing.
        title: the page's heading.
        columns: cards per row on the page.
        skip_broken: also skip (and list) a broken run named directly in ``run_dirs``, as
            one found below a path is; for callers that name runs they found themselves.
        labels: a line for a run's card and contact-sheet header, by its directory: what
            tells apart the runs of a batch (``fool results``: their grid values,
            ``seed=1``), whose titles are alike.
        left_out: lines listed on the page as skipped, for runs the caller left out of
            ``run_dirs`` (``fool results``: a finished run whose report was deleted).

    Returns:
        The path of the gallery page.

    Raises:
        FoolError: a path is missing or has no run; a run named directly in ``run_dirs`` has a
            broken report (unless ``skip_broken``: runs found by searching below a path are
            skipped and listed on the page instead); ``out_dir`` is itself a run directory;
            ``columns`` < 1.
    """
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise FoolError(f"columns must be a positive integer, got {columns!r}")
    out = pathlib.Path(os.path.abspath(out_dir))
    if (out / REPORT).exists():  # its index.html is the run's page, not ours to overwrite
        raise FoolError(f"output directory is a run directory: {out_dir}")
    lines = {pathlib.Path(os.path.abspath(d)): text for d, text in (labels or {}).items()}
    runs, skipped = [], [f"skipped: {line}" for line in left_out]
    for run, named in _scan(run_dirs).items():
        try:
            runs.append((run, load_report(run)))
        except FoolError as err:
            if named and not skip_broken:
                raise
            skipped.append(f"skipped: {run}: {err}")
    for run, report in runs:
        if not (run / PAGE).exists():
            write_bytes_atomic(run / PAGE, _run_html(run, report))
    shown, unreadable = _write_sheet(out / SHEET, runs, lines)
    skipped += [f"unreadable: {line} (a grey box on the contact sheet)" for line in unreadable]
    note = f" The contact sheet is truncated to the first {shown} runs." * (shown < len(runs))
    body = (
        f"<h1>{html.escape(title)}</h1>\n<p>{_tally([r for _, r in runs])}{note} "
        f'<a href="{SHEET}">Contact sheet</a></p>\n'
        + "".join(f'<p class="skipped">{html.escape(line)}</p>\n' for line in skipped)
        + '<div class="cards">\n'
        + "\n".join(_card(run, report, out, lines.get(run, "")) for run, report in runs)
        + f'\n</div>\n<h2>Contact sheet</h2><a href="{SHEET}">'
        f'<img class="sheet" src="{SHEET}" alt="contact sheet" loading="lazy"></a>'
    )
    css = f".cards{{grid-template-columns:repeat({columns},minmax(0,1fr))}}"
    return write_bytes_atomic(out / PAGE, _document(title, body, css))
