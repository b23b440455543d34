"""Faster R-CNN with torchvision's MobileNetV3-Large FPN backbone, against torchvision.

``tests/golden/faster_rcnn_mobilenet_tiny.npz`` holds a reduced-size
``fasterrcnn_mobilenet_v3_large_fpn`` built by torchvision itself (``width_mult=0.25``,
``reduced_tail``, a 16-channel FPN, small box head; random FrozenBatchNorm statistics):
its state dict (``sd/*``) and every stage of torchvision's forward on two images, img0
under the ``fasterrcnn_mobilenet_v3_large_fpn`` settings and img1 under the ``_320_fpn``
ones (150/150 proposals), both at reduced image sizes.
``tests/golden/fasterrcnn_mobilenet_v3_large_fpn_keys.json`` lists the full-size model's
keys and shapes. Both come from ``tests/reference/make_rcnn_mobilenet_goldens.py``
(``make reference-rcnn``). Each stage is tested on torchvision's own input to it.
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fooltools import checkpoints, rng
from fooltools.detection import faster_rcnn as fr
from fooltools.detection import mobilenet_fpn, rpn
from fooltools.errors import ModelError

HERE = Path(__file__).parent
GOLDEN = np.load(HERE / "golden" / "faster_rcnn_mobilenet_tiny.npz")
FULL_KEYS = json.loads(
    (HERE / "golden" / "fasterrcnn_mobilenet_v3_large_fpn_keys.json").read_text()
)
CONFIG = json.loads(str(GOLDEN["config"]))
STATE_DICT = {k[3:]: GOLDEN[k] for k in GOLDEN.files if k.startswith("sd/")}
IMAGES = ("img0", "img1")  # (66, 120) up to (132, 240); (180, 150) down to (153, 128)
LEVELS = ("0", "1", "pool")

# torchvision's mobilenet_v3_large at width_mult 1 (input, kernel, expanded, out, SE,
# hardswish, stride), and the squeeze width _make_divisible(expanded // 4, 8).
FULL_TABLE = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)


def _load(name: str) -> fr.FasterRCNN:
    c = CONFIG[name]
    return fr.load_faster_rcnn(
        STATE_DICT,
        variant=c["variant"],
        min_size=c["min_size"],
        max_size=c["max_size"],
        box_score_thresh=c["box_score_thresh"],
    )


@pytest.fixture(scope="module")
def models():
    return {name: _load(name) for name in IMAGES}


def image(name):
    return jnp.asarray(GOLDEN[f"{name}/image"].astype(np.float32) / 255)[None]


def golden_features(name):
    return {k: jnp.asarray(GOLDEN[f"{name}/feat_{k}"]) for k in LEVELS}


def _stages(config, image_size, params, transformed, features, proposals):
    # Each stage on torchvision's own input to it, in one compilation per image.
    ours = fr.backbone_features(config, params, transformed)
    objectness, deltas = fr.rpn_head_outputs(config, params, features)
    logits, regression = fr.box_head_outputs(config, params, features, proposals, image_size)
    return ours, objectness, deltas, logits, regression


@pytest.fixture(scope="module")
def stages(models):
    out = {}
    for name in IMAGES:
        m = models[name]
        size = tuple(int(s) for s in GOLDEN[f"{name}/image_size"])
        out[name] = jax.jit(functools.partial(_stages, m.config, size))(
            m.params,
            jnp.asarray(GOLDEN[f"{name}/transformed"]),
            golden_features(name),
            jnp.asarray(GOLDEN[f"{name}/proposals"])[None],
        )
    return out


@pytest.fixture(scope="module")
def raw_outputs(models):
    return {name: models[name].apply(models[name].params, image(name)) for name in IMAGES}


def test_spec_and_settings(models):
    spec = models["img0"].config.backbone
    assert isinstance(spec, mobilenet_fpn.MobileNetFPNSpec)
    assert len(spec.blocks) == 15 and spec.returned == (13, 16)
    assert spec.fpn_channels == 16 and spec.last == 6 * spec.blocks[-1].out
    assert [b.stride for b in spec.blocks] == [t[-1] for t in FULL_TABLE]
    assert spec.blocks[0].expanded == spec.blocks[0].cin  # no expand conv, as torchvision
    for name, (pre, post) in (("img0", (1000, 1000)), ("img1", (150, 150))):
        c = models[name].config
        assert (c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n) == (pre, post)
        assert c.rpn_score_thresh == 0.05 and c.num_anchors == 15
        assert c.anchor_sizes == ((32, 64, 128, 256, 512),) * 3
        assert (c.min_size, c.max_size) == (CONFIG[name]["min_size"], CONFIG[name]["max_size"])
    assert CONFIG["img1"]["rpn_pre_nms_top_n_test"] == 150


@pytest.mark.parametrize("name", IMAGES)
def test_transform_matches(models, name):
    images, size = fr.transform(models[name].config, image(name))
    assert size == tuple(GOLDEN[f"{name}/image_size"])
    np.testing.assert_allclose(images, GOLDEN[f"{name}/transformed"], atol=1e-5)


def test_anchors_match(models):
    padded = GOLDEN["img0/transformed"].shape[1:3]
    sizes = [GOLDEN[f"img0/feat_{k}"].shape[1:3] for k in LEVELS]
    got = rpn.grid_anchors(padded, sizes, models["img0"].config.anchor_sizes)
    np.testing.assert_array_equal(np.concatenate(got), GOLDEN["img0/anchors"])


@pytest.mark.parametrize("name", IMAGES)
def test_features_match(stages, name):
    feats = stages[name][0]
    assert list(feats) == list(LEVELS)
    for k in LEVELS:
        np.testing.assert_allclose(feats[k], GOLDEN[f"{name}/feat_{k}"], atol=1e-3, err_msg=k)


@pytest.mark.parametrize("name", IMAGES)
def test_rpn_head_matches(stages, name):
    _, objectness, deltas, _, _ = stages[name]
    for level in range(len(LEVELS)):
        assert objectness[level].shape[-1] == 15
        np.testing.assert_allclose(
            objectness[level][0], GOLDEN[f"{name}/objectness_{level}"], atol=1e-4
        )
        np.testing.assert_allclose(
            deltas[level][0], GOLDEN[f"{name}/rpn_deltas_{level}"], atol=1e-4
        )


@pytest.mark.parametrize("name", IMAGES)
def test_box_head_on_given_proposals_matches(stages, name):
    _, _, _, logits, regression = stages[name]
    np.testing.assert_allclose(logits[0], GOLDEN[f"{name}/class_logits"], atol=1e-3)
    np.testing.assert_allclose(regression[0], GOLDEN[f"{name}/box_regression"], atol=1e-3)


def _match(got, want, tol):
    """Index into ``got`` of a row within ``tol`` of each row of ``want`` (-1: none), 1:1."""
    used, out = set(), []
    for row in want:
        close = [c for c in np.nonzero(np.abs(got - row).max(axis=1) <= tol)[0] if c not in used]
        out.append(close[0] if close else -1)
        used.update(close[:1])
    return np.array(out)


@pytest.mark.parametrize("name", IMAGES)
def test_proposals_match(raw_outputs, name):
    raw = raw_outputs[name]
    valid = np.asarray(raw.proposal_valid[0])
    assert valid[: valid.sum()].all()  # the valid rows are a prefix
    boxes, scores = np.asarray(raw.proposals[0])[valid], np.asarray(raw.proposal_scores[0])[valid]
    assert np.all(np.diff(scores) <= 0)
    want_boxes, want_scores = GOLDEN[f"{name}/proposals"], GOLDEN[f"{name}/proposal_scores"]
    assert scores.min() >= 0.05  # rpn_score_thresh
    # The same proposals with the same scores (see test_faster_rcnn for why near-tie NMS
    # decisions could differ; here none does).
    rows = np.concatenate([want_boxes, want_scores[:, None] * 100], axis=1)
    match = _match(np.concatenate([boxes, scores[:, None] * 100], axis=1), rows, 1e-2)
    assert (match >= 0).all(), np.nonzero(match < 0)[0]
    assert len(boxes) == len(want_boxes)


@pytest.mark.parametrize("name", IMAGES)
def test_raw_outputs_of_the_whole_forward_match(raw_outputs, name):
    raw = raw_outputs[name]
    for level in range(len(LEVELS)):
        np.testing.assert_allclose(
            raw.objectness[level][0], GOLDEN[f"{name}/objectness_{level}"], atol=1e-3
        )
    # The box head ran on our own proposals: compare it row by matching row (two img0
    # proposals whose scores differ by 4e-7 come in the other order).
    want = GOLDEN[f"{name}/proposals"]
    match = _match(np.asarray(raw.proposals[0]), want, 1e-2)
    assert (match >= 0).all()
    logits = np.asarray(raw.class_logits[0])[match]
    np.testing.assert_allclose(logits, GOLDEN[f"{name}/class_logits"], atol=1e-3)
    regression = np.asarray(raw.box_regression[0])[match]
    np.testing.assert_allclose(regression, GOLDEN[f"{name}/box_regression"], atol=1e-3)


@pytest.mark.parametrize("name", IMAGES)
def test_detections_match(models, raw_outputs, name):
    size = tuple(int(s) for s in GOLDEN[f"{name}/image_size"])
    post = functools.partial(
        fr.postprocess, models[name].config, image_size=size, original_size=image(name).shape[1:3]
    )
    det = jax.jit(post)(raw_outputs[name])
    valid = np.asarray(det.valid[0])
    boxes, scores = np.asarray(det.boxes[0])[valid], np.asarray(det.scores[0])[valid]
    labels = np.asarray(det.labels[0])[valid]
    want_boxes, want_scores = GOLDEN[f"{name}/boxes"], GOLDEN[f"{name}/scores"]
    want_labels = GOLDEN[f"{name}/labels"]
    assert len(boxes) == len(want_boxes) == 100
    np.testing.assert_allclose(scores, want_scores, atol=1e-3)
    match = _match(
        np.concatenate([boxes, scores[:, None] * 10, labels[:, None] * 10.0], axis=1),
        np.concatenate([want_boxes, want_scores[:, None] * 10, want_labels[:, None] * 10.0], 1),
        1e-2,
    )
    assert (match >= 0).all(), np.nonzero(match < 0)[0]


# Stride 2 on even sides is where torch's padding differs from TF "SAME".
@pytest.mark.parametrize(
    ("shape", "k", "stride"), [((2, 9, 12, 5), 3, 1), ((2, 9, 12, 5), 5, 2), ((1, 8, 7, 3), 3, 2)]
)
def test_depthwise_forms_agree(shape, k, stride):
    # The shifted-slices form (CPU) against XLA's grouped convolution (GPU), with gradients.
    def both(x, kernel, bias):
        def one(grouped):
            f = functools.partial(
                mobilenet_fpn.depthwise_conv,
                kernel=kernel,
                bias=bias,
                stride=stride,
                grouped=grouped,
            )
            return f(x), jax.grad(lambda x: jnp.sum(f(x) ** 2))(x)

        return one(False), one(True)

    normal = jax.jit(rng.normal, static_argnums=1)  # = jax.random.normal, compiled faster
    x = normal(jax.random.key(0), shape)
    kernel = normal(jax.random.key(k), (k, k, shape[-1]))
    bias = jnp.arange(shape[-1], dtype=jnp.float32)
    (a, ga), (b, gb) = jax.jit(both)(x, kernel, bias)
    assert a.shape == (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), shape[-1])
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(ga, gb, atol=1e-4)


def test_full_size_model_keys_and_shapes():
    # torchvision's untrained builder uses BatchNorm2d (its num_batches_tracked is skipped).
    # Zero-stride arrays of the real shapes: no 80 MB of weights.
    shapes = FULL_KEYS["keys"]
    sd = {k: np.broadcast_to(np.float32(1), s) for k, s in shapes.items()}
    model = fr.load_faster_rcnn(sd)  # loading checks every key and shape, heads included
    spec = model.config.backbone
    backbone = {k for k in shapes if k.startswith("backbone.")}
    assert mobilenet_fpn.expected_keys(spec) == {
        k for k in backbone if not k.endswith("num_batches_tracked")
    }
    got = [
        (b.cin, b.kernel, b.expanded, b.out, b.squeeze > 0, b.hardswish, b.stride)
        for b in spec.blocks
    ]
    assert got == list(FULL_TABLE)
    assert [b.squeeze for b in spec.blocks if b.squeeze] == [24, 32, 32, 120, 168, 168, 240, 240]
    assert (spec.stem, spec.last, spec.fpn_channels, spec.returned) == (16, 960, 256, (13, 16))
    c = model.config
    assert (c.num_classes, c.representation, c.num_anchors) == (91, 1024, 15)
    assert (c.min_size, c.max_size) == (800, 1333)
    assert (c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n, c.rpn_score_thresh) == (1000, 1000, 0.05)
    n = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith("num_batches_tracked"))
    # Folding turns each BatchNorm's 4 vectors into the conv's one bias.
    bn = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(".1.running_var"))
    assert sum(p.size for p in jax.tree.leaves(model.params)) == n - 3 * bn


def test_320_variant_settings():
    model = fr.load_faster_rcnn(STATE_DICT, variant="fasterrcnn_mobilenet_v3_large_320_fpn")
    c = model.config
    assert (c.min_size, c.max_size) == (320, 640)
    assert (c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n, c.rpn_score_thresh) == (150, 150, 0.05)


def test_loads_from_a_torch_file_the_same(models, tmp_path):
    path = checkpoints.save_state_dict(tmp_path / "tiny.pth", STATE_DICT)
    c = CONFIG["img0"]
    loaded = fr.load_faster_rcnn(path, min_size=c["min_size"], max_size=c["max_size"])
    for a, b in zip(
        jax.tree.leaves(loaded.params), jax.tree.leaves(models["img0"].params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_detector_from_user_weights_takes_the_variant(tmp_path, capsys):
    from fooltools.cli import main
    from fooltools.detection.detectors import load_detector

    path = checkpoints.save_state_dict(tmp_path / "tiny.pth", STATE_DICT)
    det = load_detector(
        "faster-rcnn", weights=path, variant="fasterrcnn_mobilenet_v3_large_320_fpn"
    )
    assert det.params is not None and len(det.class_names) == CONFIG["num_classes"] - 1
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "sample:cat", "--detector", "faster-rcnn", "--weights", str(path),
              "--variant", "nope"])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        exit_info.value.code == 2 and "unknown variant 'nope'" in err and len(err.splitlines()) == 1
    )


def test_mismatched_keys_list_missing_and_unexpected():
    sd = dict(STATE_DICT)
    del sd["backbone.body.5.block.1.1.running_var"]
    sd["backbone.body.17.0.weight"] = sd["backbone.body.16.0.weight"]
    with pytest.raises(ModelError) as err:
        fr.load_faster_rcnn(sd)
    msg = str(err.value)
    assert "MobileNetV3" in msg
    assert "missing backbone.body.5.block.1.1.running_var" in msg
    assert "unexpected backbone.body.17.0.weight" in msg
    sd = dict(STATE_DICT)
    del sd["backbone.body.5.block.2.fc1.weight"]
    with pytest.raises(ModelError, match="missing backbone.body.5.block.2.fc1.weight"):
        fr.load_faster_rcnn(sd)


def test_other_architectures_and_settings_are_errors():
    sd = dict(STATE_DICT)
    w = sd["backbone.body.4.block.1.0.weight"]  # a 5x5 depthwise in mobilenet_v3_large
    sd["backbone.body.4.block.1.0.weight"] = w[:, :, 1:4, 1:4]
    with pytest.raises(ModelError, match="block 4"):
        fr.load_faster_rcnn(sd)
    with pytest.raises(ModelError, match="does not fit"):
        fr.load_faster_rcnn(STATE_DICT, variant="fasterrcnn_resnet50_fpn")
    with pytest.raises(ModelError, match="unknown variant"):
        fr.load_faster_rcnn(STATE_DICT, variant="fasterrcnn_mobilenet_v3_small_fpn")
    with pytest.raises(ModelError, match="anchor_sizes"):
        fr.load_faster_rcnn(STATE_DICT, anchor_sizes=rpn.ANCHOR_SIZES)  # ResNet's 5 levels
