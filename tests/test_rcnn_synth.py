"""The bundled synthetic-data Faster R-CNN and its training code (fooltools.detection.rcnn_train).

The weights are loaded exactly as real torchvision weights are (``load_faster_rcnn`` of a
``torch.save``-format file), so the accuracy test also covers the loader and the writer.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fooltools import checkpoints
from fooltools.detection import detectors, synthetic
from fooltools.detection import faster_rcnn as fr
from fooltools.detection import rcnn_train as rt
from fooltools.detection.resnet_fpn import ResNetFPNSpec, StageSpec
from fooltools.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "fooltools" / "detection" / "weights" / "faster-rcnn-synth.pth"
TINY = Path(__file__).parent / "data" / "faster_rcnn_tiny.pth"  # made by torchvision itself


# --- the bundled weights -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    return fr.load_faster_rcnn(WEIGHTS, **detectors.SYNTH_LOAD_KWARGS)


def test_bundled_weights_are_small_and_torchvision_shaped(bundled):
    assert WEIGHTS.stat().st_size < 4_000_000
    c = bundled.config
    assert c.num_classes == len(synthetic.CLASSES) + 1
    assert c.backbone == rt.SYNTH_SPEC and c.representation == rt.SYNTH_REPRESENTATION
    assert c.anchor_sizes == rt.SYNTH_ANCHOR_SIZES


def test_bundled_detector_reaches_map_on_held_out_images(bundled):
    data = synthetic.make_dataset(synthetic.TEST_SEED, 64)
    result = rt.evaluate(
        bundled.detect,
        bundled.params,
        data.images,
        data.boxes,
        data.labels,
        num_classes=len(synthetic.CLASSES),
        batch=32,
    )
    assert result.mean_ap >= 0.8, result
    assert min(result.per_class.values()) >= 0.8, result.per_class


def test_anchor_sizes_must_fit_the_rpn_head():
    with pytest.raises(ModelError, match="anchor_sizes"):
        fr.load_faster_rcnn(WEIGHTS, anchor_sizes=((16, 24),) * 5)  # 6 per location, not 3
    with pytest.raises(ModelError, match="anchor_sizes"):
        fr.load_faster_rcnn(WEIGHTS, anchor_sizes=((16,),) * 4)  # a level short


# --- target assignment ---------------------------------------------------------------------


def test_match_thresholds_and_best_anchor_rule():
    gt = jnp.asarray([[0, 0, 10, 10], [30, 30, 50, 50], [100, 100, 120, 120]], jnp.float32)
    gt_valid = jnp.asarray([True, True, False])  # the last row is padding
    anchors = jnp.asarray(
        [
            [0, 0, 10, 16],  # IoU 0.625 with gt 0: below 0.7, but gt 0's best -> positive
            [0, -6, 10, 10],  # IoU 0.625 too: a tie for best -> positive as well
            [0, 0, 10, 20],  # IoU 0.5: between the thresholds -> ignored
            [0, 0, 20, 20],  # IoU 0.25 -> negative
            [30, 30, 50, 52],  # IoU 0.91 with gt 1 -> positive
            [30, 30, 50, 60],  # IoU 0.67: not gt 1's best -> ignored
            [100, 100, 120, 120],  # on the padding row only -> negative
        ],
        jnp.float32,
    )
    iou = fr.box_ops.box_iou(anchors, gt)
    matched, labels = rt.match(iou, gt_valid, fg_iou=0.7, bg_iou=0.3, allow_low_quality=True)
    assert labels.tolist() == [1, 1, -1, 0, 1, -1, 0]
    assert matched[jnp.asarray([0, 1, 4])].tolist() == [0, 0, 1]
    _, strict = rt.match(iou, gt_valid, fg_iou=0.7, bg_iou=0.3, allow_low_quality=False)
    assert strict.tolist() == [-1, -1, -1, 0, 1, -1, 0]  # without the rule gt 0 gets none


@pytest.mark.parametrize(
    ("n_pos", "n_neg", "want_pos", "want_neg"),
    [(300, 1000, 128, 128), (20, 1000, 20, 236), (20, 100, 20, 100), (0, 1000, 0, 256)],
)
def test_sample_respects_batch_and_positive_caps(n_pos, n_neg, want_pos, want_neg):
    labels = np.full(1500, -1, np.int32)  # the rest ignored
    labels[:n_pos] = 1
    labels[n_pos : n_pos + n_neg] = 0
    labels = jnp.asarray(np.random.default_rng(0).permutation(labels))
    pos, neg = rt.sample(jax.random.key(3), labels, batch=256, positive_fraction=0.5)
    assert int(pos.sum()) == want_pos and int(neg.sum()) == want_neg
    assert bool(jnp.all(labels[pos] == 1)) and bool(jnp.all(labels[neg] == 0))
    pos2, neg2 = rt.sample(jax.random.key(4), labels, batch=256, positive_fraction=0.5)
    if n_neg > want_neg:  # a random subset: another key draws another one
        assert not bool(jnp.array_equal(neg, neg2))


def test_augment_moves_boxes_with_the_pixels():
    img = np.zeros((1, 32, 32, 3), np.float32)
    img[0, 4:10, 20:30] = 1.0  # rows 4..9, columns 20..29
    box = jnp.asarray([[[20, 4, 30, 10]]], jnp.float32)
    for seed in range(8):
        out, b = rt.augment(jax.random.key(seed), jnp.asarray(img), box)
        rows, cols = np.nonzero(np.asarray(out)[0, ..., 0])
        assert np.asarray(b)[0, 0].tolist() == [
            cols.min(),
            rows.min(),
            cols.max() + 1,
            rows.max() + 1,
        ]


# --- export and training ---------------------------------------------------------------------


def test_state_dict_export_has_torchvision_keys_and_folds_back_exactly():
    # A checkpoint written by torchvision: our export of its (folded) params must use the
    # same keys in the same order and shapes, and load back to the same params bit for bit.
    raw = checkpoints.load_state_dict(TINY)
    model = fr.load_faster_rcnn(TINY, min_size=96, max_size=144)
    sd = rt.to_state_dict(model.config, model.params)
    assert list(sd) == [k for k in raw if not k.endswith("num_batches_tracked")]
    assert all(sd[k].shape == raw[k].shape for k in sd)
    again = fr.load_faster_rcnn(sd, min_size=96, max_size=144)
    same = jax.tree_util.tree_map(jnp.array_equal, model.params, again.params)
    assert all(jax.tree_util.tree_leaves(same))


# A much smaller model, images and sample sizes than the bundled one: the same code paths,
# a fraction of the run time.
WIDTHS = (4, 8, 8, 8)
TINY_SPEC = ResNetFPNSpec(
    stem=8,
    stages=tuple(
        StageSpec(True, w, 4 * w, 1, 2 if i else 1, 1) for i, w in enumerate((4, 8, 8, 8))
    ),
    fpn_channels=8,
)
TINY_SETTINGS = rt.TrainSettings(
    rpn_batch_per_image=64, rpn_pre_nms_top_n=50, rpn_post_nms_top_n=32, box_batch_per_image=32
)


def test_loss_decreases_and_trained_params_survive_the_file(tmp_path):
    config = rt.synth_config()._replace(
        backbone=TINY_SPEC, representation=32, min_size=64, max_size=64
    )
    data = synthetic.make_dataset(synthetic.TRAIN_SEED, 4, size=(64, 64))
    params = rt.init_params(jax.random.key(0), config)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)
    step = rt.make_train_step(config, optimizer, TINY_SETTINGS)
    key = jax.random.key(1)  # the same samples every step: the loss is comparable
    totals = []
    for _ in range(5):
        params, opt_state, losses = step(
            params, opt_state, key, data.images, data.boxes, data.labels
        )
        totals.append(float(sum(losses)))
    assert all(np.isfinite(totals))
    assert totals[-1] < 0.7 * totals[0], totals
    # The trained params go through save_state_dict + load_faster_rcnn unchanged.
    path = checkpoints.save_state_dict(tmp_path / "w.pth", rt.to_state_dict(config, params))
    kwargs = {**detectors.SYNTH_LOAD_KWARGS, "min_size": 64, "max_size": 64}
    loaded = fr.load_faster_rcnn(path, **kwargs)
    assert loaded.config == config
    same = jax.tree_util.tree_map(jnp.array_equal, params, loaded.params)
    assert all(jax.tree_util.tree_leaves(same))
