"""Run directories of the visualisation commands, readable without the README.

Each run writes its result PNGs, ``progress.png`` (a strip of the image every k steps,
one row per image of the batch), ``report.json`` in the gallery's format (a ``title``,
``images`` panels with captions and top-k bars, flat ``metrics`` ending with an
``about`` sentence saying what the pictures show) and ``index.html`` from
:func:`fooltools.gallery.write_run_page`. Every file is written atomically. Numbers in
the report are those of the PNGs as written: each result is read back and checked to be
bit-identical to the 8-bit array the metrics were computed on.
"""

from __future__ import annotations

import io as _bytes
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fooltools import gallery, io, words
from fooltools.models.base import Classifier
from fooltools.perturb import versions

STRIP = "progress.png"
# The images the commands write beside STRIP, by name: an input photo in --out under one of
# them is refused (the run would write over it). Inversions are RECONSTRUCTION-*.png.
ORIGINAL, DREAM, RECONSTRUCTION = "original.png", "dream.png", "reconstruction-"
CONTENT, STYLE, RESULT = "content.png", "style.png", "result.png"
CELL_H, LABEL_H, PAD = 112, 14, 4  # strip cell height, caption band, spacing (pixels)


def save(out: Path, name: str, image: np.ndarray) -> str:
    """Write ``image`` (H, W, 3) as ``out/name`` and check the file holds exactly it.

    Returns:
        ``name``, for the report's panel.

    Raises:
        RuntimeError: The PNG read back differs from ``image`` (it was not on the 8-bit
            grid, so the metrics computed on it would not be those of the file).
    """
    back = io.read_image(io.write_png(out / name, image))
    if not np.array_equal(back, np.asarray(image, np.float32)):
        raise RuntimeError(f"{name}: image is not on the 8-bit grid; metrics would not match")
    return name


def _cell(image: np.ndarray) -> Image.Image:
    pic = Image.fromarray(io.to_uint8(image))
    w = max(1, round(pic.width * CELL_H / pic.height))
    # Nearest when enlarging: a 64-pixel reconstruction shows its real pixels.
    return pic.resize((w, CELL_H), Image.NEAREST if CELL_H > pic.height else Image.LANCZOS)


def progress_strip(path: Path, rows: Sequence[Sequence[tuple[str, np.ndarray]]]) -> Path:
    """Draw snapshots as a grid: one row per image, one captioned cell per snapshot.

    Args:
        path: Destination PNG (written atomically).
        rows: Per row, ``(caption, image)`` pairs; images (h, w, 3) in [0, 1] of any
            size, each scaled to :data:`CELL_H` pixels high.

    Returns:
        ``path``.
    """
    cells = [[(caption, _cell(img)) for caption, img in row] for row in rows]
    width = PAD + max(sum(c.width + PAD for _, c in row) for row in cells)
    height = PAD + len(cells) * (CELL_H + LABEL_H + PAD)
    sheet = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    y = PAD
    for row in cells:
        x = PAD
        for caption, cell in row:
            sheet.paste(cell, (x, y))
            draw.text((x, y + CELL_H + 1), caption, fill=(40, 40, 40), font=font)
            x += cell.width + PAD
        y += CELL_H + LABEL_H + PAD
    buf = _bytes.BytesIO()
    sheet.save(buf, format="PNG")
    return io.write_bytes_atomic(path, buf.getvalue())


def step_rows(
    frames: np.ndarray, steps: Sequence[int], names: Sequence[str] | None = None
) -> list[list[tuple[str, np.ndarray]]]:
    """Rows for :func:`progress_strip` from a trace's frames (F, N, H, W, 3)."""
    rows = []
    for n in range(frames.shape[1]):
        prefix = f"{names[n]}: " if names else ""
        rows.append(
            [(f"{prefix if i == 0 else ''}step {s}", frames[i, n]) for i, s in enumerate(steps)]
        )
    return rows


def top_classes(clf: Classifier, probs: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
    """The gallery's top-k bars for one probability vector (num_classes,)."""
    idx = np.argsort(-probs, kind="stable")[:k]
    return [
        {"index": int(i), "label": clf.labels.name(int(i)), "prob": float(probs[i])} for i in idx
    ]


def finish(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Add versions, write ``report.json`` and ``index.html``; return the report."""
    report["versions"] = versions()
    io.write_bytes_atomic(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    gallery.write_run_page(out)
    return report


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def write_inversion(
    out: Path, clf: Classifier, invs: Sequence[Any], *, source: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """Write the run directory of :func:`~fooltools.visualize.inversion.invert`'s results.

    Args:
        out: The run directory (created).
        clf: The classifier.
        invs: One :class:`~fooltools.visualize.inversion.Inversion` per layer, same photo.
        source: Name of the photo, for the title.
        settings: The options used (steps, weights, seed, ...), stored in the report.
    """
    from fooltools.visualize import layers

    original = invs[0].original
    h, w = original.shape[:2]
    shapes = layers.layer_shapes(clf, (h, w))
    panels = [
        {
            "file": save(out, ORIGINAL, original),
            "caption": f"target: {source} as the network sees it ({w}x{h})",
        }
    ]
    rows, per_layer, metrics = [], [], {}
    for inv in invs:
        starts = len(inv.ratio)
        for n, (x, ratio) in enumerate(zip(inv.trace.x, inv.ratio, strict=True)):
            panels.append(
                {
                    "file": save(out, f"{RECONSTRUCTION}{inv.layer}-{n + 1}.png", x),
                    "caption": f"from {inv.layer}, random start {n + 1}: features "
                    f"{_pct(ratio)} as far from the target's as a random image's",
                }
            )
        names = [f"{inv.layer} #{n + 1}" for n in range(starts)]
        rows += step_rows(inv.trace.frames, inv.trace.frame_steps, names)
        flat = inv.trace.x.reshape(starts, -1).astype(np.float64)
        pairs = [(i, j) for i in range(starts) for j in range(i + 1, starts)]
        spread = [float(np.sqrt(np.mean((flat[i] - flat[j]) ** 2))) for i, j in pairs]
        per_layer.append(
            {
                "layer": inv.layer,
                "shape": layers.describe(shapes[inv.layer]),
                "distance": inv.distance.tolist(),
                "random_distance": inv.random_distance.tolist(),
                "ratio": inv.ratio.tolist(),
                "rms_between_starts": spread,
            }
        )
        metrics[f"{inv.layer}: distance / random (worst)"] = round(float(inv.ratio.max()), 4)
        if spread:
            rms = round(255 * float(np.mean(spread)), 1)
            metrics[f"{inv.layer}: pixel RMS between starts (0-255)"] = rms
    progress_strip(out / STRIP, rows)
    panels.append({"file": STRIP, "caption": "progress: each layer and start, every few steps"})
    listed = ", ".join(inv.layer for inv in invs)
    metrics["steps"] = invs[0].trace.frame_steps[-1]
    metrics["about"] = (
        "Each reconstruction began as random noise and was changed, pixel by pixel, until "
        "the network's features of it at the named layer matched those of the target, "
        "under a smoothness prior (total variation). The percentage compares its feature "
        "distance to the target with that of a random image. What reconstructions share is "
        "what the layer keeps of the photo; where they differ from each other and from the "
        "photo, the layer does not care (Mahendran & Vedaldi, CVPR 2015)."
    )
    report = {
        "kind": "invert",
        "title": f"{source} reconstructed from layer{'s' * (len(invs) > 1)} {listed} of {clf.name}",
        **clf.record,  # weights None: the registry\'s own
        "source": source,
        "size": [h, w],
        "layers": per_layer,
        "frame_steps": list(invs[0].trace.frame_steps),
        "settings": settings,
        "images": panels,
        "metrics": metrics,
    }
    return finish(out, report)


def write_classviz(
    out: Path, clf: Classifier, viz: Any, *, settings: dict[str, Any]
) -> dict[str, Any]:
    """Write the run directory of a :class:`~fooltools.visualize.classviz.Visualization`."""
    is_class = viz.layer == "logits"
    names = [clf.labels.name(int(t)) if is_class else f"{viz.layer}:{int(t)}" for t in viz.targets]
    panels, confidences = [], []
    for n, (x, t) in enumerate(zip(viz.trace.x, viz.targets, strict=True)):
        conf = float(viz.probs[n, int(t)])
        confidences.append(conf)
        slug = "".join(c if c.isalnum() else "-" for c in names[n]).strip("-").lower()
        caption = (
            f"{names[n]}: {_pct(conf)} confidence"
            if is_class
            else f"channel {int(t)} of {viz.layer}: mean activation {viz.activation[n]:.3g}"
        )
        panels.append(
            {
                "file": save(out, f"{n + 1:02d}-{slug}.png", x),
                "caption": caption,
                "top": top_classes(clf, viz.probs[n]),
            }
        )
    progress_strip(out / STRIP, step_rows(viz.trace.frames, viz.trace.frame_steps, names))
    panels.append({"file": STRIP, "caption": "progress: each image, every few steps"})
    top1 = viz.probs.argmax(axis=1)
    report: dict[str, Any] = {
        "kind": "visualize",
        "title": (
            f"What {clf.name} thinks {', '.join(names)} look"
            + ("s" if len(names) == 1 else "")
            + " like"
            if is_class
            else f"Images that drive channels {', '.join(names)} of {clf.name}"
        ),
        **clf.record,  # weights None: the registry\'s own
        "layer": viz.layer,
        "targets": [int(t) for t in viz.targets],
        "names": names,
        "confidence": confidences,
        "activation": [float(a) for a in viz.activation],
        "frame_steps": list(viz.trace.frame_steps),
        "settings": settings,
        "images": panels,
    }
    metrics: dict[str, Any] = {}
    # A class (or channel) given twice has two images: a repeated name gets its image's
    # number, or the second image's value replaced the first's under one key.
    keys = [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    if is_class:
        report["success"] = bool(np.all(top1 == viz.targets))
        metrics["lowest confidence"] = words.figure(min(confidences))
        metrics.update(
            {f"{k} confidence": words.figure(c) for k, c in zip(keys, confidences, strict=True)}
        )
    else:
        metrics.update(
            {
                f"{k} activation": round(float(a), 4)
                for k, a in zip(keys, viz.activation, strict=True)
            }
        )
    metrics["steps"] = viz.trace.frame_steps[-1]
    metrics["about"] = (
        "Each image began as faint grey noise and was changed, pixel by pixel, to "
        + (
            "raise the network's confidence in its class"
            if is_class
            else "raise the mean activation of its channel"
        )
        + ", with a smoothness prior and random shifts (jitter) at every step so that the "
        "network's preferred patterns, not pixel-exact noise, emerge. Confidences are the "
        "model's on the PNG files (Simonyan et al. 2014; Erhan et al. 2009)."
    )
    report["metrics"] = metrics
    return finish(out, report)


def write_dream(
    out: Path, clf: Classifier, dream: Any, *, source: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """Write the run directory of a :class:`~fooltools.visualize.deepdream.Dream`."""
    h, w = dream.original.shape[:2]
    before, after = (float(e) for e in dream.energy)
    panels = [
        {"file": save(out, ORIGINAL, dream.original), "caption": f"photo: {source}"},
        {
            "file": save(out, DREAM, dream.x),
            "caption": f"dream: {dream.layer} energy x{after / max(before, 1e-12):.1f}",
        },
    ]
    progress_strip(out / STRIP, [list(zip(dream.frame_labels, dream.frames, strict=True))])
    panels.append({"file": STRIP, "caption": "progress: small octaves first, then larger"})
    metrics = {
        "energy gain": round(after / max(before, 1e-12), 3),
        "energy before": round(before, 4),
        "energy after": round(after, 4),
        "layer": dream.layer,
        "octaves": settings.get("octaves"),
        "steps per octave": settings.get("steps"),
        "about": (
            f"The photo was changed, pixel by pixel, to raise the energy (mean squared "
            f"activation) of layer {dream.layer}: whatever that layer faintly sees in the "
            "photo gets amplified. This is done on a pyramid of sizes (octaves), smallest "
            "first, so the patterns appear at several scales (Mordvintsev et al. 2015)."
        ),
    }
    report = {
        "kind": "dream",
        "title": f"{source} dreamed at layer {dream.layer} of {clf.name}",
        **clf.record,  # weights None: the registry\'s own
        "layer": dream.layer,
        "source": source,
        "size": [h, w],
        "energy": [before, after],
        "settings": settings,
        "images": panels,
        "metrics": metrics,
    }
    return finish(out, report)


# A content photo's style loss below this is float32 rounding, not a distance (the style
# losses are relative, so the bound holds for any images): a ratio to it is noise, 1e10
# and more when a photo is its own style.
MIN_STYLE_LOSS = 1e-12
NO_RATIO = "no ratio: the content photo's own style loss is 0 (it already has the style)"


def style_verdict(style_loss: float, ratio: float | None) -> str:
    """The result's style loss against the content photo's, as the page and CLI say it."""
    if ratio is None:
        return f"style loss {style_loss:.3g}; {NO_RATIO}"
    return f"style loss {_pct(ratio)} of the content photo's"


def style_ratio(style_loss: float, content_style_loss: float) -> float | None:
    """The result's style loss as a fraction of the content photo's, or None if that is 0.

    Args:
        style_loss: Style loss of the result.
        content_style_loss: Style loss of the content photo (the starting point).

    Returns:
        ``style_loss / content_style_loss``; None when ``content_style_loss`` is below
        :data:`MIN_STYLE_LOSS`, where the ratio is undefined.
    """
    if not content_style_loss >= MIN_STYLE_LOSS:
        return None
    return style_loss / content_style_loss


def write_style(
    out: Path,
    clf: Classifier,
    sty: Any,
    *,
    content_name: str,
    style_name: str,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Write the run directory of a :class:`~fooltools.visualize.style.Stylization`.

    The report's ``style_ratio`` is the result's style loss over the content photo's, or
    None when the content photo's own is 0 (below :data:`MIN_STYLE_LOSS`): it already has
    the style, as when one photo is both, and a ratio to 0 means nothing.
    """
    ratio = style_ratio(sty.style_loss, sty.content_style_loss)
    judged = style_verdict(sty.style_loss, ratio)
    panels = [
        {"file": save(out, CONTENT, sty.content), "caption": f"content: {content_name}"},
        {"file": save(out, STYLE, sty.style), "caption": f"style: {style_name}"},
        {"file": save(out, RESULT, sty.trace.x[0]), "caption": f"result: {judged}"},
    ]
    progress_strip(out / STRIP, step_rows(sty.trace.frames, sty.trace.frame_steps))
    panels.append({"file": STRIP, "caption": "progress: from the content photo, every few steps"})
    metrics = {
        "style loss / content photo's": NO_RATIO if ratio is None else round(ratio, 4),
        "style loss": round(sty.style_loss, 5),
        "content loss": round(sty.content_loss, 5),
        "content layer": sty.content_layer,
        "style layers": ", ".join(sty.style_layers),
        "steps": sty.trace.frame_steps[-1],
        "about": (
            "Starting from the content photo, the pixels were changed so that the Gram "
            "matrices (which features occur together, wherever they are) of the lower "
            f"layers {', '.join(sty.style_layers)} match the style image's, while the "
            f"higher layer {sty.content_layer} keeps the content photo's features "
            "(Gatys, Ecker & Bethge, CVPR 2016). Losses are relative squared distances."
        ),
    }
    report = {
        "kind": "style",
        "title": f"{content_name} in the style of {style_name} ({clf.name} features)",
        **clf.record,  # weights None: the registry\'s own
        "content_layer": sty.content_layer,
        "style_layers": list(sty.style_layers),
        "style_loss": sty.style_loss,
        "content_style_loss": sty.content_style_loss,
        "style_ratio": ratio,
        "content_loss": sty.content_loss,
        "size": list(sty.content.shape[:2]),
        "settings": settings,
        "images": panels,
        "metrics": metrics,
    }
    return finish(out, report)
