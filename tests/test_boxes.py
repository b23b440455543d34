"""Tests for fooltools.detection.boxes: IoU, box coding, fixed-size NMS and mAP."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fooltools.detection import boxes as B

# --- references ------------------------------------------------------------------------------


def iou_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force IoU, one pair at a time, in float32 like the JAX version."""
    a, b = np.float32(a), np.float32(b)
    out = np.zeros((len(a), len(b)), np.float32)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(min(p[2], q[2]) - max(p[0], q[0]), np.float32(0))
            ih = max(min(p[3], q[3]) - max(p[1], q[1]), np.float32(0))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0
    return out


def greedy_nms(boxes, scores, thr, max_out, score_thr=-math.inf, classes=None) -> list[int]:
    """Plain-Python greedy NMS, the torchvision definition."""
    boxes, scores = np.float32(boxes), np.float32(scores)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if not scores[i] > score_thr:
            continue
        same = [j for j in keep if classes is None or classes[j] == classes[i]]
        if any(iou_loop(boxes[i : i + 1], boxes[j : j + 1])[0, 0] > np.float32(thr) for j in same):
            continue
        keep.append(i)
    return keep[:max_out]


def tv_encode(gt: np.ndarray, ex: np.ndarray, w=(10.0, 10.0, 5.0, 5.0)) -> np.ndarray:
    """torchvision's encode_boxes, written out in float64 numpy."""
    ew, eh = ex[:, 2] - ex[:, 0], ex[:, 3] - ex[:, 1]
    ex_x, ex_y = ex[:, 0] + 0.5 * ew, ex[:, 1] + 0.5 * eh
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return np.stack(
        [
            w[0] * (gx - ex_x) / ew,
            w[1] * (gy - ex_y) / eh,
            w[2] * np.log(gw / ew),
            w[3] * np.log(gh / eh),
        ],
        axis=1,
    )


def tv_decode(codes: np.ndarray, bx: np.ndarray, w=(10.0, 10.0, 5.0, 5.0)) -> np.ndarray:
    """torchvision's decode_single, written out in float64 numpy."""
    clip = math.log(1000.0 / 16)
    widths, heights = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
    cx, cy = bx[:, 0] + 0.5 * widths, bx[:, 1] + 0.5 * heights
    dx, dy = codes[:, 0] / w[0], codes[:, 1] / w[1]
    dw = np.minimum(codes[:, 2] / w[2], clip)
    dh = np.minimum(codes[:, 3] / w[3], clip)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = np.exp(dw) * widths, np.exp(dh) * heights
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=1)


def random_boxes(rng: np.random.Generator, n: int, span: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, span, (n, 2))
    wh = rng.uniform(1, span / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


# --- IoU and conversions ---------------------------------------------------------------------


def test_iou_special_cases() -> None:
    a = np.array(
        [
            [0, 0, 10, 10],  # reference
            [20, 20, 30, 30],  # disjoint
            [2, 2, 5, 5],  # contained
            [0, 0, 10, 10],  # identical
            [5, 5, 5, 5],  # zero area, inside the reference
            [10, 0, 20, 10],  # touching edge
        ],
        np.float32,
    )
    got = np.asarray(B.box_iou(a, a))
    np.testing.assert_allclose(got, iou_loop(a, a), rtol=1e-6, atol=0)
    np.testing.assert_allclose(B.np_box_iou(a, a), got, rtol=1e-6, atol=0)  # host version
    assert got[0, 1] == 0 and got[0, 5] == 0
    assert got[0, 2] == pytest.approx(9 / 100)
    assert got[0, 3] == 1.0
    assert got[4, 4] == 0.0 and got[0, 4] == 0.0  # zero area: 0, not NaN
    assert np.all(np.isfinite(got))


def test_iou_random_vs_loop() -> None:
    rng = np.random.default_rng(0)
    a, b = np.float32(random_boxes(rng, 17)), np.float32(random_boxes(rng, 9))
    got = B.box_iou(a, b)
    assert got.shape == (17, 9)
    np.testing.assert_allclose(np.asarray(got), iou_loop(a, b), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(B.np_box_iou(a, b), iou_loop(a, b), rtol=1e-5, atol=1e-7)
    # leading dimensions broadcast
    batched = B.box_iou(np.stack([a, a[::-1]]), b)
    np.testing.assert_allclose(np.asarray(batched[1]), iou_loop(a[::-1], b), rtol=1e-5, atol=1e-7)


def test_iou_gradient_finite_for_degenerate_boxes() -> None:
    a = jnp.array([[1.0, 1.0, 1.0, 1.0]])
    g = jax.grad(lambda x: B.box_iou(x, x).sum())(a)
    assert np.all(np.isfinite(np.asarray(g)))


def test_area_and_conversions() -> None:
    bx = np.array([[1.0, 2.0, 4.0, 8.0], [3.0, 3.0, 1.0, 5.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(B.box_area(bx)), [18.0, 0.0])  # inverted: 0
    cw = np.asarray(B.xyxy_to_xywh(bx[:1]))
    np.testing.assert_array_equal(cw, [[2.5, 5.0, 3.0, 6.0]])
    np.testing.assert_array_equal(np.asarray(B.xywh_to_xyxy(cw)), bx[:1])
    rng = np.random.default_rng(1)
    r = np.float32(random_boxes(rng, 20))
    np.testing.assert_allclose(np.asarray(B.xywh_to_xyxy(B.xyxy_to_xywh(r))), r, atol=1e-4)


def test_clip_boxes() -> None:
    bx = np.array([[-5.0, -1.0, 50.0, 30.0], [10.0, 12.0, 20.0, 25.0]], np.float32)
    got = np.asarray(B.clip_boxes(bx, height=20, width=40))
    np.testing.assert_array_equal(got, [[0, 0, 40, 20], [10, 12, 20, 20]])


# --- box coding ------------------------------------------------------------------------------


def test_encode_hand_computed() -> None:
    proposal = np.array([[0.0, 0.0, 10.0, 20.0]], np.float32)  # centre (5, 10), 10 x 20
    target = np.array([[2.0, 4.0, 12.0, 44.0]], np.float32)  # centre (7, 24), 10 x 40
    codes = np.asarray(B.encode_boxes(target, proposal))
    # dx = 10 * 2 / 10, dy = 10 * 14 / 20, dw = 5 * log(1), dh = 5 * log(2)
    np.testing.assert_allclose(codes, [[2.0, 7.0, 0.0, 5 * math.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(B.decode_boxes(codes, proposal)), target, atol=1e-5)


def test_decode_clamps_scale() -> None:
    proposal = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    codes = np.array([[0.0, 0.0, 50.0, -5.0]], np.float32)  # dw / 5 = 10 > log(62.5)
    out = np.asarray(B.decode_boxes(codes, proposal))
    # width 62.5 * 10 about the centre 5; height exp(-1) * 10 (no lower clamp)
    np.testing.assert_allclose(out[0, [0, 2]], [5 - 312.5, 5 + 312.5], rtol=1e-5)
    np.testing.assert_allclose(out[0, 3] - out[0, 1], 10 * math.exp(-1), rtol=1e-5)


def test_coding_matches_torchvision_formulas_and_round_trips() -> None:
    rng = np.random.default_rng(2)
    gt, ex = random_boxes(rng, 50), random_boxes(rng, 50)
    for w in [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)]:
        codes = np.asarray(B.encode_boxes(np.float32(gt), np.float32(ex), w))
        np.testing.assert_allclose(codes, tv_encode(gt, ex, w), rtol=1e-4, atol=1e-4)
        wild = rng.normal(0, 3, (50, 4)) * np.array(w)  # some scale codes get clamped
        dec = np.asarray(B.decode_boxes(np.float32(wild), np.float32(ex), w))
        np.testing.assert_allclose(dec, tv_decode(wild, ex, w), rtol=1e-4, atol=1e-3)
        back = np.asarray(B.decode_boxes(codes, np.float32(ex), w))
        np.testing.assert_allclose(back, gt, rtol=1e-4, atol=1e-3)


def test_decode_per_class_broadcast() -> None:
    rng = np.random.default_rng(3)
    props = np.float32(random_boxes(rng, 6))
    codes = np.float32(rng.normal(0, 1, (6, 3, 4)))
    out = np.asarray(B.decode_boxes(codes, props[:, None]))
    assert out.shape == (6, 3, 4)
    np.testing.assert_allclose(out[:, 1], tv_decode(np.float64(codes[:, 1]), props), rtol=1e-4)


# --- NMS -------------------------------------------------------------------------------------

N_PAD = 32  # hypothesis examples are padded to one shape so that nms compiles once


def as_list(indices: jax.Array, valid: jax.Array) -> list[int]:
    indices, valid = np.asarray(indices), np.asarray(valid)
    assert indices.dtype == np.int32 and valid.dtype == bool
    n = int(valid.sum())
    assert valid[:n].all() and not valid[n:].any(), "valid must be a prefix"
    assert np.all(indices[n:] == -1)
    return indices[:n].tolist()


box_st = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.integers(0, 25), st.integers(0, 25)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])  # zero widths included


@settings(max_examples=60, deadline=None)
@given(
    boxes=st.lists(box_st, min_size=1, max_size=N_PAD),
    data=st.data(),
    thr=st.sampled_from([0.0, 0.3, 0.5, 0.7]),
    max_out=st.sampled_from([5, 40]),
)
def test_nms_matches_greedy_reference(boxes, data, thr, max_out) -> None:
    n = len(boxes)
    # Few distinct scores, so ties are common.
    scores = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    bx = np.zeros((N_PAD, 4), np.float32)
    bx[:n] = boxes
    sc = np.full(N_PAD, -np.inf, np.float32)  # padding never survives
    sc[:n] = np.float32(scores) / 4
    got = as_list(*B.nms(bx, sc, iou_threshold=thr, max_outputs=max_out))
    assert got == greedy_nms(bx[:n], sc[:n], thr, max_out)


def test_nms_random_float_boxes_and_score_threshold() -> None:
    rng = np.random.default_rng(4)
    bx, sc = np.float32(random_boxes(rng, 300)), np.float32(rng.random(300))
    got = as_list(*B.nms(bx, sc, iou_threshold=0.4, max_outputs=300, score_threshold=0.3))
    want = greedy_nms(bx, sc, 0.4, 300, score_thr=0.3)
    assert got == want
    assert 0 < len(got) < 300  # fewer survivors than slots: the rest is padding


def test_nms_ties_keep_lower_index() -> None:
    bx = np.array([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]], np.float32)
    sc = np.array([0.5, 0.9, 0.9, 0.9], np.float32)
    assert as_list(*B.nms(bx, sc, iou_threshold=0.5, max_outputs=4)) == [1, 3]


def test_nms_empty_and_all_below_threshold() -> None:
    idx, valid = B.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), iou_threshold=0.5,
                       max_outputs=3)  # fmt: skip
    assert idx.tolist() == [-1, -1, -1] and not valid.any()
    bx = np.float32(random_boxes(np.random.default_rng(5), 4))
    out = B.nms(bx, np.zeros(4, np.float32), iou_threshold=0.5, max_outputs=3, score_threshold=0)
    assert as_list(*out) == []


def test_nms_jit_does_not_retrace(monkeypatch: pytest.MonkeyPatch) -> None:
    traces = []
    inner = B._greedy_nms

    def counting(*args, **kwargs):
        traces.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(B, "_greedy_nms", counting)
    rng = np.random.default_rng(6)
    # A shape no other test uses, so the jit cache starts cold for it.
    for thr in (0.5, 0.3, 0.7):
        bx, sc = np.float32(random_boxes(rng, 13)), np.float32(rng.random(13))
        got = as_list(*B.nms(bx, sc, iou_threshold=thr, max_outputs=7))
        assert got == greedy_nms(bx, sc, thr, 7)
    assert len(traces) == 1
    # it also composes with an outer jit and with vmap
    bxs, scs = np.float32(random_boxes(rng, 26)).reshape(2, 13, 4), np.float32(rng.random((2, 13)))
    fn = jax.jit(jax.vmap(lambda b, s: B.nms(b, s, iou_threshold=0.5, max_outputs=7)))
    idx, valid = fn(bxs, scs)
    for k in range(2):
        assert as_list(idx[k], valid[k]) == greedy_nms(bxs[k], scs[k], 0.5, 7)


def test_batched_nms_never_suppresses_across_classes() -> None:
    bx = np.tile(np.array([[5, 5, 25, 25]], np.float32), (6, 1))  # all identical
    sc = np.float32([0.1, 0.9, 0.5, 0.7, 0.3, 0.2])
    cls = np.array([0, 1, 2, 3, 4, 1])
    got = as_list(*B.batched_nms(bx, sc, cls, iou_threshold=0.1, max_outputs=6))
    assert got == [1, 3, 2, 4, 0]  # one per class, by score; index 5 loses to 1
    assert as_list(*B.nms(bx, sc, iou_threshold=0.1, max_outputs=6)) == [1]


def test_batched_nms_matches_per_class_reference() -> None:
    rng = np.random.default_rng(7)
    # Large coordinates and many classes: the offset trick would lose float32 precision here.
    bx = np.float32(random_boxes(rng, 200, span=2000.0))
    sc, cls = np.float32(rng.random(200)), rng.integers(0, 80, 200)
    got = as_list(*B.batched_nms(bx, sc, cls, iou_threshold=0.3, max_outputs=250))
    assert got == greedy_nms(bx, sc, 0.3, 250, classes=cls)
    # each class alone gives the same survivors as plain nms on that class
    for c in np.unique(cls)[:5]:
        sel = np.nonzero(cls == c)[0]
        alone = as_list(*B.nms(bx[sel], sc[sel], iou_threshold=0.3, max_outputs=len(sel)))
        assert [int(sel[i]) for i in alone] == [i for i in got if cls[i] == c]


# --- mAP -------------------------------------------------------------------------------------


def test_average_precision_envelope() -> None:
    # precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1: envelope 1 up to 1/3, then 3/4
    ap = B.average_precision([1 / 3, 1 / 3, 2 / 3, 1.0], [1.0, 0.5, 2 / 3, 0.75])
    assert ap == pytest.approx(1 / 3 + 2 / 3 * 0.75)
    assert B.average_precision([], []) == 0.0
    # recall stopping at 1/2 leaves the rest of the area at 0
    assert B.average_precision([0.5], [1.0]) == pytest.approx(0.5)


def gt_image(boxes, labels, difficult=None) -> B.GroundTruth:
    return B.GroundTruth(np.float32(boxes), np.array(labels), difficult)


def det_image(boxes, scores, labels) -> B.Detections:
    return B.Detections(np.float32(boxes).reshape(-1, 4), np.float32(scores), np.array(labels))


def test_map_perfect_detections() -> None:
    rng = np.random.default_rng(8)
    gts, dets = [], []
    for _ in range(5):
        bx, lab = random_boxes(rng, 4), rng.integers(0, 3, 4)
        gts.append(gt_image(bx, lab))
        dets.append(det_image(bx, rng.random(4), lab))
    res = B.evaluate_map(dets, gts, num_classes=3)
    assert res.mean_ap == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in res.per_class.values())
    assert sum(res.num_gt.values()) == 20


def test_map_hand_computed() -> None:
    # 3 objects of class 0 in two images; 4 detections ranked TP, FP, TP, TP.
    # precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1; monotone envelope: 1 on
    # (0, 1/3], then max(2/3, 3/4) = 3/4 on (1/3, 1]: AP = 1/3 + 2/3 * 3/4 = 5/6.
    gts = [
        gt_image([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0]),
        gt_image([[5, 5, 15, 15]], [0]),
    ]
    dets = [
        det_image([[0, 0, 10, 11], [60, 60, 70, 70], [21, 20, 40, 41]], [0.9, 0.8, 0.6], [0, 0, 0]),
        det_image([[5, 6, 15, 15]], [0.7], [0]),
    ]
    res = B.evaluate_map(dets, gts, num_classes=1)
    assert res.per_class == {0: pytest.approx(5 / 6)}
    assert res.mean_ap == pytest.approx(5 / 6) and res.num_gt == {0: 3}
    # dicts are accepted as well
    as_dicts = B.evaluate_map([d._asdict() for d in dets], [g._asdict() for g in gts],
                              num_classes=1)  # fmt: skip
    assert as_dicts.mean_ap == pytest.approx(5 / 6)


def test_map_class_without_detections_and_duplicates() -> None:
    gts = [gt_image([[0, 0, 10, 10], [30, 30, 50, 50]], [0, 1])]
    # class 0 found twice (the lower-scored copy is a false positive); class 1 never found;
    # class 2 has no ground truth, so its detection counts in no class's mean.
    dets = [
        det_image(
            [[0, 0, 10, 10], [0, 0, 10, 10], [60, 60, 70, 70]],
            [0.5, 0.9, 0.99],
            [0, 0, 2],
        )
    ]
    res = B.evaluate_map(dets, gts, num_classes=3)
    assert res.per_class == {0: pytest.approx(1.0), 1: 0.0}
    assert res.mean_ap == pytest.approx(0.5)
    assert res.num_gt == {0: 1, 1: 1, 2: 0}
    # A duplicate that outranks a second object costs precision.
    gts2 = [gt_image([[0, 0, 10, 10], [30, 30, 50, 50]], [0, 0])]
    dets2 = [
        det_image([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 50, 50]], [0.9, 0.8, 0.7], [0] * 3)
    ]
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2 + 1/2 * 2/3
    assert B.evaluate_map(dets2, gts2, num_classes=1).mean_ap == pytest.approx(0.5 + 1 / 3)


def test_map_matching_respects_threshold_image_and_class() -> None:
    gts = [gt_image([[0, 0, 10, 10]], [0]), gt_image([[0, 0, 10, 10]], [1])]
    dets = [
        det_image([[0, 0, 10, 20]], [0.9], [0]),  # IoU exactly 0.5: a hit (>=)
        det_image([[0, 0, 10, 10]], [0.9], [0]),  # right box, wrong class, other image
    ]
    res = B.evaluate_map(dets, gts, num_classes=2)
    assert res.per_class[0] == pytest.approx(1.0)  # the other image's FP ranks equal, later
    assert res.per_class[1] == 0.0
    strict = B.evaluate_map(dets, gts, num_classes=2, iou_threshold=0.51)
    assert strict.per_class[0] == 0.0


def test_map_at_iou_threshold_zero_needs_an_overlap() -> None:
    # A detection far from the object was a hit at iou_threshold=0: mAP 1.
    gts = [gt_image([[0, 0, 10, 10]], [0]), gt_image([[0, 0, 10, 10]], [0])]
    dets = [det_image([[50, 50, 60, 60]], [0.9], [0]), det_image([[9, 9, 20, 20]], [0.8], [0])]
    res = B.evaluate_map(dets, gts, num_classes=1, iou_threshold=0.0)
    # FP, then TP (any overlap): precision 0, 1/2 at recall 0, 1/2 -> AP 1/2 * 1/2
    assert res.per_class[0] == pytest.approx(0.25)


def test_map_difficult_and_padding() -> None:
    gts = [
        gt_image([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], [0, 0, -1], [False, True, False])
    ]
    dets = [det_image([[20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    res = B.evaluate_map(dets, gts, num_classes=1)
    # the hit on the difficult object is ignored, not a false positive; padding is no object
    assert res.num_gt == {0: 1}
    assert res.per_class[0] == pytest.approx(1.0)
    no_flags = B.evaluate_map(dets, [gt_image(gts[0].boxes, gts[0].labels)], num_classes=1)
    assert no_flags.num_gt == {0: 2} and no_flags.per_class[0] == pytest.approx(1.0)


def test_map_takes_whole_number_float_labels() -> None:
    # Float labels (a float array's, or empty lists') were a TypeError from list indexing.
    gt = B.GroundTruth(np.float32([[0, 0, 10, 10]]), np.float32([1]))
    det = B.Detections(np.float32([[0, 0, 10, 10]]), np.float32([0.9]), np.float64([1]))
    res = B.evaluate_map([det], [gt], num_classes=2)
    assert res.per_class == {1: pytest.approx(1.0)} and res.num_gt == {0: 0, 1: 1}
    # An image without detections as empty lists: np.asarray([]) is float64.
    none = B.evaluate_map([{"boxes": [], "scores": [], "labels": []}], [gt], num_classes=2)
    assert none.per_class == {1: 0.0}
    with pytest.raises(ValueError, match="labels must be whole numbers, got 0.5"):
        B.evaluate_map([det._replace(labels=np.float32([0.5]))], [gt], num_classes=2)


def test_map_rejects_bad_input() -> None:
    gt = gt_image([[0, 0, 10, 10]], [0])
    det = det_image([[0, 0, 10, 10]], [0.5], [0])
    for bad in (float("nan"), 1.5):  # every detection a false positive: mAP 0, silently
        with pytest.raises(ValueError, match="iou_threshold must be in"):
            B.evaluate_map([det], [gt], num_classes=1, iou_threshold=bad)
    with pytest.raises(ValueError, match="2 detection entries but 1"):
        B.evaluate_map([det, det], [gt], num_classes=1)
    with pytest.raises(ValueError, match="label 3 >= 2"):
        B.evaluate_map([det_image([[0, 0, 1, 1]], [0.5], [3])], [gt], num_classes=2)
    with pytest.raises(ValueError, match="expected boxes"):
        B.evaluate_map([B.Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(2))], [gt],
                       num_classes=1)  # fmt: skip


def test_draw_boxes_takes_float_images_as_write_png_rounds_them():
    # An attack's float result.x[i] was Pillow's "Cannot handle this data type".
    from fooltools import io
    from fooltools.detection.draw import draw_boxes

    dets = [{"class_index": 1, "box": [2.0, 2.0, 10.0, 10.0], "label": "x", "score": 0.9}]
    x = np.random.default_rng(0).random((32, 40, 3)).astype(np.float32)
    want = draw_boxes(io.to_uint8(x), dets)
    np.testing.assert_array_equal(draw_boxes(x, dets), want)
    np.testing.assert_array_equal(draw_boxes(jnp.asarray(x), dets), want)
