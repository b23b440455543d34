"""On-disk caches: converted model params and JAX's persistent compilation cache.

Everything lives under :func:`cache_dir` (``$FOOLTOOLS_CACHE_DIR``, else
``$XDG_CACHE_HOME/fooltools``, else ``~/.cache/fooltools``). Cached params are plain
``.npz`` files read with ``allow_pickle=False``: a cache file can be corrupt or stale but
can never execute code, and anything that does not match the expected structure is
rebuilt rather than trusted.

Both caches are best effort: a cache dir that cannot be made or written (a read-only file
system, a parent that is a file) only costs the next process the conversion and the
compile time, never a failed command.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

SEP = "/"
STALE_TEMP_SECONDS = 3600.0  # a params entry takes seconds to write: older temps are leftovers
# How JAX's warning that it could not store a compiled program begins.
_CACHE_WRITE_WARNING = "Error writing persistent compilation cache entry"


def cache_dir() -> Path:
    """The root of fooltools' caches (not created here)."""
    if os.environ.get("FOOLTOOLS_CACHE_DIR"):
        return Path(os.environ["FOOLTOOLS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fooltools"


def file_digest(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the SHA-256 of a file, to key caches on weight contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}{SEP}"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save_params(path: Path, params: dict[str, Any]) -> None:
    """Write a nested dict of arrays to ``path`` (.npz) atomically, if the cache allows.

    A temp file in the same directory is renamed over ``path``, so a killed process
    never leaves a half-written cache entry under the final name. An ``OSError`` (the
    directory cannot be made or written, the disk is full) leaves no entry and is not
    raised: the next load converts the weights again.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **_flatten(params))
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale_temps(path: Path, age: float = STALE_TEMP_SECONDS) -> None:
    """Delete temp files of ``path``'s entry older than ``age`` seconds.

    A process killed while writing an entry (SIGKILL, an OOM kill) leaves its temp file,
    tens of MB for a model's params, and nothing else removes it. A younger one may be
    another process's entry in the making: it is left alone.
    """
    now = time.time()
    for tmp in path.parent.glob(f"{glob.escape(path.name)}*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if now - tmp.stat().st_mtime > age:
                tmp.unlink()


def load_params(path: Path, template: Any) -> dict[str, Any] | None:
    """Read params cached by :func:`save_params` if they match ``template`` exactly.

    Args:
        path: The ``.npz`` file.
        template: Pytree of objects with ``.shape`` (e.g. ``jax.ShapeDtypeStruct``).

    Returns:
        The nested dict of float32 arrays, or None when the file is missing, unreadable,
        or differs from the template in keys, shapes or dtype, or holds non-finite values.
    """
    want = _flatten(jax.tree_util.tree_map(lambda s: np.empty(0), template))
    shapes = _flatten(jax.tree_util.tree_map(lambda s: np.array(s.shape), template))
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != set(want):
                return None
            flat = {k: data[k] for k in data.files}
    # MemoryError: numpy allocates a member's declared shape before reading it, so a
    # corrupt header declaring terabytes fails there; the entry is rebuilt like any other.
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, MemoryError):
        return None
    for key, arr in flat.items():
        if arr.dtype != np.float32 or arr.shape != tuple(shapes[key]):
            return None
        if not np.isfinite(arr).all():
            return None
    return _unflatten(flat)


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache under :func:`cache_dir`.

    The second ``fool`` invocation on the same shapes then loads compiled executables
    instead of recompiling (seconds saved per model/shape). A cache that exists but
    cannot be written is still read, and JAX's warnings that it could not store a
    program there are silenced.

    JAX's cache keys include the cache's own path (the compile options name a directory
    under it), so a cache copied or moved elsewhere misses every program: it fills again.
    """
    path = cache_dir() / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only home only costs compile time
    if not os.access(path, os.W_OK):
        # JAX still loads the programs stored there, but warns for every program it
        # compiles anew that it could not store it: dozens of lines per command.
        warnings.filterwarnings("ignore", message=_CACHE_WRITE_WARNING, category=UserWarning)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every executable, however quick to compile: a `fool` run also compiles dozens of
    # eager ops (~50 ms each on CPU) that a 0.5 s floor never stored. `fool classify`'s
    # second run: 4.9 -> 3.8 s; the test suite's compile time: 996 -> 914 s.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
