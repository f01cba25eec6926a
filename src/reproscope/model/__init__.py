"""Paper models, written from the papers. Importing this package registers them all."""

from . import vit  # noqa: F401  (registers models)
from .layers import DyT, norm_factory
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["DyT", "norm_factory", "create_model", "list_models", "model_info", "register_model", "ModelInfo"]
