"""Training and fine-tuning of Darknet ``[yolo]`` (YOLOv3-style) detectors, in JAX.

Training runs :func:`fooltools.detection.yolo.apply`, the function inference and the attacks
use, with batch norm on batch statistics plugged into its convolutions
(:func:`train_apply`), as Darknet trains. Training params are the unfolded Darknet ones
(:func:`train_params_from_raw`: kernel, bias = beta, scale = gamma) with the rolling mean and
variance carried beside them; :func:`to_darknet_raw` writes them back in Darknet's layout for
``save_darknet_weights``, and ``load_darknet`` folds them as it folds any real weights. Folded
``YOLO.params`` (no ``scale``) train too, as plain convolutions: how to fine-tune a loaded
model as the attacks see it.

The loss, its targets and anchor fitting are in :mod:`fooltools.detection.yolo_loss`.

Everything is fixed-size (ground truth padded to ``[B, M]`` with label -1, as
:func:`fooltools.detection.synthetic.make_dataset` pads it), so one jitted step serves a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fooltools import rng
from fooltools.detection import boxes as box_ops
from fooltools.detection import darknet, yolo
from fooltools.detection.darknet import BN_EPS, DarknetCfg
from fooltools.detection.yolo import YOLO
from fooltools.detection.yolo_loss import check_heads, yolo_loss

__all__ = [
    "TrainState",
    "augment",
    "evaluate",
    "fit",
    "fold",
    "init_train_params",
    "init_train_state",
    "make_optimizer",
    "make_train_step",
    "prior_bias_init",
    "to_darknet_raw",
    "train_apply",
    "train_params_from_raw",
]

Params = Any


# --- augmentation ----------------------------------------------------------------------------


def augment(
    key: jax.Array, images: jax.Array, boxes: jax.Array, *, colour: float = 0.1
) -> tuple[jax.Array, jax.Array]:
    """Random flips (and, for square inputs, transposes), with small colour jitter.

    Each image independently gets a horizontal flip, a vertical flip and (square images
    only) a transpose, each with probability 1/2, so all 8 symmetries of the square: the
    synthetic scenes are drawn at uniform random rotation, so every one is in distribution.
    Then brightness is scaled by ``1 + U(-colour, colour)`` and each channel shifted by
    ``U(-colour, colour) / 2``, clipped to [0, 1].

    Args:
        key: PRNG key.
        images: ``[B, H, W, 3]`` in [0, 1].
        boxes: ``[B, M, 4]`` (x1, y1, x2, y2) pixels; padding rows are transformed too
            (into meaningless boxes), harmless since their labels stay negative.
        colour: jitter strength; 0 turns it off.

    Returns:
        ``(images, boxes)`` of the same shapes.
    """
    b, height, width, _ = images.shape
    kh, kv, kt, kb, kc = jax.random.split(key, 5)
    hflip = rng.bernoulli(kh, 0.5, (b,))
    vflip = rng.bernoulli(kv, 0.5, (b,))
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    images = jnp.where(hflip[:, None, None, None], images[:, :, ::-1], images)
    x1, x2 = jnp.where(hflip[:, None], width - x2, x1), jnp.where(hflip[:, None], width - x1, x2)
    images = jnp.where(vflip[:, None, None, None], images[:, ::-1], images)
    y1, y2 = (
        jnp.where(vflip[:, None], height - y2, y1),
        jnp.where(vflip[:, None], height - y1, y2),
    )
    if height == width:
        tr = rng.bernoulli(kt, 0.5, (b,))
        images = jnp.where(tr[:, None, None, None], images.transpose(0, 2, 1, 3), images)
        x1, y1 = jnp.where(tr[:, None], y1, x1), jnp.where(tr[:, None], x1, y1)
        x2, y2 = jnp.where(tr[:, None], y2, x2), jnp.where(tr[:, None], x2, y2)
    if colour > 0:
        gain = 1.0 + rng.uniform(kb, (b, 1, 1, 1), -colour, colour)
        shift = rng.uniform(kc, (b, 1, 1, 3), -colour, colour) / 2
        images = jnp.clip(images * gain + shift, 0.0, 1.0)
    return images, jnp.stack([x1, y1, x2, y2], -1)


# --- batch norm for training -----------------------------------------------------------------

BN_MOMENTUM = 0.99  # Darknet's rolling statistics: rolling = 0.99 * rolling + 0.01 * batch


def train_params_from_raw(
    raw: Mapping[str, Mapping[str, np.ndarray]], cfg: DarknetCfg
) -> tuple[Params, Params]:
    """Trainable params and batch-norm state from raw Darknet weights (unfolded).

    Args:
        raw: as :func:`fooltools.detection.darknet.read_weights` returns (or
            :func:`fooltools.detection.darknet.unfold_params` of folded params).
        cfg: the cfg.

    Returns:
        ``(params, bn_state)``: ``params["conv{i}"]`` holds ``kernel`` (k, k, Cin, F) and
        ``bias`` (F,) (batch norm's beta on batch-normalised layers, which then also hold
        ``scale``, its gamma); ``bn_state["conv{i}"]`` the ``mean`` and ``var`` (F,) of the
        batch-normalised layers.
    """
    params, state = {}, {}
    for i in cfg.conv_indices:
        r = raw[f"conv{i}"]
        p = {
            "kernel": jnp.asarray(np.asarray(r["weights"]).transpose(2, 3, 1, 0), jnp.float32),
            "bias": jnp.asarray(r["biases"], jnp.float32),
        }
        if cfg.layers[i].batch_normalize:
            p["scale"] = jnp.asarray(r["scales"], jnp.float32)
            state[f"conv{i}"] = {
                "mean": jnp.asarray(r["rolling_mean"], jnp.float32),
                "var": jnp.asarray(r["rolling_variance"], jnp.float32),
            }
        params[f"conv{i}"] = p
    return params, state


def init_train_params(key: jax.Array, cfg: DarknetCfg) -> tuple[Params, Params]:
    """He-initialised ``(params, bn_state)`` for training ``cfg`` from scratch.

    Kernels are :func:`fooltools.detection.yolo.init_params`'s; batch norm starts as the
    identity (gamma 1, beta 0, mean 0, variance 1).
    """
    folded = jax.device_get(yolo.init_params(key, cfg))
    raw = darknet.unfold_params(folded, cfg, bn_eps=0.0)  # scale sqrt(1 + 0) = 1
    return train_params_from_raw(raw, cfg)


def to_darknet_raw(params: Params, bn_state: Params, cfg: DarknetCfg) -> dict:
    """Raw Darknet weights (numpy) of training params, for ``save_darknet_weights``.

    Layers trained without batch norm (no ``scale``) that the cfg batch-normalises, as when
    fine-tuning folded params, get the identity batch norm of ``darknet.unfold_params``.
    """
    params, bn_state = jax.device_get((params, bn_state))
    plain = {k: {"kernel": v["kernel"], "bias": v["bias"]} for k, v in params.items()}
    raw = darknet.unfold_params(plain, cfg)
    for name, p in params.items():
        if "scale" in p:
            raw[name] |= {
                "scales": np.asarray(p["scale"], np.float32),
                "rolling_mean": np.asarray(bn_state[name]["mean"], np.float32),
                "rolling_variance": np.asarray(bn_state[name]["var"], np.float32),
            }
    return raw


def fold(params: Params, bn_state: Params, cfg: DarknetCfg, *, bn_eps: float = BN_EPS) -> Params:
    """Inference params (``YOLO.params`` layout) of training params, batch norm folded."""
    folded = darknet.fold_batchnorm(to_darknet_raw(params, bn_state, cfg), cfg, bn_eps=bn_eps)
    return jax.device_put(folded)


def train_apply(
    cfg: DarknetCfg, params: Params, x: jax.Array, *, bn_eps: float = BN_EPS
) -> tuple[list[jax.Array], Params]:
    """``yolo.apply`` with batch norm on batch statistics, as Darknet trains.

    Args:
        cfg: the cfg.
        params: training params (see :func:`train_params_from_raw`); layers without
            ``scale`` run as plain (folded) convolutions.
        x: (B, H, W, 3) in [0, 1].
        bn_eps: batch-norm epsilon (the one the weights will be folded with).

    Returns:
        ``(raw_heads, batch_stats)``: the head maps and, per batch-normalised layer, the
        batch ``mean`` and ``var`` (F,) for the rolling statistics.
    """
    stats: dict[str, dict[str, jax.Array]] = {}

    def conv(i: int, layer: darknet.Layer, h: jax.Array) -> jax.Array:
        p = params[f"conv{i}"]
        y = yolo.conv2d(h, p["kernel"], layer)
        if "scale" not in p:
            return y + p["bias"]
        mean, var = jnp.mean(y, (0, 1, 2)), jnp.var(y, (0, 1, 2))
        stats[f"conv{i}"] = {"mean": mean, "var": var}
        return (y - mean) * (p["scale"] * jax.lax.rsqrt(var + bn_eps)) + p["bias"]

    # The hook fills ``stats`` while apply is traced, within this same function.
    raw = yolo.apply(cfg, params, x, conv=conv)
    return raw, stats


# --- optimisation ----------------------------------------------------------------------------


class TrainState(NamedTuple):
    """What a training step carries.

    Attributes:
        params: training params (:func:`train_params_from_raw` layout; ``YOLO.params``
            also works, trained as plain convolutions).
        bn_state: rolling batch-norm ``mean`` / ``var`` per batch-normalised layer.
        opt_state: optax state.
        step: steps taken.
    """

    params: Params
    bn_state: Params
    opt_state: optax.OptState
    step: jax.Array


def make_optimizer(
    *,
    total_steps: int,
    peak_lr: float = 2e-3,
    warmup_steps: int = 200,
    weight_decay: float = 5e-4,
    clip_norm: float = 10.0,
) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay to 1% of the peak, after gradient clipping.

    Args:
        total_steps: length of the schedule.
        peak_lr: learning rate at the end of the warmup.
        warmup_steps: linear warmup from 0 (clipped to ``total_steps // 2``).
        weight_decay: decoupled weight decay, applied to kernels only (not biases or scales).
        clip_norm: global gradient-norm clip; the early loss of a random net is large.

    Returns:
        The optax transformation.
    """
    warmup = min(warmup_steps, total_steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak_lr, warmup, max(total_steps, warmup + 1), end_value=peak_lr * 0.01
    )

    def kernels(params: Params) -> Params:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) == "kernel", params
        )

    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, weight_decay=weight_decay, mask=kernels),
    )


def prior_bias_init(params: Params, cfg: DarknetCfg, *, objectness: float = 0.01) -> Params:
    """Set the head convolutions' objectness biases so every anchor starts at ``objectness``.

    With zero biases, the thousands of empty anchors start at probability 0.5 and their loss
    swamps the first hundreds of steps (the focal-loss paper's prior initialisation).

    Args:
        params: training or ``YOLO.params``; the convolutions feeding heads have no batch norm.
        cfg: the cfg they belong to (it says which convolutions feed the heads).
        objectness: initial objectness probability.

    Returns:
        New params (others shared).
    """
    params = dict(params)
    for i in cfg.head_indices:
        conv = max(j for j in cfg.conv_indices if j < i)
        head = cfg.layers[i]
        bias = jnp.asarray(params[f"conv{conv}"]["bias"]).reshape(len(head.anchors), -1)
        bias = bias.at[:, 4].set(float(np.log(objectness / (1 - objectness))))
        params[f"conv{conv}"] = {**params[f"conv{conv}"], "bias": bias.reshape(-1)}
    return params


def init_train_state(
    params: Params, bn_state: Params, optimizer: optax.GradientTransformation
) -> TrainState:
    """A :class:`TrainState` at step 0 (everything as float32 jax arrays)."""
    params, bn_state = jax.tree_util.tree_map(
        lambda p: jnp.asarray(p, jnp.float32), (params, bn_state)
    )
    return TrainState(params, bn_state, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(
    net: YOLO,
    optimizer: optax.GradientTransformation,
    *,
    ignore_thresh: float = 0.5,
    augment_colour: float | None = 0.1,
    bn_eps: float = BN_EPS,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted ``train_step(state, key, images, boxes, labels) -> (state, metrics)``.

    Args:
        net: the model (its ``cfg``, ``heads`` and ``input_hw`` are used; its params not).
        optimizer: e.g. :func:`make_optimizer`.
        ignore_thresh: see ``yolo_loss.yolo_loss``.
        augment_colour: colour jitter of :func:`augment`; None skips augmentation.
        bn_eps: batch-norm epsilon.

    Returns:
        The step. ``images`` is ``[B, H, W, 3]`` float in [0, 1] or uint8 (divided by 255,
        the synthetic set's exact 8-bit grid); ``boxes`` ``[B, M, 4]`` input pixels;
        ``labels`` ``[B, M]``. Metrics: ``loss`` and its parts (see ``yolo_loss.yolo_loss``).
    """
    cfg, heads, input_hw = net.cfg, net.heads, net.input_hw
    check_heads(heads)

    def loss_fn(params: Params, x: jax.Array, boxes: jax.Array, labels: jax.Array):
        raw, stats = train_apply(cfg, params, x, bn_eps=bn_eps)
        loss, parts = yolo_loss(raw, boxes, labels, heads, input_hw, ignore_thresh=ignore_thresh)
        return loss, (parts, stats)

    @jax.jit
    def train_step(state: TrainState, key: jax.Array, images, boxes, labels):
        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / jnp.float32(255)
        boxes = boxes.astype(jnp.float32)
        if augment_colour is not None:
            x, boxes = augment(key, x, boxes, colour=augment_colour)
        (loss, (parts, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, x, boxes, labels
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        bn_state = jax.tree_util.tree_map(
            lambda old, new: BN_MOMENTUM * old + (1 - BN_MOMENTUM) * new, state.bn_state, stats
        )
        new = TrainState(params, bn_state, opt_state, state.step + 1)
        return new, {"loss": loss, **parts}

    return train_step


def fit(
    net: YOLO,
    key: jax.Array,
    images: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    params: Params,
    bn_state: Params,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | None = None,
    ignore_thresh: float = 0.5,
    augment_colour: float | None = 0.1,
    log_every: int = 100,
    log: Callable[[str], None] | None = print,
) -> TrainState:
    """Train (or fine-tune) ``net`` on in-memory data; epochs of random batches.

    Args:
        net: the model (its cfg and heads).
        key: PRNG key (batch order and augmentation).
        images: ``[N, H, W, 3]`` uint8 or float in [0, 1], at the net's input size.
        boxes: ``[N, M, 4]`` corners in input pixels.
        labels: ``[N, M]`` classes, negative for padding.
        steps: optimisation steps.
        params: starting training params: :func:`init_train_params` to train from scratch,
            :func:`train_params_from_raw` of a ``.weights`` file, or ``net.params`` (folded).
        bn_state: their batch-norm state (``{}`` for folded params).
        batch_size: images per step (N >= batch_size).
        optimizer: defaults to ``make_optimizer(total_steps=steps)``.
        ignore_thresh: see ``yolo_loss.yolo_loss``.
        augment_colour: see :func:`make_train_step`.
        log_every: print step, mean loss and images/s every this many steps.
        log: where progress lines go (None: silent).

    Returns:
        The final :class:`TrainState`; :func:`fold` its params and bn_state for inference,
        :func:`to_darknet_raw` them for ``save_darknet_weights``.
    """
    n = len(images)
    if n < batch_size:
        raise ValueError(f"{n} images are fewer than one batch of {batch_size}")
    optimizer = optimizer or make_optimizer(total_steps=steps)
    state = init_train_state(params, bn_state, optimizer)
    step_fn = make_train_step(
        net, optimizer, ignore_thresh=ignore_thresh, augment_colour=augment_colour
    )
    perm_key, key = jax.random.split(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(perm_key)).ravel())
    order, pos = rng.permutation(n), 0
    acc: dict[str, jax.Array] | None = None  # metric sums since the last log line, on device
    t0, since = time.perf_counter(), 0
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = np.sort(order[pos : pos + batch_size])
        pos += batch_size
        state, metrics = step_fn(
            state, jax.random.fold_in(key, step), images[idx], boxes[idx], labels[idx]
        )
        since += 1
        acc = metrics if acc is None else jax.tree_util.tree_map(jnp.add, acc, metrics)
        if log is not None and (step % log_every == 0 or step == steps):
            mean = {k: float(v) / since for k, v in jax.device_get(acc).items()}
            dt = time.perf_counter() - t0
            terms = " ".join(f"{k}={v:.3f}" for k, v in mean.items() if k != "loss")
            log(f"step {step}/{steps} loss={mean['loss']:.3f} ({terms}) "
                f"{since * batch_size / dt:.1f} img/s")  # fmt: skip
            acc, t0, since = None, time.perf_counter(), 0
    return state


# --- evaluation ------------------------------------------------------------------------------


def evaluate(
    net: YOLO,
    images: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 50,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.45,
    map_iou: float = 0.5,
) -> box_ops.MapResult:
    """Held-out mAP of ``net`` after :func:`fooltools.detection.yolo.detect`.

    Args:
        net: the model, with its params.
        images: ``[N, H, W, 3]`` uint8 or float in [0, 1], at the net's input size.
        boxes: ``[N, M, 4]`` ground-truth corners in input pixels.
        labels: ``[N, M]`` classes, negative for padding.
        batch_size: images per jitted call (the last batch is padded, not recompiled).
        score_threshold: detection score cut (low values suit mAP, which ranks by score).
        iou_threshold: NMS overlap.
        map_iou: IoU for a hit in :func:`fooltools.detection.boxes.evaluate_map`.

    Returns:
        The :class:`fooltools.detection.boxes.MapResult`.
    """
    run = jax.jit(
        lambda params, x: yolo.detect(
            net._replace(params=params), x, image_hw=net.input_hw,
            score_threshold=score_threshold, iou_threshold=iou_threshold,
        )
    )  # fmt: skip
    dets, gts = [], []
    n = len(images)
    for start in range(0, n, batch_size):
        x = np.asarray(images[start : start + batch_size])
        x = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x
        k = len(x)
        if k < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k, *x.shape[1:]), x.dtype)])
        out = jax.device_get(run(net.params, x))
        for i in range(k):
            v = out.valid[i]
            dets.append(box_ops.Detections(out.boxes[i][v], out.scores[i][v], out.labels[i][v]))
            gts.append(box_ops.GroundTruth(boxes[start + i], labels[start + i]))
    return box_ops.evaluate_map(dets, gts, num_classes=net.num_classes, iou_threshold=map_iou)
