"""Write the PyTorch checkpoint fixtures read by tests/test_checkpoints.py.

Run with a venv that has torch (the tests themselves never import it)::

    /tmp/refenv/bin/python tests/reference/make_checkpoint_fixtures.py

It writes into tests/data/checkpoints/:

- ``legacy.pth``: the state dict below, saved in the pre-1.6 format
  (``_use_new_zipfile_serialization=False``), i.e. a stream of pickles plus raw storages.
- ``zipfmt.pth``: the same state dict in the default zip format of ``torch.save``.
- ``wrapped.pth``: ``{"epoch": 3, "state_dict": <state dict>}`` in the zip format, the
  layout of many training scripts.
- ``wrapped_legacy.pth``: ``{"model": <state dict>}`` in the legacy format.
- ``not_state_dict.pth``: ``{"epoch": 3, "lr": 0.1}``, a valid checkpoint holding no tensors.
- ``expected.npz``: every entry of the state dict as a numpy array, in state dict order
  (bfloat16 widened to float32, which is exact).
"""

import collections
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "checkpoints")


def make_state_dict() -> "collections.OrderedDict[str, torch.Tensor]":
    """A small state dict covering the dtypes and tensor layouts a loader must get right."""
    torch.manual_seed(0)
    # A real nn.Module state dict: an OrderedDict with a `_metadata` attribute, float32
    # weights and the int64 0-d `num_batches_tracked` of batch norm.
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model(torch.randn(5, 4))  # one training step so the running stats are not trivial
    sd = model.state_dict()
    assert hasattr(sd, "_metadata")

    sd["conv.weight"] = torch.randn(2, 3, 3, 3)
    # Views into one shared storage: saved once, read back through offsets and strides.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd["shared.base"] = base
    sd["shared.transposed"] = base.t()  # strides (1, 6)
    sd["shared.slice"] = base[1:3, 2:5]  # storage offset 8, strides (6, 1)
    sd["shared.every_other"] = base[::2, 1::3]  # offset 1, strides (12, 3)
    # A view that does not start at the beginning of the storage and is the only user
    # of it: the storage is still saved whole.
    sd["tail_only"] = torch.randn(10)[6:]
    # Stride 0 (broadcast) view.
    sd["expanded"] = torch.randn(3, 1).expand(3, 4)
    sd["half"] = torch.randn(3, 5).half()
    sd["double"] = torch.randn(2, 2, dtype=torch.float64)
    sd["bfloat16"] = torch.randn(4).bfloat16()
    sd["long"] = torch.tensor([-(2**40), -1, 0, 1, 2**40], dtype=torch.int64)
    sd["int"] = torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3)
    sd["short"] = torch.tensor([-300, 7, 300], dtype=torch.int16)
    sd["char"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["byte"] = torch.tensor([0, 1, 128, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([[True, False, True, True], [False, False, True, False]])
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    # A Parameter (not detached) is pickled through torch._utils._rebuild_parameter.
    sd["param"] = torch.nn.Parameter(torch.randn(3))
    return sd


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """The array a loader should return for `t` (bfloat16 widened to float32)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


def main() -> None:
    """Write the fixtures and print their sizes."""
    os.makedirs(OUT, exist_ok=True)
    sd = make_state_dict()
    path = lambda name: os.path.join(OUT, name)  # noqa: E731
    torch.save(sd, path("legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(sd, path("zipfmt.pth"))
    torch.save({"epoch": 3, "state_dict": sd}, path("wrapped.pth"))
    torch.save({"model": sd}, path("wrapped_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save({"epoch": 3, "lr": 0.1}, path("not_state_dict.pth"))
    np.savez(path("expected.npz"), **{k: to_numpy(v) for k, v in sd.items()})

    # The fixtures must round-trip through torch itself.
    for name in ("legacy.pth", "zipfmt.pth"):
        back = torch.load(path(name), weights_only=True)
        assert list(back) == list(sd)
        assert all(torch.equal(back[k], v) for k, v in sd.items())
    for name in sorted(os.listdir(OUT)):
        print(f"{name:24s} {os.path.getsize(path(name)):7d} bytes")


if __name__ == "__main__":
    main()
