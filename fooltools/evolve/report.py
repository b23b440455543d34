"""Outputs of ``fool evolve``: images, confidence plot, report.json and the gallery page."""

from __future__ import annotations

import io as _bytes_io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fooltools import gallery, io, words
from fooltools.classify import probabilities
from fooltools.models.base import Classifier
from fooltools.perturb import versions

PLOT = "confidence.png"


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Draw best / median / mean confidence against generation as a PNG (Pillow only).

    Args:
        history: ``history.jsonl`` records (``generation``, ``best``, ``median``, ``mean``).
        path: Destination PNG, written atomically.
        title: Text above the plot.

    Returns:
        ``path``.
    """
    w, h, left, right, top, bottom = 640, 360, 50, 15, 28, 36
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((left, 8), title, fill="black", font=font)
    x0, x1, y0, y1 = left, w - right, h - bottom, top
    draw.rectangle([x0, y1, x1, y0], outline="black")
    gens = [r["generation"] for r in history] or [0]
    g_max = max(max(gens), 1)
    for frac in (0.0, 0.25, 0.5, 0.75, 0.99, 1.0):
        y = y0 - frac * (y0 - y1)
        draw.line([x0, y, x1, y], fill=(225, 225, 225) if frac < 1 else "black")
        if frac != 0.99:
            draw.text((4, y - 6), f"{frac:.2f}", fill="black", font=font)
    # The 99% line is 3 pixels under 1.00: its label, on the axis, was drawn over 1.00's.
    draw.text((x1 - 30, y0 - 0.99 * (y0 - y1) + 2), "0.99", fill=(150, 150, 150), font=font)
    draw.text((x0, y0 + 6), "0", fill="black", font=font)
    draw.text((x1 - 40, y0 + 6), f"{g_max}", fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 30, y0 + 18), "generation", fill="black", font=font)
    series = (("best", (200, 30, 30)), ("median", (30, 30, 200)), ("mean", (30, 150, 30)))
    for n, (name, colour) in enumerate(series):
        pts = [
            (x0 + (x1 - x0) * r["generation"] / g_max, y0 - (y0 - y1) * r[name])
            for r in history
            if name in r
        ]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        elif pts:  # one generation (a stop reached at once, --generations 1): a dot, not nothing
            (x, y), r = pts[0], 3
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        draw.text((x1 - 140 + 48 * n, 8), name, fill=colour, font=font)
    buf = _bytes_io.BytesIO()
    img.save(buf, format="PNG")
    return io.write_bytes_atomic(path, buf.getvalue())


def _confidence(clf: Classifier, path: Path, index: int) -> float:
    # Re-read what was written: the reported confidence is that of the file.
    return float(probabilities(clf, [io.read_image(path)])[0, index])


def _scoring(common: dict[str, Any]) -> str:
    # The encoding, and the crops when the confidence is a mean over them.
    crops = common.get("crops", 1)
    return common["encoding"] + (f", mean of {crops} crops" if crops > 1 else "")


def percent(confidence: float, digits: int) -> str:
    """``confidence`` as a percentage :func:`.words.cut` to ``digits`` decimals: ``99.0%``.

    Below 1% with two significant digits at least (``0.034%``, not ``0.0%``: a search
    that has barely moved, or a MAP-Elites cell, is not at zero), and below 0.0001% in
    exponent form (``3.4e-07%``).
    """
    value = 100 * float(confidence)
    if 0 < value < 1e-4:
        return f"{value:.1e}%"
    if 0 < value < 1:
        digits = max(digits, 1 - math.floor(math.log10(value)))
    return f"{words.cut(value, digits):.{digits}f}%"


def _rate(summary: dict[str, Any]) -> float:
    """Evaluations a second over the generations timed (their ``history.jsonl`` lines).

    ``summary["evaluations"]`` also counts the first population, whose scoring is not in
    the seconds: a 3-generation run of 8 read 3.6 evaluations/s for 2.5.
    """
    timed = sum(line["evaluations"] for line in summary["history"])
    return round(timed / max(summary["seconds"], 1e-9), 2)


def _write_report(out: Path, report: dict[str, Any]) -> None:
    io.write_bytes_atomic(out / "report.json", json.dumps(report, indent=2).encode())
    gallery.write_run_page(out)


def write_single(
    out: Path, clf: Classifier, target: int, summary: dict[str, Any], common: dict[str, Any]
) -> dict[str, Any]:
    """Write best.png, the plot, report.json and index.html of a single-target run."""
    label = clf.labels.name(target)
    best = io.write_png(out / "best.png", summary["best_image"])
    conf = _confidence(clf, best, target)
    plot_history(summary["history"], out / PLOT, f"{label}: confidence by generation")
    evals, secs = summary["evaluations"], summary["seconds"]
    report = {
        "kind": "evolve",
        "title": f"{label} ({_scoring(common)}) {percent(conf, 1)}",
        "success": conf >= 0.99,
        "target": {"index": target, "label": label},
        "best_confidence": conf,
        "best_confidence_in_search": summary["best_confidence"],
        "best_generation": summary["best_generation"],
        "generations_run": summary["generation"],
        "evaluations": evals,
        "seconds": round(secs, 2),
        "evaluations_per_second": _rate(summary),
        "size": list(summary["size"]),
        **common,
        "versions": versions(),
        "images": [
            {"file": "best.png", "caption": f"{label} {percent(conf, 2)}"},
            {"file": PLOT, "caption": "confidence by generation"},
        ],
        "metrics": {
            "confidence": words.figure(conf, cut_down=True),
            "generation": summary["best_generation"],
            "evaluations": evals,
            "seconds": round(secs, 1),
        },
    }
    _write_report(out, report)
    return report


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def write_map_elites(
    out: Path, clf: Classifier, classes: list[int], summary: dict[str, Any], common: dict[str, Any]
) -> dict[str, Any]:
    """Write one PNG per filled cell, the plot, report.json and index.html (paper layout)."""
    filled = [(i, cls) for i, cls in enumerate(classes) if summary["fitness"][i] >= 0]
    names = [f"cells/{cls:03d}-{_slug(clf.labels.name(cls))}.png" for _, cls in filled]
    for (i, _), name in zip(filled, names, strict=True):
        io.write_png(out / name, summary["images"][i])
    # Re-read what was written, all cells in one batched call: one image per call cost
    # 0.1 s each on 2 CPU cores, 100 s for a 1000-class archive.
    probs = probabilities(clf, [io.read_image(out / name) for name in names]) if names else None
    confs = [float(probs[n, cls]) for n, (_, cls) in enumerate(filled)]
    panels = [
        {"file": name, "caption": f"{clf.labels.name(cls)} {percent(conf, 1)}"}
        for name, (_, cls), conf in zip(names, filled, confs, strict=True)
    ]
    plot_history(summary["history"], out / PLOT, "MAP-Elites: confidence of the archive")
    median = float(np.median(confs)) if confs else 0.0
    evals, secs = summary["evaluations"], summary["seconds"]
    report = {
        "kind": "map-elites",
        "title": f"MAP-Elites {_scoring(common)}: {len(panels)}/{len(classes)} cells, "
        f"median {percent(median, 1)}",
        # The single-target verdict for every cell: each class fooled at >= 99%. "Every
        # cell filled" could not fail (each image is scored on every cell's class, so the
        # first population fills them all) and badged a 0.04% median a success.
        "success": len(confs) == len(classes) and report_count(confs) == len(classes),
        "classes": classes,
        "filled": len(panels),
        "median_confidence": median,
        "cells_at_99": report_count(confs),
        "generations_run": summary["generation"],
        "evaluations": evals,
        "seconds": round(secs, 2),
        "evaluations_per_second": _rate(summary),
        **common,
        "versions": versions(),
        "images": [{"file": PLOT, "caption": "confidence by generation"}, *panels],
        "metrics": {
            "filled": f"{len(panels)}/{len(classes)}",
            "median": words.figure(median, cut_down=True),
            ">= 99%": report_count(confs),
            "evaluations": evals,
            "seconds": round(secs, 1),
        },
    }
    _write_report(out, report)
    return report


def report_count(confs: list[float]) -> int:
    """How many confidences reach 99%."""
    return int(sum(c >= 0.99 for c in confs))
