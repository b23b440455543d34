"""Tests of fooltools.checkpoints.save_state_dict, the torch-free writer of torch.save files.

torch itself reads these files (``torch.load(path, weights_only=True)``, checked by hand
with torch 2.13); the suite never imports torch, so here the files are read back with our
own reader and their layout is checked against what torch.save writes.
"""

import collections
import pathlib
import pickletools
import zipfile

import numpy as np
import pytest

from fooltools import checkpoints
from fooltools.checkpoints import load_state_dict, save_state_dict
from fooltools.errors import CheckpointError

DATA = pathlib.Path(__file__).parent / "data" / "checkpoints"


def state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 6, 5)).astype(np.float32)
    return collections.OrderedDict(
        [
            ("conv.weight", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
            ("bn.num_batches_tracked", np.array(17, np.int64)),  # 0-d
            ("empty", np.zeros((0, 3), np.float32)),
            ("strided", base[:, ::2].transpose(2, 0, 1)),  # non-contiguous view
            ("reversed", np.arange(10, dtype=np.int64)[::-1]),  # negative strides
            ("scalar_f", np.array(-2.5, np.float32)),
            ("f64", rng.standard_normal(3)),
            ("f16", np.array([1.5, -0.25], np.float16)),
            ("i32", np.array([[1, -2]], np.int32)),
            ("i16", np.array([300], np.int16)),
            ("i8", np.array([-3], np.int8)),
            ("u8", np.arange(5, dtype=np.uint8)),
            ("mask", np.array([True, False, True])),
            ("big_endian", np.arange(4, dtype=">f4")),
        ]
    )


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype.newbyteorder("="), name
        assert g.shape == w.shape, name
        assert g.flags.c_contiguous, name
        assert np.array_equal(g, w), name


def test_round_trip_through_our_reader(tmp_path):
    sd = state()
    path = save_state_dict(tmp_path / "weights.pth", sd)
    assert path == tmp_path / "weights.pth"
    assert_same(load_state_dict(path), sd)


def test_round_trip_of_a_real_torch_checkpoint(tmp_path, expected_fixture):
    # What torch.save wrote, read by us, written by us, read again: unchanged.
    path = save_state_dict(tmp_path / "again.pth", load_state_dict(DATA / "zipfmt.pth"))
    assert_same(load_state_dict(path), expected_fixture)


@pytest.fixture
def expected_fixture() -> dict[str, np.ndarray]:
    with np.load(DATA / "expected.npz") as npz:
        return {name: npz[name] for name in npz.files}


def test_layout_is_torch_save_s(tmp_path):
    path = save_state_dict(tmp_path / "model.pth", state())
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names[:4] == [
            "model/data.pkl",
            "model/.format_version",
            "model/.storage_alignment",
            "model/byteorder",
        ]
        assert names[-1] == "model/version"
        assert names[4:-1] == [f"model/data/{k}" for k in range(len(state()))]
        assert zf.read("model/byteorder") == b"little"
        assert zf.read("model/version") == b"3\n"
        assert zf.read("model/.storage_alignment") == b"64"
        assert zf.testzip() is None
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED
            # Record data starts on a 64-byte boundary (torch's storage alignment).
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % 64 == 0, info.filename
        raw = zf.read("model/data/3")  # "strided": stored C-contiguous, little-endian
    assert raw == np.ascontiguousarray(state()["strided"]).astype("<f4").tobytes()


def test_pickle_uses_only_allowed_globals_and_protocol_2(tmp_path):
    path = save_state_dict(tmp_path / "w.pth", state())
    with zipfile.ZipFile(path) as zf:
        data = zf.read("w/data.pkl")
    assert data[:2] == b"\x80\x02"
    globals_ = [
        tuple(arg.split(" ", 1)) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"
    ]
    assert set(globals_) == {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch", "FloatStorage"),
        ("torch", "LongStorage"),
        ("torch", "DoubleStorage"),
        ("torch", "HalfStorage"),
        ("torch", "IntStorage"),
        ("torch", "ShortStorage"),
        ("torch", "CharStorage"),
        ("torch", "ByteStorage"),
        ("torch", "BoolStorage"),
    }
    assert all(g in checkpoints._ALLOWED for g in globals_)  # what our safe reader admits


def test_same_state_dict_gives_same_bytes(tmp_path):
    a = save_state_dict(tmp_path / "a" / "w.pth", state()).read_bytes()
    b = save_state_dict(tmp_path / "b" / "w.pth", state()).read_bytes()
    assert a == b


def test_overwrites_atomically_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"old")
    save_state_dict(path, {"x": np.ones(3, np.float32)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]
    assert np.array_equal(load_state_dict(path)["x"], np.ones(3, np.float32))


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("faster-rcnn-synth.pth", "faster-rcnn-synth"), ("gewichté.pth", "archive")],
)
def test_records_are_named_after_the_file(tmp_path, name, prefix):
    path = save_state_dict(tmp_path / name, {"x": np.zeros(2, np.float32)})
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[0] == f"{prefix}/data.pkl"
    assert np.array_equal(load_state_dict(path)["x"], np.zeros(2, np.float32))


def test_unsupported_dtype_and_key_are_refused(tmp_path):
    with pytest.raises(TypeError, match="complex"):
        save_state_dict(tmp_path / "w.pth", {"x": np.ones(2, np.complex64)})
    with pytest.raises(TypeError, match="strings"):
        save_state_dict(tmp_path / "w.pth", {3: np.ones(2, np.float32)})
    assert not (tmp_path / "w.pth").exists()


def test_unwritable_destination_is_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot write"):
        save_state_dict(blocker / "w.pth", {"x": np.ones(2, np.float32)})
