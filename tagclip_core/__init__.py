"""tagclip_core: TagCLIP (AAAI 2024) open-vocabulary multi-label tagging on a frozen CLIP ViT, exact to the
authors' reference implementation and fast. No Label Studio, Flask or RQ code here."""

from .config import EngineConfig, ModelSpec, PreprocessConfig, TagCLIPConfig, TextConfig
from .errors import (
    CheckpointFormatError,
    ClassListError,
    ImageLoadError,
    ImageTooLargeError,
    TagCLIPError,
    UnsupportedModelError,
    WeightsUnavailableError,
)
from .predictor import TagCLIP
from .types import ClassSpec, ImagePrediction

__all__ = [
    "CheckpointFormatError",
    "ClassListError",
    "ClassSpec",
    "EngineConfig",
    "ImageLoadError",
    "ImagePrediction",
    "ImageTooLargeError",
    "ModelSpec",
    "PreprocessConfig",
    "TagCLIP",
    "TagCLIPConfig",
    "TagCLIPError",
    "TextConfig",
    "UnsupportedModelError",
    "WeightsUnavailableError",
]
