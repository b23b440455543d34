"""Draw detections on images (Pillow) and turn them into JSON-ready records."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fooltools import io
from fooltools.detection.detectors import Found

# Distinct, saturated colours; class k uses _PALETTE[k % len(_PALETTE)].
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def records(found: Found, index: int, names: tuple[str, ...], confidence: float) -> list[dict]:
    """Image ``index``'s detections scoring >= ``confidence``, as dicts, best first.

    Each is ``{"label", "class_index", "score", "box": [x1, y1, x2, y2]}`` in pixels.
    """
    out = []
    for box, score, label, valid in zip(*(np.asarray(a)[index] for a in found), strict=True):
        if valid and score >= confidence:
            out.append({
                "label": names[int(label)],
                "class_index": int(label),
                "score": round(float(score), 4),
                "box": [round(float(v), 2) for v in box],
            })  # fmt: skip
    return sorted(out, key=lambda r: -r["score"])


def draw_boxes(image: np.ndarray, dets: list[dict[str, Any]], *, min_side: int = 256) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) with ``dets`` (from :func:`records`) drawn on it.

    ``image`` is uint8, or floats in [0, 1] such as an attack's ``result.x[i]`` (rounded
    as :func:`fooltools.io.write_png` does; Pillow refused them with "Cannot handle this
    data type"), as a numpy or JAX array.

    Small images are first enlarged (nearest neighbour) so that the short side is at least
    ``min_side`` and the labels stay legible.

    Returns:
        (H', W', 3) uint8.
    """
    image = io.to_uint8(image)
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_side / min(h, w))))
    canvas = Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for det in dets:
        colour = _PALETTE[det["class_index"] % len(_PALETTE)]
        x1, y1, x2, y2 = (v * scale for v in det["box"])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        text = f"{det['label']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        y = max(0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, y, x1 + right - left + 4, y + bottom - top + 2), fill=colour)
        draw.text((x1 + 2, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
