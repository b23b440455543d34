"""Detector attacks: contracts on small random-weight nets (the bundled detectors' acceptance
figures are in test_detection_eval.py)."""

import jax
import numpy as np
import pytest

from fooltools import rng
from fooltools.detection import attacks, detectors, faster_rcnn, yolo
from fooltools.detection.attack_run import success
from fooltools.detection.detectors import Found
from fooltools.detection.evaluate import mislabel_rate

DATA = "tests/data"


@pytest.fixture(scope="module")
def tiny_yolo():
    net = yolo.load_darknet(f"{DATA}/yolo/tiny_v3.cfg", f"{DATA}/yolo/tiny_v3.weights")
    return detectors.from_yolo(net, tuple(f"c{i}" for i in range(net.num_classes)))


@pytest.fixture(scope="module")
def tiny_rcnn():
    model = faster_rcnn.load_faster_rcnn(
        f"{DATA}/faster_rcnn_tiny.pth", min_size=64, max_size=96, box_score_thresh=0.0
    )
    names = tuple(f"c{i}" for i in range(model.config.num_classes - 1))
    return detectors.from_faster_rcnn(model, names)


@pytest.fixture(scope="module")
def images():
    return jax.jit(rng.uniform, static_argnums=1)(jax.random.key(0), (2, 64, 96, 3))


@pytest.mark.parametrize(
    "mode,norm,eps",
    [(mode, "linf", 8 / 255) for mode in attacks.MODES]
    + [("vanish", "l2", 0.5), ("dag", "l2", 0.5)],
)
def test_budget_and_grid(tiny_yolo, images, mode, norm, eps):
    # Two steps: the projection and the grid apply at every step (TOG's 10 only multiply
    # the running time).
    run = attacks.detection_attack(
        tiny_yolo,
        mode=mode,
        norm=norm,
        eps=eps,
        step_size=eps / 4,
        steps=2,
        target_class=1,
        confidence=0,
    )
    r = run(jax.random.key(1), images)
    x0 = np.round(np.asarray(images) * 255) / 255
    delta = np.asarray(r.x) - x0
    assert np.allclose(np.asarray(r.x) * 255, np.round(np.asarray(r.x) * 255), atol=1e-4)
    assert np.asarray(r.x).min() >= 0 and np.asarray(r.x).max() <= 1
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 1e-6
    else:
        assert np.sqrt((delta.reshape(2, -1) ** 2).sum(-1)).max() <= eps + 1e-5
    assert np.abs(delta).max() > 0  # it moved
    np.testing.assert_allclose(r.linf, np.abs(delta.reshape(2, -1)).max(-1), atol=1e-6)


def _total_score(found):
    return float(np.asarray(found.scores).sum())


def test_vanish_and_fabricate_move_scores_both_families(tiny_yolo, tiny_rcnn, images):
    # Random weights: no meaningful objects, but the losses must drive the scores the
    # intended way on both families. Two steps, as above.
    for det in (tiny_yolo, tiny_rcnn):
        van = attacks.detection_attack(det, mode="vanish", steps=2)(jax.random.key(0), images)
        fab = attacks.detection_attack(det, mode="fabricate", steps=2)(jax.random.key(0), images)
        assert _total_score(van.adv) < _total_score(van.clean), det.kind
        assert _total_score(fab.adv) > _total_score(fab.clean), det.kind
    tog = attacks.detection_attack(tiny_yolo, mode="fabricate", fabrication="tog", steps=2)
    result = tog(jax.random.key(0), images)
    assert _total_score(result.adv) > _total_score(result.clean)
    with pytest.raises(ValueError, match="fabrication must be"):
        attacks.detection_attack(tiny_yolo, mode="fabricate", fabrication="more")


def test_second_call_does_not_retrace(tiny_yolo, images):
    traces = []

    def dense(params, x):
        traces.append(x.shape)  # runs only while tracing
        return tiny_yolo.dense(params, x)

    run = attacks.detection_attack(tiny_yolo._replace(dense=dense), mode="vanish", steps=2)
    run(jax.random.key(0), images)
    traced = len(traces)
    run(jax.random.key(1), jax.jit(rng.uniform, static_argnums=1)(jax.random.key(5), images.shape))
    assert traced > 0 and len(traces) == traced


def test_another_mode_norm_budget_steps_target_or_confidence_compiles_nothing(tiny_yolo, images):
    # They are arguments of the compiled attack, each mode's loss a branch of it: a fool
    # run grid over them, or fool detect eval over the modes, compiled one attack per
    # point. After the first build, the other modes and norm with every number changed
    # compile nothing, in this process or from the cache.
    compiled = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(duration)

    kw = {"steps": 3, "eps": 3 / 255, "step_size": 3 / 255, "confidence": 0.01}
    attacks.detection_attack(
        tiny_yolo, mode="mislabel", steps=2, eps=8 / 255, step_size=2 / 255, target_class=1,
        confidence=0,
    )(jax.random.key(1), images)  # fmt: skip
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        results = [
            attacks.detection_attack(tiny_yolo, mode=mode, **kw)(jax.random.key(1), images)
            for mode in ("vanish", "fabricate", "dag")
        ]
        results.append(
            attacks.detection_attack(tiny_yolo, mode="mislabel", target_class=0, **kw)(
                jax.random.key(1), images
            )
        )
        l2 = attacks.detection_attack(tiny_yolo, mode="vanish", norm="l2", steps=3, eps=0.5)(
            jax.random.key(1), images
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiled == []
    # An L2 step and ball (the 8-bit grid takes the changes' rounding off the radius).
    assert 0.3 < np.asarray(l2.l2).max() <= 0.5 + 1e-5
    for r in results:
        assert np.abs(np.asarray(r.linf)).max() == pytest.approx(3 / 255, abs=1e-6)
    # Each mode's own loss ran: vanishing lowers the scores, fabricating raises them.
    vanish, fabricate = results[:2]
    assert _total_score(vanish.adv) < _total_score(vanish.clean)
    assert _total_score(fabricate.adv) > _total_score(fabricate.clean)


def test_8bit_or_unbatched_images_are_refused(tiny_yolo, images):
    # uint8 pixels were clipped to a white image and attacked without a word; one
    # (H, W, 3) image was an IndexError from inside the detector.
    run = attacks.detection_attack(tiny_yolo, mode="vanish", steps=1)
    with pytest.raises(ValueError, match="integer dtype uint8"):
        run(jax.random.key(0), (np.asarray(images) * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"shape \(B, H, W, 3\)"):
        run(jax.random.key(0), images[0])
    with pytest.raises(ValueError, match=r"expected images in \[0, 1\]"):
        run(jax.random.key(0), images * 255)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mode": "melt"}, "mode must be one of"),
        ({"mode": "vanish", "norm": "l1"}, "norm must be"),
        ({"mode": "vanish", "eps": 0.0}, "must be finite and > 0"),
        ({"mode": "vanish", "norm": "l2", "eps": float("inf")}, "must be finite and > 0"),
        ({"mode": "vanish", "step_size": float("nan")}, "must be finite and > 0"),
        ({"mode": "vanish", "eps": 3.0}, "an L-inf eps is at most 1"),
        ({"mode": "vanish", "steps": 0}, "steps must be in 1..2147483647"),
        ({"mode": "mislabel"}, "mislabel needs a target class"),
        ({"mode": "mislabel", "target_class": 99}, "mislabel needs a target class"),
        ({"mode": "vanish", "confidence": 70}, "confidence must be in"),
        ({"mode": "vanish", "confidence": float("nan")}, "confidence must be in"),
    ],
)
def test_bad_arguments(tiny_yolo, kwargs, message):
    with pytest.raises(ValueError, match=message):
        attacks.detection_attack(tiny_yolo, **kwargs)


def test_dag_on_a_one_class_detector_is_refused(tiny_yolo):
    # Its random other label is the object's own: the attack ran and changed nothing.
    one = tiny_yolo._replace(class_names=("c0",))
    with pytest.raises(ValueError, match="dag gives each object another label"):
        attacks.detection_attack(one, mode="dag")


def test_budget_defaults_follow_the_norm():
    assert attacks.budget("linf", None, None) == (8 / 255, 2 / 255)  # TOG's
    assert attacks.budget("l2", None, None) == (3.0, 0.75)  # fool perturb's L2 radius
    assert attacks.budget("l2", 1.0, None) == (1.0, 0.75)
    with pytest.raises(ValueError, match="norm must be"):
        attacks.budget("l1", None, None)


def _obj(label, box=(0, 0, 10, 10)):
    return {"class_index": label, "box": list(box)}


@pytest.mark.parametrize("mode", ["vanish", "mislabel", "untargeted", "dag"])
def test_an_image_without_objects_is_no_success(mode):
    # Their goals hold before any attack: no verdict, rather than a success it did not earn.
    assert success(mode, [], [], 1) is None
    assert success(mode, [], [_obj(2)], 1) is None


def test_mislabel_of_objects_already_of_the_target_is_no_success():
    # Nothing to relabel: "success" True was counted by fool results as the attack's work.
    assert success("mislabel", [_obj(1), _obj(1, (20, 20, 30, 30))], [_obj(1)], 1) is None
    assert success("mislabel", [_obj(1), _obj(0, (20, 20, 30, 30))], [_obj(1)], 1) is False


def test_success_verdicts():
    one, moved = [_obj(0)], [_obj(0, (50, 50, 60, 60))]
    assert success("vanish", one, [], None) is True
    assert success("vanish", one, one, None) is False
    assert success("fabricate", [], [_obj(0)], None) is True  # it has something to make
    assert success("fabricate", [], [], None) is False
    assert success("mislabel", one, [_obj(1)], 1) is True
    assert success("mislabel", one, one, 1) is False
    assert success("untargeted", one, moved, None) is True
    assert success("dag", one, one, None) is False


@pytest.mark.parametrize("mode", ["untargeted", "dag"])
def test_an_object_still_detected_beside_a_closer_fabricated_box_is_not_fooled(mode):
    # Matched to the attacked box overlapping it most alone, an object still detected
    # with its label (IoU 0.9) read as fooled when a fabricated box covered it exactly.
    clean = [_obj(0, (0, 0, 10, 10))]
    adv = [_obj(0, (0, 0, 10, 9)), _obj(2, (0, 0, 10, 10))]
    assert success(mode, clean, adv, None) is False
    assert success(mode, clean, adv[1:], None) is True


def test_mislabel_needs_the_target_over_each_object_and_its_own_class_gone():
    clean = [_obj(0, (0, 0, 10, 10))]
    target_near = [_obj(1, (0, 0, 10, 9)), _obj(2, (0, 0, 10, 10))]  # was False: 2 closer
    assert success("mislabel", clean, target_near, 1) is True
    both = [_obj(1, (0, 0, 10, 10)), _obj(0, (0, 0, 10, 9))]  # was True: still a class 0
    assert success("mislabel", clean, both, 1) is False
    clean_found = Found(*(np.asarray(a)[None] for a in ([[0, 0, 10, 10]], [0.9], [0], [True])))
    for adv, rate in ((target_near, 1.0), (both, 0.0)):
        arrays = ([a["box"] for a in adv], [0.9] * len(adv), [a["class_index"] for a in adv],
                  [True] * len(adv))  # fmt: skip
        adv_found = Found(*(np.asarray(a)[None] for a in arrays))
        assert mislabel_rate(clean_found, adv_found, 1, 0.5) == rate


def test_yolo_input_is_resized_plainly_as_darknet_and_opencv_resize_it():
    # jax's bilinear resize antialiases by default: a 4x shrink averaged 4 x 4 pixels
    # where Darknet and OpenCV's INTER_LINEAR sample between two (up to 0.27 apart).
    net = yolo.load_darknet(f"{DATA}/yolo/tiny_v3.cfg", f"{DATA}/yolo/tiny_v3.weights")
    h, w = net.input_hw
    x = np.random.default_rng(0).random((1, 4 * h, 4 * w, 3), dtype=np.float32)
    # Half-pixel centres: output pixel i samples input 4i + 1.5, between pixels 4i+1, 4i+2.
    want = x[:, 1::4] + x[:, 2::4]
    want = (want[:, :, 1::4] + want[:, :, 2::4]) / 4
    np.testing.assert_allclose(detectors._to_input(net, jax.numpy.asarray(x)), want, atol=1e-6)
