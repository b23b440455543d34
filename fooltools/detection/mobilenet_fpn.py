"""torchvision's MobileNetV3-Large FPN detection backbone in Flax (NHWC), BatchNorm folded.

Mirrors ``backbone_utils._mobilenet_extractor(mobilenet_v3_large(...), fpn=True)``, the
backbone of ``fasterrcnn_mobilenet_v3_large_fpn`` and ``..._320_fpn``: the classifier's
``features`` (``backbone.body.{i}``: a 3x3 stride-2 hardswish stem, 15 inverted residual
blocks of expand 1x1 / depthwise kxk / optional squeeze-excitation / project 1x1, a final
1x1 hardswish conv to 6x the width) of which two outputs feed a feature pyramid
(``backbone.fpn.*``): the last strided block's and the final conv's. Both are at stride 32
(torchvision builds it so, not dilated), so the pyramid is ``"0"``, ``"1"`` at /32 and
``LastLevelMaxPool``'s ``"pool"`` at /64.

Widths, the expand convs and the squeeze widths are read off the state dict, so reduced
``width_mult`` / ``reduced_tail`` checkpoints load through the same code; what a state dict
cannot say (strides, activations) comes from torchvision's mobilenet_v3_large table,
against which the kernel sizes and squeeze-excitation presence are checked.
FrozenBatchNorm2d and the untrained builder's BatchNorm2d (both eps 1e-5 in the detection
builders) are folded into the preceding convolution at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fooltools.detection.resnet_fpn import conv_entry, fpn_keys, pyramid
from fooltools.errors import ModelError
from fooltools.models import layers

BN_EPS = 1e-5  # FrozenBatchNorm2d's and nn.BatchNorm2d's (the detection builders pass these)
BODY = "backbone.body"
FPN = "backbone.fpn"
LEVEL_NAMES = ("0", "1", "pool")
# _fasterrcnn_mobilenet_v3_large_fpn's AnchorGenerator: every size at every level.
ANCHOR_SIZES = ((32, 64, 128, 256, 512),) * 3
_BN = ("weight", "bias", "running_mean", "running_var")

# torchvision's mobilenet_v3_large (_mobilenet_v3_conf): per inverted residual block,
# (kernel, squeeze-excitation, hardswish (else ReLU), stride). Its widths are not listed
# here: width_mult and reduced_tail change them, so they are read off the weights.
LARGE_TABLE = (
    (3, False, False, 1),
    (3, False, False, 2),
    (3, False, False, 1),
    (5, True, False, 2),
    (5, True, False, 1),
    (5, True, False, 1),
    (3, False, True, 2),
    (3, False, True, 1),
    (3, False, True, 1),
    (3, False, True, 1),
    (3, True, True, 1),
    (3, True, True, 1),
    (5, True, True, 2),
    (5, True, True, 1),
    (5, True, True, 1),
)


class BlockSpec(NamedTuple):
    """One inverted residual block (``backbone.body.{index}``)."""

    index: int  # position in ``features`` (1..15), torchvision's key prefix
    cin: int
    expanded: int  # == cin: no expand conv (torchvision omits it)
    out: int
    kernel: int
    squeeze: int  # squeeze-excitation width; 0: none
    hardswish: bool
    stride: int

    @property
    def residual(self) -> bool:
        """Whether the block adds its input (torchvision's ``use_res_connect``)."""
        return self.stride == 1 and self.cin == self.out


class MobileNetFPNSpec(NamedTuple):
    """Static shape of a MobileNetV3-Large FPN backbone."""

    stem: int
    blocks: tuple[BlockSpec, ...]
    last: int  # width of the final 1x1 conv (``backbone.body.16``)
    fpn_channels: int

    @property
    def returned(self) -> tuple[int, int]:
        """``features`` indices feeding the FPN: the last strided block, the last conv.

        ``_mobilenet_extractor``'s default ``returned_layers`` (the last two stages).
        """
        strided = [b.index for b in self.blocks if b.stride > 1]
        return strided[-1], len(self.blocks) + 1


def _sublayers(sd: Mapping[str, np.ndarray], prefix: str) -> list[tuple[str, np.ndarray]]:
    # A block's ``block.{j}`` children in order: ("conv", weight) or ("se", fc1 weight).
    out, j = [], 0
    while True:
        if f"{prefix}.{j}.0.weight" in sd:
            out.append(("conv", sd[f"{prefix}.{j}.0.weight"]))
        elif f"{prefix}.{j}.fc1.weight" in sd:
            out.append(("se", sd[f"{prefix}.{j}.fc1.weight"]))
        else:
            return out
        j += 1


def infer_spec(sd: Mapping[str, np.ndarray]) -> MobileNetFPNSpec:
    """Read the backbone's widths off a torchvision state dict, checked against the table.

    Args:
        sd: The detector's state dict (``backbone.body.*``, ``backbone.fpn.*`` keys).

    Returns:
        The spec. Keys it needs but cannot find raise ``KeyError`` with the key.

    Raises:
        ModelError: The blocks are not mobilenet_v3_large's (kernel sizes, SE, layout).
    """
    stem = sd[f"{BODY}.0.0.weight"].shape[0]
    blocks, cin = [], stem
    for i, (kernel, se, hardswish, stride) in enumerate(LARGE_TABLE, start=1):
        prefix = f"{BODY}.{i}.block"
        subs = _sublayers(sd, prefix)
        if not subs:
            raise KeyError(f"{prefix}.0.0.weight")
        kinds = [kind for kind, _ in subs]
        expand = subs[0][1].shape[-1] == 1  # a 1x1 conv first; else the depthwise kxk
        layout = ["conv"] * (1 + expand) + ["se"] * se + ["conv"]
        if len(kinds) < len(layout) and kinds == layout[: len(kinds)]:
            raise KeyError(
                f"{prefix}.{len(kinds)}.{'fc1' if layout[len(kinds)] == 'se' else '0'}.weight"
            )
        if kinds != layout:
            raise ModelError(
                f"{prefix} is not mobilenet_v3_large's block {i}: its layers are {kinds}, "
                f"expected {layout}"
            )
        dw = subs[1 if expand else 0][1]
        if dw.shape[1] != 1 or dw.shape[-1] != kernel:
            raise ModelError(
                f"{prefix} is not mobilenet_v3_large's block {i}: its depthwise weight has "
                f"shape {tuple(dw.shape)}, expected (C, 1, {kernel}, {kernel})"
            )
        squeeze = subs[-2][1].shape[0] if se else 0
        out = subs[-1][1].shape[0]
        blocks.append(BlockSpec(i, cin, dw.shape[0], out, kernel, squeeze, hardswish, stride))
        cin = out
    last = sd[f"{BODY}.{len(blocks) + 1}.0.weight"].shape[0]
    fpn_channels = sd[f"{FPN}.inner_blocks.0.0.weight"].shape[0]
    return MobileNetFPNSpec(stem, tuple(blocks), last, fpn_channels)


def _block_layers(b: BlockSpec) -> list[tuple[str, str]]:
    # (our param name, torchvision's ``block.{j}`` prefix) of each layer, in order.
    names = (["expand"] if b.expanded != b.cin else []) + ["dw"] + (["se"] if b.squeeze else [])
    names.append("project")
    return [(name, f"{BODY}.{b.index}.block.{j}") for j, name in enumerate(names)]


def expected_keys(spec: MobileNetFPNSpec) -> set[str]:
    """Every state-dict key the backbone reads (num_batches_tracked aside)."""
    keys = {f"{BODY}.0.0.weight"} | {f"{BODY}.0.1.{b}" for b in _BN}
    last = len(spec.blocks) + 1
    keys |= {f"{BODY}.{last}.0.weight"} | {f"{BODY}.{last}.1.{b}" for b in _BN}
    for block in spec.blocks:
        for name, prefix in _block_layers(block):
            if name == "se":
                keys |= {f"{prefix}.{fc}.{p}" for fc in ("fc1", "fc2") for p in ("weight", "bias")}
            else:
                keys |= {f"{prefix}.0.weight"} | {f"{prefix}.1.{b}" for b in _BN}
    return keys | fpn_keys(len(spec.returned))


def _fold(sd: Mapping[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    # Conv2dNormActivation ``prefix.0`` (no bias) + ``prefix.1`` (BN) -> OIHW weight, bias.
    bn = f"{prefix}.1"
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    bias = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
    w = sd[f"{prefix}.0.weight"].astype(np.float64) * scale[:, None, None, None]
    return w, bias.astype(np.float32)


def _conv_params(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    w, bias = _fold(sd, prefix)
    return {"kernel": w.transpose(2, 3, 1, 0).astype(np.float32), "bias": bias}  # -> HWIO


def _dense_params(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    w = sd[f"{prefix}.weight"]  # (out, in, 1, 1): a 1x1 conv on the pooled (N, C, 1, 1)
    return {
        "kernel": w.reshape(w.shape[0], -1).T.astype(np.float32),
        "bias": sd[f"{prefix}.bias"].astype(np.float32),
    }


def convert(sd: Mapping[str, np.ndarray], spec: MobileNetFPNSpec) -> dict[str, dict]:
    """Convert the backbone part of a torchvision state dict to folded Flax params.

    Args:
        sd: State dict with every key of :func:`expected_keys`.
        spec: The backbone's shape.

    Returns:
        The params of :class:`MobileNetFPN`: ``stem``, ``block{i}_expand``,
        ``block{i}_dw`` (kernel (k, k, C)), ``block{i}_se_fc1``/``_fc2``,
        ``block{i}_project``, ``last``, ``inner_{j}``, ``layer_{j}``.
    """
    out: dict[str, dict] = {
        "stem": _conv_params(sd, f"{BODY}.0"),
        "last": _conv_params(sd, f"{BODY}.{len(spec.blocks) + 1}"),
    }
    for block in spec.blocks:
        for name, prefix in _block_layers(block):
            key = f"block{block.index}_{name}"
            if name == "se":
                out[f"{key}_fc1"] = _dense_params(sd, f"{prefix}.fc1")
                out[f"{key}_fc2"] = _dense_params(sd, f"{prefix}.fc2")
            elif name == "dw":
                w, bias = _fold(sd, prefix)  # (C, 1, k, k)
                out[key] = {"kernel": w[:, 0].transpose(1, 2, 0).astype(np.float32), "bias": bias}
            else:
                out[key] = _conv_params(sd, prefix)
    for i in range(len(spec.returned)):
        out[f"inner_{i}"] = conv_entry(sd, f"{FPN}.inner_blocks.{i}.0")
        out[f"layer_{i}"] = conv_entry(sd, f"{FPN}.layer_blocks.{i}.0")
    return out


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int, *, grouped: bool | None = None
) -> jax.Array:
    """Depthwise conv with torch's symmetric ``k // 2`` padding.

    Args:
        x: (N, H, W, C).
        kernel: (k, k, C), k odd.
        bias: (C,).
        stride: 1 or 2.
        grouped: Use XLA's grouped convolution (True) or the shifted-slices form of
            :func:`fooltools.models.layers.depthwise_shifted` (False); None picks by
            backend (shifted slices on CPU, where grouped convolutions are 10-30x slower).

    Returns:
        (N, ceil(H / stride), ceil(W / stride), C).
    """
    if grouped is None:
        grouped = jax.default_backend() != "cpu"
    if not grouped:
        # TF "SAME" at stride 1 with an odd kernel is torch's padding; a stride-2 torch
        # conv is the stride-1 result at even positions.
        y = layers.depthwise_shifted(x, kernel, bias, 1)
        return y[:, ::stride, ::stride] if stride > 1 else y
    k, _, c = kernel.shape
    p = k // 2
    y = lax.conv_general_dilated(
        x,
        kernel.reshape(k, k, 1, c),
        (stride, stride),
        ((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )
    return y + bias


class _Depthwise(nn.Module):
    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, k = x.shape[-1], self.kernel_size
        kernel = self.param("kernel", nn.initializers.normal(1.0 / k), (k, k, c))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return depthwise_conv(x, kernel, bias, self.stride)


def _conv(features: int, k: int, stride: int = 1, name: str = "") -> nn.Conv:
    p = k // 2  # torch's symmetric padding
    return layers.Conv(features, (k, k), (stride, stride), ((p, p), (p, p)), name=name)


class MobileNetFPN(nn.Module):
    """MobileNetV3-Large body + FPN + LastLevelMaxPool, NHWC.

    Attributes:
        spec: Widths (see :func:`infer_spec`).
    """

    spec: MobileNetFPNSpec

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Map normalised, padded images (N, H, W, 3) to the pyramid.

        Returns:
            ``{"0": (N, H/32, W/32, C), "1": /32, "pool": /64}`` (sizes rounded up),
            C = ``spec.fpn_channels``.
        """
        spec = self.spec
        x = nn.hard_swish(_conv(spec.stem, 3, 2, name="stem")(x))
        outputs = {}
        for b in spec.blocks:
            act = nn.hard_swish if b.hardswish else nn.relu
            p = f"block{b.index}"
            y = x
            if b.expanded != b.cin:
                y = act(_conv(b.expanded, 1, name=f"{p}_expand")(y))
            y = act(_Depthwise(b.kernel, b.stride, name=f"{p}_dw")(y))
            if b.squeeze:
                s = jnp.mean(y, axis=(1, 2), keepdims=True)
                s = nn.relu(nn.Dense(b.squeeze, name=f"{p}_se_fc1")(s))
                y = y * nn.hard_sigmoid(nn.Dense(b.expanded, name=f"{p}_se_fc2")(s))
            y = _conv(b.out, 1, name=f"{p}_project")(y)
            x = y + x if b.residual else y
            outputs[b.index] = x
        outputs[len(spec.blocks) + 1] = nn.hard_swish(_conv(spec.last, 1, name="last")(x))
        return pyramid([outputs[i] for i in spec.returned], spec.fpn_channels, LEVEL_NAMES)
