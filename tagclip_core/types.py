"""Plain data that crosses the public API: class specs in, per-image predictions out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ClassListError


@dataclass(frozen=True)
class ClassSpec:
    """One class the user wants tagged. It scores the max over its prompts (each a class name/synonym)."""

    label: str
    prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.label.strip():
            raise ClassListError(f"class label must be non-empty, got {self.label!r}")
        if not self.prompts:
            object.__setattr__(self, "prompts", (self.label,))
        if any(not p.strip() for p in self.prompts):
            raise ClassListError(f"class {self.label!r} has an empty prompt: {self.prompts!r}")


def as_class_specs(classes: Iterable[str | ClassSpec]) -> tuple[ClassSpec, ...]:
    """Normalise strings and ClassSpecs to a tuple of ClassSpecs; refuse empty or duplicate labels."""
    specs = tuple(c if isinstance(c, ClassSpec) else ClassSpec(str(c)) for c in classes)
    if not specs:
        raise ClassListError("the class list is empty")
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ClassListError(f"duplicate class labels: {duplicates}")
    return specs


@dataclass(frozen=True)
class ImagePrediction:
    """TagCLIP's output for one image.

    scores: final per-class scores [C] (float32), in the order of `labels`.
    tags: labels passing the tag rule (relative threshold, argmax fallback), in label order.
    candidates: labels that went through class-wise re-identification (CWR), in label order.
    patch_scores: refined per-class patch scores [C, grid_h, grid_w] (float32), the DMAR output the
        masks feature builds on (max over a class's prompts).
    input_size: (height, width) of the tensor the model saw, a multiple of the patch size.
    original_size: (height, width) of the image after EXIF orientation.
    """

    labels: tuple[str, ...]
    scores: np.ndarray
    tags: tuple[str, ...]
    candidates: tuple[str, ...]
    patch_scores: np.ndarray
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def score_dict(self) -> dict[str, float]:
        return {label: float(s) for label, s in zip(self.labels, self.scores, strict=True)}


def labels_of(specs: Sequence[ClassSpec]) -> tuple[str, ...]:
    return tuple(s.label for s in specs)
