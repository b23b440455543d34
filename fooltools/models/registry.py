"""Model registry: name -> metadata and a loader returning a :class:`Classifier`.

Families register themselves on import (see ``fooltools/models/__init__.py``). Loaded
models are memoised per process; converted weights are cached on disk by
:mod:`fooltools.cache`.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from fooltools.errors import ModelError
from fooltools.models.base import Classifier, ModelInfo

DEFAULT_MODEL = "efficientnet_lite0.in1k"

Loader = Callable[[ModelInfo, "str | os.PathLike[str] | None"], Classifier]

_REGISTRY: dict[str, tuple[ModelInfo, Loader, Callable[[], bool]]] = {}


def register(info: ModelInfo, loader: Loader, installed: Callable[[], bool]) -> None:
    """Add a model to the registry.

    Args:
        info: Its metadata; ``info.name`` is the key.
        loader: ``loader(info, weights_path_or_None) -> Classifier``.
        installed: Whether the default weights are present without any download.
    """
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} registered twice")
    _REGISTRY[info.name] = (info, loader, installed)


def list_models() -> list[tuple[ModelInfo, bool]]:
    """All registered models with whether their weights are installed, sorted by name."""
    return [(info, installed()) for _, (info, _, installed) in sorted(_REGISTRY.items())]


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model.

    Raises:
        ModelError: Unknown name; the message suggests the closest registered names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name][0]
    # Accept the family name alone ("efficientnet_lite0") when it is unambiguous.
    prefixed = [key for key in _REGISTRY if key.split(".")[0] == name]
    if len(prefixed) == 1:
        return _REGISTRY[prefixed[0]][0]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (`fool models` lists them)")


def load_model(
    name: str = DEFAULT_MODEL, weights: str | os.PathLike[str] | None = None
) -> Classifier:
    """Load a registered classifier with its weights.

    Args:
        name: Registry key (``fool models`` lists them), or its unambiguous family part.
        weights: Optional path to a weights file in the family's canonical format;
            default: the weights the registry knows where to find.

    Returns:
        The :class:`Classifier`, memoised per (name, weights) within the process.

    Raises:
        ModelError: Unknown model, weights not installed, or weights that do not fit.
    """
    info = model_info(name)
    return _load(info.name, None if weights is None else os.fspath(weights))


@functools.lru_cache(maxsize=8)
def _load(name: str, weights: str | None) -> Classifier:
    info, loader, _ = _REGISTRY[name]
    return loader(info, weights)


def merge_params(template: Any, converted: Mapping[str, Any], *, model: str) -> Any:
    """Check converted weights against the model's parameter shapes, failing loudly.

    Args:
        template: Pytree of ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape`` of init).
        converted: Nested dict of arrays with the same structure.
        model: Name used in the error message.

    Returns:
        ``converted`` as a pytree of float32 numpy arrays with the template's structure.

    Raises:
        ModelError: Listing missing keys, unexpected keys and shape mismatches; or the
            arrays that hold NaN or infinite values (in float32).
    """
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(template)}
    have = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(converted)}
    problems = []
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        extra = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        problems.append(f"unexpected {extra}")
    for key in sorted(set(want) & set(have)):
        if tuple(want[key].shape) != tuple(np.shape(have[key])):
            problems.append(f"{key} has shape {np.shape(have[key])}, expected {want[key].shape}")
    if problems:
        raise ModelError(f"weights do not fit {model}: " + "; ".join(problems[:6]))
    with np.errstate(over="ignore"):  # a value too large for float32 is refused below
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), converted)
    # A NaN weight makes every output NaN: `fool classify` printed "nan%" for each class.
    broken = [
        jax.tree_util.keystr(k)
        for k, v in jax.tree_util.tree_leaves_with_path(params)
        if not np.isfinite(v).all()
    ]
    if broken:
        more = " ..." if len(broken) > 5 else ""
        raise ModelError(
            f"weights for {model} hold NaN or infinite values in {', '.join(broken[:5])}{more}"
        )
    return params
