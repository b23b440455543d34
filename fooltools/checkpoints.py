"""Read (and write) PyTorch checkpoints safely, without torch.

``torch.save`` writes pickles, and unpickling runs whatever callables the file names, so
loading an untrusted ``.pth`` with ``pickle.load`` (or ``torch.load`` with
``weights_only=False``) can run arbitrary code. This module unpickles with a restricted
:class:`pickle.Unpickler` that resolves only an explicit allow-list of globals (the ones a
state dict needs) to local stand-ins, and refuses every other global before anything is
called. Tensors are rebuilt from their raw storages with numpy.

Two on-disk formats are read:

- the zip format of ``torch.save`` since PyTorch 1.6: ``<prefix>/data.pkl`` plus one raw
  storage per tensor storage in ``<prefix>/data/<key>``;
- the legacy format (``_use_new_zipfile_serialization=False``, and every file from before
  1.6): a stream of pickles (magic number, protocol version, sys_info, the object, the list
  of storage keys) followed, for each key in that order, by an int64 element count and the
  storage's raw bytes.

:func:`save_state_dict` writes the zip format, so that the small detectors trained here ship
in the same format as real torchvision weights and load through the same code.
"""

from __future__ import annotations

import collections
import errno
import io
import math
import os
import pathlib
import pickle
import pickletools
import re
import reprlib
import stat
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from fooltools import limits
from fooltools.errors import CheckpointError, ImageError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# A state dict's pickle is a few hundred bytes per tensor (torchvision's ResNet-50 FPN
# detector: 38 KB): these bound what a crafted one can make the unpickler allocate (a
# memo index or a run of DUPs in a 500-byte bzip2 member took gigabytes).
MAX_PICKLE_BYTES = 64 << 20
MAX_PICKLE_OPS = 4_000_000
# How many times their storages' bytes the tensors of a file may take (views may share a
# storage, or repeat it as torch's expand does), above 256 MiB.
MAX_EXPANSION = 64
# Sizes, strides and offsets fit in 63 bits, and no integer of a checkpoint's pickles
# needs over 128 (the legacy format's magic number has 77): a 4 MB integer in a size took
# minutes of arithmetic before any check.
_MAX_INT_BITS = 63
_MAX_PICKLE_INT_BITS = 128
# Objects from the file quoted in messages, cut short as they are formatted: a 300-byte
# pickle of nested tuples had a repr of gigabytes, built whole before ``:.80`` cut it.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxtuple = 2, 40, 40, 6
_brief = _repr.repr

# torch dtype name -> little-endian numpy dtype. numpy has no bfloat16: its raw 16 bits are
# read as uint16 and widened to float32 (exactly) in _to_array.
_NUMPY_DTYPES = {
    "float32": "<f4",
    "float64": "<f8",
    "float16": "<f2",
    "bfloat16": "<u2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",  # a byte buffer; tensors on it carry their own dtype (v3)
}


# The stand-ins are named tuples because the pickle can apply BUILD (setstate) to any object
# it holds, including the shared values of _ALLOWED: tuples have neither __dict__ nor
# settable attributes, so a malicious file cannot retarget them for later loads. (Frozen
# slotted dataclasses do not do: they define a __setstate__ that overwrites fields; plain
# functions do not either: BUILD could replace their __defaults__.)
class _DType(NamedTuple):
    """Stand-in for a ``torch.dtype`` global such as ``torch.float32``."""

    name: str


class _StorageType(NamedTuple):
    """Stand-in for a storage class such as ``torch.FloatStorage``."""

    dtype: str


class _Storage(NamedTuple):
    """A reference to raw storage ``key``, whose bytes may only be read later (legacy)."""

    key: str
    dtype: str
    byte_offset: int  # non-zero only for the storage views of very old legacy files


class _Tensor(NamedTuple):
    """A tensor to materialise: ``dtype`` elements of ``storage`` at offset and strides."""

    storage: _Storage
    dtype: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Function(NamedTuple):
    """Immutable callable stand-in for an allowed torch function."""

    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise pickle.UnpicklingError("tensor size or stride is not a sequence")
    ints = (offset, *size, *stride)
    if len(size) > 64 or not all(type(i) is int and 0 <= i < 1 << _MAX_INT_BITS for i in ints):
        raise pickle.UnpicklingError("bad tensor geometry (sizes, strides, offset)")
    return _Tensor(storage, storage.dtype, offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    # Non-empty metadata flags lazy conj/neg views, which plain weights never are.
    if meta:
        raise pickle.UnpicklingError(f"unsupported tensor metadata {_brief(meta)}")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, meta=None):
    if not isinstance(dtype, _DType) or meta:
        raise pickle.UnpicklingError("bad dtype or metadata in _rebuild_tensor_v3")
    return _rebuild_tensor(storage, offset, size, stride)._replace(dtype=dtype.name)


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> Any:
    return data  # a Parameter's values are its tensor's; grad flags and state do not matter


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Function(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
    ("torch", "Size"): tuple,
    ("torch.storage", "UntypedStorage"): _StorageType("uint8"),
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _DType(name) for name in _NUMPY_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED`` and records storages."""

    def __init__(self, file: BinaryIO, path: str, storages: dict[str, str] | None = None):
        super().__init__(file)
        self._path = path
        self._storages = storages  # key -> dtype of its first reference; None: none allowed

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            ref = f"{module}.{name}"
            ref = ref if ref.isprintable() and len(ref) <= 100 else ascii(ref[:100])
            raise CheckpointError(
                f"refusing to load {self._path}: it references {ref}, which a weights file "
                "never needs (the file may be malicious)"
            )
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if self._storages is None or not isinstance(pid, tuple) or len(pid) not in (5, 6):
            raise pickle.UnpicklingError(f"unexpected persistent id {_brief(pid)}")
        kind, storage_type, key, _location, _numel, *view = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {_brief(pid)}")
        key = str(key)
        self._storages.setdefault(key, storage_type.dtype)
        byte_offset = 0
        if view and view[0] is not None:  # legacy (view_key, offset, size), in elements
            byte_offset = int(view[0][1]) * np.dtype(_NUMPY_DTYPES[storage_type.dtype]).itemsize
            if byte_offset < 0:
                raise pickle.UnpicklingError(f"negative storage view offset in {_brief(pid)}")
        return _Storage(key, storage_type.dtype, byte_offset)


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` to read bytes, refusing anything but a regular file.

    Opened non-blocking first: a FIFO without a writer would block ``open`` forever, and
    a device such as ``/dev/zero`` would be read until memory ran out.

    Args:
        path: The file.

    Returns:
        The file, open in binary read mode (blocking, as usual).

    Raises:
        OSError: It cannot be opened, is a directory (``EISDIR``), or is not a regular
            file (``EINVAL``, strerror "not a regular file").
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX only; Windows has no FIFOs to open
    fd = os.open(path, os.O_RDONLY | nonblock)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_pickle(f: BinaryIO, path: str) -> None:
    """Refuse a pickle stream the unpickler would spend unbounded memory or time on.

    Scans the opcodes from ``f``'s position to the stream's STOP, then seeks back: at most
    :data:`MAX_PICKLE_OPS` of them, memo indices no larger than the opcodes before them
    (a state dict's are 0, 1, 2, ...), integers within 63 bits. A stream genops cannot read
    is left for the unpickler to refuse as corrupt.
    """
    start, ops = f.tell(), 0
    try:
        for op, arg, _ in pickletools.genops(f):
            ops += 1
            if ops > MAX_PICKLE_OPS:
                raise CheckpointError(
                    f"refusing to load {path}: its pickle has over {MAX_PICKLE_OPS} opcodes, "
                    "far more than a state dict's (a corrupt or malicious file)"
                )
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= ops:
                raise CheckpointError(
                    f"refusing to load {path}: its pickle stores memo entry {int(arg)} after "
                    f"{ops} opcodes (a corrupt or malicious file)"
                )
            if isinstance(arg, int) and arg.bit_length() > _MAX_PICKLE_INT_BITS:
                raise CheckpointError(
                    f"refusing to load {path}: its pickle holds a {arg.bit_length()}-bit "
                    "integer, which no weights file does (a corrupt or malicious file)"
                )
    except CheckpointError:
        raise
    except Exception:  # malformed: the unpickler refuses it in its own words
        pass
    f.seek(start)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    # Check against the file size before reading, so a corrupt count cannot make us
    # allocate gigabytes.
    left = os.fstat(f.fileno()).st_size - f.tell()
    if not 0 <= n <= left:
        raise EOFError(f"needs {n} bytes, {left} left")
    return f.read(n)


def _load_legacy(f: BinaryIO, path: str) -> tuple[Any, dict[str, bytes]]:
    def load(storages: dict[str, str] | None = None) -> Any:
        _check_pickle(f, path)
        return _Unpickler(f, path, storages).load()

    try:
        magic = load()
    except CheckpointError:
        raise
    except Exception:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither a zip archive nor a legacy "
            "torch.save pickle stream)"
        ) from None
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(
            f"{path} is a pickle but not a PyTorch checkpoint (no torch.save magic number)"
        )
    version = load()
    sys_info = load()
    if version != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported legacy checkpoint protocol {_brief(version)}")
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError(f"{path} was saved on a big-endian machine, which is unsupported")
    storages: dict[str, str] = {}
    tree = load(storages)
    keys = load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("storage key list is not a list")
    data = {}
    for key in map(str, keys):
        itemsize = np.dtype(_NUMPY_DTYPES[storages[key]]).itemsize
        (count,) = struct.unpack("<q", _read_exact(f, 8))
        data[key] = _read_exact(f, count * itemsize)
    return tree, data


def _check_memory(path: str, need: int) -> None:
    """Refuse a load that would hold ``need`` bytes, more than the machine's memory.

    A deflated zip member decompresses about a thousand times its size, and a tensor of
    stride 0 materialises any number of elements from one: a small crafted file could
    otherwise drive the process into a kernel OOM kill instead of one line.
    """
    have = limits.host_memory()
    if have is not None and need > have:
        raise CheckpointError(
            f"cannot load checkpoint {path}: it would need {need / 2**30:.1f} GiB of memory, "
            f"more than this machine's {have / 2**30:.1f} GiB (a corrupt or malicious file)"
        )


def _member(zf: zipfile.ZipFile, path: str, name: str) -> zipfile.ZipInfo:
    """The zip member ``name``, refused if compressed as torch.save never compresses.

    torch.save stores members uncompressed; a bzip2 member of 2 KB held 2 GiB of zeros.
    Deflate (a re-zipped file) is let through up to 64:1, about what zeros reach.
    """
    info = zf.getinfo(name)
    ratio = info.file_size / max(info.compress_size, 1)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or ratio > 64:
        raise CheckpointError(
            f"refusing to load {path}: its member {ascii(name[-60:])} is compressed "
            f"{ratio:.0f}:1 (method {info.compress_type}), which torch.save never writes "
            "(a corrupt or malicious file)"
        )
    return info


def _load_zip(f: BinaryIO, path: str) -> tuple[Any, dict[str, bytes]]:
    with zipfile.ZipFile(f) as zf:
        names = zf.namelist()
        if len(set(names)) != len(names):
            # zipfile reads the last of two members of one name; torch may read the first.
            raise CheckpointError(
                f"{path} holds two zip members of one name (a corrupt or malicious file)"
            )
        pickles = [n for n in names if n.split("/")[-1] == "data.pkl" and n.count("/") <= 1]
        if len(pickles) != 1 or any(n.endswith("constants.pkl") for n in names):
            raise CheckpointError(
                f"{path} is a zip archive but not a torch.save checkpoint (no single "
                "<prefix>/data.pkl, or a TorchScript archive)"
            )
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names:
            with zf.open(prefix + "byteorder") as member:  # not all of a deflate bomb
                order = member.read(64).strip()
            if order != b"little":
                raise CheckpointError(
                    f"{path} was saved with byte order {order.decode('ascii', 'replace')!r}; "
                    "only little-endian checkpoints are supported"
                )
        info = _member(zf, path, pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"refusing to load {path}: its data.pkl is {info.file_size / 2**20:.0f} MiB, "
                f"over the {MAX_PICKLE_BYTES >> 20} MiB of any state dict's"
            )
        stream = io.BytesIO(zf.read(info))
        _check_pickle(stream, path)
        storages: dict[str, str] = {}
        tree = _Unpickler(stream, path, storages).load()
        members = {key: _member(zf, path, f"{prefix}data/{key}") for key in storages}
        _check_memory(path, sum(info.file_size for info in members.values()))
        data = {key: zf.read(info) for key, info in members.items()}
    return tree, data


def _to_array(t: _Tensor, data: dict[str, bytes]) -> np.ndarray:
    """Materialise ``t`` as a C-contiguous array owning its memory (bfloat16 -> float32)."""
    dtype = np.dtype(_NUMPY_DTYPES[t.dtype])
    size, stride, offset = t.size, t.stride, t.offset
    ints = (*size, *stride, offset)
    if len(size) != len(stride) or not all(type(i) is int and i >= 0 for i in ints):
        raise ValueError(f"bad tensor geometry size={size} stride={stride} offset={offset}")
    raw = data[t.storage.key]
    count = max(len(raw) - t.storage.byte_offset, 0) // dtype.itemsize
    if 0 in size:
        arr = np.empty(size, dtype)
    else:
        # as_strided does no bounds checking: verify that the furthest element the view
        # reaches lies inside the storage, or a crafted file could read arbitrary memory.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= count:
            raise ValueError(f"tensor needs {last + 1} elements, its storage has {count}")
        flat = np.frombuffer(raw, dtype, count, t.storage.byte_offset)[offset:]
        strides = tuple(s * dtype.itemsize for s in stride)
        arr = np.lib.stride_tricks.as_strided(flat, size, strides, writeable=False).copy()
    if t.dtype == "bfloat16":  # its 16 bits are the top half of a float32's
        wide = np.empty(arr.shape, np.float32)
        wide.view(np.uint32)[...] = arr.astype(np.uint32) << 16
        arr = wide
    return arr


def _array_bytes(t: _Tensor) -> int:
    """Bytes :func:`_to_array` allocates for ``t`` (0 for a geometry it refuses anyway)."""
    if not all(type(n) is int and n >= 0 for n in t.size):
        return 0
    itemsize = np.dtype(_NUMPY_DTYPES[t.dtype]).itemsize
    # bfloat16 is copied as uint16, then widened into a float32 array.
    return math.prod(t.size) * (itemsize + (4 if t.dtype == "bfloat16" else 0))


def _plain(tree: Any) -> Any:
    """A dict's items as a plain dict, read with ``dict``'s own methods.

    The pickle may BUILD attributes onto its OrderedDict (torch sets ``_metadata``): an
    attribute ``values`` or ``items`` shadowed the methods, and the memory check summed
    nothing while the tensors were still built.
    """
    return dict(dict.items(tree)) if isinstance(tree, dict) else tree


def _is_state_dict(tree: Any) -> bool:
    return isinstance(tree, dict) and all(
        isinstance(k, str) and isinstance(v, _Tensor) for k, v in dict.items(tree)
    )


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load the state dict of a PyTorch checkpoint as numpy arrays, without running code.

    Reads both the zip format of ``torch.save`` and the legacy pre-1.6 format. A checkpoint
    that wraps its state dict as ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Args:
        path: The ``.pth``/``.pt`` file written by ``torch.save``.

    Returns:
        Parameter name -> array, in the file's order. Each array has the tensor's shape
        (``()`` for 0-d tensors), is C-contiguous and owns its memory, whatever the
        tensor's storage offset and strides. Dtypes follow the tensors': float32, float64,
        float16, int64, int32, int16, int8, uint8, bool; bfloat16 becomes float32 (exactly).

    Raises:
        CheckpointError: The file is missing or unreadable, not a PyTorch checkpoint,
            truncated or corrupt, big-endian, not a state dict of tensors, would need more
            memory than the machine has (its storages and arrays together), or references
            a global outside the allow-list (the file may be malicious; nothing was run).
    """
    path = os.fspath(path)
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    with f:
        try:
            is_zip = f.read(2) == b"PK"
            f.seek(0)
            tree, data = (_load_zip if is_zip else _load_legacy)(f, path)
            tree = _plain(tree)
            if isinstance(tree, dict) and not _is_state_dict(tree):
                inner = [tree[k] for k in ("state_dict", "model") if isinstance(tree.get(k), dict)]
                tree = _plain(inner[0]) if inner else tree
            if not _is_state_dict(tree):
                raise CheckpointError(
                    f"{path} holds a {type(tree).__name__} that is not a state dict "
                    "(a dict of parameter name -> tensor)"
                )
            odd = next((k for k in tree if not k.isprintable() or len(k) > 1000), None)
            if odd is not None:
                # Quoted in later messages, a name could carry terminal escape sequences.
                raise CheckpointError(f"{path}: {ascii(odd[:80])} is not a parameter name")
            held = sum(len(raw) for raw in data.values())
            made = sum(_array_bytes(t) for t in tree.values())
            if made > max(MAX_EXPANSION * held, 256 << 20):
                # Views repeating their storage (stride 0, as torch's expand): 532 bytes
                # made a 4 GiB array. A real file's views cover their storages about once.
                raise CheckpointError(
                    f"refusing to load {path}: its tensors would take {made / 2**20:.0f} MiB "
                    f"from {held / 2**20:.1f} MiB of storage (a corrupt or malicious file)"
                )
            _check_memory(path, held + made)
            return {name: _to_array(t, data) for name, t in tree.items()}
        except CheckpointError:
            raise
        except Exception as e:  # anything else is a malformed file; report it in one line
            detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise CheckpointError(
                f"cannot load checkpoint {path}: truncated or corrupt ({detail})"
            ) from None


# --- writing -----------------------------------------------------------------------------

# numpy dtype -> torch storage class of save_state_dict (inverse of _STORAGE_DTYPES; numpy
# has no bfloat16, so it cannot occur).
_SAVE_STORAGES = {
    np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<"): name
    for name, dtype in _STORAGE_DTYPES.items()
    if name not in ("UntypedStorage", "BFloat16Storage")
}
_ALIGNMENT = 64  # torch.utils.serialization.config.save.storage_alignment's default
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: same state dict, same bytes


def _pickle_int(n: int) -> bytes:
    return pickle.dumps(int(n), protocol=2)[2:-1]  # BININT*/LONG1, without PROTO and STOP


def _pickle_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _pickle_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode("ascii")  # GLOBAL


def _pickle_ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_pickle_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _state_dict_pickle(entries: list[tuple[str, str, int, tuple[int, ...]]]) -> bytes:
    """Protocol-2 pickle of ``OrderedDict(name -> tensor)``, as ``torch.save`` writes it.

    Written opcode by opcode because pickling a reference to ``torch._utils`` with
    :mod:`pickle` would need torch importable. Each tensor is
    ``_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`` on persistent id
    ``("storage", torch.<Storage>, key, "cpu", numel)``; the storage key is the entry's
    index. No memo is used: every global is spelled out again (a few bytes per tensor).
    """
    out = [b"\x80\x02", _pickle_global("collections", "OrderedDict"), b")R("]
    for key, (name, storage, numel, size) in enumerate(entries):
        stride = tuple(int(np.prod(size[i + 1 :], dtype=np.int64)) for i in range(len(size)))
        pid = (
            b"("
            + _pickle_str("storage")
            + _pickle_global("torch", storage)
            + _pickle_str(str(key))
            + _pickle_str("cpu")
            + _pickle_int(numel)
            + b"t"
        )
        out += [
            _pickle_str(name),
            _pickle_global("torch._utils", "_rebuild_tensor_v2"),
            b"(" + pid + b"Q" + _pickle_int(0),  # MARK, BINPERSID, storage offset
            _pickle_ints(size),
            _pickle_ints(stride),
            b"\x89" + _pickle_global("collections", "OrderedDict") + b")R",  # False, hooks
            b"tR",
        ]
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


def _write_aligned(zf: zipfile.ZipFile, buf: io.BytesIO, name: str, data: bytes) -> None:
    """Store ``data`` uncompressed, its first byte at a multiple of :data:`_ALIGNMENT`.

    As torch's ``PyTorchStreamWriter``: the local header's extra field (id ``FB``) is
    padded with ``Z`` bytes, so storages can be memory-mapped (torch's loader with ``mmap=True``).
    """
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    start = buf.tell() + 30 + len(name.encode("utf-8")) + 4  # local header + extra's header
    pad = -start % _ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def save_state_dict(path: str | os.PathLike[str], state: Mapping[str, np.ndarray]) -> pathlib.Path:
    """Write a state dict in the zip format of ``torch.save``, without torch.

    The file is what ``torch.save(OrderedDict(name -> tensor), path)`` writes: under the
    prefix ``<file stem>/``, ``data.pkl`` (a protocol-2 pickle whose tensors are
    ``torch._utils._rebuild_tensor_v2`` calls on persistent-id storages ``("storage",
    torch.FloatStorage (or the dtype's storage class), key, "cpu", numel)``),
    ``.format_version``, ``.storage_alignment``, ``byteorder`` ("little"), one raw
    little-endian storage per tensor in ``data/<key>`` and ``version`` ("3"); stored
    uncompressed, each record starting at a multiple of 64 bytes. It has no
    ``.data/serialization_id`` (random in torch), so the same state dict always gives the
    same bytes. :func:`load_state_dict` reads it back exactly, and torch's own loader
    accepts it with ``weights_only=True`` (checked by hand with torch 2.13).

    The file is written atomically: to a temporary file next to ``path``, then renamed.

    Args:
        path: Destination ``.pth`` file; parent directories are created.
        state: Parameter name -> array of any shape (0-d and empty included), in the order
            to store. Dtypes: float32, float64, float16, int64, int32, int16, int8, uint8,
            bool. Arrays need not be contiguous; they are stored C-contiguous.

    Returns:
        The path written.

    Raises:
        TypeError: A name is not a string or an array has an unsupported dtype.
        CheckpointError: The file cannot be written.
    """
    from fooltools.io import write_bytes_atomic  # io pulls in jax and PIL; only needed here

    dest = pathlib.Path(path)
    # torch names the record folder after the file (its stem); plain ASCII keeps the zip's
    # names portable, anything else falls back to torch's name for unnamed buffers.
    prefix = dest.stem if re.fullmatch(r"[\w.-]+", dest.stem, re.ASCII) else "archive"
    entries, blobs = [], []
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be strings, got {name!r:.80}")
        arr = np.asarray(value)
        storage = _SAVE_STORAGES.get(arr.dtype.newbyteorder("<"))
        if storage is None:
            raise TypeError(f"{name}: cannot store dtype {arr.dtype} in a torch checkpoint")
        data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        entries.append((name, storage, arr.size, tuple(int(n) for n in arr.shape)))
        blobs.append(data)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        _write_aligned(zf, buf, f"{prefix}/data.pkl", _state_dict_pickle(entries))
        _write_aligned(zf, buf, f"{prefix}/.format_version", b"1")
        _write_aligned(zf, buf, f"{prefix}/.storage_alignment", str(_ALIGNMENT).encode())
        _write_aligned(zf, buf, f"{prefix}/byteorder", b"little")
        for key, data in enumerate(blobs):
            _write_aligned(zf, buf, f"{prefix}/data/{key}", data)
        _write_aligned(zf, buf, f"{prefix}/version", b"3\n")
    try:
        return write_bytes_atomic(dest, buf.getvalue())
    except ImageError as err:  # io's error type is about images; this is a checkpoint
        raise CheckpointError(str(err)) from err
