"""The bundled yolo-synth detector and the YOLOv3 training code (fooltools.detection.yolo_train).

The weights test loads the shipped ``.weights`` through ``load_darknet``, the path real
Darknet weights take, and measures held-out mAP on images the training never saw.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fooltools import rng
from fooltools.detection import boxes as box_ops
from fooltools.detection import darknet, synthetic, yolo, yolo_loss, yolo_train

DETECTION = Path(yolo.__file__).parent
CFG = DETECTION / "cfg" / "yolo-synth.cfg"
WEIGHTS = DETECTION / "weights" / "yolo-synth.weights"
N_HELD_OUT = 100  # first TEST_SEED images; the full 500-image figure is in weights/README.md


@pytest.fixture(scope="module")
def net():
    return yolo.load_darknet(CFG)  # random init: the cfg's heads and shapes


@pytest.fixture(scope="module")
def held_out():
    return synthetic.make_dataset(synthetic.TEST_SEED, N_HELD_OUT)


def test_cfg_matches_the_synthetic_data(net):
    assert net.input_hw == synthetic.DEFAULT_SIZE
    assert net.num_classes == len(synthetic.CLASSES)
    assert [h.stride for h in net.heads] == [16, 8]
    assert all(h.kind == "yolo" for h in net.heads)


def test_bundled_weights_reach_held_out_map(held_out):
    trained = yolo.load_darknet(CFG, WEIGHTS)
    result = yolo_train.evaluate(
        trained, held_out.images, held_out.boxes, held_out.labels, score_threshold=0.05
    )
    assert set(result.per_class) == set(range(len(synthetic.CLASSES)))
    assert result.mean_ap >= 0.8, result
    assert min(result.per_class.values()) >= 0.6, result.per_class


def test_bundled_weights_find_the_objects_of_one_image(held_out):
    """At Darknet's usual 0.25 threshold, the top detections are the labelled objects."""
    trained = yolo.load_darknet(CFG, WEIGHTS)
    run = jax.jit(lambda x: yolo.detect(trained, x, image_hw=(128, 128)))
    out = jax.device_get(run(held_out.images[:8]))
    found = 0
    for i in range(8):
        n = held_out.counts[i]
        gt_boxes, gt_labels = held_out.boxes[i, :n], held_out.labels[i, :n]
        boxes = out.boxes[i][out.valid[i]]
        labels = out.labels[i][out.valid[i]]
        iou = box_ops.np_box_iou(boxes, gt_boxes)  # numpy: jax's compiled per shape
        for g in range(n):
            found += bool(np.any((iou[:, g] >= 0.5) & (labels == gt_labels[g])))
    assert found >= 0.85 * held_out.counts[:8].sum()


def test_training_params_round_trip_the_bundled_file():
    """Unfolded training params (batch norm kept) write back the same Darknet weights."""
    net = yolo.load_darknet(CFG, WEIGHTS)
    raw = darknet.read_weights(WEIGHTS, net.cfg)
    params, bn_state = yolo_train.train_params_from_raw(raw, net.cfg)
    assert len(bn_state) == sum(layer.batch_normalize for layer in net.cfg.layers) == 9
    back = yolo_train.to_darknet_raw(params, bn_state, net.cfg)
    for name, layer in raw.items():
        for key, value in layer.items():
            np.testing.assert_array_equal(back[name][key], value)
    folded = yolo_train.fold(params, bn_state, net.cfg)
    for name in net.params:
        np.testing.assert_allclose(folded[name]["kernel"], net.params[name]["kernel"], atol=1e-6)
        np.testing.assert_allclose(folded[name]["bias"], net.params[name]["bias"], atol=1e-6)


# --- targets and loss --------------------------------------------------------------------------


def _heads():
    return (
        yolo.Head("yolo", ((30.0, 30.0), (40.0, 40.0), (50.0, 50.0)), 5, False, 1.0, 16),
        yolo.Head("yolo", ((10.0, 10.0), (16.0, 16.0), (22.0, 20.0)), 5, False, 1.0, 8),
    )


def _targets(heads):
    # Jitted, as training runs it: eagerly each op compiled on its own (~100 programs).
    return jax.jit(lambda boxes, labels: yolo_loss.build_targets(boxes, labels, heads, (128, 128)))


def test_targets_put_each_box_in_its_cell_and_best_anchor():
    heads = _heads()
    boxes = np.zeros((1, 3, 4), np.float32)
    labels = np.full((1, 3), -1, np.int32)
    boxes[0, 0] = [60, 20, 100, 60]  # 40x40, centre (80, 40): head 0, cell (row 2, col 5), a1
    boxes[0, 1] = [3, 100, 13, 110]  # 10x10, centre (8, 105): head 1, cell (13, 1), a0
    labels[0, :2] = [3, 1]
    t = _targets(heads)(jnp.asarray(boxes), jnp.asarray(labels))
    assert t[0].obj.shape == (1, 8, 8, 3) and t[1].obj.shape == (1, 16, 16, 3)
    assert float(t[0].obj.sum()) == 1.0 and float(t[0].obj[0, 2, 5, 1]) == 1.0
    assert float(t[1].obj.sum()) == 1.0 and float(t[1].obj[0, 13, 1, 0]) == 1.0
    assert int(t[0].label[0, 2, 5, 1]) == 3 and int(t[1].label[0, 13, 1, 0]) == 1
    assert int((t[0].label >= 0).sum() + (t[1].label >= 0).sum()) == 2  # padding assigns none
    np.testing.assert_allclose(t[0].xy[0, 2, 5, 1], [0.0001, 0.5], atol=1e-6)  # 80/16 = 5.0
    np.testing.assert_allclose(t[1].xy[0, 13, 1, 0], [0.0, 0.125], atol=1e-4)
    np.testing.assert_allclose(t[0].wh[0, 2, 5, 1], [0.0, 0.0], atol=1e-6)  # exactly the anchor
    np.testing.assert_allclose(t[0].weight[0, 2, 5, 1], 2 - 1600 / 128**2, rtol=1e-6)


def _logits_from_targets(targets, heads, *, scale=8.0):
    """Raw maps that decode exactly to the targets: the loss's optimum up to BCE saturation."""
    raw = []
    for tg, head in zip(targets, heads, strict=True):
        p = jnp.clip(tg.xy, 1e-4, 1 - 1e-4)  # unassigned anchors hold 0
        xy = jnp.log(p) - jnp.log1p(-p)  # logit
        obj = scale * (2 * tg.obj - 1)
        cls = scale * (2 * jax.nn.one_hot(tg.label, head.classes) - 1)
        t = jnp.concatenate([xy, tg.wh, obj[..., None], cls], -1)
        b, gh, gw = t.shape[:3]
        raw.append(t.reshape(b, gh, gw, -1))
    return raw


def test_loss_is_lowest_at_the_targets():
    heads = _heads()
    data = synthetic.make_dataset(synthetic.TRAIN_SEED, 4)
    targets = _targets(heads)(data.boxes, data.labels)
    perfect = jax.jit(lambda t: _logits_from_targets(t, heads))(targets)
    loss_fn = jax.jit(
        lambda raw: yolo_loss.yolo_loss(raw, data.boxes, data.labels, heads, (128, 128))
    )
    loss, parts = loss_fn(perfect)
    key, normal = jax.random.key(0), jax.jit(rng.normal, static_argnums=1)
    for k, r in enumerate(perfect):
        noisy = list(perfect)
        noisy[k] = r + 0.5 * normal(jax.random.fold_in(key, k), r.shape)
        assert float(loss_fn(noisy)[0]) > float(loss) + 0.1
    assert float(parts["wh"]) < 1e-6
    # What remains is the entropy of the soft xy targets plus BCE saturation at |logit| = 8.
    assert float(parts["obj"] + parts["noobj"] + parts["cls"]) < 0.5
    # Zero logits are far worse than the perfect ones.
    assert float(loss_fn([jnp.zeros_like(r) for r in perfect])[0]) > 3 * float(loss)


def test_ignore_threshold_spares_good_unassigned_predictions():
    """A prediction overlapping a ground truth but not assigned to it is not pushed to 0."""
    heads = _heads()[:1]
    boxes = jnp.asarray([[[48.0, 48.0, 80.0, 80.0]]])  # 32x32 at (64, 64): cell (4, 4), a0
    labels = jnp.asarray([[2]])
    targets = _targets(heads)(boxes, labels)
    raw = _logits_from_targets(targets, heads)[0].reshape(1, 8, 8, 3, 10)
    # Anchor 1 of the same cell predicts the ground truth box (centre at the cell corner).
    raw = raw.at[0, 4, 4, 1, :5].set(jnp.asarray([-8.0, -8.0, np.log(32 / 40), np.log(32 / 40), 8]))
    raw = raw.reshape(1, 8, 8, 30)
    loss = jax.jit(
        lambda t: yolo_loss.yolo_loss([raw], boxes, labels, heads, (128, 128), ignore_thresh=t)
    )
    _, kept = loss(0.5)
    _, hit = loss(1.0)  # IoU is never > 1: nothing is ignored
    assert float(hit["noobj"]) > float(kept["noobj"]) + 7.0  # BCE(8, 0) ~ 8 when not ignored
    assert float(hit["obj"]) == pytest.approx(float(kept["obj"]))


def test_augment_moves_boxes_with_pixels():
    img = np.zeros((1, 128, 128, 3), np.float32)
    img[0, 10:30, 70:120] = 1.0  # a bright block with a known box
    box = np.asarray([[[70.0, 10.0, 120.0, 30.0]]], np.float32)
    for seed in range(8):
        x, b = yolo_train.augment(
            jax.random.key(seed), jnp.asarray(img), jnp.asarray(box), colour=0
        )
        ys, xs = np.nonzero(np.asarray(x[0, ..., 0]) > 0.5)
        np.testing.assert_allclose(b[0, 0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_kmeans_anchors_recovers_clusters():
    gen = np.random.default_rng(0)
    wh = np.concatenate([gen.normal(c, 0.5, (100, 2)) for c in (10.0, 30.0, 60.0)])
    found = yolo_loss.kmeans_anchors(wh, 3)
    np.testing.assert_allclose(found, [[10, 10], [30, 30], [60, 60]], atol=0.5)


def test_loss_decreases_over_20_steps_and_step_does_not_recompile(net):
    data = synthetic.make_dataset(synthetic.TRAIN_SEED, 8)
    images = np.round(data.images * 255).astype(np.uint8)
    opt = yolo_train.make_optimizer(total_steps=20, peak_lr=2e-3, warmup_steps=2)
    params, bn_state = yolo_train.init_train_params(jax.random.key(0), net.cfg)
    params = yolo_train.prior_bias_init(params, net.cfg)
    state = yolo_train.init_train_state(params, bn_state, opt)
    step = yolo_train.make_train_step(net, opt, augment_colour=None)
    losses = []
    for i in range(20):
        state, metrics = step(state, jax.random.key(i), images, data.boxes, data.labels)
        losses.append(float(metrics["loss"]))
    assert step._cache_size() == 1
    assert int(state.step) == 20
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
