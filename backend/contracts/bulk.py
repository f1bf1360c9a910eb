"""The bulk chunk payload: plain JSON that crosses the queue (RQ's JSON serializer), built by the planner
and checked by the worker.

    {"schema": 1, "job": str, "queue": str, "project": int, "model_version": str,
     "label_config": str, "extra_params": {...}, "write": "auto" | "import" | "single",
     "source": backend.contracts.source's {"url", "api_key": null, "key": "worker" | "bulk_job"},
     "tasks": [{"id": int, "data": {data_key: image reference}}]}

and, for a project that learns from reviewed examples, "memory_generation": int: the generation of the memory
the planner's model_version names (workers predict with that generation's calibration, whichever is newer).

The result is plain JSON too: {"schema": 1, "job": str, "worker": str, "written": [ids], "recovered": [ids],
"elsewhere": [ids], "failed": {id: reason}, "seconds": {"predict": s, "write": s, "store": s}}.

The final check of a job (backend.bulk.verify, run by a worker when every chunk has ended) is a job of its own:

    {"schema": 1, "job": str, "queue": str}  ->  backend.bulk.verify.VerifyReport as JSON
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import PayloadError
from .source import SourceRef

SCHEMA = 1
# The job function, by dotted path (the planner never imports it: no torch in the web process or CLI).
JOB_FUNCTION = "worker.bulk.preannotate_chunk"
VERIFY_FUNCTION = "worker.verify.verify_bulk_job"


class WriteMethod(str, Enum):
    """How a chunk's predictions are written back to Label Studio."""

    AUTO = "auto"  # per chunk, whichever has been cheaper per task so far (backend.bulk.method)
    IMPORT = "import"  # one POST /api/projects/<id>/import/predictions per chunk
    SINGLE = "single"  # one POST /api/predictions per task

    def __str__(self) -> str:
        return self.value


WRITE_METHODS = tuple(m.value for m in WriteMethod)


@dataclass(frozen=True)
class BulkTask:
    id: int
    data: Mapping[str, Any]


@dataclass(frozen=True)
class BulkChunk:
    job: str
    queue: str
    project: int
    model_version: str
    label_config: str
    extra_params: Mapping[str, Any]
    write: WriteMethod
    source: SourceRef
    tasks: tuple[BulkTask, ...]
    memory_generation: int | None = None


def build_payload(chunk: BulkChunk) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "job": chunk.job,
        "queue": chunk.queue,
        "project": chunk.project,
        "model_version": chunk.model_version,
        "label_config": chunk.label_config,
        "extra_params": dict(chunk.extra_params),
        "write": str(chunk.write),
        "source": chunk.source.to_json(),
        "tasks": [{"id": t.id, "data": dict(t.data)} for t in chunk.tasks],
    } | ({"memory_generation": chunk.memory_generation} if chunk.memory_generation is not None else {})


def task_refs(tasks: Sequence[Mapping[str, Any]], data_keys: Sequence[str]) -> tuple[BulkTask, ...]:
    """Label Studio task dicts -> the task references a chunk carries (only the image keys it needs)."""
    out = []
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), Mapping) else {}
        out.append(BulkTask(int(task["id"]), {key: data.get(key) for key in data_keys}))
    return tuple(out)


def parse_payload(payload: Any) -> BulkChunk:
    """Check a payload against the schema; raises PayloadError naming the bad field."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"bulk payload must be an object, got {type(payload).__name__}")
    if payload.get("schema") != SCHEMA:
        raise PayloadError(f"bulk payload schema {payload.get('schema')!r} is not {SCHEMA} (version skew)")
    try:
        chunk = BulkChunk(
            job=_text(payload["job"], "job"),
            queue=_text(payload["queue"], "queue"),
            project=int(payload["project"]),
            model_version=_text(payload["model_version"], "model_version"),
            label_config=_text(payload["label_config"], "label_config"),
            extra_params=dict(payload.get("extra_params") or {}),
            write=_text(payload["write"], "write"),
            source=SourceRef.from_json(payload["source"]),
            tasks=tuple(BulkTask(int(t["id"]), dict(t["data"])) for t in payload["tasks"]),
            memory_generation=_generation(payload.get("memory_generation")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PayloadError(f"malformed bulk payload: {type(e).__name__}: {e}") from e
    if chunk.write not in WRITE_METHODS:
        raise PayloadError(f"bulk payload write={chunk.write!r} is not one of {WRITE_METHODS}")
    return dataclasses.replace(chunk, write=WriteMethod(chunk.write))


def _generation(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError(f"bulk payload memory_generation must be an integer >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class VerifyRequest:
    job: str
    queue: str


def build_verify_payload(request: VerifyRequest) -> dict[str, Any]:
    return {"schema": SCHEMA, "job": request.job, "queue": request.queue}


def parse_verify_payload(payload: Any) -> VerifyRequest:
    if not isinstance(payload, Mapping) or payload.get("schema") != SCHEMA:
        raise PayloadError(f"verify payload must be an object with schema {SCHEMA}, got {payload!r:.200}")
    return VerifyRequest(job=_text(payload.get("job"), "job"), queue=_text(payload.get("queue"), "queue"))


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"bulk payload {field} must be a non-empty string, got {value!r}")
    return value
