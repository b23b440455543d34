"""A seeded synthetic detection dataset: filled shapes on cluttered backgrounds.

Used to train and evaluate the small bundled detectors, so it has to be learnable by a small
network yet not trivial: five shape classes (:data:`CLASSES`) of random colour, shading,
size (about 12% to 45% of the image side), aspect and rotation; 1 to ``max_objects`` per
image, overlapping and cut by the border; backgrounds of smooth colour fields, gratings and
fine texture with distractors (thin lines, small dots and small rings) that are none of
the classes.

Every label matches what is visible. Objects are painted in order, later over earlier. An
object with less than :data:`MIN_VISIBLE` of its area visible (hidden by later objects or
outside the image) is removed from the picture altogether, not only from the labels, so
that no unlabelled fragment remains (see :func:`draw_objects`). Each remaining object's box
is the tight box of its visible part, measured on the supersampled raster, i.e. to 1/4
pixel.

Determinism: image ``index`` of ``seed`` draws everything from
``np.random.default_rng([seed, index])`` (PCG64, whose stream is the same on every platform),
so any image can be made alone and in any order, and the pixels are rounded to the 8-bit
grid (``k / 255``, exactly what :func:`fooltools.io.write_png` stores). The same
``(seed, index)`` thus gives the same bytes on any machine; the only caveat is that
numpy's ``sin``/``cos`` may differ in the last bit between builds, which could move a value
that lands exactly on a rounding boundary. By convention the training split is
:data:`TRAIN_SEED` and the held-out split :data:`TEST_SEED`.

Coordinates are pixels with the origin at the top-left corner of the image: pixel ``(i, j)``
(row, column) covers ``[j, j + 1] x [i, i + 1]``; boxes are ``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

CLASSES = ("circle", "square", "triangle", "star", "cross")
TRAIN_SEED = 0
TEST_SEED = 1
DEFAULT_SIZE = (128, 128)
# An object with less than this fraction of its area visible is removed from the image.
MIN_VISIBLE = 0.4
# Object extent (twice the circumradius) as a fraction of the shorter image side.
SCALE_RANGE = (0.12, 0.45)
SUPERSAMPLE = 4  # samples per pixel side: 16 per pixel for antialiasing and box precision

_LEVELS8 = np.arange(256, dtype=np.float32) / np.float32(255)


class Shape(NamedTuple):
    """One object to draw.

    Attributes:
        label: index into :data:`CLASSES`.
        cx: centre x in pixels.
        cy: centre y in pixels.
        radius: circumradius in pixels (before the aspect stretch).
        angle: rotation in radians (counter-clockwise on screen is negative: y points down).
        aspect: stretch, x by ``aspect`` and y by ``1 / aspect`` before rotating (area kept).
        detail: star: inner/outer radius ratio; cross: arm half-width per radius; else unused.
        color: RGB in [0, 1].
        shade: brightness change per radius along x and y (a linear gradient over the shape).
    """

    label: int
    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    aspect: float = 1.0
    detail: float = 0.45
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shade: tuple[float, float] = (0.0, 0.0)


class Dataset(NamedTuple):
    """A stack of synthetic images with padded annotations.

    Attributes:
        images: float32 ``[n, H, W, 3]`` in [0, 1].
        boxes: float32 ``[n, max_objects, 4]`` ``(x1, y1, x2, y2)`` pixels; padding rows are 0.
        labels: int32 ``[n, max_objects]`` class indices; padding is -1.
        counts: int32 ``[n]`` number of real objects per image (they come first).
    """

    images: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    counts: np.ndarray


# --- shapes in unit coordinates (circumradius about 1) ---------------------------------------


def _star(detail: float) -> np.ndarray:
    k = np.arange(10)
    r = np.where(k % 2 == 0, 1.0, detail)
    a = -np.pi / 2 + k * np.pi / 5
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _cross(detail: float) -> np.ndarray:
    a = detail
    return np.array(
        [[a, 1], [a, a], [1, a], [1, -a], [a, -a], [a, -1]]
        + [[-a, -1], [-a, -a], [-1, -a], [-1, a], [-a, a], [-a, 1]],
        dtype=np.float64,
    )


def _regular(n: int) -> np.ndarray:
    a = -np.pi / 2 + np.pi / n + 2 * np.pi * np.arange(n) / n
    if n == 3:
        a = a - np.pi / 3  # apex up
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _polygon(shape: Shape) -> np.ndarray | None:
    name = CLASSES[shape.label]
    if name == "circle":
        return None
    if name == "square":
        return _regular(4)
    if name == "triangle":
        return _regular(3)
    return _star(shape.detail) if name == "star" else _cross(shape.detail)


def _unit_area(shape: Shape) -> float:
    poly = _polygon(shape)
    if poly is None:
        return math.pi
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)  # shoelace


def _inside(shape: Shape, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Whether pixel-space points lie inside ``shape`` (arrays broadcast)."""
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    dx, dy = (px - shape.cx) / shape.radius, (py - shape.cy) / shape.radius
    # Inverse of: stretch by (aspect, 1 / aspect), then rotate by angle.
    u = (c * dx + s * dy) / shape.aspect
    v = (-s * dx + c * dy) * shape.aspect
    poly = _polygon(shape)
    if poly is None:
        return u * u + v * v <= 1.0
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), bool)
    # Even-odd crossing test, one edge at a time (the star and the cross are not convex).
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        if y0 == y1:
            continue  # a horizontal edge crosses no horizontal ray
        crosses = (v < y0) != (v < y1)
        x_at = x0 + (v - y0) * ((x1 - x0) / (y1 - y0))
        inside ^= crosses & (u < x_at)
    return inside


def _reach(shape: Shape) -> float:
    """Radius in pixels of a disc about the centre that contains the whole shape."""
    poly = _polygon(shape)
    unit = 1.0 if poly is None else float(np.max(np.hypot(poly[:, 0], poly[:, 1])))
    return unit * shape.radius * max(shape.aspect, 1 / shape.aspect)


def _rasterise(shape: Shape, h: int, w: int, ss: int) -> tuple[int, int, np.ndarray]:
    """Supersampled mask of ``shape`` over the pixel window that holds it.

    Returns ``(top, left, mask)``: the window's first pixel row and column in the ``h x w``
    image and a bool mask ``[rows * ss, cols * ss]`` (empty when the shape is off the image).
    """
    r = _reach(shape)
    left, right = max(0, math.floor(shape.cx - r)), min(w, math.ceil(shape.cx + r))
    top, bottom = max(0, math.floor(shape.cy - r)), min(h, math.ceil(shape.cy + r))
    xs = (np.arange(left * ss, max(right, left) * ss) + 0.5) / ss
    ys = (np.arange(top * ss, max(bottom, top) * ss) + 0.5) / ss
    return top, left, _inside(shape, xs[None, :], ys[:, None])


def draw_objects(
    background: np.ndarray, shapes: list[Shape], *, supersample: int = SUPERSAMPLE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint shapes over a background, dropping the hidden ones, and box what is visible.

    An object's visibility depends only on the objects painted after it, so they are
    decided from the top down: each is kept if at least :data:`MIN_VISIBLE` of its area is
    inside the image and not covered by a *kept* later object. Dropped objects are not drawn.

    Args:
        background: float ``[H, W, 3]`` in [0, 1].
        shapes: objects in painting order (later ones cover earlier ones).
        supersample: samples per pixel side, for antialiasing and box precision.

    Returns:
        ``(image, boxes, labels)``: float32 ``[H, W, 3]`` (not quantized); float32 ``[K, 4]``
        tight boxes of the visible parts of the kept objects, in painting order; int32 ``[K]``.
    """
    h, w = background.shape[:2]
    ss = supersample
    covered = np.zeros((h * ss, w * ss), bool)
    visible: dict[int, tuple[int, int, np.ndarray]] = {}
    for k in reversed(range(len(shapes))):
        top, left, mask = _rasterise(shapes[k], h, w, ss)
        window = covered[top * ss : top * ss + mask.shape[0], left * ss : left * ss + mask.shape[1]]
        seen = mask & ~window
        area = _unit_area(shapes[k]) * shapes[k].radius ** 2 * ss * ss  # in samples
        if np.count_nonzero(seen) >= MIN_VISIBLE * area:
            visible[k] = (top, left, seen)
            window |= mask  # a view: marks the samples it hides from earlier objects

    image = np.array(background, np.float64)
    boxes, labels = [], []
    for k in sorted(visible):
        shape, (top, left, seen) = shapes[k], visible[k]
        rows, cols = seen.shape[0] // ss, seen.shape[1] // ss
        cover = seen.reshape(rows, ss, cols, ss).mean(axis=(1, 3))[..., None]
        gy, gx = np.nonzero(seen.any(axis=1))[0], np.nonzero(seen.any(axis=0))[0]
        x0, y0 = left + gx[0] / ss, top + gy[0] / ss
        boxes.append([x0, y0, left + (gx[-1] + 1) / ss, top + (gy[-1] + 1) / ss])
        labels.append(shape.label)
        # Linear shading across the shape, evaluated at pixel centres.
        cy = (np.arange(top, top + rows) + 0.5 - shape.cy) / shape.radius
        cx = (np.arange(left, left + cols) + 0.5 - shape.cx) / shape.radius
        light = 1 + shape.shade[0] * cx[None, :] + shape.shade[1] * cy[:, None]
        colour = np.clip(np.asarray(shape.color)[None, None] * light[..., None], 0, 1)
        window = image[top : top + rows, left : left + cols]
        window += cover * (colour - window)
    return (
        image.astype(np.float32),
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int32),
    )


# --- random scenes ---------------------------------------------------------------------------


def _smooth(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """Random values on a coarse grid, bilinearly interpolated to ``[h, w, channels]``."""
    gh, gw = cells + 1, cells + 1
    grid = rng.random((gh, gw, channels))
    ty = np.linspace(0, gh - 1, h)
    tx = np.linspace(0, gw - 1, w)
    y0 = np.minimum(ty.astype(int), gh - 2)
    x0 = np.minimum(tx.astype(int), gw - 2)
    fy, fx = (ty - y0)[:, None, None], (tx - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _soft(distance: np.ndarray) -> np.ndarray:
    # Coverage of a pixel whose centre is at signed distance d outside an edge: 1 px ramp.
    return np.clip(0.5 - distance, 0, 1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered background ``[h, w, 3]``: colour field, texture, distractors."""
    img = 0.15 + 0.7 * _smooth(rng, h, w, int(rng.integers(1, 5)), 3)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    layers = rng.random(3)
    if layers[0] < 0.5:  # a grating of random orientation, period and tint
        a, period = rng.uniform(0, np.pi), rng.uniform(4, 20)
        wave = np.sin((np.cos(a) * xx + np.sin(a) * yy) * (2 * np.pi / period))
        img += rng.uniform(0.04, 0.15) * wave[..., None] * rng.uniform(-1, 1, 3)
    if layers[1] < 0.6:  # fine mottled texture
        img += rng.uniform(0.05, 0.2) * (_smooth(rng, h, w, int(rng.integers(12, 32)), 3) - 0.5)
    # Distractors: small or thin, so that none looks like a filled class shape.
    side = min(h, w)
    for _ in range(int(rng.integers(0, 9))):
        kind, colour = rng.integers(0, 3), rng.random(3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if kind == 0:  # line segment, 1-3 px wide
            a, length = rng.uniform(0, np.pi), rng.uniform(0.08, 0.35) * side
            ex, ey = math.cos(a), math.sin(a)
            t = np.clip((xx - cx) * ex + (yy - cy) * ey, -length / 2, length / 2)
            dist = np.hypot(xx - cx - t * ex, yy - cy - t * ey) - rng.uniform(0.5, 1.5)
        elif kind == 1:  # dot
            dist = np.hypot(xx - cx, yy - cy) - rng.uniform(1.0, 0.03 * side)
        else:  # thin ring, smaller than the smallest circle
            radius = rng.uniform(0.02, 0.05) * side
            dist = np.abs(np.hypot(xx - cx, yy - cy) - radius) - rng.uniform(0.5, 1.0)
        cover = _soft(dist)[..., None]
        img += cover * (colour - img)
    return np.clip(img, 0, 1)


def _random_shape(rng: np.random.Generator, background: np.ndarray, others: list[Shape]) -> Shape:
    h, w = background.shape[:2]
    label = int(rng.integers(0, len(CLASSES)))
    extent = math.exp(rng.uniform(*np.log(SCALE_RANGE))) * min(h, w)  # log-uniform size
    radius = extent / 2
    # Centres may lie near the border, so objects get cut; mostly-outside ones are dropped.
    cx = rng.uniform(0.3 * radius, w - 0.3 * radius)
    cy = rng.uniform(0.3 * radius, h - 0.3 * radius)
    detail = rng.uniform(0.38, 0.5) if CLASSES[label] == "star" else rng.uniform(0.22, 0.34)
    # Colour: the first of a few random draws that stands out from the local background and
    # from the other objects (which it may overlap), else the one that stands out most.
    y0, y1 = int(max(cy - radius, 0)), int(min(cy + radius, h)) + 1
    x0, x1 = int(max(cx - radius, 0)), int(min(cx + radius, w)) + 1
    local = background[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    avoid = np.array([local, *(o.color for o in others)])
    candidates = rng.random((12, 3))
    contrast = np.linalg.norm(candidates[:, None] - avoid[None], axis=-1).min(axis=1)
    good = np.nonzero(contrast > 0.4)[0]
    color = candidates[good[0] if good.size else int(np.argmax(contrast))]
    shade = rng.uniform(-0.3, 0.3, 2)
    return Shape(
        label=label,
        cx=cx,
        cy=cy,
        radius=radius,
        angle=rng.uniform(0, 2 * np.pi),
        aspect=math.exp(rng.uniform(-0.15, 0.15)),
        detail=detail,
        color=(float(color[0]), float(color[1]), float(color[2])),
        shade=(float(shade[0]), float(shade[1])),
    )


def make_image(
    seed: int,
    index: int,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    max_objects: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index`` of the synthetic set ``seed`` (deterministic, see the module docstring).

    Args:
        seed: which set (:data:`TRAIN_SEED`, :data:`TEST_SEED` or any other).
        index: which image of it, >= 0.
        size: ``(H, W)`` in pixels.
        max_objects: at most this many objects (at least one).

    Returns:
        ``(image, boxes, labels)``: float32 ``[H, W, 3]`` in [0, 1] on the 8-bit grid;
        float32 ``[K, 4]`` ``(x1, y1, x2, y2)`` inside the image with positive area;
        int32 ``[K]`` indices into :data:`CLASSES`; ``1 <= K <= max_objects``.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    h, w = size
    rng = np.random.default_rng([seed, index])
    background = _background(rng, h, w)
    while True:  # almost always once: the last object painted is rarely hidden
        shapes: list[Shape] = []
        for _ in range(rng.integers(1, max_objects + 1)):
            shapes.append(_random_shape(rng, background, shapes))
        image, boxes, labels = draw_objects(background, shapes)
        if len(labels):
            break
    image = image + rng.normal(0, rng.uniform(0.005, 0.03), image.shape)
    # 8-bit grid: what a PNG stores, and robust to last-bit float differences across machines.
    return _LEVELS8[np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)], boxes, labels


def make_dataset(
    seed: int,
    n: int,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    max_objects: int = 4,
) -> Dataset:
    """Images ``0 .. n-1`` of set ``seed``, stacked (so a prefix of a larger set is the same).

    Args:
        seed: which set; :data:`TRAIN_SEED` for training, :data:`TEST_SEED` for evaluation.
        n: number of images.
        size: ``(H, W)`` in pixels.
        max_objects: at most this many objects per image; also the padded annotation length.

    Returns:
        A :class:`Dataset`.
    """
    h, w = size
    images = np.zeros((n, h, w, 3), np.float32)
    boxes = np.zeros((n, max_objects, 4), np.float32)
    labels = np.full((n, max_objects), -1, np.int32)
    counts = np.zeros(n, np.int32)
    for i in range(n):
        images[i], b, lab = make_image(seed, i, size=size, max_objects=max_objects)
        boxes[i, : len(lab)], labels[i, : len(lab)], counts[i] = b, lab, len(lab)
    return Dataset(images, boxes, labels, counts)
