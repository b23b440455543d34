"""Model registry and the ported families; importing this registers them all."""

from fooltools.models import efficientnet_lite  # noqa: F401  (registers the family)
from fooltools.models.base import Classifier, ModelInfo
from fooltools.models.registry import (
    DEFAULT_MODEL,
    list_models,
    load_model,
    model_info,
    register,
)

__all__ = [
    "DEFAULT_MODEL",
    "Classifier",
    "ModelInfo",
    "list_models",
    "load_model",
    "model_info",
    "register",
]
