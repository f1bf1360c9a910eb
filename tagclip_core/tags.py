"""The tag rule: which scored classes become tags."""

from __future__ import annotations

import numpy as np


def relative_tags(scores: np.ndarray, rel: float) -> np.ndarray:
    """bool [C]: score > min + rel * (max - min) (float32 arithmetic, as the reference); argmax if none."""
    scores = np.asarray(scores, dtype=np.float32)
    low, high = scores.min(), scores.max()
    keep = scores > low + np.float32(rel) * (high - low)
    if not keep.any():
        keep[int(np.argmax(scores))] = True
    return keep
