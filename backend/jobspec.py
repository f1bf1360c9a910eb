"""The job payload: plain JSON that crosses the queue, built by the backend and checked by the worker.

    {"schema": 1, "model_key": str, "background": str,
     "controls": [{"name": str, "data_key": str, "classes": [{"label": str, "prompts": [str]}]}],
     "tasks": [{"index": int, "id": int | null, "images": {data_key: str | null}}],
     "source": {"url": str | null, "api_key": str | null}}

The result is plain JSON too:

    {"schema": 1, "model_id": str, "worker": str, "seconds": float,
     "tasks": [{"index": int, "outputs": {control: {"labels": [...], "scores": [...], "tags": [...]}}}
              | {"index": int, "error": str}]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import PayloadError
from .fetch import Source

SCHEMA = 1
# The job function, by dotted path: the backend never imports it (no torch in the web process).
JOB_FUNCTION = "worker.jobs.predict_chunk"
# The in-process runtime loader for embedded mode, by dotted path.
RUNTIME_LOADER = "worker.runtime.load_runtime"


@dataclass(frozen=True)
class ControlSpec:
    name: str
    data_key: str
    labels: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class TaskRef:
    index: int
    id: int | None
    images: Mapping[str, Any]


@dataclass(frozen=True)
class ChunkSpec:
    model_key: str
    background: str
    controls: tuple[ControlSpec, ...]
    tasks: tuple[TaskRef, ...]
    source: Source


def build_payloads(
    controls: Sequence[Mapping[str, Any]],
    tasks: Sequence[Mapping[str, Any]],
    source: Source,
    background: str,
    model_key: str,
    chunk_size: int,
) -> list[dict[str, Any]]:
    """Split `tasks` (Label Studio task dicts) into job payloads of at most `chunk_size` tasks.

    `controls` are ControlPlan.to_payload() dicts. Each task carries only the image references the
    controls need, and its position in the request (`index`) so results align by position.
    """
    data_keys = sorted({c["data_key"] for c in controls})
    refs = []
    for index, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, Mapping) else None
        data = data if isinstance(data, Mapping) else {}
        task_id = task.get("id") if isinstance(task, Mapping) else None
        refs.append(
            {
                "index": index,
                "id": task_id if isinstance(task_id, int) else None,
                "images": {key: data.get(key) for key in data_keys},
            }
        )
    payloads = []
    for start in range(0, len(refs), chunk_size):
        payloads.append(
            {
                "schema": SCHEMA,
                "model_key": model_key,
                "background": background,
                "controls": list(controls),
                "tasks": refs[start : start + chunk_size],
                "source": {"url": source.url, "api_key": source.api_key},
            }
        )
    return payloads


def chunk_size_for(n_tasks: int, n_workers: int, max_chunk: int) -> int:
    """Spread a batch over the workers: ceil(n / workers), capped by CHUNK_SIZE."""
    workers = max(1, n_workers)
    return max(1, min(max_chunk, -(-n_tasks // workers)))


def parse_payload(payload: Any) -> ChunkSpec:
    """Check a payload against the schema; raises PayloadError naming the bad field."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be an object, got {type(payload).__name__}")
    if payload.get("schema") != SCHEMA:
        raise PayloadError(f"payload schema {payload.get('schema')!r} is not {SCHEMA} (backend/worker version skew)")
    try:
        controls = tuple(
            ControlSpec(
                name=_str(c["name"], "controls[].name"),
                data_key=_str(c["data_key"], "controls[].data_key"),
                labels=tuple(_str(k["label"], "classes[].label") for k in c["classes"]),
                prompts=tuple(tuple(_str(p, "classes[].prompts[]") for p in k["prompts"]) for k in c["classes"]),
            )
            for c in payload["controls"]
        )
        tasks = tuple(
            TaskRef(index=int(t["index"]), id=t.get("id"), images=dict(t["images"])) for t in payload["tasks"]
        )
        source = payload.get("source") or {}
        spec = ChunkSpec(
            model_key=_str(payload["model_key"], "model_key"),
            background=str(payload.get("background", "none")),
            controls=controls,
            tasks=tasks,
            source=Source(url=source.get("url"), api_key=source.get("api_key")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PayloadError(f"malformed payload: {type(e).__name__}: {e}") from e
    for control in spec.controls:
        if not control.labels or any(not p for p in control.prompts):
            raise PayloadError(f"control {control.name!r} has no classes or a class without prompts")
    return spec


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{field} must be a non-empty string, got {value!r}")
    return value
