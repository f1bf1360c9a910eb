"""Deterministic identities: which weights a process runs (`model_key`) and the `model_version` that
/setup reports and every prediction carries.

The same settings and label config give the same version across restarts and machines; a change of
weights, precision, background words, prompts, labels, thresholds or mask settings (mode, minimum region
size, masks on/off: all in the plan's fingerprint), or a new generation of a learning project's memory,
gives a new one, so Label Studio predicts again.
Workers compute the same `model_key` from their own settings and refuse jobs meant for other weights, so
a stored model_version never lies.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .labelconfig import PredictionPlan
from .settings import Settings

# Bump when the converters change what they emit for the same scores.
PREDICTION_FORMAT = 1
# Bump when the masks of the same image and settings change (mask engine defaults, region converters); it
# enters only the versions of plans with region controls, so tag-only projects keep theirs.
MASK_FORMAT = 1
# Bump when the memory of reviewed examples changes what it does to the same scores; it enters only the
# versions of projects that learn (extra_params.learn), with the memory's generation.
MEMORY_FORMAT = 1
# Bytes hashed at each end of a checkpoint file (hashing a whole 600 MB file would slow /setup).
_FINGERPRINT_BYTES = 1 << 20


def checkpoint_fingerprint(path: str) -> str:
    """Content fingerprint of a weights file: its size and its first and last MiB (path-independent)."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            f.seek(-_FINGERPRINT_BYTES, os.SEEK_END)
            digest.update(f.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]


def model_key(settings: Settings) -> str:
    """Identity of the weights and numerics a process runs, from settings alone (no model load)."""
    if settings.checkpoint:
        try:
            weights = "file:" + checkpoint_fingerprint(settings.checkpoint)
        except OSError:
            weights = "missing:" + os.path.basename(settings.checkpoint)
    else:
        weights = "pretrained:" + settings.pretrained
    return f"{settings.model_name}|{weights}|{settings.precision}"


def normalize_background(spec: Any) -> str:
    """A canonical text for a background spec: a set name, or a comma list of words."""
    if spec is None:
        return "none"
    if isinstance(spec, (list, tuple)):
        return ",".join(str(w).strip() for w in spec if str(w).strip())
    text = str(spec).strip()
    if text.lower() in ("voc", "coco", "none", ""):
        return text.lower() or "none"
    return ",".join(w.strip() for w in text.split(",") if w.strip())


def model_version(
    key: str, model_name: str, plan: PredictionPlan, background: str, memory_generation: int | None = None
) -> str:
    """`tagclip-<model>-<12 hex>` from the model key, the plan and the background words; with a project's memory
    of reviewed examples (backend.memory), also its generation. Without one the version is what it always was."""
    parts: list[Any] = [PREDICTION_FORMAT, key, background, plan.fingerprint()]
    if plan.has_masks:
        parts.append(["masks", MASK_FORMAT])
    if memory_generation is not None:
        parts.append(["memory", MEMORY_FORMAT, memory_generation])
    material = json.dumps(parts, sort_keys=True)
    return f"tagclip-{model_name}-{hashlib.sha256(material.encode()).hexdigest()[:12]}"
