"""The job payload: plain JSON that crosses the queue, built by the backend and checked by the worker.

    {"schema": 1, "model_key": str, "background": str,
     "controls": [{"name": str, "data_key": str, "classes": [{"label": str, "prompts": [str]}]}],
     "tasks": [{"index": int, "id": int | null, "images": {data_key: str | null}}],
     "source": backend.contracts.source's {"url", "api_key", "key"}}

Schema 2 is schema 1 where a region control also asks for masks (so a worker that predates masks refuses
the job instead of answering without them):

    "controls": [{..., "masks": {"mode": "coarse" | "clip-es", "min_region_area": int,
                                 "threshold": float | null}}]

Schema 3 is schema 2 for a project that learns from reviewed examples (docs/learning.md): the worker adapts
the named controls with the project's memory of that generation (and caches each image's embedding and
scores for the learning jobs), so a worker that predates the memory refuses the job:

    "memory": {"project": int, "generation": int, "controls": [str]}

Any schema may carry `"answer_by": float`: unix seconds on the clock the backend and its workers share (the
Redis server's `TIME` in queue mode, the process's clock in embedded mode) after which no one waits for the
result. A job that starts or goes on past it (a retry after JOB_TIMEOUT, a long chunk) stops there. A worker
that predates it ignores it and does the work for no one, as before.

The result is plain JSON too:

    {"schema": 1, "model_id": str, "worker": str, "seconds": float,
     "tasks": [{"index": int, "outputs": {control: {"labels": [...], "scores": [...], "tags": [...]}}}
              | {"index": int, "error": str}]}

with `"abandoned": true` when the job stopped at `answer_by` (the tasks not reached have no entry), and a
control that asked for masks also gets `"masks"`: tagclip_core's `MaskResult.to_json()` (neutral
run lengths, see backend.converters.regions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tagclip_core.types import MaskMode

from ..converters.regions import MASK_MODES
from ..errors import PayloadError
from .source import SourceRef

SCHEMA = 1
# Schema 1 plus controls[].masks.
MASKS_SCHEMA = 2
# Schema 2 plus memory.
LEARN_SCHEMA = 3
SCHEMAS = (SCHEMA, MASKS_SCHEMA, LEARN_SCHEMA)
# The job function, by dotted path: the backend never imports it (no torch in the web process).
JOB_FUNCTION = "worker.jobs.predict_chunk"
# The in-process runtime loader for embedded mode, by dotted path.
RUNTIME_LOADER = "worker.runtime.load_runtime"


@dataclass(frozen=True)
class MaskSpec:
    """Masks a control asks for: how, the smallest region kept, and which labels (the control's threshold,
    or TagCLIP's tags when None)."""

    mode: MaskMode
    min_region_area: int
    threshold: float | None


@dataclass(frozen=True)
class ControlSpec:
    name: str
    data_key: str
    labels: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    masks: MaskSpec | None = None


@dataclass(frozen=True)
class MemorySpec:
    """The memory a chunk's predictions use: the project's, of this generation, for these controls."""

    project: int
    generation: int
    controls: tuple[str, ...]

    def to_payload(self) -> dict[str, Any]:
        return {"project": self.project, "generation": self.generation, "controls": list(self.controls)}


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
    source: SourceRef
    memory: MemorySpec | None = None
    answer_by: float | None = None


def with_answer_by(payloads: Sequence[dict[str, Any]], answer_by: float) -> list[dict[str, Any]]:
    """Copies of `payloads` that stop being worked on at `answer_by` (on the clock their workers share)."""
    return [{**payload, "answer_by": answer_by} for payload in payloads]


def build_payloads(
    controls: Sequence[Mapping[str, Any]],
    tasks: Sequence[Mapping[str, Any]],
    source: SourceRef,
    background: str,
    model_key: str,
    chunk_size: int,
    memory: MemorySpec | None = None,
) -> list[dict[str, Any]]:
    """Split `tasks` (Label Studio task dicts) into job payloads of at most `chunk_size` tasks.

    `controls` are ControlPlan.to_payload() dicts. Each task carries only the image references the
    controls need, and its position in the request (`index`) so results align by position. `memory`: the
    learning project's memory (schema 3); None leaves the payload as it always was.
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
        payload = {
            "schema": MASKS_SCHEMA if any(c.get("masks") for c in controls) else SCHEMA,
            "model_key": model_key,
            "background": background,
            "controls": list(controls),
            "tasks": refs[start : start + chunk_size],
            "source": source.to_json(),
        }
        if memory is not None:
            payload["schema"] = LEARN_SCHEMA
            payload["memory"] = memory.to_payload()
        payloads.append(payload)
    return payloads


def chunk_size_for(n_tasks: int, n_workers: int, max_chunk: int) -> int:
    """Spread a batch over the workers: ceil(n / workers), capped by CHUNK_SIZE."""
    workers = max(1, n_workers)
    return max(1, min(max_chunk, -(-n_tasks // workers)))


def parse_payload(payload: Any) -> ChunkSpec:
    """Check a payload against the schema; raises PayloadError naming the bad field."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be an object, got {type(payload).__name__}")
    if payload.get("schema") not in SCHEMAS:
        raise PayloadError(
            f"payload schema {payload.get('schema')!r} is not one of {SCHEMAS} (backend/worker version skew)"
        )
    try:
        controls = parse_controls(payload["controls"], with_masks=payload["schema"] != SCHEMA)
        tasks = tuple(
            TaskRef(index=int(t["index"]), id=t.get("id"), images=dict(t["images"])) for t in payload["tasks"]
        )
        return ChunkSpec(
            model_key=_str(payload["model_key"], "model_key"),
            background=str(payload.get("background", "none")),
            controls=controls,
            tasks=tasks,
            source=SourceRef.from_json(payload.get("source") or {}),
            memory=_memory_spec(payload["memory"]) if payload["schema"] == LEARN_SCHEMA else None,
            answer_by=_answer_by(payload.get("answer_by")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PayloadError(f"malformed payload: {type(e).__name__}: {e}") from e


def parse_controls(controls: Sequence[Mapping[str, Any]], with_masks: bool = True) -> tuple[ControlSpec, ...]:
    """The payload's controls (ControlPlan.to_payload() dicts); raises PayloadError naming the bad field."""
    try:
        specs = tuple(
            ControlSpec(
                name=_str(c["name"], "controls[].name"),
                data_key=_str(c["data_key"], "controls[].data_key"),
                labels=tuple(_str(k["label"], "classes[].label") for k in c["classes"]),
                prompts=tuple(tuple(_str(p, "classes[].prompts[]") for p in k["prompts"]) for k in c["classes"]),
                masks=_mask_spec(c.get("masks")) if with_masks else None,
            )
            for c in controls
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PayloadError(f"malformed payload: {type(e).__name__}: {e}") from e
    for control in specs:
        if not control.labels or any(not p for p in control.prompts):
            raise PayloadError(f"control {control.name!r} has no classes or a class without prompts")
    return specs


def _mask_spec(data: Any) -> MaskSpec | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise PayloadError(f"controls[].masks must be an object, got {data!r}")
    mode, area, threshold = data.get("mode"), data.get("min_region_area", 0), data.get("threshold")
    if mode not in MASK_MODES:
        raise PayloadError(f"controls[].masks.mode must be one of {MASK_MODES}, got {mode!r}")
    mode = MaskMode(mode)
    if isinstance(area, bool) or not isinstance(area, int) or area < 0:
        raise PayloadError(f"controls[].masks.min_region_area must be an integer >= 0, got {area!r}")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1
    ):
        raise PayloadError(f"controls[].masks.threshold must be null or a number in [0, 1], got {threshold!r}")
    return MaskSpec(mode, area, None if threshold is None else float(threshold))


def _answer_by(data: Any) -> float | None:
    if data is None:
        return None
    if isinstance(data, bool) or not isinstance(data, (int, float)) or data != data:
        raise PayloadError(f"answer_by must be null or unix seconds, got {data!r}")
    return float(data)


def _memory_spec(data: Any) -> MemorySpec:
    if not isinstance(data, Mapping):
        raise PayloadError(f"memory must be an object, got {data!r}")
    project, generation = data.get("project"), data.get("generation")
    if isinstance(project, bool) or not isinstance(project, int) or project <= 0:
        raise PayloadError(f"memory.project must be a positive integer, got {project!r}")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise PayloadError(f"memory.generation must be an integer >= 0, got {generation!r}")
    return MemorySpec(project, generation, tuple(_str(c, "memory.controls[]") for c in data.get("controls") or ()))


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{field} must be a non-empty string, got {value!r}")
    return value
