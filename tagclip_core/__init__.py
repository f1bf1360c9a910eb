"""tagclip_core: TagCLIP (AAAI 2024) open-vocabulary multi-label tagging on a frozen CLIP ViT, exact to the
authors' reference implementation and fast. No Label Studio, Flask or RQ code here.

The package imports lazily (PEP 562): `import tagclip_core` costs nothing, and the torch-free modules
(`tags`, `metrics`, `geometry`, `types`, `errors`) can be used by processes without torch. The public names
below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS = {
    "EngineConfig": "config",
    "ModelSpec": "config",
    "PreprocessConfig": "config",
    "TagCLIPConfig": "config",
    "TextConfig": "config",
    "CheckpointFormatError": "errors",
    "ClassListError": "errors",
    "ImageLoadError": "errors",
    "ImageTooLargeError": "errors",
    "TagCLIPError": "errors",
    "UnsupportedModelError": "errors",
    "WeightsUnavailableError": "errors",
    "TagCLIP": "predictor",
    "ClassSpec": "types",
    "ImagePrediction": "types",
    "MaskMode": "types",
    "PredictionFailure": "types",
}

__all__ = [
    "CheckpointFormatError",
    "ClassListError",
    "ClassSpec",
    "EngineConfig",
    "ImageLoadError",
    "ImagePrediction",
    "ImageTooLargeError",
    "MaskMode",
    "ModelSpec",
    "PredictionFailure",
    "PreprocessConfig",
    "TagCLIP",
    "TagCLIPConfig",
    "TagCLIPError",
    "TextConfig",
    "UnsupportedModelError",
    "WeightsUnavailableError",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tagclip_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
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
    from .types import ClassSpec, ImagePrediction, MaskMode, PredictionFailure
