"""TOG and DAG attacks on object detectors, written once on :class:`~.detectors.Dense`.

TOG (Chow et al., "Adversarial Objectness Gradient Attacks in Real-time Object Detection
Systems", TPS 2020) runs iterative signed-gradient (L-inf) or normalised-gradient (L2)
steps on a loss of the detector's raw outputs:

* ``vanish``: every candidate's objectness towards "no object" (for Faster R-CNN also the
  RPN's): the objects disappear;
* ``fabricate``: gradient *ascent* on the expected number of objects, the sum of every
  candidate's objectness probability. TOG's paper ascends its vanishing loss instead (the
  mean of ``softplus(objectness)``, kept as ``fabrication="tog"``), whose gradient weighs
  each candidate by its probability, so it mostly pushes candidates that are objects
  already; the expected count's gradient ``p (1 - p)`` goes to the candidates near the
  decision, which is what adds detections. Measured on 48 held-out images at TOG's
  budget: the bundled YOLO's objects x4.08 instead of x2.81, Faster R-CNN's x6.77 instead
  of x3.85. (TOG's released code differs from its paper here: it descends BCE towards
  objectness 1, a gradient weighing each candidate by ``1 - p``; neither option is it.);
* ``mislabel``: the candidates that overlap a clean detection (IoU >= ``match_iou``, the
  set recomputed each step as boxes move) towards "object of ``target_class``", all
  others towards "no object": TOG's detection loss with the clean detections relabelled,
  less its box-regression terms (the boxes stay where they are) and with the class term
  weighted by ``CLASS_WEIGHT``. Every object goes to the one ``target_class``; TOG's code
  also offers each object its own most- or least-likely other class (ML/LL), which
  fooltools does not, so its rates compare with TOG's fixed-target setting only;
* ``untargeted``: gradient *ascent* on the same detection loss with the clean labels.

TOG's code starts from a random point of the ball; these attacks start from the image.

DAG (Xie et al., "Adversarial Examples for Semantic Segmentation and Object Detection",
ICCV 2017) gives each clean detection a random other label (drawn per batch from the
key: :func:`fooltools.detection.evaluate.evaluate` folds in the batch's first image, so
its labels depend on ``batch``) and, while a matched
candidate still scores its true class highest, lowers ``logit_true - logit_adv``; steps
are DAG's ``step_size * g / max|g|`` (L-inf) or the L2-normalised gradient, here within
the same ``eps`` ball as TOG so that the two are comparable.

Clean detections count as objects when their score is at least ``confidence`` (default:
the detector's operating point, :attr:`Detector.confidence`). Every
candidate is put on the 8-bit grid before it is scored (rounding each change towards the
original, :func:`fooltools.attacks.base.snap`), so what is reported is what the PNG holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fooltools import io, rng, sharding
from fooltools.attacks import base
from fooltools.attacks.pgd import project, step_direction
from fooltools.detection import boxes as box_ops
from fooltools.detection.detectors import Dense, Detector, Found

MODES = ("vanish", "fabricate", "mislabel", "untargeted", "dag")
# Budgets in [0, 1] pixel units. L-inf: TOG's. L2: fooltools.perturb's radius (an L-inf
# radius read as an L2 one is a change of 0.03 to the whole image: nothing), with TOG's
# ratio of step to radius.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 3.0}
DEFAULT_STEP = {"linf": 2 / 255, "l2": 0.75}
TOG_STEPS = 10
MAX_STEPS = base.MAX_STEPS  # the loop's counter is an int32 argument of the program
# Weight of the class term against the objectness terms in the mislabel / untargeted loss.
# With 1 (a plain sum) the many background terms dominate the signed gradient: the bundled
# YOLO relabelled 86% of the held-out objects to "star", 93% with 5.
CLASS_WEIGHT = 5.0


class DetectionAttackResult(NamedTuple):
    """What a detector attack returns for a batch.

    Attributes:
        x: Adversarial images (B, H, W, 3) in [0, 1], on the 8-bit grid.
        clean: Detections of the original images.
        adv: Detections of ``x``.
        linf: (B,) L-inf distortion in [0, 1] units.
        l2: (B,) L2 distortion in [0, 1] units.
    """

    x: jax.Array
    clean: Found
    adv: Found
    linf: jax.Array
    l2: jax.Array


def objects(found: Found, confidence: float) -> jax.Array:
    """(B, D) bool: the detections that count as objects (valid, score >= ``confidence``)."""
    return found.valid & (found.scores >= confidence)


def _class_nll(cls: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """(B, N) negative log-likelihood of ``labels`` (B, N) under class logits (B, N, K)."""
    if multilabel:  # YOLOv3: independent sigmoids, so the other classes must also go off
        onehot = jax.nn.one_hot(labels, cls.shape[-1], dtype=cls.dtype)
        return jnp.sum(jax.nn.softplus(cls) - onehot * cls, axis=-1)
    logp = jax.nn.log_softmax(cls, axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def _match(d: Dense, clean: Found, is_obj: jax.Array, match_iou: float) -> tuple[jax.Array, ...]:
    """Candidates overlapping a clean object: (positive (B, N), index of the object (B, N))."""
    iou = jax.vmap(box_ops.box_iou)(jax.lax.stop_gradient(d.boxes), clean.boxes)
    iou = jnp.where(is_obj[:, None, :], iou, -1.0)
    return d.valid & (iou.max(-1) >= match_iou), iou.argmax(-1)


def _vanishing_loss(d: Dense) -> jax.Array:
    """TOG's objectness loss towards "no object", summed over the batch.

    The mean binary cross-entropy of every candidate's objectness to 0, plus (Faster
    R-CNN) the mean over the RPN's anchors, as TOG's Faster R-CNN victim has it. Means,
    not sums: the 4k RPN anchors would otherwise outweigh the 1k proposals whose scores
    are the detections (measured on the bundled detector: held-out mAP of the objects
    0.11 after the attack with sums, 0.04 with means).
    """
    n = jnp.maximum(d.valid.sum(axis=1), 1)
    loss = jnp.sum(jnp.where(d.valid, jax.nn.softplus(d.obj), 0.0), axis=1) / n
    if d.extra_obj.shape[1]:
        loss = loss + jnp.mean(jax.nn.softplus(d.extra_obj), axis=1)
    return jnp.sum(loss)


def _expected_objects(d: Dense) -> jax.Array:
    """The expected number of objects: sum of the candidates' objectness probabilities."""
    return jnp.sum(jnp.where(d.valid, jax.nn.sigmoid(d.obj), 0.0))


def _detection_loss(d: Dense, pos: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """TOG's detection loss: positives are objects of ``labels``, the rest background.

    The class term is weighted by :data:`CLASS_WEIGHT`.
    """
    fg = jax.nn.softplus(-d.obj) + CLASS_WEIGHT * _class_nll(d.cls, labels, multilabel)
    bg = jax.nn.softplus(d.obj)
    return jnp.sum(jnp.where(pos, fg, jnp.where(d.valid, bg, 0.0)))


def budget(norm: str, eps: float | None, step_size: float | None) -> tuple[float, float]:
    """``(eps, step_size)``, the defaults of ``norm`` for those that are None.

    Raises:
        ValueError: An unknown norm.
    """
    if norm not in DEFAULT_EPS:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return (
        DEFAULT_EPS[norm] if eps is None else eps,
        DEFAULT_STEP[norm] if step_size is None else step_size,
    )


def check_arguments(
    detector: Detector,
    mode: str,
    eps: float | None = None,
    step_size: float | None = None,
    steps: int = TOG_STEPS,
    norm: str = "linf",
    target_class: int | None = None,
    confidence: float | None = None,
) -> None:
    """Raise ValueError for arguments :func:`detection_attack` would refuse."""
    check_settings(mode, eps, step_size, steps, norm, confidence)
    k = len(detector.class_names)
    if mode == "mislabel" and (target_class is None or not 0 <= target_class < k):
        raise ValueError(f"mislabel needs a target class in [0, {k}), got {target_class}")
    if mode == "dag" and k < 2:
        # Every "other" label is the object's own: the loss is 0 and nothing changed.
        raise ValueError(f"dag gives each object another label, and {detector.name} has 1 class")


def check_settings(
    mode: str,
    eps: float | None = None,
    step_size: float | None = None,
    steps: int = TOG_STEPS,
    norm: str = "linf",
    confidence: float | None = None,
) -> None:
    """Raise ValueError for settings no detector's attack takes (a batch checks its spec).

    :func:`check_arguments` without the detector: its classes are not looked at.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    eps, step_size = budget(norm, eps, step_size)
    if not (0 < eps < math.inf and 0 < step_size < math.inf):  # NaN fails both
        raise ValueError(f"eps and step size must be finite and > 0, got {eps} and {step_size}")
    if eps < 1 / 255:
        # Each change is rounded towards the original onto the 8-bit grid: under one level
        # none survives, and the attack wrote its image unchanged as a failure.
        raise ValueError(f"eps must be at least 1/255 (one 8-bit level), got {eps:g}")
    if norm == "linf" and eps > 1:
        raise ValueError(f"an L-inf eps is at most 1 (pixel values are in [0, 1]), got {eps:g}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
    if confidence is not None and not 0 <= confidence <= 1:  # NaN too: nothing would count
        raise ValueError(f"confidence must be in [0, 1], got {confidence}")


def detection_attack(
    detector: Detector,
    *,
    mode: str,
    eps: float | None = None,
    step_size: float | None = None,
    steps: int = TOG_STEPS,
    norm: str = "linf",
    target_class: int | None = None,
    confidence: float | None = None,
    match_iou: float = 0.5,
    fabrication: str = "count",
) -> Callable[[jax.Array, jax.Array], DetectionAttackResult]:
    """Build a TOG (or DAG) attack on ``detector``: ``run(key, x) -> DetectionAttackResult``.

    Args:
        detector: The :class:`Detector` to attack (its own params are used).
        mode: One of :data:`MODES`.
        eps: Budget, in [0, 1] pixel units (L-inf: per pixel value; L2: whole image);
            None: :data:`DEFAULT_EPS` of ``norm`` (TOG's 8/255 for L-inf, 3.0 for L2).
        step_size: Step per iteration; None: :data:`DEFAULT_STEP` of ``norm`` (TOG's 2/255
            for L-inf, 0.75 for L2).
        steps: Iterations (TOG: 10), at most :data:`MAX_STEPS`.
        norm: ``"linf"`` or ``"l2"``.
        target_class: Foreground class index for ``mislabel``.
        confidence: Score at which a clean detection counts as an object; None: the
            detector's operating point.
        match_iou: IoU at which a candidate belongs to a clean object.
        fabrication: ``fabricate``'s objective: ``"count"`` (ascend the expected number of
            objects, the default) or ``"tog"`` (ascend TOG's vanishing loss).

    Returns:
        ``run(key, x)`` for images x (B, H, W, 3) in [0, 1] at any size the detector
        takes; jitted once per detector and shape, with the mode, norm, eps, step
        size, steps, target class, confidence and match IoU as arguments of the program
        (another mode, norm or value compiles nothing new). ``key`` draws DAG's adversarial
        labels.

    Raises:
        ValueError: A bad mode, norm, budget, step count, target class or confidence;
            ``run`` raises it for images not of shape (B, H, W, 3), of an integer dtype,
            or outside :data:`fooltools.io.PIXEL_RANGE`.
    """
    check_arguments(detector, mode, eps, step_size, steps, norm, target_class, confidence)
    eps, step_size = budget(norm, eps, step_size)
    if fabrication not in ("count", "tog"):
        raise ValueError(f"fabrication must be 'count' or 'tog', got {fabrication!r}")
    confidence = detector.confidence if confidence is None else confidence
    # Arguments of the compiled attack, not constants in it: one program per detector and
    # shape serves every mode (each mode's loss is a branch of it), norm, budget, step
    # count, target class and confidence, so a grid over them (fool run, fool detect
    # eval's modes) compiles it once.
    numbers = Numbers(
        np.int32(MODES.index(mode)),
        np.bool_(norm == "l2"),
        np.float32(eps),
        np.float32(step_size),
        np.float32(confidence),
        np.float32(match_iou),
        np.int32(0 if target_class is None else target_class),
        np.int32(steps),
    )
    k, multi = len(detector.class_names), detector.multilabel
    run = _kept_program(detector.dense, detector.detect, k, multi, fabrication)
    parallel = sharding.data_parallel(run, detector.params, batch_arg=2)

    def checked(key: jax.Array, x: jax.Array) -> DetectionAttackResult:
        # Images on another scale (8-bit values as floats) were clipped to [0, 1] and
        # attacked without a word; under an outer jit the values cannot be read.
        io.require_float(x, "x")
        if not isinstance(x, jax.core.Tracer):
            io.require_pixel_range(x, "x")
        return parallel(numbers, key, x)

    return checked


class Numbers(NamedTuple):
    """An attack's arguments of its compiled program (int32/bool/float32 scalars)."""

    mode: ArrayLike  # index in MODES
    l2: ArrayLike  # the norm is L2 (else L-inf)
    eps: ArrayLike
    step_size: ArrayLike
    confidence: ArrayLike
    match_iou: ArrayLike
    target_class: ArrayLike
    steps: ArrayLike


def _program(
    dense: Callable[[Any, jax.Array], Dense],
    detect: Callable[[Any, jax.Array], Found],
    k: int,
    multi: bool,
    fabrication: str,
) -> Callable[..., DetectionAttackResult]:
    """The jitted attack ``run(params, numbers, key, x)`` of every mode, for one detector.

    ``numbers`` are :class:`Numbers`; ``dense``, ``detect``, ``k`` (classes) and ``multi``
    (multilabel) are the detector's.
    """

    def mode_loss(params, x0, x, clean, is_obj, adv_labels, num):
        d = dense(params, base.snap(x0, x))

        def on_objects():
            # The candidates on clean objects, which object each is on, and its label.
            pos, which = _match(d, clean, is_obj, num.match_iou)
            return pos, which, jnp.take_along_axis(clean.labels, which, axis=1)

        def mislabel():
            pos, _, labels = on_objects()
            return _detection_loss(d, pos, jnp.full_like(labels, num.target_class), multi)

        def untargeted():
            pos, _, labels = on_objects()
            return -_detection_loss(d, pos, labels, multi)

        def dag():
            pos, which, labels = on_objects()
            adv = jnp.take_along_axis(adv_labels, which, axis=1)
            true_logit = jnp.take_along_axis(d.cls, labels[..., None], axis=-1)[..., 0]
            adv_logit = jnp.take_along_axis(d.cls, adv[..., None], axis=-1)[..., 0]
            active = pos & (d.cls.argmax(-1) == labels)  # DAG: only still-correct candidates
            return jnp.sum(jnp.where(active, true_logit - adv_logit, 0.0))

        branches = {
            "vanish": lambda: _vanishing_loss(d),
            "fabricate": (
                (lambda: -_vanishing_loss(d))
                if fabrication == "tog"
                else (lambda: -_expected_objects(d))
            ),
            "mislabel": mislabel,
            "untargeted": untargeted,
            "dag": dag,
        }
        # Only the mode's branch runs; the network's forward and backward pass, outside
        # the branches, is compiled once for all of them.
        return jax.lax.switch(num.mode, [branches[m] for m in MODES])

    grad = jax.grad(mode_loss, argnums=2)

    @jax.jit
    def run(params, numbers, key, x):
        # At trace time: uint8 pixels were clipped to a white image and attacked, and one
        # (H, W, 3) image was an IndexError from deep inside the detector.
        io.require_float(x, "x")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images of shape (B, H, W, 3), got {x.shape}")
        x0 = io.quantize(x)  # a no-op for images read from PNG files
        clean = detect(params, x0)
        is_obj = objects(clean, numbers.confidence)
        # jax.random.randint(key, shape, 1, max(k, 2)), the same numbers (tests/test_rng.py)
        shift = 1 + rng.randint(key, clean.labels.shape, max(k, 2) - 1)
        adv_labels = (jnp.maximum(clean.labels, 0) + shift) % k
        dag = numbers.mode == MODES.index("dag")
        l2, eps = numbers.l2, numbers.eps

        def body(_, x):
            g = grad(params, x0, x, clean, is_obj, adv_labels, numbers)
            # Both norms' steps and projections are elementwise work next to the network's
            # pass: selected, not compiled apart. DAG's L-inf step is the gradient scaled
            # by its largest entry, not its sign.
            scale = jnp.max(jnp.abs(g), axis=(1, 2, 3), keepdims=True)
            linf_step = jnp.where(dag, g / jnp.maximum(scale, 1e-12), step_direction(g, "linf"))
            x = x - numbers.step_size * jnp.where(l2, step_direction(g, "l2"), linf_step)
            d = x - x0
            d = jnp.where(l2, project(d, eps, "l2"), project(d, eps, "linf"))
            return jnp.clip(x0 + d, 0.0, 1.0)

        # A rolled loop: compiled once for every step count, in about half the time of TOG's
        # 10 steps unrolled and running as fast (the detectors' convolutions take
        # fooltools.models.layers.conv_general_dilated, whose input gradients XLA:CPU ran
        # ~3x slower in a loop before).
        # No random start, unlike TOG's code: measured on the bundled YOLO it lowered the
        # share of relabelled objects (78% vs 86%) and did not help the other modes.
        xa = base.snap(x0, jax.lax.fori_loop(0, numbers.steps, body, x0))
        delta = (xa - x0).reshape(x0.shape[0], -1)
        return DetectionAttackResult(
            xa,
            clean,
            detect(params, xa),
            jnp.abs(delta).max(-1),
            jnp.sqrt(jnp.sum(delta * delta, axis=-1)),
        )

    return run


# Another mode, budget, step count or target in this process runs the program already
# compiled (JAX's persistent cache would spare the compile, not the trace).
_kept_program = base.kept(_program)
