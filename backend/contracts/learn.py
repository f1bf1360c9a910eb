"""The memory's learning jobs: plain JSON payloads on the `<queue>-learn` RQ queue (or embedded mode's
threads), built by the web process and `tagclip learn`, run by `worker.learning`.

    refresh  {"schema": 1, "project": int, "label_config": str, "extra_params": {...},
              "source": backend.contracts.source's {"url", "api_key", "key"}, "tasks": [int], "annotations": [int]}
             look at these tasks again, and at the tasks whose examples came from these (deleted) annotations:
             each is read from Label Studio; its latest submitted annotation becomes its example, or its
             example goes when it has none (or the task is gone).
    sync     {"schema": 1, "project": int, "source": {...}, "rebuild": bool}
             bring the whole memory up to date with the project as Label Studio has it now (its label config,
             its ML backend's extra_params, every annotated task); with `rebuild`, cut a new generation when
             anything changed, however few changes.

Both return plain JSON summaries: {"schema": 1, "project", "added", "removed", "unchanged", "failed":
{task: reason}, "generation", "examples"}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PayloadError
from .source import SourceRef

SCHEMA = 1
# The job functions, by dotted path (the web process never imports them).
REFRESH_FUNCTION = "worker.learning.refresh_tasks"
SYNC_FUNCTION = "worker.learning.sync_project"
# Every job function of the memory, for the workers' allowlist of job functions.
LEARN_JOB_FUNCTIONS = (REFRESH_FUNCTION, SYNC_FUNCTION)


@dataclass(frozen=True)
class RefreshRequest:
    project: int
    label_config: str
    extra_params: Mapping[str, Any]
    source: SourceRef
    tasks: tuple[int, ...] = ()
    annotations: tuple[int, ...] = ()


@dataclass(frozen=True)
class SyncRequest:
    project: int
    source: SourceRef
    rebuild: bool = False


def refresh_payload(request: RefreshRequest) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "project": request.project,
        "label_config": request.label_config,
        "extra_params": dict(request.extra_params),
        "source": request.source.to_json(),
        "tasks": list(request.tasks),
        "annotations": list(request.annotations),
    }


def sync_payload(request: SyncRequest) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "project": request.project,
        "source": request.source.to_json(),
        "rebuild": request.rebuild,
    }


def parse_refresh(payload: Any) -> RefreshRequest:
    data = _checked(payload)
    try:
        return RefreshRequest(
            project=_id(data["project"], "project"),
            label_config=_text(data["label_config"], "label_config"),
            extra_params=dict(data.get("extra_params") or {}),
            source=SourceRef.from_json(data["source"]),
            tasks=tuple(_id(t, "tasks[]") for t in data.get("tasks") or ()),
            annotations=tuple(_id(a, "annotations[]") for a in data.get("annotations") or ()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PayloadError(f"malformed learning payload: {type(e).__name__}: {e}") from e


def parse_sync(payload: Any) -> SyncRequest:
    data = _checked(payload)
    try:
        return SyncRequest(
            project=_id(data["project"], "project"),
            source=SourceRef.from_json(data["source"]),
            rebuild=bool(data.get("rebuild", False)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PayloadError(f"malformed learning payload: {type(e).__name__}: {e}") from e


def _checked(payload: Any) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise PayloadError(f"learning payload must be an object, got {type(payload).__name__}")
    if payload.get("schema") != SCHEMA:
        raise PayloadError(f"learning payload schema {payload.get('schema')!r} is not {SCHEMA} (version skew)")
    return payload


def _id(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PayloadError(f"learning payload {name} must be a positive integer, got {value!r}")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"learning payload {name} must be a non-empty string, got {value!r}")
    return value
