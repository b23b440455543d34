"""Tests for fooltools.detection.synthetic: the seeded shapes detection dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fooltools.detection import synthetic as S

FLAT = np.zeros((64, 80, 3), np.float32)
WHITE = (1.0, 1.0, 1.0)


def pixel_box(image: np.ndarray) -> np.ndarray:
    """Box (x1, y1, x2, y2) of the pixels that differ from the black background."""
    rows = np.nonzero(image.any(axis=(1, 2)))[0]
    cols = np.nonzero(image.any(axis=(0, 2)))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def test_deterministic_per_seed_and_index() -> None:
    a = S.make_image(S.TRAIN_SEED, 7)
    b = S.make_image(S.TRAIN_SEED, 7)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert S.make_image(S.TRAIN_SEED, 8)[0].tobytes() != a[0].tobytes()
    assert S.make_image(S.TEST_SEED, 7)[0].tobytes() != a[0].tobytes()


@pytest.mark.parametrize("size", [(128, 128), (72, 100)])
def test_images_and_annotations_are_well_formed(size: tuple[int, int]) -> None:
    h, w = size
    for index in range(40):
        image, boxes, labels = S.make_image(3, index, size=size, max_objects=5)
        assert image.shape == (h, w, 3) and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 1
        # on the 8-bit grid, so a PNG round trip is exact
        np.testing.assert_array_equal(np.round(image * 255) / np.float32(255), image)
        assert boxes.dtype == np.float32 and labels.dtype == np.int32
        assert 1 <= len(labels) <= 5 and boxes.shape == (len(labels), 4)
        assert np.all((labels >= 0) & (labels < len(S.CLASSES)))
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2:] - boxes[:, :2] > 0)


@pytest.mark.parametrize("label", range(len(S.CLASSES)))
def test_box_is_tight_to_visible_pixels(label: int) -> None:
    rng = np.random.default_rng(label)
    for _ in range(4):
        shape = S.Shape(
            label=label,
            cx=rng.uniform(20, 60),
            cy=rng.uniform(20, 44),
            radius=rng.uniform(6, 18),
            angle=rng.uniform(0, 2 * np.pi),
            aspect=math.exp(rng.uniform(-0.15, 0.15)),
            detail=0.4 if S.CLASSES[label] == "star" else 0.3,
            color=WHITE,
        )
        image, boxes, labels = S.draw_objects(FLAT, [shape])
        assert labels.tolist() == [label]
        px = pixel_box(image)
        # Measured on 4x4 samples: inside the pixels touched, and within a pixel of their edge.
        assert np.all(np.abs(boxes[0] - px) < 1), (boxes[0], px)
        assert np.all(boxes[0, :2] >= px[:2]) and np.all(boxes[0, 2:] <= px[2:])
        # antialiased: the edge has partial coverage
        assert np.any((image > 0.05) & (image < 0.95))


def test_circle_box_matches_geometry() -> None:
    shape = S.Shape(label=S.CLASSES.index("circle"), cx=30.3, cy=25.6, radius=12.0, color=WHITE)
    _, boxes, _ = S.draw_objects(FLAT, [shape])
    np.testing.assert_allclose(boxes[0], [18.3, 13.6, 42.3, 37.6], atol=0.25 + 1e-4)


def square(cx: float, cy: float, side: float, color=WHITE) -> S.Shape:
    """Axis-aligned square (circumradius side / sqrt 2)."""
    return S.Shape(S.CLASSES.index("square"), cx, cy, side / math.sqrt(2), color=color)


def test_partly_occluded_object_keeps_box_of_visible_part() -> None:
    first = square(40, 32, 20)  # covers [30, 50] x [22, 42]
    cover = square(60, 32, 40, color=(0.5, 0.5, 0.5))  # covers x >= 40: half of the first
    image, boxes, labels = S.draw_objects(FLAT, [first, cover])
    assert labels.tolist() == [1, 1]
    np.testing.assert_allclose(boxes[0], [30, 22, 40, 42], atol=1e-5)
    np.testing.assert_allclose(boxes[1], [40, 12, 80, 52], atol=1e-5)  # clipped at x = 80
    np.testing.assert_array_equal(image[30, 35], WHITE)


def test_occluded_objects_are_dropped_and_erased() -> None:
    first = square(40, 32, 20, color=(1.0, 0.0, 0.0))  # [30, 50] x [22, 42]
    cover = square(56, 32, 40, color=(0.5, 0.5, 0.5))  # [36, 76]: first keeps 30%
    image, boxes, labels = S.draw_objects(FLAT, [first, cover])
    assert len(labels) == 1
    np.testing.assert_allclose(boxes[0], [36, 12, 76, 52], atol=1e-5)
    # the hidden object is removed from the picture too: no unlabelled red sliver remains
    assert np.all(image[..., 0] == image[..., 1])
    alone, _, _ = S.draw_objects(FLAT, [cover])
    np.testing.assert_array_equal(image, alone)


def test_dropping_an_object_uncovers_the_one_below() -> None:
    a = square(20, 32, 20)  # [10, 30]
    b = square(22, 32, 20)  # [12, 32], over a: a alone would keep [10, 12], 10%
    c = square(49, 32, 60)  # [19, 79], over both: b keeps [12, 19], 35% -> dropped
    image, boxes, labels = S.draw_objects(FLAT, [a, b, c])
    # With b gone, a shows [10, 19], 45%: kept, boxed to its visible part.
    assert len(labels) == 2
    np.testing.assert_allclose(boxes, [[10, 22, 19, 42], [19, 2, 79, 62]], atol=1e-5)
    without_b, _, _ = S.draw_objects(FLAT, [a, c])
    np.testing.assert_array_equal(image, without_b)


def test_object_mostly_outside_the_image_is_dropped() -> None:
    circle = S.CLASSES.index("circle")
    outside = S.Shape(circle, -5.0, 30.0, 10.0, color=WHITE)  # about 20% of it inside
    inside = S.Shape(circle, 40.0, 30.0, 10.0, color=WHITE)
    image, boxes, labels = S.draw_objects(FLAT, [outside, inside])
    assert len(labels) == 1 and boxes[0, 0] > 20
    assert not image[:, :10].any()
    cut = S.Shape(circle, 2.0, 30.0, 10.0, color=WHITE)  # 70% inside: kept, box clipped
    _, boxes, _ = S.draw_objects(FLAT, [cut])
    np.testing.assert_allclose(boxes[0], [0, 20, 12, 40], atol=0.25 + 1e-4)


def test_make_dataset_padding_and_consistency() -> None:
    ds = S.make_dataset(S.TEST_SEED, 12, size=(64, 64), max_objects=3)
    assert ds.images.shape == (12, 64, 64, 3) and ds.images.dtype == np.float32
    assert ds.boxes.shape == (12, 3, 4) and ds.labels.shape == (12, 3)
    assert ds.counts.dtype == np.int32 and ds.labels.dtype == np.int32
    assert np.all((ds.counts >= 1) & (ds.counts <= 3))
    assert len(np.unique(ds.counts)) > 1  # not always the same number of objects
    for i in range(12):
        n = ds.counts[i]
        assert np.all(ds.labels[i, :n] >= 0) and np.all(ds.labels[i, n:] == -1)
        assert np.all(ds.boxes[i, n:] == 0)
        image, boxes, labels = S.make_image(S.TEST_SEED, i, size=(64, 64), max_objects=3)
        np.testing.assert_array_equal(ds.images[i], image)
        np.testing.assert_array_equal(ds.boxes[i, :n], boxes)
        np.testing.assert_array_equal(ds.labels[i, :n], labels)


def test_class_balance() -> None:
    ds = S.make_dataset(S.TRAIN_SEED, 500)
    labels = ds.labels[ds.labels >= 0]
    share = np.bincount(labels, minlength=len(S.CLASSES)) / len(labels)
    assert np.all((share > 0.10) & (share < 0.30)), share
    # sizes span the advertised range (boxes of visible parts can only be smaller)
    sides = np.max(ds.boxes[..., 2:] - ds.boxes[..., :2], axis=-1)[ds.labels >= 0] / 128
    assert sides.max() > 0.4 and np.median(sides) > 0.15


def test_rejects_no_objects() -> None:
    with pytest.raises(ValueError, match="max_objects"):
        S.make_image(0, 0, max_objects=0)
