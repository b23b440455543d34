"""fooltools: adversarial perturbations and fooling images in JAX.

The curated public API; everything else is importable from its module. The names are
imported on first use, so that ``import fooltools.<module>`` of a light module (the
``fool`` script's :mod:`fooltools.hugepages`) does not import jax first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fooltools.errors import FoolError
    from fooltools.io import read_image, sample_path, write_png
    from fooltools.models import Classifier, list_models, load_model

_HOME = {
    "FoolError": "fooltools.errors",
    "read_image": "fooltools.io",
    "sample_path": "fooltools.io",
    "write_png": "fooltools.io",
    "Classifier": "fooltools.models",
    "list_models": "fooltools.models",
    "load_model": "fooltools.models",
}

__all__ = [
    "Classifier",
    "FoolError",
    "__version__",
    "list_models",
    "load_model",
    "read_image",
    "sample_path",
    "write_png",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fooltools' has no attribute {name!r}")
