"""Golden outputs of a tiny Faster R-CNN (ResNet-FPN) from torchvision itself.

Run with ``make reference-rcnn`` (a separate venv with torch 2.12.1 and torchvision 0.27.1,
CPU; torch never enters the default or test install). It builds
``fasterrcnn_resnet50_fpn``'s architecture at a reduced size with exactly torchvision's
module (and so state-dict key) names — a ResNet subclass that reproduces torchvision's
``_make_layer`` with small widths, ``BackboneWithFPN`` with ``LastLevelMaxPool``,
``RPNHead``, ``TwoMLPHead`` and ``FastRCNNPredictor`` — with FrozenBatchNorm2d holding
random but sane statistics, and writes:

- ``tests/data/faster_rcnn_tiny.pth``: the state dict (``torch.save``);
- ``tests/golden/faster_rcnn_tiny.npz``: for three fixed images of different,
  non-square sizes (one upsampled, one bounded by max_size, one downsampled), every stage
  of torchvision's eval-mode forward: ``img{i}/image`` (H, W, 3) uint8 (x / 255 is the input),
  ``transformed`` (1, Hp, Wp, 3) normalised, resized and padded, ``image_size``
  (resized (h, w)), ``feat_{0,1,2,3,pool}`` (1, h, w, C), ``anchors`` (A, 4) (img0 only),
  ``objectness_{l}`` (h, w, A), ``rpn_deltas_{l}`` (h, w, A, 4), ``proposals`` (P, 4)
  and ``proposal_scores`` (P,) after NMS, ``class_logits`` (P, K) and ``box_regression``
  (P, 4K) of the box head on those proposals, and the final ``boxes`` (D, 4) in original
  image coordinates, ``scores`` (D,), ``labels`` (D,). Arrays are NHWC where spatial.
  ``config`` records the model's hyper-parameters.

Random weights give near-uniform scores, so the objectness and class-score layers are
scaled up (meaningful score differences, so ties and near-threshold flips are rare) and
the box score threshold is lowered to 0.01 so detections are not empty.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "tests" / "data" / "faster_rcnn_tiny.pth"
GOLDEN = ROOT / "tests" / "golden" / "faster_rcnn_tiny.npz"

STEM = 8
PLANES = (8, 16, 24, 32)  # torchvision hard-codes 64, 128, 256, 512
LAYERS = (1, 2, 1, 1)  # two blocks in layer2 so depth inference is exercised
FPN_CHANNELS = 16
REPRESENTATION = 48
NUM_CLASSES = 5
MIN_SIZE, MAX_SIZE = 96, 144
BOX_SCORE_THRESH = 0.01
# (H, W): upsampled by min_size; bounded by max_size; downsampled.
IMAGE_SIZES = ((66, 120), (110, 84), (180, 150))


class TinyResNet(ResNet):
    """torchvision's ResNet with Bottleneck blocks and small widths, same module names."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self._norm_layer = FrozenBatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = STEM, 1, 1, 64
        self.conv1 = nn.Conv2d(3, STEM, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(STEM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(Bottleneck, PLANES[0], LAYERS[0])
        self.layer2 = self._make_layer(Bottleneck, PLANES[1], LAYERS[1], stride=2)
        self.layer3 = self._make_layer(Bottleneck, PLANES[2], LAYERS[2], stride=2)
        self.layer4 = self._make_layer(Bottleneck, PLANES[3], LAYERS[3], stride=2)


def build_model() -> FasterRCNN:
    """The tiny Faster R-CNN with seeded, rescaled random weights, in eval mode."""
    torch.manual_seed(0)
    body = TinyResNet()
    backbone = BackboneWithFPN(
        body,
        return_layers={f"layer{i + 1}": str(i) for i in range(4)},
        in_channels_list=[p * Bottleneck.expansion for p in PLANES],
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, REPRESENTATION),
        box_predictor=FastRCNNPredictor(REPRESENTATION, NUM_CLASSES),
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
        calibrate_frozen_bn(model, gen)
        head = model.rpn.head
        head.cls_logits.weight.mul_(0.3)  # objectness logits spread over a few units
        head.bbox_pred.weight.mul_(0.3)  # proposals near their anchors, still moved
        head.bbox_pred.bias.mul_(0.3)
        pred = model.roi_heads.box_predictor
        pred.cls_score.weight.mul_(6.0)  # class scores far from uniform, not saturated
        pred.bbox_pred.weight.mul_(3.0)
    return model.eval()


def calibrate_frozen_bn(model: FasterRCNN, gen: torch.Generator) -> None:
    """Give every FrozenBatchNorm2d statistics close to those of its actual input.

    Random convs without normalisation blow activations up layer after layer; statistics
    measured on a calibration image (then jittered, with random affine weights) keep every
    feature map O(1), as in a trained network, so absolute tolerances stay meaningful.
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
    model.backbone(torch.rand(1, 3, 128, 128, generator=gen))
    for h in handles:
        h.remove()


def make_image(i: int, size: tuple[int, int]) -> torch.Tensor:
    """A fixed (3, H, W) image in [0, 1]: smooth gradients, rectangles and noise."""
    gen = torch.Generator().manual_seed(100 + i)
    h, w = size
    yy = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xx = torch.linspace(0, 1, w)[None, :].expand(h, w)
    img = torch.stack([xx, yy, 0.5 * (xx + yy)]) * 0.6
    for _ in range(4):
        y0 = int(torch.randint(0, h - 10, (1,), generator=gen))
        x0 = int(torch.randint(0, w - 10, (1,), generator=gen))
        bh = int(torch.randint(8, h // 2, (1,), generator=gen))
        bw = int(torch.randint(8, w // 2, (1,), generator=gen))
        img[:, y0 : y0 + bh, x0 : x0 + bw] = torch.rand(3, 1, 1, generator=gen)
    img = img + 0.1 * torch.rand(3, h, w, generator=gen)
    # Whole 8-bit steps, as real photos are: the golden stores the image as uint8.
    return (img.clamp(0, 1) * 255).round() / 255


def nhwc(t: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, C) float32 array."""
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


@torch.no_grad()
def run_stages(model: FasterRCNN, img: torch.Tensor, prefix: str) -> dict[str, np.ndarray]:
    """torchvision's eval forward, stage by stage; checks it equals ``model([img])``."""
    out: dict[str, np.ndarray] = {}
    original = [tuple(img.shape[-2:])]
    images, _ = model.transform([img])
    out["image"] = (img.permute(1, 2, 0) * 255).round().numpy().astype(np.uint8)
    out["transformed"] = nhwc(images.tensors)
    out["image_size"] = np.array(images.image_sizes[0], dtype=np.int64)
    features = model.backbone(images.tensors)
    for name, feat in features.items():
        out[f"feat_{name}"] = nhwc(feat)
    feats = list(features.values())
    objectness, deltas = model.rpn.head(feats)
    num_anchors = objectness[0].shape[1]
    for level, (obj, delta) in enumerate(zip(objectness, deltas, strict=True)):
        out[f"objectness_{level}"] = nhwc(obj)[0]
        d = nhwc(delta)[0]  # channel = anchor * 4 + coordinate
        out[f"rpn_deltas_{level}"] = d.reshape(*d.shape[:2], num_anchors, 4)
    anchors = model.rpn.anchor_generator(images, feats)
    if prefix == "img0":  # anchors depend only on shapes: one image's worth is enough
        out["anchors"] = anchors[0].numpy()
    proposals, _ = model.rpn(images, features)
    # RegionProposalNetwork.forward's own steps again, to get the kept proposals' scores.
    obj_flat, deltas_flat = concat_box_prediction_layers(objectness, deltas)
    decoded = model.rpn.box_coder.decode(deltas_flat, anchors).view(1, -1, 4)
    per_level = [o[0].numel() for o in objectness]
    kept, kept_scores = model.rpn.filter_proposals(decoded, obj_flat, images.image_sizes, per_level)
    assert torch.equal(kept[0], proposals[0])
    out["proposals"] = proposals[0].numpy()
    out["proposal_scores"] = kept_scores[0].numpy()
    pooled = model.roi_heads.box_roi_pool(features, proposals, images.image_sizes)
    logits, regression = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    out["class_logits"] = logits.numpy()
    out["box_regression"] = regression.numpy()
    dets, _ = model.roi_heads(features, proposals, images.image_sizes)
    dets = model.transform.postprocess(dets, images.image_sizes, original)[0]
    whole = model([img])[0]
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(whole[key], dets[key]), key
        out[key] = dets[key].numpy()
    return {f"{prefix}/{k}": v for k, v in out.items()}


def main() -> int:
    """Write the weights and goldens; print per-image summaries."""
    torch.set_num_threads(1)
    model = build_model()
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    out: dict[str, np.ndarray] = {}
    for i, size in enumerate(IMAGE_SIZES):
        stages = run_stages(model, make_image(i, size), f"img{i}")
        out.update(stages)
        p = f"img{i}"
        feat_std = [float(stages[f"{p}/feat_{k}"].std()) for k in ("0", "1", "2", "3", "pool")]
        print(
            f"{p}: {size} -> {stages[f'{p}/transformed'].shape[1:3]}, "
            f"feature std {np.round(feat_std, 2).tolist()}, "
            f"objectness std {stages[f'{p}/objectness_0'].std():.2f}, "
            f"{len(stages[f'{p}/proposals'])} proposals, {len(stages[f'{p}/scores'])} detections, "
            f"top scores {np.round(stages[f'{p}/scores'][:5], 3).tolist()}"
        )
    config = {
        "min_size": MIN_SIZE,
        "max_size": MAX_SIZE,
        "num_classes": NUM_CLASSES,
        "box_score_thresh": BOX_SCORE_THRESH,
        "torch": torch.__version__,
    }
    out["config"] = np.array(json.dumps(config))
    np.savez_compressed(GOLDEN, **out)
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size} bytes), {GOLDEN} ({GOLDEN.stat().st_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
