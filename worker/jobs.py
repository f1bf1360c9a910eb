"""The /predict job function, and the prediction steps the bulk chunks share. Small steps: check the payload,
fetch and decode images, predict, masks when a control asks for them, serialize.

A job raises when it cannot do its work at all (bad payload, other weights, engine failure), so RQ
records the failure and retries it. A task whose image cannot be fetched or decoded, or that the engine
cannot process, fails alone: its entry carries an `error` and the rest of the chunk goes on.

Controls with the same image and classes share one TagCLIP prediction per task, and the same masks when they
ask for the same ones (a BrushLabels and a RectangleLabels with one label set cost one prediction and one
mask computation). Masks are made only for the labels the backend will select: TagCLIP's tags, or the
labels at or above the control's absolute threshold. "coarse" masks come from the prediction's refined patch
maps (no model call); "clip-es" masks run CLIP-ES on the runtime's already loaded CLIP.

A chunk of a learning project (payload schema 3) also computes each image's CLIP embedding in the same forward,
and its learning controls are adapted with the project's memory (worker.memory).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PIL import Image
from redis.exceptions import RedisError
from rq import get_current_job

from backend.contracts.predict import SCHEMA, ChunkSpec, ControlSpec, parse_payload
from backend.converters import ControlOutput
from backend.converters.base import choose_labels
from backend.servertime import server_now
from tagclip_core.errors import TagCLIPError
from tagclip_core.masks import coarse_masks
from tagclip_core.types import ClassSpec, ImagePrediction, MaskMode, PredictionFailure

from .loading import Digests, load_in_groups
from .memory import use_memory
from .runtime import Runtime, current_runtime
from .vocab import ReadyColumns

log = logging.getLogger(__name__)

# Digits kept in serialized scores (float32 has ~7 significant digits).
SCORE_DIGITS = 6


def predict_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Predict every control of a chunk of tasks; returns plain JSON (see backend.contracts.predict)."""
    runtime = current_runtime()
    started = time.monotonic()
    spec = parse_payload(payload)
    runtime.require_model(spec.model_key, "the backend")
    tasks = predict_tasks(spec, runtime)
    result = {
        "schema": SCHEMA,
        "model_id": runtime.engine.model_id,
        "worker": runtime.name,
        "seconds": round(time.monotonic() - started, 4),
        "tasks": tasks,
    }
    if len(tasks) < len(spec.tasks):
        log.info("job stopped after %d of %d tasks: no one waits for it any more", len(tasks), len(spec.tasks))
        result["abandoned"] = True
    return result


def predict_tasks(spec: ChunkSpec, runtime: Runtime) -> list[dict[str, Any]]:
    """Every task's output, in task order: `{"index", "outputs": {control: ...}}`, or `{"index", "error",
    "kind"}` for a task whose image could not be fetched, decoded or predicted (the others go on). Images are
    decoded a bounded few at a time (worker.loading), whatever the chunk's size. Past the spec's `answer_by` the
    tasks not started are left out (no one waits for them)."""
    digests: Digests | None = {} if spec.memory is not None else None
    columns = ReadyColumns(runtime)
    tasks: list[dict[str, Any]] = []
    if _past_answer_by(spec):
        return tasks
    for group in load_in_groups(spec, runtime, digests):
        outputs = predict_controls(group.spec, group.images, group.errors, runtime, columns, digests)
        for task in group.spec.tasks:
            if task.index in group.errors:
                kind, message = group.errors[task.index]
                tasks.append({"index": task.index, "error": message, "kind": kind})
            else:
                tasks.append({"index": task.index, "outputs": outputs.get(task.index, {})})
        _report_progress(len(tasks), len(spec.tasks))
        if len(tasks) < len(spec.tasks) and _past_answer_by(spec):
            break
    return tasks


def _past_answer_by(spec: ChunkSpec) -> bool:
    """True once the clock the backend shares with this job (Redis's for an RQ job, this process's in embedded
    mode) is past the spec's `answer_by`. Unknown (Redis unreachable) counts as not past: the work goes on."""
    if spec.answer_by is None:
        return False
    job = get_current_job()
    try:
        now = server_now(job.connection) if job is not None else time.time()
    except RedisError:
        return False
    return now > spec.answer_by


def _report_progress(done: int, total: int) -> None:
    """Tasks done so far, in the RQ job's meta (rq-dashboard shows it)."""
    job = get_current_job()
    if job is not None:
        job.meta["progress"] = {"tasks_done": done, "tasks": total}
        job.save_meta()


def predict_controls(
    spec: ChunkSpec,
    images: dict[int, dict[str, Image.Image]],
    errors: dict[int, tuple[str, str]],
    runtime: Runtime,
    columns: ReadyColumns,
    digests: Digests | None = None,
) -> dict[int, dict[str, dict[str, Any]]]:
    """Scores (and masks, where asked) of every control for every task whose images loaded. Engine failures on
    one image are isolated to its task (recorded in `errors`). With a memory (spec.memory), the learning
    controls' scores and tags are adapted (worker.memory). `columns`: the job's (one for all its groups of
    images), so the text columns are made sure of once per job."""
    outputs: dict[int, dict[str, dict[str, Any]]] = {}
    embeddings = spec.memory is not None
    predicted: dict[tuple, dict[int, ImagePrediction | PredictionFailure]] = {}
    masks_done: dict[tuple, dict[str, Any]] = {}
    for control in spec.controls:
        indices = [t.index for t in spec.tasks if t.index in images and t.index not in errors]
        if not indices:
            break
        classes_key = (control.data_key, control.labels, control.prompts)
        known = predicted.setdefault(classes_key, {})
        todo = [i for i in indices if i not in known]
        if todo:
            batch = [images[i][control.data_key] for i in todo]
            # Missing columns first, one lock hold each: a job timeout keeps what was built (worker.vocab).
            classes = columns.classes(control, spec.background)
            with runtime.engine_lock:
                runtime.engine.set_classes(classes, background=spec.background)
                known.update(zip(todo, runtime.engine.predict_each(batch, embeddings=embeddings), strict=True))
        for index in indices:
            prediction = known[index]
            if isinstance(prediction, PredictionFailure):
                errors[index] = ("engine", str(prediction))
                continue
            output = serialize(prediction)
            if control.masks is not None:
                mask_key = (classes_key, control.masks, index)
                try:
                    if mask_key not in masks_done:
                        image = images[index][control.data_key]
                        masks_done[mask_key] = control_masks(control, prediction, image, spec.background, runtime)
                except (TagCLIPError, ValueError, RuntimeError) as e:
                    log.warning("task index %d: masks of %r failed: %s", index, control.name, e)
                    errors[index] = ("masks", f"{type(e).__name__}: {e}")
                    continue
                output["masks"] = masks_done[mask_key]
            outputs.setdefault(index, {})[control.name] = output
    if embeddings:
        use_memory(spec, outputs, predicted, digests or {}, runtime)
    return outputs


def mask_labels(prediction: ImagePrediction, threshold: float | None) -> tuple[str, ...]:
    """The labels the backend will keep for a region control (the converters' `choose_labels` on the scores as
    serialized), so masks are made for exactly those: TagCLIP's tags, or the labels at the absolute threshold."""
    output = ControlOutput.from_json(serialize(prediction))
    return tuple(label for label, _ in choose_labels(output, output.labels, single=False, threshold=threshold))


def control_masks(
    control: ControlSpec, prediction: ImagePrediction, image: Image.Image, background: str, runtime: Runtime
) -> dict[str, Any]:
    """One task's masks for a control that asks for them: `MaskResult.to_json()` (plain JSON)."""
    assert control.masks is not None
    spec = control.masks
    labels = mask_labels(prediction, spec.threshold)
    if spec.mode is MaskMode.COARSE:
        config = runtime.mask_settings(MaskMode.COARSE, background, spec.min_region_area)
        result = coarse_masks(prediction, labels, config, image if config.crf else None)
    else:
        prompts = dict(zip(control.labels, control.prompts, strict=True))
        specs = [ClassSpec(label, prompts[label]) for label in labels]
        with runtime.engine_lock:
            result = runtime.segmenter(background, spec.min_region_area).segment(image, specs, mode=MaskMode.CLIP_ES)
    return result.to_json()


def serialize(prediction: ImagePrediction) -> dict[str, Any]:
    return {
        "labels": list(prediction.labels),
        "scores": [round(float(s), SCORE_DIGITS) for s in prediction.scores],
        "tags": list(prediction.tags),
    }
