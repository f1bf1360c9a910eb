"""What a reviewer submitted: a task's latest submitted annotation and the whole-image labels it holds, per
control. Plain data in, plain data out; the export, the report and the memory of reviewed examples read
annotations through here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .converters import ControlPlan
from .converters.taxonomy import PATH_SEPARATOR

# Result region types that label the whole image.
WHOLE_IMAGE = ("choices", "taxonomy")


def submitted(annotation: Any) -> bool:
    """An annotation that counts as a review: an object that was not cancelled (skipped)."""
    return isinstance(annotation, Mapping) and not annotation.get("was_cancelled")


def annotation_order(annotation: Mapping[str, Any]) -> tuple[str, int]:
    """Sort key: newer updates later, then higher ids."""
    return str(annotation.get("updated_at") or annotation.get("created_at") or ""), int(annotation.get("id") or 0)


def latest_annotation(task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The newest submitted, not cancelled annotation of a task (None if it has none)."""
    annotations = [a for a in task.get("annotations") or [] if submitted(a)]
    if not annotations:
        return None
    return max(annotations, key=annotation_order)


def region_labels(region: Mapping[str, Any]) -> list[str]:
    """The labels a result region holds (taxonomy paths joined)."""
    value = region.get("value") or {}
    kind = str(region.get("type") or "")
    if kind == "taxonomy":
        return [PATH_SEPARATOR.join(str(p) for p in path) for path in value.get("taxonomy") or []]
    return [str(x) for x in value.get(kind) or []]


def tags_of(result: Iterable[Mapping[str, Any]], controls: Sequence[ControlPlan]) -> dict[str, list[str]]:
    """Whole-image labels per control from a result list (controls without any get an empty list)."""
    tags: dict[str, list[str]] = {c.name: [] for c in controls}
    for region in result:
        name = region.get("from_name")
        if name in tags and region.get("type") in WHOLE_IMAGE:
            tags[name] += [label for label in region_labels(region) if label not in tags[name]]
    return tags
