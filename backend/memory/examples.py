"""Reviewed examples: what the memory keeps per reviewed task, which controls learn, and the arrays the
scoring reads. Plain data and numpy; no torch.

An example is one task's latest submitted annotation: the task's image (its bytes' SHA-256 and CLIP's global
embedding, float16) and, per learning control, the reviewer's labels and TagCLIP's scores of that image for
the control's classes. Each control's part carries a fingerprint of what TagCLIP's scores depend on (weights,
background words, the control's labels and prompts): after a label config change, examples made under the
old classes no longer match and are left out until `tagclip learn` rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..annotations import tags_of
from ..converters import ControlPlan
from ..labelconfig import PredictionPlan
from .scoring import Memory

# Control tags whose annotations are whole-image labels the memory learns from.
LEARNING_TAGS = ("Choices", "Taxonomy")
# Hex digits of a control fingerprint.
_FINGERPRINT_HEX = 16


def learning_controls(plan: PredictionPlan) -> tuple[ControlPlan, ...]:
    """The controls a project's memory adapts: predicted whole-image controls without an absolute threshold (a
    control's own `model_score_threshold`, or extra_params.threshold, keeps TagCLIP's scores and that threshold),
    on the image the first of them labels (an example holds one image's embedding)."""
    candidates = [c for c in plan.controls if c.tag in LEARNING_TAGS and c.threshold is None]
    return tuple(c for c in candidates if c.data_key == candidates[0].data_key) if candidates else ()


def control_fingerprint(model_key: str, background: str, name: str, labels: Sequence[str], prompts: Sequence) -> str:
    """What a control's TagCLIP scores depend on: weights, background words, its labels and their prompts."""
    material = json.dumps([model_key, background, name, list(labels), [list(p) for p in prompts]])
    return hashlib.sha256(material.encode()).hexdigest()[:_FINGERPRINT_HEX]


def plan_fingerprint(model_key: str, background: str, control: ControlPlan) -> str:
    return control_fingerprint(
        model_key, background, control.name, control.labels, [c.prompts for c in control.classes]
    )


@dataclass(frozen=True)
class ControlReview:
    """One control of a reviewed example."""

    fingerprint: str  # control_fingerprint of the classes the scores were computed for
    labels: tuple[str, ...]  # the control's labels (the columns of `scores`)
    positive: tuple[str, ...]  # what the reviewer chose
    scores: tuple[float, ...]  # TagCLIP's score of each label for this image

    def to_json(self) -> dict[str, Any]:
        return {
            "fp": self.fingerprint,
            "labels": list(self.labels),
            "positive": list(self.positive),
            "scores": list(self.scores),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ControlReview:
        return cls(
            str(data["fp"]),
            tuple(str(x) for x in data["labels"]),
            tuple(str(x) for x in data["positive"]),
            tuple(float(x) for x in data["scores"]),
        )


@dataclass(frozen=True)
class Example:
    """One reviewed task in the memory."""

    task: int
    annotation: int  # the annotation it was made from (deleting it removes the example)
    updated_at: str  # that annotation's updated_at (a newer one replaces the example)
    image: str  # SHA-256 of the image bytes
    embedding: np.ndarray = field(repr=False)  # [D] float16, L2-normalised in float32
    controls: Mapping[str, ControlReview] = field(default_factory=dict)

    def meta_json(self) -> str:
        """Everything but the embedding, as JSON (stores keep the vector as raw float16 bytes)."""
        return json.dumps(
            {
                "task": self.task,
                "annotation": self.annotation,
                "updated_at": self.updated_at,
                "image": self.image,
                "controls": {name: review.to_json() for name, review in self.controls.items()},
            },
            sort_keys=True,
        )

    def vector_bytes(self) -> bytes:
        return np.asarray(self.embedding, dtype="<f2").tobytes()

    @classmethod
    def from_stored(cls, meta: str | bytes, vector: bytes) -> Example:
        data = json.loads(meta)
        return cls(
            task=int(data["task"]),
            annotation=int(data["annotation"]),
            updated_at=str(data["updated_at"]),
            image=str(data["image"]),
            embedding=np.frombuffer(vector, dtype="<f2").copy(),
            controls={name: ControlReview.from_json(r) for name, r in data["controls"].items()},
        )

    def same_review(self, other: Example) -> bool:
        """True when `other` stores the same annotation state and classes (putting it again changes nothing)."""
        return (
            self.annotation == other.annotation
            and self.updated_at == other.updated_at
            and {n: (r.fingerprint, r.positive) for n, r in self.controls.items()}
            == {n: (r.fingerprint, r.positive) for n, r in other.controls.items()}
        )


def newer(candidate: Example, current: Example | None) -> bool:
    """The latest submitted annotation wins: `candidate` replaces `current` unless current is newer."""
    if current is None:
        return True
    return (candidate.updated_at, candidate.annotation) >= (current.updated_at, current.annotation)


def reviewed_labels(result: Iterable[Mapping[str, Any]], controls: Sequence[ControlPlan]) -> dict[str, tuple[str, ...]]:
    """The labels an annotation's result gives each control, restricted to the control's labels (a label removed
    from the config since is dropped). A control the annotation leaves empty counts as "none of these"."""
    tags = tags_of([r for r in result if isinstance(r, Mapping)], controls)
    return {c.name: tuple(label for label in c.labels if label in tags[c.name]) for c in controls}


def memory_arrays(examples: Sequence[Example], control: str, fingerprint: str | None, labels: Sequence[str]) -> Memory:
    """The arrays of one control's memory: the examples whose part for `control` has `fingerprint` (None: whose
    labels are `labels`, whatever the weights and prompts were), in order."""
    labels = tuple(labels)
    rows = [
        e
        for e in examples
        if (r := e.controls.get(control)) is not None
        and (r.fingerprint == fingerprint if fingerprint is not None else r.labels == labels)
    ]
    dims = len(rows[0].embedding) if rows else 0
    embeddings = np.zeros((len(rows), dims), dtype=np.float32)
    truth = np.zeros((len(rows), len(labels)), dtype=bool)
    scores = np.zeros((len(rows), len(labels)), dtype=np.float32)
    for i, example in enumerate(rows):
        review = example.controls[control]
        embeddings[i] = example.embedding.astype(np.float32)
        by_label = dict(zip(review.labels, review.scores, strict=True))
        positive = set(review.positive)
        for j, label in enumerate(labels):
            truth[i, j] = label in positive
            scores[i, j] = by_label.get(label, 0.0)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings = np.divide(embeddings, norms, out=embeddings, where=norms > 0)  # undo float16 rounding of the norm
    return Memory(embeddings, truth, scores, np.array([e.task for e in rows], dtype=np.int64))
