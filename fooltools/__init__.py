"""fooltools: adversarial perturbations and fooling images in JAX.

The curated public API; everything else is importable from its module.
"""

__version__ = "0.1.0"

from fooltools.errors import FoolError  # noqa: E402
from fooltools.io import read_image, sample_path, write_png  # noqa: E402
from fooltools.models import Classifier, list_models, load_model  # noqa: E402

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
