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
from pathlib import Path
from typing import Any

from tagclip_core.weights import cache_dir_or_default, file_sha256

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


def checkpoint_fingerprint(path: str, cache_dir: str | None = None) -> str:
    """Content fingerprint of a weights file: the SHA-256 of the whole file (path-independent). Hashed once and
    remembered in the cache dir by path, size and modification time (tagclip_core.weights)."""
    return file_sha256(Path(path), cache_dir_or_default(cache_dir))[:16]


def model_key(settings: Settings) -> str:
    """Identity of the weights and numerics a process runs, from settings alone (no model load)."""
    if settings.checkpoint:
        try:
            weights = "file:" + checkpoint_fingerprint(settings.checkpoint, settings.cache_dir)
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
