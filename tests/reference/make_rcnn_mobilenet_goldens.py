"""Golden outputs of a tiny Faster R-CNN (MobileNetV3-Large FPN) from torchvision itself.

Run with ``make reference-rcnn`` (the venv with torch 2.12.1 and torchvision 0.27.1, CPU),
after ``make_rcnn_goldens.py``, whose image maker, FrozenBatchNorm calibration and
stage-by-stage forward it reuses. Runtime: about 6 s on 2 CPU cores. It builds
``fasterrcnn_mobilenet_v3_large_fpn``'s architecture at a reduced size with torchvision's
own code, so the state-dict keys are exactly torchvision's:
``mobilenet_v3_large(width_mult=0.25, reduced_tail=True, norm_layer=FrozenBatchNorm2d)``
through ``backbone_utils._mobilenet_extractor(fpn=True)`` (its stage selection and
``LastLevelMaxPool``), whose 256-channel ``FeaturePyramidNetwork`` is then swapped for a
16-channel one (the extractor hard-codes 256, which alone would be ~5 MB of weights),
torchvision's mobilenet anchors (sizes 32..512 at each of the three levels, 15 per
location), ``RPNHead``, ``TwoMLPHead`` and ``FastRCNNPredictor``. It writes:

- ``tests/golden/faster_rcnn_mobilenet_tiny.npz``: ``sd/<key>`` the state dict (float32),
  and for two images every stage of torchvision's eval forward, with the same names as
  ``faster_rcnn_tiny.npz`` (``img{i}/image``, ``transformed``, ``image_size``,
  ``feat_{0,1,pool}``, ``anchors`` (img0), ``objectness_{l}``, ``rpn_deltas_{l}``,
  ``proposals``, ``proposal_scores``, ``class_logits``, ``box_regression``, ``boxes``,
  ``scores``, ``labels``). img0 goes through the ``fasterrcnn_mobilenet_v3_large_fpn``
  settings (rpn_score_thresh 0.05, 1000/1000 proposals), img1 through
  ``fasterrcnn_mobilenet_v3_large_320_fpn``'s (rpn_score_thresh 0.05, 150/150 proposals),
  both with small ``min_size``/``max_size`` instead of 800/1333 and 320/640; ``config``
  (JSON) records each image's settings.
- ``tests/golden/fasterrcnn_mobilenet_v3_large_fpn_keys.json``: every state-dict key and
  shape of the full-size ``fasterrcnn_mobilenet_v3_large_fpn(weights=None,
  weights_backbone=None)`` (no download; untrained, so its BatchNorm2d also has
  ``num_batches_tracked``, which the published FrozenBatchNorm2d weights lack).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from make_rcnn_goldens import make_image, run_stages
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "faster_rcnn_mobilenet_tiny.npz"
KEYS = ROOT / "tests" / "golden" / "fasterrcnn_mobilenet_v3_large_fpn_keys.json"

WIDTH_MULT = 0.25
FPN_CHANNELS = 16
REPRESENTATION = 48
NUM_CLASSES = 5
BOX_SCORE_THRESH = 0.01
ANCHOR_SIZES = ((32, 64, 128, 256, 512),) * 3  # _fasterrcnn_mobilenet_v3_large_fpn's
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 3
# Per image: (H, W) and the builder whose non-size defaults it uses (sizes reduced).
IMAGES = (
    ((66, 120), "fasterrcnn_mobilenet_v3_large_fpn", {"min_size": 160, "max_size": 240}),
    (
        (180, 150),
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        {
            "min_size": 128,
            "max_size": 192,
            "rpn_pre_nms_top_n_test": 150,
            "rpn_post_nms_top_n_test": 150,
        },
    ),
)


def build_model() -> FasterRCNN:
    """The tiny detector with seeded, rescaled random weights, in eval mode."""
    torch.manual_seed(0)
    body = mobilenet_v3_large(
        width_mult=WIDTH_MULT, reduced_tail=True, norm_layer=FrozenBatchNorm2d
    )
    backbone = _mobilenet_extractor(body, True, trainable_layers=6)
    in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
    backbone.fpn = FeaturePyramidNetwork(in_channels, FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
    backbone.out_channels = FPN_CHANNELS
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS),
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, REPRESENTATION),
        box_predictor=FastRCNNPredictor(REPRESENTATION, NUM_CLASSES),
        rpn_score_thresh=0.05,
        box_score_thresh=BOX_SCORE_THRESH,
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
                module.weight.mul_(fan_in**-0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        calibrate(model, gen)
        head = model.rpn.head
        # Objectness logits spread over a few units (the FPN features here are ~0.5).
        head.cls_logits.weight.mul_(3.0)
        head.bbox_pred.weight.mul_(0.3)
        head.bbox_pred.bias.mul_(0.3)
        pred = model.roi_heads.box_predictor
        pred.cls_score.weight.mul_(6.0)
        pred.bbox_pred.weight.mul_(3.0)
    return model.eval()


def calibrate(model: FasterRCNN, gen: torch.Generator) -> None:
    """Set every FrozenBatchNorm2d's statistics near those of its input on the test images.

    As ``make_rcnn_goldens.calibrate_frozen_bn``, but measured on a batch of the test
    images (and two more) transformed to the test sizes: MobileNet's deep, residual,
    squeeze-excited stages keep O(1) activations only with statistics of inputs like the
    ones they will see (calibrated on uniform noise, the last stages' features grow to
    ~1e3), and with a 5x8 last stage one image's statistics are far from another's.
    """

    def pre_hook(module: FrozenBatchNorm2d, args: tuple[torch.Tensor]) -> None:
        x = args[0]
        c = x.shape[1]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)) + 0.05 * torch.randn(c, generator=gen))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) * (0.8 + 0.4 * torch.rand(c, generator=gen)))
        module.weight.copy_(0.5 + torch.rand(c, generator=gen))
        module.bias.copy_(0.2 * torch.randn(c, generator=gen))

    bns = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [m.register_forward_pre_hook(pre_hook) for m in bns]
    model.eval()
    # The test images themselves, at one common size (a batch), plus two more.
    transform = with_settings(model, {"min_size": 160, "max_size": 240}).transform
    sizes = [size for size, _, _ in IMAGES] + [(120, 90), (100, 160)]
    images, _ = transform([make_image(i, size) for i, size in enumerate(sizes)])
    model.backbone(images.tensors)
    for h in handles:
        h.remove()


def with_settings(model: FasterRCNN, settings: dict) -> FasterRCNN:
    """The same modules (so the same state dict) under other transform / RPN settings."""
    return FasterRCNN(
        model.backbone,
        num_classes=None,
        rpn_anchor_generator=model.rpn.anchor_generator,
        rpn_head=model.rpn.head,
        box_roi_pool=model.roi_heads.box_roi_pool,
        box_head=model.roi_heads.box_head,
        box_predictor=model.roi_heads.box_predictor,
        rpn_score_thresh=0.05,
        box_score_thresh=BOX_SCORE_THRESH,
        **settings,
    ).eval()


def full_size_keys() -> dict[str, list[int]]:
    """Key -> shape of the full-size, untrained fasterrcnn_mobilenet_v3_large_fpn."""
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main() -> int:
    """Write the goldens; print per-image summaries."""
    torch.set_num_threads(1)
    model = build_model()
    sd = model.state_dict()
    out: dict[str, np.ndarray] = {f"sd/{k}": v.numpy().astype(np.float32) for k, v in sd.items()}
    config: dict = {"torch": torch.__version__, "num_classes": NUM_CLASSES}
    for i, (size, variant, settings) in enumerate(IMAGES):
        p = f"img{i}"
        variant_model = with_settings(model, settings)
        assert variant_model.state_dict().keys() == sd.keys()
        stages = run_stages(variant_model, make_image(i, size), p)
        out.update(stages)
        config[p] = {"variant": variant, "box_score_thresh": BOX_SCORE_THRESH, **settings}
        feat_std = [float(stages[f"{p}/feat_{k}"].std()) for k in ("0", "1", "pool")]
        print(
            f"{p} ({variant}): {size} -> {stages[f'{p}/transformed'].shape[1:3]}, "
            f"features {[stages[f'{p}/feat_{k}'].shape[1:3] for k in ('0', '1', 'pool')]} "
            f"std {np.round(feat_std, 2).tolist()}, "
            f"objectness std {stages[f'{p}/objectness_0'].std():.2f}, "
            f"{len(stages[f'{p}/proposals'])} proposals, {len(stages[f'{p}/scores'])} detections, "
            f"top scores {np.round(stages[f'{p}/scores'][:5], 3).tolist()}"
        )
    out["config"] = np.array(json.dumps(config))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN, **out)
    keys = {"torchvision": torchvision.__version__, "keys": full_size_keys()}
    # One key per line, so a diff of a regenerated file reads as keys added or removed.
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in keys["keys"].items()]
    header = f'{{"torchvision": {json.dumps(keys["torchvision"])}, "keys": {{\n'
    KEYS.write_text(header + ",\n".join(lines) + "\n}}\n")
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes), {KEYS} ({len(keys['keys'])} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
