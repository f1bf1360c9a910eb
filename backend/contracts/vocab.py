"""The vocabulary build job: plain JSON on the `<queue>-vocab` RQ queue (or embedded mode's builder thread),
enqueued by /setup when it announces a vocabulary, run by `worker.vocab.build_vocabulary`.

    {"schema": 1, "vocabulary": str, "model_key": str, "background": str, "prompts": [str]}

A vocabulary is split into parts of at most PROMPTS_PER_JOB prompts, so a worker returns to /predict jobs between
parts and a killed worker loses at most its part's unsaved column. Each part also builds the background words'
columns (cached after the first part). The result is plain JSON too:

    {"schema": 1, "vocabulary": str, "worker": str, "built": int, "cached": int, "seconds": float}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PayloadError

SCHEMA = 1
# The job function, by dotted path (the web process never imports it).
JOB_FUNCTION = "worker.vocab.build_vocabulary"
# Prompts per job: on a 2-core CPU about 1 s each with the ViT-B/16 text tower (3.5 s when the CPU is shared), so
# a part with the 25 background words is done in about a minute, well within JOB_TIMEOUT's default 300 s, and a
# /predict job waits at most that long behind it; on a GPU a part takes well under a second.
PROMPTS_PER_JOB = 32


@dataclass(frozen=True)
class VocabularyPart:
    """Some prompts of one vocabulary, for the worker to build and save."""

    vocabulary: str  # vocabulary_id of the whole vocabulary
    model_key: str
    background: str  # the canonical background words, as /predict payloads carry them
    prompts: tuple[str, ...]


def vocabulary_prompts(classes_prompts: Iterable[Sequence[str]]) -> list[str]:
    """Every prompt of every class, deduplicated, in order."""
    return list(dict.fromkeys(prompt for prompts in classes_prompts for prompt in prompts))


def vocabulary_id(model_key: str, background: str, prompts: Sequence[str]) -> str:
    """What names a vocabulary across processes: the weights, the background words and the prompts."""
    digest = hashlib.sha256(json.dumps([model_key, background, list(prompts)]).encode())
    return digest.hexdigest()[:32]


def build_payloads(
    model_key: str, background: str, prompts: Sequence[str], per_job: int = PROMPTS_PER_JOB
) -> list[dict[str, Any]]:
    """The jobs that build a vocabulary, PROMPTS_PER_JOB prompts each."""
    vocabulary = vocabulary_id(model_key, background, prompts)
    return [
        {
            "schema": SCHEMA,
            "vocabulary": vocabulary,
            "model_key": model_key,
            "background": background,
            "prompts": list(prompts[start : start + per_job]),
        }
        for start in range(0, len(prompts), per_job)
    ]


def parse_payload(payload: Any) -> VocabularyPart:
    if not isinstance(payload, Mapping):
        raise PayloadError(f"vocabulary payload must be an object, got {type(payload).__name__}")
    if payload.get("schema") != SCHEMA:
        raise PayloadError(f"vocabulary payload schema {payload.get('schema')!r} is not {SCHEMA} (version skew)")
    prompts = payload.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p for p in prompts):
        raise PayloadError("vocabulary payload prompts must be a list of non-empty strings")
    fields = {name: payload.get(name) for name in ("vocabulary", "model_key", "background")}
    for name, value in fields.items():
        if not isinstance(value, str):
            raise PayloadError(f"vocabulary payload {name} must be a string, got {value!r}")
    return VocabularyPart(prompts=tuple(prompts), **fields)
