"""Exceptions raised by tagclip_core. Messages carry the offending value."""

from __future__ import annotations


class TagCLIPError(Exception):
    """Base class of every error tagclip_core raises on purpose."""


class WeightsUnavailableError(TagCLIPError):
    """The CLIP weights cannot be found locally and cannot be downloaded."""


class CheckpointFormatError(TagCLIPError):
    """A checkpoint file exists but is not a CLIP state dict we understand."""


class UnsupportedModelError(TagCLIPError):
    """The model is not a CLIP vision transformer TagCLIP can run on."""


class ImageLoadError(TagCLIPError):
    """An image cannot be read: missing, empty, corrupt, truncated or unsupported."""


class ImageTooLargeError(ImageLoadError):
    """An image's header claims more pixels than the configured limit (refused before decoding)."""


class ClassListError(TagCLIPError):
    """The class list is empty, has duplicates, or a class has no prompt."""
