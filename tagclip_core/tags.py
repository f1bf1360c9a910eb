"""The tag rule: which classes an image's score vector reports as tags.

A class is a tag when its score > min + rel * (max - min) over that image's scores; when no class
passes (all scores equal), the argmax (first maximum) is the tag. The reference computes the threshold in
torch float32 on float32 scores (`classify`, when saving labels), and the comparison is exact, so the
arithmetic here is float32 too: in float64, scores (0.65, 0.95, 0.35) at rel 0.5 would tag 0.65 as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def relative_threshold(scores: np.ndarray, rel: float) -> np.ndarray:
    """min + rel * (max - min) over the last axis, in float32.

    scores: [C] or [N, C]. Returns a float32 array of shape [] or [N, 1] (broadcastable to scores).
    """
    values = _as_float32_scores(scores)
    low = values.min(axis=-1, keepdims=values.ndim > 1)
    high = values.max(axis=-1, keepdims=values.ndim > 1)
    return low + np.float32(_check_rel(rel)) * (high - low)


def relative_tags(scores: np.ndarray, rel: float, argmax_fallback: bool = True) -> np.ndarray:
    """Boolean tag mask: score > min + rel * (max - min), per row; the argmax where a row has none.

    scores: [C] or [N, C]. Returns bool of the same shape. With argmax_fallback=False rows may be empty,
    which is what the reference's F1 (`compute_F1`) evaluates.
    """
    values = _as_float32_scores(scores)
    mask = values > relative_threshold(values, rel)
    if not argmax_fallback:
        return mask
    rows = mask.reshape(-1, mask.shape[-1])
    empty = ~rows.any(axis=-1)
    rows[empty, values.reshape(rows.shape).argmax(axis=-1)[empty]] = True
    return rows.reshape(mask.shape)


def tag_labels(labels: Sequence[str], scores: np.ndarray, rel: float) -> tuple[str, ...]:
    """The labels of one image's tags, in label order. scores: [C] aligned with labels."""
    mask = relative_tags(scores, rel)
    if mask.ndim != 1:
        raise ValueError(f"tag_labels takes one image's scores [C], got shape {mask.shape}")
    if len(labels) != mask.shape[0]:
        raise ValueError(f"{len(labels)} labels for {mask.shape[0]} scores")
    return tuple(label for label, tagged in zip(labels, mask, strict=True) if tagged)


def _as_float32_scores(scores: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float32)
    if values.ndim not in (1, 2) or values.shape[-1] == 0:
        raise ValueError(f"scores must be [C] or [N, C] with C >= 1, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"scores must be finite, got {values[~np.isfinite(values)][:5].tolist()}")
    return values


def _check_rel(rel: float) -> float:
    if not 0.0 <= rel <= 1.0:
        raise ValueError(f"relative threshold must be in [0, 1], got {rel!r}")
    return rel
