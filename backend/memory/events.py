"""Label Studio 1.23's /webhook bodies -> what the memory should look at again. Pure functions of plain data.

What Label Studio sends (measured, docs/learning.md): the project webhook it creates with the ML backend sends
every action, without auth headers:
    {"action": "ANNOTATION_CREATED" | "ANNOTATION_UPDATED", "annotation": {...}, "task": {...}, "project": {...}}
    {"action": "ANNOTATIONS_CREATED", "annotation": [{...}], "task": [{...}], "project": {...}}
    {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": n}], "project": {...}}
    {"action": "TASKS_DELETED", "tasks": [{"id": n}], "project": {...}}
and the ML backend's train call (the "Start Training" button, and every annotation save while the project's
"Start model training after any annotations are submitted or updated" switch is on) posts, with the ML
backend's own auth:
    {"action": "START_TRAINING", "project": {...}}

An event only names tasks and annotations: the learning job reads each task back from Label Studio and learns
what is there (the task's latest submitted annotation), so an event that arrives late, twice or forged changes
nothing Label Studio does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


class EventKind(str, Enum):
    """What an event asks of the memory."""

    # Look at these tasks again (annotations created, updated or deleted; tasks deleted).
    REFRESH = "refresh"
    # Bring the whole memory up to date with the project (Label Studio's train call).
    SYNC = "sync"

    def __str__(self) -> str:
        return self.value


# Label Studio action -> what the memory does with it; other actions are ignored.
ACTIONS = {
    "ANNOTATION_CREATED": EventKind.REFRESH,
    "ANNOTATION_UPDATED": EventKind.REFRESH,
    "ANNOTATIONS_CREATED": EventKind.REFRESH,
    "ANNOTATIONS_DELETED": EventKind.REFRESH,
    "TASKS_DELETED": EventKind.REFRESH,
    "START_TRAINING": EventKind.SYNC,
}


@dataclass(frozen=True)
class LearningEvent:
    action: str
    kind: EventKind
    project: int
    project_uid: str | None  # "<id>.<created_at as a unix timestamp>": the project name /setup and /predict use
    label_config: str | None  # the project's label config as the event carries it
    tasks: tuple[int, ...] = ()  # tasks to look at again
    annotations: tuple[int, ...] = ()  # deleted annotations (their tasks are found in the memory)


def parse_event(body: Any) -> LearningEvent | None:
    """The learning event in a webhook body, or None when the memory has nothing to do with it."""
    if not isinstance(body, Mapping):
        return None
    action = body.get("action")
    kind = ACTIONS.get(action) if isinstance(action, str) else None
    project = body.get("project")
    if kind is None or not isinstance(project, Mapping) or not _is_id(project.get("id")):
        return None
    tasks, annotations = (), ()
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"):
        tasks = _ids([a.get("task") for a in _objects(body.get("annotation"))])
        tasks = tasks or _ids([t.get("id") for t in _objects(body.get("task"))])
    elif action == "ANNOTATIONS_DELETED":
        annotations = _ids([a.get("id") for a in _objects(body.get("annotations"))])
    elif action == "TASKS_DELETED":
        tasks = _ids([t.get("id") for t in _objects(body.get("tasks"))])
    if kind is EventKind.REFRESH and not tasks and not annotations:
        return None
    config = project.get("label_config")
    return LearningEvent(
        action=action,
        kind=kind,
        project=int(project["id"]),
        project_uid=project_uid(project),
        label_config=config if isinstance(config, str) and config.strip() else None,
        tasks=tasks,
        annotations=annotations,
    )


def project_uid(project: Mapping[str, Any]) -> str | None:
    """Label Studio's name for a project in /setup and /predict: "<id>.<int(created_at.timestamp())>"."""
    created = project.get("created_at")
    if not _is_id(project.get("id")) or not isinstance(created, str):
        return None
    try:
        stamp = datetime.fromisoformat(created.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    return f"{int(project['id'])}.{int(stamp.timestamp())}"


def _objects(value: Any) -> list[Mapping[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, Mapping)]


def _ids(values: list[Any]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(v) for v in values if _is_id(v)))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
