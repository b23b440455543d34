"""torchvision's ResNet-FPN detection backbone in Flax (NHWC), BatchNorm folded.

Mirrors ``torchvision.models.detection.backbone_utils.resnet_fpn_backbone``: a ResNet
body (``backbone.body.*``: ``conv1``/``bn1``, max-pool, ``layer1..4`` of Bottleneck blocks
with the stride on the 3x3 conv, or BasicBlocks) whose four stage outputs feed a feature
pyramid (``backbone.fpn.*``: 1x1 lateral ``inner_blocks``, 3x3 output ``layer_blocks``,
nearest top-down upsampling, and ``LastLevelMaxPool``'s extra ``pool`` level).

Widths and depths are read off the state dict's shapes and keys, so any checkpoint with
torchvision's key names loads through the same code, reduced-size test models included.
FrozenBatchNorm2d (eps 1e-5) is folded into the preceding convolution at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fooltools.models import layers

BN_EPS = 1e-5  # torchvision.ops.misc.FrozenBatchNorm2d's default
BODY = "backbone.body"
FPN = "backbone.fpn"
LEVEL_NAMES = ("0", "1", "2", "3", "pool")


class StageSpec(NamedTuple):
    """One ResNet stage (``layerN``): block kind, widths, depth and stride."""

    bottleneck: bool  # Bottleneck (1x1, 3x3, 1x1) or BasicBlock (3x3, 3x3)
    width: int  # channels inside the block
    out: int  # channels out of the block
    blocks: int
    stride: int
    groups: int


class ResNetFPNSpec(NamedTuple):
    """Static shape of a ResNet-FPN backbone."""

    stem: int
    stages: tuple[StageSpec, ...]
    fpn_channels: int


def infer_spec(sd: Mapping[str, np.ndarray]) -> ResNetFPNSpec:
    """Read the backbone's widths and depths off a torchvision state dict.

    Args:
        sd: The detector's state dict (``backbone.body.*``, ``backbone.fpn.*`` keys).

    Returns:
        The spec; keys it needs but cannot find raise ``KeyError`` with the key.
    """
    stages = []
    for i in range(1, 5):
        prefix = f"{BODY}.layer{i}"
        blocks = 0
        while f"{prefix}.{blocks}.conv1.weight" in sd:
            blocks += 1
        if blocks == 0:
            raise KeyError(f"{prefix}.0.conv1.weight")
        bottleneck = f"{prefix}.0.conv3.weight" in sd
        w1 = sd[f"{prefix}.0.conv1.weight"]
        w2 = sd[f"{prefix}.0.conv2.weight"]
        out = sd[f"{prefix}.0.conv3.weight" if bottleneck else f"{prefix}.0.conv2.weight"]
        width = w1.shape[0]
        groups = width // w2.shape[1] if bottleneck else 1
        stages.append(
            StageSpec(bottleneck, width, out.shape[0], blocks, 1 if i == 1 else 2, groups)
        )
    stem = sd[f"{BODY}.conv1.weight"].shape[0]
    fpn_channels = sd[f"{FPN}.inner_blocks.0.0.weight"].shape[0]
    return ResNetFPNSpec(stem, tuple(stages), fpn_channels)


def _has_downsample(spec: ResNetFPNSpec, stage: int, block: int) -> bool:
    # torchvision adds a projection to block 0 when stride or width changes.
    if block:
        return False
    cin = spec.stem if stage == 0 else spec.stages[stage - 1].out
    s = spec.stages[stage]
    return s.stride != 1 or cin != s.out


def _block_convs(spec: ResNetFPNSpec, stage: int, block: int) -> tuple[str, ...]:
    convs = ("conv1", "conv2", "conv3") if spec.stages[stage].bottleneck else ("conv1", "conv2")
    return convs + (("downsample",) if _has_downsample(spec, stage, block) else ())


def expected_keys(spec: ResNetFPNSpec) -> set[str]:
    """Every state-dict key the backbone reads (num_batches_tracked aside)."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {f"{BODY}.conv1.weight"} | {f"{BODY}.bn1.{b}" for b in bn}
    for si, s in enumerate(spec.stages):
        for bi in range(s.blocks):
            p = f"{BODY}.layer{si + 1}.{bi}"
            for conv in _block_convs(spec, si, bi):
                if conv == "downsample":
                    keys |= {f"{p}.downsample.0.weight"} | {f"{p}.downsample.1.{b}" for b in bn}
                else:
                    keys |= {f"{p}.{conv}.weight"} | {f"{p}.bn{conv[-1]}.{b}" for b in bn}
    return keys | fpn_keys(len(spec.stages))


def fpn_keys(stages: int) -> set[str]:
    """State-dict keys of a ``FeaturePyramidNetwork`` over ``stages`` backbone stages."""
    return {
        f"{FPN}.{kind}.{i}.0.{p}"
        for i in range(stages)
        for kind in ("inner_blocks", "layer_blocks")
        for p in ("weight", "bias")
    }


def _fold(sd: Mapping[str, np.ndarray], conv: str, bn: str) -> dict[str, np.ndarray]:
    # FrozenBatchNorm2d: x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps)).
    w = sd[conv].astype(np.float64)
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    bias = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
    kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def conv_entry(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """A torch conv with bias (``prefix.weight``, ``prefix.bias``) as Flax HWIO params."""
    return {
        "kernel": sd[f"{prefix}.weight"].transpose(2, 3, 1, 0).astype(np.float32),
        "bias": sd[f"{prefix}.bias"].astype(np.float32),
    }


def convert(sd: Mapping[str, np.ndarray], spec: ResNetFPNSpec) -> dict[str, dict[str, np.ndarray]]:
    """Convert the backbone part of a torchvision state dict to folded Flax params.

    Args:
        sd: State dict with every key of :func:`expected_keys`.
        spec: The backbone's shape.

    Returns:
        The params of :class:`ResNetFPN` (``conv1``, ``layer{i}_{j}_conv{k}``,
        ``layer{i}_{j}_downsample``, ``inner_{i}``, ``layer_{i}``).
    """
    out = {"conv1": _fold(sd, f"{BODY}.conv1.weight", f"{BODY}.bn1")}
    for si, s in enumerate(spec.stages):
        for bi in range(s.blocks):
            p = f"{BODY}.layer{si + 1}.{bi}"
            for conv in _block_convs(spec, si, bi):
                if conv == "downsample":
                    entry = _fold(sd, f"{p}.downsample.0.weight", f"{p}.downsample.1")
                else:
                    entry = _fold(sd, f"{p}.{conv}.weight", f"{p}.bn{conv[-1]}")
                out[f"layer{si + 1}_{bi}_{conv}"] = entry
    for i in range(len(spec.stages)):
        out[f"inner_{i}"] = conv_entry(sd, f"{FPN}.inner_blocks.{i}.0")
        out[f"layer_{i}"] = conv_entry(sd, f"{FPN}.layer_blocks.{i}.0")
    return out


def _conv(features: int, k: int, stride: int = 1, groups: int = 1, name: str = "") -> nn.Conv:
    # torch's symmetric k // 2 padding (not TF "SAME", which pads bottom/right for stride 2).
    p = k // 2
    return layers.Conv(
        features, (k, k), (stride, stride), ((p, p), (p, p)), feature_group_count=groups, name=name
    )


def pyramid(
    stage_outputs: list[jax.Array], channels: int, names: tuple[str, ...]
) -> dict[str, jax.Array]:
    """The ``FeaturePyramidNetwork`` + ``LastLevelMaxPool`` of torchvision, on backbone stages.

    Called inside a Flax module's compact scope, so the convs (``inner_i`` lateral 1x1,
    ``layer_i`` output 3x3) are that module's params.

    Args:
        stage_outputs: The backbone stages fed to the pyramid, (N, h_i, w_i, C_i), finest
            first.
        channels: The pyramid's width.
        names: Level names, one per stage plus the pooled level.

    Returns:
        name -> (N, h, w, channels): lateral 1x1, nearest top-down, 3x3 outputs, and the
        last level subsampled by 2 (``max_pool2d(kernel 1, stride 2)``).
    """
    n = len(stage_outputs)
    last = _conv(channels, 1, name=f"inner_{n - 1}")(stage_outputs[-1])
    results = [_conv(channels, 3, name=f"layer_{n - 1}")(last)]
    for i in range(n - 2, -1, -1):
        lateral = _conv(channels, 1, name=f"inner_{i}")(stage_outputs[i])
        rows = nearest_indices(last.shape[1], lateral.shape[1])
        cols = nearest_indices(last.shape[2], lateral.shape[2])
        last = lateral + last[:, rows][:, :, cols]
        results.insert(0, _conv(channels, 3, name=f"layer_{i}")(last))
    results.append(results[-1][:, ::2, ::2])
    return dict(zip(names, results, strict=True))


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source rows of torch's ``interpolate(mode="nearest")`` from ``src`` to ``dst`` rows."""
    scale = np.float32(src) / np.float32(dst)  # computed in float, as ATen does
    idx = np.floor(np.arange(dst, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, src - 1)


class ResNetFPN(nn.Module):
    """ResNet body + FPN + LastLevelMaxPool, NHWC.

    Attributes:
        spec: Widths and depths (see :func:`infer_spec`).
    """

    spec: ResNetFPNSpec

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Map normalised, padded images (N, H, W, 3) to the pyramid.

        Returns:
            ``{"0": (N, H/4, W/4, C), "1": /8, "2": /16, "3": /32, "pool": /64}`` (sizes
            rounded up), C = ``spec.fpn_channels``.
        """
        spec = self.spec
        x = nn.relu(_conv(spec.stem, 7, 2, name="conv1")(x))
        x = lax.reduce_window(  # max-pool 3x3, stride 2, padding 1 (padded with -inf)
            x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )
        stage_outputs = []
        for si, s in enumerate(spec.stages):
            for bi in range(s.blocks):
                stride = s.stride if bi == 0 else 1
                names = _block_convs(spec, si, bi)
                shortcut = x
                p = f"layer{si + 1}_{bi}"
                if s.bottleneck:
                    y = nn.relu(_conv(s.width, 1, name=f"{p}_conv1")(x))
                    y = nn.relu(_conv(s.width, 3, stride, s.groups, name=f"{p}_conv2")(y))
                    y = _conv(s.out, 1, name=f"{p}_conv3")(y)
                else:
                    y = nn.relu(_conv(s.width, 3, stride, name=f"{p}_conv1")(x))
                    y = _conv(s.out, 3, name=f"{p}_conv2")(y)
                if "downsample" in names:
                    shortcut = _conv(s.out, 1, stride, name=f"{p}_downsample")(x)
                x = nn.relu(y + shortcut)
            stage_outputs.append(x)
        return pyramid(stage_outputs, spec.fpn_channels, LEVEL_NAMES)
