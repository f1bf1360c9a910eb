"""Shared work of the converters: threshold and single/multiple from tag attributes, the label map
honouring `predicted_values`, label selection, and region assembly. Converters hold no model."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import LabelConfigError

# Tag attribute that switches a control from TagCLIP's relative rule to an absolute score threshold
# (label-studio-ml's convention).
THRESHOLD_ATTR = "model_score_threshold"
# Choice attribute listing the prompts of a label, comma-separated (label-studio-ml's convention).
PROMPTS_ATTR = "predicted_values"


@dataclass(frozen=True)
class ClassDef:
    """One class of a control: the key the engine scores, its prompts, and what goes into the result.

    label: unique key inside the control (the choice's stored value, or a taxonomy path joined).
    prompts: words the text classifier scores; the label scores the max over them.
    value: what the region stores: a choice value, or a taxonomy path (list of node values).
    """

    label: str
    prompts: tuple[str, ...]
    value: tuple[str, ...]


@dataclass(frozen=True)
class ControlPlan:
    """A control we predict: where its image comes from, its classes, and how labels are selected."""

    tag: str  # "Choices", "Taxonomy"
    name: str  # from_name
    to_name: str  # the Image object's name
    data_key: str  # task["data"] key holding the image reference
    classes: tuple[ClassDef, ...]
    single: bool  # keep only the top label
    threshold: float | None  # absolute score threshold; None = TagCLIP's relative rule

    @property
    def labels(self) -> tuple[str, ...]:
        """The classes' labels (the keys scores and annotations use), in config order."""
        return tuple(c.label for c in self.classes)

    def to_payload(self) -> dict[str, Any]:
        """Plain JSON for the job: what the worker needs, nothing about Label Studio."""
        return {
            "name": self.name,
            "data_key": self.data_key,
            "classes": [{"label": c.label, "prompts": list(c.prompts)} for c in self.classes],
        }

    def fingerprint(self) -> list[Any]:
        """Everything that changes this control's predictions, for the model_version hash."""
        return [
            self.tag,
            self.name,
            self.to_name,
            self.data_key,
            self.single,
            self.threshold,
            [[c.label, list(c.prompts), list(c.value)] for c in self.classes],
        ]


@dataclass(frozen=True)
class ControlOutput:
    """The worker's output for one control and one task: scores in class order, and TagCLIP's tags."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    tags: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ControlOutput:
        labels = tuple(str(x) for x in data["labels"])
        scores = tuple(float(x) for x in data["scores"])
        if len(labels) != len(scores):
            raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
        return cls(labels, scores, tuple(str(x) for x in data.get("tags", ())))


class Converter(ABC):
    """Base of the per-tag converters."""

    tag: ClassVar[str]
    result_type: ClassVar[str]

    def match(self, control: Any, image_names: Sequence[str]) -> str | None:
        """None if this converter predicts `control`; otherwise why not (for the log).

        `control` is a label_studio_sdk ControlTag; `image_names` the config's Image objects.
        """
        if control.tag != self.tag:
            return f"{control.tag} is not {self.tag}"
        if str(control.attr.get("perRegion", "")).lower() == "true":
            return f"{self.tag} {control.name!r} is per-region"
        if str(control.attr.get("value", "")).startswith("$"):
            return f"{self.tag} {control.name!r} takes its options from task data ({control.attr['value']})"
        if not any(name in image_names for name in control.to_name):
            return f"{self.tag} {control.name!r} targets {control.to_name}, not an Image"
        return None

    def plan(
        self, control: Any, images: Mapping[str, str], config_xml: str, default_threshold: float | None
    ) -> ControlPlan | str:
        """The prediction plan for a matching control, or why it is not predicted.

        images: Image object name -> task data key.
        """
        return self.read_plan(control, images, config_xml, default_threshold)

    def read_plan(
        self, control: Any, images: Mapping[str, str], config_xml: str, default_threshold: float | None
    ) -> ControlPlan | str:
        """The control as annotations read it (classes, single, threshold), whether or not it is predicted;
        or why it cannot be read (no labels)."""
        to_name = next(name for name in control.to_name if name in images)
        classes = self.classes(control, config_xml)
        if not classes:
            return f"{self.tag} {control.name!r} has no labels"
        counts = Counter(c.label for c in classes)  # linear: label configs may hold thousands of labels
        duplicates = sorted(label for label, n in counts.items() if n > 1)
        if duplicates:
            raise LabelConfigError(f"{self.tag} {control.name!r} has duplicate labels: {duplicates}")
        threshold = parse_threshold(control, default_threshold)
        return ControlPlan(
            tag=self.tag,
            name=control.name,
            to_name=to_name,
            data_key=images[to_name],
            classes=classes,
            single=self.is_single(control),
            threshold=threshold,
        )

    def is_single(self, control: Any) -> bool:
        """Label Studio's default for choice="..." is single."""
        return str(control.attr.get("choice", "single")).lower() != "multiple"

    @abstractmethod
    def classes(self, control: Any, config_xml: str) -> tuple[ClassDef, ...]:
        """The control's classes in config order."""

    @abstractmethod
    def region_value(self, selected: Sequence[ClassDef]) -> dict[str, Any]:
        """The region's `value` for the selected classes."""

    def read_output(self, data: Mapping[str, Any]) -> Any:
        """The worker's plain JSON for this control and one task, read back for `to_regions`."""
        return ControlOutput.from_json(data)

    def to_regions(self, output: ControlOutput, plan: ControlPlan) -> list[dict[str, Any]]:
        """Pure: the result regions for one task (empty when nothing is selected)."""
        selected = select_labels(output, plan)
        if not selected:
            return []
        by_label = {c.label: c for c in plan.classes}
        score = sum(s for _, s in selected) / len(selected)
        return [
            {
                "id": region_id(plan.name),
                "from_name": plan.name,
                "to_name": plan.to_name,
                "type": self.result_type,
                "value": self.region_value([by_label[label] for label, _ in selected]),
                "score": round(score, 6),
            }
        ]


def select_labels(output: ControlOutput, plan: ControlPlan) -> list[tuple[str, float]]:
    """Labels kept for a task, in class order, with their scores (see `choose_labels`)."""
    return choose_labels(output, plan.labels, plan.single, plan.threshold)


def choose_labels(
    output: ControlOutput, classes: Sequence[str], single: bool, threshold: float | None
) -> list[tuple[str, float]]:
    """The rule that picks a control's labels from its scores, in class order, with their scores.

    single: the top label (if it passes the absolute threshold, when one is set);
    threshold set: every label with score >= threshold;
    otherwise: TagCLIP's tags (its relative rule).
    The worker applies the same rule to choose which labels get masks.
    """
    known = set(classes)
    scores = {label: score for label, score in zip(output.labels, output.scores, strict=True) if label in known}
    if not scores:
        return []
    if single:
        best = max(scores, key=lambda label: scores[label])
        if threshold is not None and scores[best] < threshold:
            return []
        return [(best, scores[best])]
    if threshold is not None:
        chosen = {label for label, score in scores.items() if score >= threshold}
    else:
        chosen = {label for label in output.tags if label in scores}
    return [(label, scores[label]) for label in classes if label in chosen]


def parse_threshold(control: Any, default: float | None) -> float | None:
    raw = control.attr.get(THRESHOLD_ATTR)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise LabelConfigError(f"{control.tag} {control.name!r}: {THRESHOLD_ATTR}={raw!r} is not a number") from e
    if not 0.0 <= value <= 1.0:
        raise LabelConfigError(f"{control.tag} {control.name!r}: {THRESHOLD_ATTR}={raw!r} is not in [0, 1]")
    return value


def label_classes(control: Any) -> tuple[ClassDef, ...]:
    """The control's labels in config order; prompts from `predicted_values="a,b"`, else the label's value.

    control.labels holds what results store (a label's alias if it has one, else its value).
    """
    out = []
    for label in control.labels:
        attrs = control.labels_attrs.get(label, {})
        attrs = getattr(attrs, "attr", attrs) or {}
        display = str(attrs.get("value", label))
        out.append(ClassDef(label=label, prompts=parse_prompts(attrs, display), value=(label,)))
    return tuple(out)


def parse_prompts(attrs: Mapping[str, Any], fallback: str) -> tuple[str, ...]:
    """Prompts from `predicted_values="a,b"`, else the choice's display value."""
    raw = attrs.get(PROMPTS_ATTR)
    if raw:
        prompts = tuple(p.strip() for p in str(raw).split(",") if p.strip())
        if prompts:
            return prompts
    return (fallback,)


def region_id(control_name: str) -> str:
    """A stable region id (Label Studio only needs it unique within a prediction)."""
    return hashlib.sha1(control_name.encode()).hexdigest()[:10]


def prediction_score(regions: Sequence[Mapping[str, Any]]) -> float:
    """The prediction's `score` Label Studio sorts on: the mean region score, 0 without regions."""
    scores = [float(r["score"]) for r in regions if r.get("score") is not None]
    return round(sum(scores) / len(scores), 6) if scores else 0.0
