"""Clean vs attacked detection quality over a dataset: mAP@0.5, object counts, mislabel rate.

Used by ``fool detect eval`` and the acceptance tests. A detection is an *object* when its
score is at least ``confidence``, by default the detector's operating point (the threshold
a deployed detector reports at; :func:`operating_point` finds it). Following TOG's
evaluation protocol, ``*_map50`` is the VOC mAP@0.5 of those objects; ``*_map50_all`` is
the VOC mAP@0.5 of every detection the detector returns down to its own low score
threshold (0.05), which also credits faint leftovers of an attack.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from fooltools import sharding
from fooltools.detection import attacks as det_attacks
from fooltools.detection import boxes as box_ops
from fooltools.detection.detectors import Detector, Found, jitted_detect
from fooltools.detection.synthetic import Dataset


class Evaluation(NamedTuple):
    """One detector, clean and (optionally) under one attack.

    Attributes:
        detector: The detector's name.
        attack: The attack mode, or None for clean only.
        images: Number of images evaluated.
        clean_map50: mAP@0.5 of the clean objects (score >= confidence).
        attacked_map50: The same under attack (None without an attack).
        clean_map50_all: mAP@0.5 of all clean detections (score >= the detector's floor).
        attacked_map50_all: The same under attack (None without an attack).
        clean_ap: Per-class AP@0.5 of the clean objects (class name -> AP).
        attacked_ap: The same under attack (empty without an attack).
        clean_objects: Detections with score >= confidence on the clean images.
        attacked_objects: The same on the attacked images (None without an attack).
        mislabel_rate: For ``mislabel``: the fraction of clean objects not already of the
            target class whose best-overlapping attacked object (IoU >= 0.5) has the target
            label (NaN when there is none such; null in :meth:`as_json`); None otherwise.
        seconds: Wall time.
    """

    detector: str
    attack: str | None
    images: int
    clean_map50: float
    attacked_map50: float | None
    clean_map50_all: float
    attacked_map50_all: float | None
    clean_ap: dict[str, float]
    attacked_ap: dict[str, float]
    clean_objects: int
    attacked_objects: int | None
    mislabel_rate: float | None
    seconds: float

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``detector``, ``attack``, ``clean_map50``, ``attacked_map50``...).

        A NaN (a mislabel rate with no object to relabel) is None: json.dumps wrote it as
        ``NaN``, which is not JSON, and ``--json``'s readers (jq, JSON.parse) refused it.
        """
        out = self._asdict()
        rate = out["mislabel_rate"]
        if rate is not None and math.isnan(rate):
            out["mislabel_rate"] = None
        return out


def _concat(parts: list[Found]) -> Found:
    return Found(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


def _map(
    found: Found, data: Dataset, names: tuple[str, ...], floor: float = 0.0
) -> tuple[float, dict[str, float]]:
    keep = found.valid & (found.scores >= floor)
    dets = [
        box_ops.Detections(b[k], s[k], lab[k])
        for b, s, lab, k in zip(found.boxes, found.scores, found.labels, keep, strict=True)
    ]
    gts = [box_ops.GroundTruth(b, lab) for b, lab in zip(data.boxes, data.labels, strict=True)]
    result = box_ops.evaluate_map(dets, gts, num_classes=len(names))
    return float(result.mean_ap), {names[c]: float(ap) for c, ap in result.per_class.items()}


def _batches(images: np.ndarray, batch: int):
    """``(x, n)`` per batch: x padded with its last image to ``batch`` (one compiled shape).

    Fewer images than ``batch`` are one batch of their own size: 8 images in batches of 16
    ran the detector (and an attack) on 16.
    """
    batch = max(1, min(batch, images.shape[0]))
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch]
        n = x.shape[0]
        yield (np.concatenate([x, np.repeat(x[-1:], batch - n, axis=0)]) if n < batch else x), n


def detect_all(detector: Detector, images: np.ndarray, batch: int = 16) -> Found:
    """Detections of ``images`` (n, H, W, 3) in jitted batches, as numpy arrays."""
    detect = sharding.data_parallel(jitted_detect(detector.detect), detector.params)
    parts = [Found(*(np.asarray(a)[:n] for a in detect(x))) for x, n in _batches(images, batch)]
    return _concat(parts)


def operating_point(detector: Detector, data: Dataset) -> tuple[float, float]:
    """The score threshold (a multiple of 0.05) maximising F1 at IoU >= 0.5 on ``data``.

    A detection is a true positive when it matches a not yet matched ground-truth box of
    its class with IoU >= 0.5 (greedily, best score first, per image).

    Returns:
        ``(threshold, f1)``.
    """
    found = detect_all(detector, data.images)
    n_gt = int((data.labels >= 0).sum())
    # Per image, once: detections best score first, and their IoU with every ground-truth
    # box of the same class (-1 for other classes); each threshold then keeps a prefix.
    per_image = []
    for i in range(found.boxes.shape[0]):
        keep = found.valid[i]
        order = np.argsort(-found.scores[i][keep], kind="stable")
        scores, labels = found.scores[i][keep][order], found.labels[i][keep][order]
        gt = data.labels[i] >= 0
        iou = box_ops.np_box_iou(found.boxes[i][keep][order], data.boxes[i][gt])
        iou = np.where(labels[:, None] == data.labels[i][gt][None, :], iou, -1.0)
        per_image.append((scores, iou))
    best = (0.0, -1.0)
    for t in np.round(np.arange(0.05, 1.0, 0.05), 2):
        tp = fp = 0
        for scores, iou in per_image:
            used = np.zeros(iou.shape[1], bool)
            for row in iou[scores >= t]:
                row = np.where(used, -1.0, row)
                hit = row.size > 0 and row.max() >= 0.5
                if hit:
                    used[row.argmax()] = True
                tp, fp = tp + hit, fp + (not hit)
        f1 = 2 * tp / max(2 * tp + fp + (n_gt - tp), 1)
        if f1 > best[1] + 1e-12:
            best = (float(t), f1)
    return best[0], float(best[1])


def mislabel_rate(clean: Found, adv: Found, target: int, confidence: float) -> float:
    """Fraction of clean objects (label != target) relabelled ``target`` by the attack.

    An object is relabelled when an attacked object (score >= ``confidence``) of class
    ``target`` overlaps it (IoU >= 0.5) and none of its own class does, as
    :func:`fooltools.detection.attack_run.success` judges a mislabel run. (With the most
    overlapping attacked object alone, a target box beside one of the object's own class
    counted, or not, by which overlapped more.)
    """
    hits, total = 0, 0
    for i in range(clean.boxes.shape[0]):
        keep_c = clean.valid[i] & (clean.scores[i] >= confidence) & (clean.labels[i] != target)
        keep_a = adv.valid[i] & (adv.scores[i] >= confidence)
        if not keep_c.any():
            continue
        total += int(keep_c.sum())
        if not keep_a.any():
            continue
        found = box_ops.np_labels_over(
            clean.boxes[i][keep_c], adv.boxes[i][keep_a], adv.labels[i][keep_a]
        )
        own = np.asarray(clean.labels[i][keep_c]).tolist()
        hits += sum(target in f and label not in f for label, f in zip(own, found, strict=True))
    return hits / total if total else float("nan")


def evaluate(
    detector: Detector,
    data: Dataset,
    *,
    attack: str | None = None,
    batch: int = 16,
    seed: int = 0,
    confidence: float | None = None,
    **attack_kw: Any,
) -> Evaluation:
    """mAP@0.5 of ``detector`` on ``data``, clean and under ``attack`` (a TOG/DAG mode).

    Args:
        detector: The detector.
        data: Images (n, H, W, 3) with ground truth, e.g. a held-out synthetic set.
        attack: One of :data:`fooltools.detection.attacks.MODES`, or None.
        batch: Images per jitted call, at most n (the last partial batch is padded, then
            dropped).
        seed: Key for the attack's randomness (DAG's labels).
        confidence: Score at which a detection counts as an object; None: the detector's
            operating point.
        **attack_kw: Passed to :func:`~fooltools.detection.attacks.detection_attack`
            (``eps``, ``step_size``, ``steps``, ``norm``, ``target_class``).

    Returns:
        The :class:`Evaluation`.
    """
    start = time.perf_counter()
    confidence = detector.confidence if confidence is None else confidence
    n = data.images.shape[0]
    clean_parts, adv_parts = [], []
    if attack is None:
        clean_parts.append(detect_all(detector, data.images, batch))
    else:
        run = det_attacks.detection_attack(
            detector, mode=attack, confidence=confidence, **attack_kw
        )
        for b, (x, k) in enumerate(_batches(data.images, batch)):
            result = run(jax.random.fold_in(jax.random.key(seed), b * batch), x)
            clean_parts.append(Found(*(np.asarray(a)[:k] for a in result.clean)))
            adv_parts.append(Found(*(np.asarray(a)[:k] for a in result.adv)))
    names = detector.class_names
    clean = _concat(clean_parts)
    clean_map, clean_ap = _map(clean, data, names, confidence)
    count = lambda f: int(det_attacks.objects(f, confidence).sum())  # noqa: E731
    adv = _concat(adv_parts) if adv_parts else None
    adv_map, adv_ap = _map(adv, data, names, confidence) if adv is not None else (None, {})
    target = attack_kw.get("target_class")
    return Evaluation(
        detector=detector.name,
        attack=attack,
        images=n,
        clean_map50=clean_map,
        attacked_map50=adv_map,
        clean_map50_all=_map(clean, data, names)[0],
        attacked_map50_all=None if adv is None else _map(adv, data, names)[0],
        clean_ap=clean_ap,
        attacked_ap=adv_ap,
        clean_objects=count(clean),
        attacked_objects=None if adv is None else count(adv),
        mislabel_rate=(
            mislabel_rate(clean, adv, target, confidence)
            if attack == "mislabel" and adv is not None
            else None
        ),
        seconds=time.perf_counter() - start,
    )
