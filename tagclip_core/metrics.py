"""Multi-label metrics as the TagCLIP reference computes them (`compute_AP`, `compute_F1` in its utils.py).

Positives are labels > 0 throughout (the reference's AP clamps labels to [0, 1] and counts the ones, its
F1 takes labels != 0; both agree on 0/1 labels, the only kind it feeds them).

Where we differ, deliberately and only in corner cases:
- Ties in a class's scores are ranked by image index (stable sort); torch's sort leaves their order
  unspecified, so tied scores may give a slightly different AP.
- Arithmetic is float64; the reference accumulates precision in float32 (agreement to ~1e-6).
- F1 is 0 when precision + recall is 0; the reference gives NaN (0 / 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tags import relative_tags

# The reference's guard against empty denominators in precision and recall.
_F1_EPS = 1e-9


@dataclass(frozen=True)
class OverallF1:
    """Precision, recall and F1 pooled over every (image, class) pair ("overall" mode of compute_F1)."""

    f1: float
    precision: float
    recall: float
    # Pooled counts behind precision and recall.
    true_positives: int
    false_positives: int
    false_negatives: int


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class AP, float64 [C]; NaN for a class with no positive image.

    scores, labels: [N, C]. Per class: rank the images by score, descending; precision at rank k is
    (positives in the top k) / k; AP = sum of the precisions at the positives' ranks / number of
    positives. Example (one class): scores (0.9, 0.6, 0.3) with labels (1, 0, 1) rank the positives 1st
    and 3rd: AP = (1/1 + 2/3) / 2 = 5/6.
    """
    values, positives = _check_pair(scores, labels)
    order = np.argsort(-values, axis=0, kind="stable")
    hits = np.take_along_axis(positives, order, axis=0)
    ranks = np.arange(1, values.shape[0] + 1, dtype=np.float64)[:, None]
    precision_at_rank = np.cumsum(hits, axis=0, dtype=np.float64) / ranks
    num_positive = hits.sum(axis=0)
    precision_sum = (precision_at_rank * hits).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_positive > 0, precision_sum / num_positive, np.nan)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, skip_empty: bool = True) -> float:
    """mAP over classes. scores, labels: [N, C].

    skip_empty=True: the mean over classes that have at least one positive image (the usual definition).
    skip_empty=False: classes without positives count as AP 0, which is what the reference prints
    (`torch.mean(compute_AP(...))`: its AP tensor keeps 0 for those classes). On VOC and COCO every
    class has positives and the two agree.
    """
    ap = average_precision(scores, labels)
    if not skip_empty:
        return float(np.nan_to_num(ap, nan=0.0).mean())
    if np.isnan(ap).all():
        raise ValueError(f"no class has a positive label (labels of shape {np.shape(labels)})")
    return float(np.nanmean(ap))


def f1_at_relative_threshold(
    scores: np.ndarray, labels: np.ndarray, rel: float = 0.5, argmax_fallback: bool = False
) -> OverallF1:
    """Overall precision, recall and F1 of the relative-threshold tags. scores, labels: [N, C].

    Predicted tags: score > min + rel * (max - min) per image, in float32 (`tagclip_core.tags`). With
    argmax_fallback=False (default) this is the reference's compute_F1(..., 'overall', rel,
    use_relative=True), which gives an image whose scores are all equal no tag; True evaluates the tags
    the engine reports (argmax when none passes). P = TP / (TP + FP + 1e-9), R = TP / (TP + FN + 1e-9),
    F1 = 2PR / (P + R), with TP, FP, FN counted over all (image, class) pairs.
    """
    values, positives = _check_pair(scores, labels)
    predicted = relative_tags(values, rel, argmax_fallback=argmax_fallback)
    true_positives = int((predicted & positives).sum())
    false_positives = int((predicted & ~positives).sum())
    false_negatives = int((~predicted & positives).sum())
    precision = true_positives / (true_positives + false_positives + _F1_EPS)
    recall = true_positives / (true_positives + false_negatives + _F1_EPS)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return OverallF1(f1, precision, recall, true_positives, false_positives, false_negatives)


def _check_pair(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 [N, C] (exact for float32 input) and positives as bool [N, C]."""
    values = np.asarray(scores)
    label_values = np.asarray(labels)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"scores must be [N, C] with N, C >= 1, got shape {values.shape}")
    if label_values.shape != values.shape:
        raise ValueError(f"labels of shape {label_values.shape} do not match scores of shape {values.shape}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"scores must be finite, got {values[~np.isfinite(values)][:5].tolist()}")
    return values, label_values > 0
