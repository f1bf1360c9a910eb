"""Plain data that crosses the public API: class specs in, per-image predictions out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .errors import ClassListError


class MaskMode(str, Enum):
    """How masks are made for an image's tags."""

    # CLIP-ES's CLS-SEG (Grad-CAM + attention affinity), the paper's classify-then-segment, exact to the reference.
    CLIP_ES = "clip-es"
    # TagCLIP's DMAR-refined patch maps, upsampled: no gradients, about 1% of the tagging time.
    COARSE = "coarse"

    def __str__(self) -> str:
        return self.value


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
    embedding: CLIP's global image embedding [E] (L2-normalised float32) when asked for
        (`TagCLIP.predict(..., embeddings=True)`), else None.
    """

    labels: tuple[str, ...]
    scores: np.ndarray
    tags: tuple[str, ...]
    candidates: tuple[str, ...]
    patch_scores: np.ndarray
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    embedding: np.ndarray | None = None

    def score_dict(self) -> dict[str, float]:
        return {label: float(s) for label, s in zip(self.labels, self.scores, strict=True)}


@dataclass(frozen=True)
class PredictionFailure:
    """Why one image of a batch could not be predicted (see `predictor.predict_each`)."""

    error: Exception

    def __str__(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


def labels_of(specs: Sequence[ClassSpec]) -> tuple[str, ...]:
    return tuple(s.label for s in specs)
