"""Search state on disk: atomic, pickle-free, validated on load.

A checkpoint is one ``.npz`` (read with ``allow_pickle=False``, so it can never run code)
holding the stacked genome leaves, the other state arrays, and a JSON ``meta`` blob that
names the configuration it belongs to. Loading checks that the configuration matches and
that every array has the shape the encoding expects; a mismatch or corrupt file raises a
:class:`~fooltools.errors.FoolError` and leaves the file untouched.
"""

from __future__ import annotations

import io as _bytes_io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fooltools import io
from fooltools.errors import FoolError

FORMAT = 1
# The meta entries a resume reads before the checkpoint is matched to the run, and what
# each must be: a list for "kind" was a TypeError traceback on --resume, a float
# population a JAX one.
_META_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "model": (str,),
    "encoding": (str,),
    "seed": (int,),
    "population": (int,),
    "generations": (int,),
    "generation": (int,),
    "stop_at": (int, float, type(None)),
    "classes": (list,),
}
_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# The meta blob is a few hundred bytes (a MAP-Elites run's 1000 classes: a few KB).
MAX_META_BYTES = 1 << 20


def save(path: Path, genomes: Any, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write a checkpoint atomically.

    Args:
        path: Destination ``.npz``.
        genomes: Stacked genome pytree (device or host arrays).
        arrays: Other named state arrays (fitness, ...).
        meta: JSON-serialisable description (config, generation, ...).
    """
    leaves = jax.tree_util.tree_leaves(genomes)
    payload = {f"genome_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    payload.update({f"state_{k}": np.asarray(v) for k, v in arrays.items()})
    blob = json.dumps({"format": FORMAT, **meta}, sort_keys=True).encode()
    payload["meta"] = np.frombuffer(blob, dtype=np.uint8)
    buf = _bytes_io.BytesIO()
    np.savez(buf, **payload)
    io.write_bytes_atomic(path, buf.getvalue())


def load(
    path: Path,
    template: Any,
    expect: dict[str, Any],
    state: Mapping[str, jax.ShapeDtypeStruct] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save` for the same configuration.

    Args:
        path: The ``.npz``.
        template: Genome pytree of ``jax.ShapeDtypeStruct`` (stacked) giving the
            expected structure, shapes and dtypes.
        expect: Meta entries that must match exactly (e.g. the search configuration).
        state: The state arrays the caller reads, by name, with the shape and dtype each
            must have (a dtype of the same kind is cast to it); when given, the meta must
            also hold the ``generation`` (a non-negative integer) the run resumes from.
        settings: Meta entries that are objects of named settings (an encoding's
            hyper-parameters), compared setting by setting, the first that differs named;
            only where the checkpoint records them (one written before they were is
            taken as it is). Checked before the arrays, whose shapes may follow from them.

    Returns:
        ``(genomes, arrays, meta)``.

    Raises:
        FoolError: Missing, corrupt, or written for another configuration.
    """
    files, meta = _read(path)
    for key, value in expect.items():
        if meta.get(key) != value:
            raise _another_run(path, key, meta.get(key), value)
    for key, value in (settings or {}).items():
        recorded = meta.get(key)
        if recorded is None:
            continue
        if not isinstance(recorded, dict):
            raise FoolError(f"corrupt checkpoint {path} ({key} is not an object); left untouched")
        for name in sorted(set(recorded) | set(value)):
            if recorded.get(name) != value.get(name):
                raise _another_run(path, f"{key}.{name}", recorded.get(name), value.get(name))
    specs, treedef = jax.tree_util.tree_flatten(template)
    leaves = []
    for i, spec in enumerate(specs):
        arr = files.get(f"genome_{i}")
        if arr is None or arr.shape != tuple(spec.shape) or arr.dtype != spec.dtype:
            raise FoolError(f"corrupt checkpoint {path} (genome array {i}); left untouched")
        leaves.append(arr)
    arrays = {k.removeprefix("state_"): v for k, v in files.items() if k.startswith("state_")}
    state = state or {}
    # A checkpoint without them resumed into a KeyError traceback instead of this line.
    lost = [name for name in state if name not in arrays]
    generation = meta.get("generation")
    if state and (type(generation) is not int or generation < 0):
        lost.append("generation")
    if lost:
        raise FoolError(f"corrupt checkpoint {path} (no {', '.join(lost)}); left untouched")
    for name, spec in state.items():
        # Of another shape, a state array resumed into an IndexError or TypeError
        # traceback, or (a shorter fitness, a smaller best image) into a quietly wrong run.
        arr = arrays[name]
        if arr.shape != tuple(spec.shape) or not np.can_cast(arr.dtype, spec.dtype, "same_kind"):
            raise FoolError(
                f"corrupt checkpoint {path} ({name} is {arr.dtype}{list(arr.shape)}, "
                f"this run needs {np.dtype(spec.dtype)}{list(spec.shape)}); left untouched"
            )
        arrays[name] = arr.astype(spec.dtype, copy=False)
    return jax.tree_util.tree_unflatten(treedef, leaves), arrays, meta


def _another_run(path: Path, key: str, saved: Any, mine: Any) -> FoolError:
    """The refusal of a checkpoint whose ``key`` is ``saved`` where this run has ``mine``."""
    return FoolError(
        f"checkpoint {path} belongs to another run ({key} = {_shown(saved)}, this run has "
        f"{_shown(mine)}); resume it with its own settings, or use another --out"
    )


def _shown(value: Any, most: int = 8) -> str:
    """``repr(value)``, a list of more than ``most`` items cut to its ends and length.

    A MAP-Elites run's classes may be 1000 indices: an error line is not the place for them.
    """
    if isinstance(value, list) and len(value) > most:
        ends = [repr(v) for v in value[:3]] + ["...", repr(value[-1])]
        return f"[{', '.join(ends)}] ({len(value)} items)"
    return repr(value)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The meta blob of the checkpoint at ``path`` (configuration, generation, ...).

    Raises:
        FoolError: Missing or corrupt (the file is left untouched).
    """
    return _read(path, arrays=False)[1]


def _read(
    path: str | os.PathLike[str], arrays: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays but the meta (none unless ``arrays``), and the meta, of a checkpoint.

    An ``.npz`` reads its members on access, so the meta alone reads one small member.
    """
    if not Path(path).is_file():
        raise FoolError(f"no checkpoint to resume from: {path}")
    try:
        wanted = _members(path, arrays)
        with np.load(path, allow_pickle=False) as data:
            files = {k: data[k] for k in wanted}
        meta = json.loads(files.pop("meta").tobytes().decode())
        if not isinstance(meta, dict):
            raise ValueError("meta is not an object")
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
        MemoryError,  # an array header declaring terabytes: numpy allocates before reading
        RecursionError,  # a meta of deeply nested JSON lists
    ) as e:
        raise FoolError(f"corrupt checkpoint {path} ({type(e).__name__}); left untouched") from None
    if meta.get("format") != FORMAT:
        raise FoolError(
            f"checkpoint {path} has format {_shown(meta.get('format'))[:40]}, expected {FORMAT}"
        )
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, types) or isinstance(value, bool)):
            raise FoolError(
                f"corrupt checkpoint {path} ({key} is a {type(value).__name__}); left untouched"
            )
    return files, meta


def _members(path: str | os.PathLike[str], arrays: bool) -> list[str]:
    """The ``.npy`` members :func:`_read` loads (by array name), each checked first.

    Only the names :func:`save` writes; each stored uncompressed (``np.savez``) and
    holding the data its header declares. numpy allocates a member's declared shape before
    reading it, and a 1 KB bzip2 member declared, and held, a gigabyte.

    Raises:
        ValueError: A member that is compressed, or declares more than it holds.
        zipfile.BadZipFile: Not a zip archive (an ``.npy`` under the name loaded as an
            array, and failed as a traceback).
    """
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
        names = [
            n for n in infos if n == "meta" or (arrays and n.startswith(("genome_", "state_")))
        ]
        if "meta" not in names:
            raise KeyError("meta")
        for name in names:
            info = infos[name]
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                raise ValueError(f"member {name} is compressed or larger than the file")
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                read = _HEADERS.get(version)
                if read is None:
                    raise ValueError(f"member {name} has .npy format {version}")
                shape, _, dtype = read(member)
                need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if need > info.file_size or (name == "meta" and need > MAX_META_BYTES):
                    raise ValueError(f"member {name} declares {need} bytes")
    return names


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint file is present."""
    return Path(path).is_file()
