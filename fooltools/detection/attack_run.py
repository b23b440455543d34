"""One detector attack on one image file, written as a gallery run (``fool detect attack``).

The run directory gets ``adversarial.png`` (the attacked image at the file's own
resolution), ``clean_boxes.png`` / ``adversarial_boxes.png`` (detections drawn),
``perturbation.png`` (the change, amplified), ``report.json`` and ``index.html``. The
adversarial detections and the success verdict are measured on ``adversarial.png`` as
re-read from disk, so they are what anyone opening the file will get.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fooltools import gallery, io
from fooltools.detection import attacks as det_attacks
from fooltools.detection import boxes as box_ops
from fooltools.detection import synthetic
from fooltools.detection.detectors import Detector, detect_images
from fooltools.detection.draw import draw_boxes, records
from fooltools.errors import FoolError

# The images attack_file writes into its run directory (an input there under one of
# these names is refused: it would be written over).
ADVERSARIAL, PERTURBATION = "adversarial.png", "perturbation.png"
CLEAN_BOXES, ADVERSARIAL_BOXES = "clean_boxes.png", "adversarial_boxes.png"
OUTPUTS = (ADVERSARIAL, PERTURBATION, CLEAN_BOXES, ADVERSARIAL_BOXES)


def resolve_image(arg: str, out: Path) -> Path:
    """The image a detector command names, as a path.

    ``synthetic:N`` is held-out synthetic image N (written into ``out``), ``sample:NAME`` a
    bundled photo, anything else a path.

    Raises:
        FoolError: ``synthetic:`` without a number.
    """
    if not arg.startswith("synthetic:"):
        from fooltools.cli import resolve_image as resolve_named

        return resolve_named(arg)
    index = arg.removeprefix("synthetic:")
    if not (index.isascii() and index.isdigit()):  # isdigit alone takes '²'
        raise FoolError(f"synthetic:N needs an image number N >= 0, got {arg!r}")
    image, _, _ = synthetic.make_image(synthetic.TEST_SEED, int(index))
    io.make_dir(out)
    return io.write_png(out / f"synthetic-{index}.png", image)


def class_index(names: Sequence[str], name: str | int, owner: str) -> int:
    """The index of class ``name`` among a detector's ``names``: a name in any case, or an index.

    Args:
        names: The detector's class names.
        name: A class name (any case) or index, as given.
        owner: The detector, as the message names it.

    Raises:
        FoolError: No such class (the message lists them), or an index out of range.
    """
    if isinstance(name, int) or (name.isascii() and name.isdigit()):  # isdigit takes '²'
        if int(name) < len(names):
            return int(name)
        raise FoolError(
            f"class index {name} is out of range for {owner}: its classes are "
            f"0-{len(names) - 1} ({', '.join(names)})"
        )
    folded = [n.casefold() for n in names]
    # Any case, as the classifiers' class names are looked up.
    found = [i for i, n in enumerate(folded) if n == name.strip().casefold()]
    if len(found) > 1:
        # torchvision's COCO names hold "N/A" for each unused id: the first was taken.
        raise FoolError(
            f"class {name!r} names {len(found)} classes of {owner} "
            f"({', '.join(map(str, found))}); give the index of the one you mean"
        )
    if found:
        return found[0]
    raise FoolError(f"unknown class {name!r} for {owner}; classes: {', '.join(names)}")


def check(detector: Detector, mode: str, **kwargs: Any) -> None:
    """:func:`~fooltools.detection.attacks.check_arguments`, its refusal as one line.

    Raises:
        FoolError: What the attack would refuse (the CLI and a batch show it as is).
    """
    try:
        det_attacks.check_arguments(detector, mode, **kwargs)
    except ValueError as err:
        raise FoolError(str(err)) from None


def _found_as(clean: list[dict], adv: list[dict]) -> list[set[int]]:
    """Per clean object, the classes of the adversarial objects over it (IoU >= 0.5)."""
    return box_ops.np_labels_over(
        [c["box"] for c in clean], [a["box"] for a in adv], [a["class_index"] for a in adv]
    )


def success(mode: str, clean: list[dict], adv: list[dict], target: int | None) -> bool | None:
    """The attack's own goal on one image, from its object lists (see :func:`records`).

    vanish: no object left; fabricate: at least three times as many objects (and at least
    one); mislabel: every object not already of the target class is detected as it (an
    attacked object of the target class over it, IoU >= 0.5) and no longer as its own
    class; untargeted and DAG: no object is still detected with its label. None, no
    verdict, when the image has no object for any but fabricate to attack, or (mislabel)
    only objects of the target class already: those goals hold before the attack, which
    did nothing.
    """
    if not clean and mode != "fabricate":
        return None
    if mode == "vanish":
        return not adv
    if mode == "fabricate":
        return len(adv) >= max(3 * len(clean), 1)
    if mode == "mislabel":
        todo = [c for c in clean if c["class_index"] != target]
        if not todo:  # all already the target: a success the attack did not earn
            return None
        found = zip(todo, _found_as(todo, adv), strict=True)
        return all(target in f and c["class_index"] not in f for c, f in found)
    found = zip(clean, _found_as(clean, adv), strict=True)
    return not any(c["class_index"] in f for c, f in found)


def _nothing_note(clean: list[dict], confidence: float, names: tuple[str, ...],
                  target: int | None) -> str:  # fmt: skip
    """Why :func:`success` gave no verdict: what the image holds ("nothing to attack: ...")."""
    if not clean:
        return f"no objects at score >= {confidence}"
    return f"only objects of the target class {names[target]} at score >= {confidence}"


def attack_file(
    det: Detector,
    path: str | os.PathLike[str],
    out: Path,
    *,
    mode: str,
    seed: int = 0,
    confidence: float = 0.5,
    **attack_kw: Any,
) -> dict[str, Any]:
    """Attack ``det`` on the image at ``path`` and write the run to ``out``.

    Args:
        det: The detector.
        path: Image file.
        out: Run directory (created).
        mode: One of :data:`fooltools.detection.attacks.MODES`.
        seed: Key for the attack's randomness.
        confidence: Score at which a detection counts as an object.
        **attack_kw: Passed to :func:`~fooltools.detection.attacks.detection_attack`.

    Returns:
        The report written to ``report.json``. Its ``success`` is None and its ``note``
        says why when the image holds nothing to attack (see :func:`success`).
    """
    start = time.perf_counter()
    x = io.read_image(path)
    # A bad ``out`` fails here, not after the attack has run.
    io.make_dir(out)
    run = det_attacks.detection_attack(det, mode=mode, confidence=confidence, **attack_kw)
    norm = attack_kw.get("norm", "linf")
    eps, step_size = det_attacks.budget(norm, attack_kw.get("eps"), attack_kw.get("step_size"))
    names = det.class_names
    x0 = io.to_uint8(x).astype(np.float32) / 255  # the 8-bit image the attack starts from
    # The objects first, with the program that judges the written image below: an image
    # with nothing to attack costs no compiling and running of the attack.
    found = detect_images(det, x0[None])
    clean = records(found, 0, names, confidence)
    target = attack_kw.get("target_class")
    if success(mode, clean, [], target) is None:
        # Nothing to attack: the run is the image unchanged, as fool perturb's "nothing to
        # do" (the attack's output moved pixels for no goal, an L2 of 49/255 on 33 x 1).
        io.write_png(out / ADVERSARIAL, x0)
        xa, adv = x0, clean
    else:
        result = run(jax.random.key(seed), x[None])
        io.write_png(out / ADVERSARIAL, result.x[0])
        xa = io.read_image(out / ADVERSARIAL)  # judge what the file holds
        adv = records(detect_images(det, xa[None]), 0, names, confidence)
    delta = xa - x0
    scale = max(float(np.abs(delta).max()), 1 / 255)
    io.write_png(out / PERTURBATION, np.clip(0.5 + delta / (2 * scale), 0, 1))
    to_png = lambda a: a.astype(np.float32) / 255  # noqa: E731
    io.write_png(out / CLEAN_BOXES, to_png(draw_boxes(io.to_uint8(x), clean)))
    io.write_png(out / ADVERSARIAL_BOXES, to_png(draw_boxes(io.to_uint8(xa), adv)))
    ok = success(mode, clean, adv, target)
    target_text = f" as {names[target]}" if mode == "mislabel" else ""
    report = {
        "title": f"{det.name}: {mode}{target_text} on {Path(path).name}",
        "kind": "detect-attack",
        "success": ok,
        "note": None if ok is not None else _nothing_note(clean, confidence, names, target),
        "source": {"path": os.fspath(path), "size": list(x.shape[:2])},
        "detector": {"name": det.name, "kind": det.kind, "sources": list(det.sources)},
        # The budget it had, defaults included, so the report claims no other.
        "attack": {
            "mode": mode,
            "seed": seed,
            "confidence": confidence,
            **attack_kw,
            "norm": norm,
            "eps": eps,
            "step_size": step_size,
        },
        "images": [
            {"file": CLEAN_BOXES, "caption": f"clean: {len(clean)} objects"},
            {"file": ADVERSARIAL_BOXES, "caption": f"attacked: {len(adv)} objects"},
            {"file": PERTURBATION, "caption": f"change x{0.5 / scale:.0f}"},
            {"file": ADVERSARIAL, "caption": "adversarial image"},
        ],
        "clean_objects": clean,
        "adversarial_objects": adv,
        "metrics": {
            "clean_objects": len(clean),
            "adversarial_objects": len(adv),
            # What a detection lists at most (a count here is never more).
            "max_objects": int(found.valid.shape[-1]),
            "linf_255": round(float(np.abs(delta).max()) * 255, 3),
            "l2": round(float(np.sqrt((delta**2).sum())), 4),
            "seconds": round(time.perf_counter() - start, 2),
        },
    }
    io.write_bytes_atomic(out / gallery.REPORT, json.dumps(report, indent=2).encode())
    gallery.write_run_page(out)
    return report
