"""Paper models, written from the papers. Importing this package registers them all."""

from . import convnext, kat, mambaout, vit  # noqa: F401  (registers models)
from .layers import DyT, convert_norm_to_dyt, norm_factory
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["DyT", "convert_norm_to_dyt", "norm_factory", "create_model", "list_models", "model_info", "register_model", "ModelInfo"]
