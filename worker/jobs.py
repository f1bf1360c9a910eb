"""RQ job functions. Small steps: check the payload, fetch and decode images, predict, serialize.

A job raises when it cannot do its work at all (bad payload, other weights, engine failure), so RQ
records the failure and retries it. A task whose image cannot be fetched or decoded, or that the engine
cannot process, fails alone: its entry carries an `error` and the rest of the chunk goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PIL import Image
from rq import get_current_job

from backend.errors import ImageFetchError, ModelMismatchError
from backend.fetch import redact
from backend.jobspec import SCHEMA, ChunkSpec, ControlSpec, TaskRef, parse_payload
from tagclip_core import ClassSpec, ImagePrediction, TagCLIPError
from tagclip_core.errors import ImageLoadError
from tagclip_core.images import load_image

from .runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

# Digits kept in serialized scores (float32 has ~7 significant digits).
SCORE_DIGITS = 6


def predict_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Predict every control of a chunk of tasks; returns plain JSON (see backend.jobspec)."""
    runtime = current_runtime()
    started = time.monotonic()
    spec = parse_payload(payload)
    if spec.model_key != runtime.model_key:
        raise ModelMismatchError(
            f"the backend expects model {spec.model_key!r}, worker {runtime.name} runs {runtime.model_key!r}: "
            "give the backend and the workers the same TAGCLIP_* settings and weights"
        )
    images, errors = fetch_images(spec, runtime)
    outputs = predict_controls(spec, images, errors, runtime)
    tasks = []
    for task in spec.tasks:
        if task.index in errors:
            tasks.append({"index": task.index, "error": errors[task.index][1], "kind": errors[task.index][0]})
        else:
            tasks.append({"index": task.index, "outputs": outputs.get(task.index, {})})
    return {
        "schema": SCHEMA,
        "model_id": runtime.engine.model_id,
        "worker": runtime.name,
        "seconds": round(time.monotonic() - started, 4),
        "tasks": tasks,
    }


def fetch_images(
    spec: ChunkSpec, runtime: Runtime
) -> tuple[dict[int, dict[str, Image.Image]], dict[int, tuple[str, str]]]:
    """Fetch and decode each task's images in parallel. Returns images by task index, and
    (kind, message) errors by task index."""
    keys = sorted({c.data_key for c in spec.controls})

    def load(task: TaskRef) -> dict[str, Image.Image]:
        out = {}
        for key in keys:
            ref = task.images.get(key)
            if ref is None:
                raise ImageFetchError(f"task {task.id} has no data[{key!r}]")
            data = runtime.fetcher.fetch(ref, task.id or 0, spec.source)
            out[key] = load_image(data, runtime.image_limits, name=redact(str(ref)))
        return out

    images: dict[int, dict[str, Image.Image]] = {}
    errors: dict[int, tuple[str, str]] = {}
    futures = {task.index: runtime.downloads.submit(load, task) for task in spec.tasks}
    for task in spec.tasks:
        try:
            images[task.index] = futures[task.index].result()
        except ImageFetchError as e:
            errors[task.index] = ("download", str(e))
        except ImageLoadError as e:
            errors[task.index] = ("image", str(e))
        except Exception as e:  # a bug in one task's path must not sink the chunk
            log.exception("task %s: unexpected error while loading its image", task.id)
            errors[task.index] = ("internal", f"{type(e).__name__}: {e}")
    for index, (kind, message) in errors.items():
        log.warning("task index %d: %s error: %s", index, kind, message)
    return images, errors


def predict_controls(
    spec: ChunkSpec, images: dict[int, dict[str, Image.Image]], errors: dict[int, tuple[str, str]], runtime: Runtime
) -> dict[int, dict[str, dict[str, Any]]]:
    """Scores of every control for every task whose images loaded. Engine failures on one image are
    isolated to its task (recorded in `errors`)."""
    outputs: dict[int, dict[str, dict[str, Any]]] = {}
    job = get_current_job()
    for done, control in enumerate(spec.controls):
        indices = [t.index for t in spec.tasks if t.index in images and t.index not in errors]
        if not indices:
            break
        batch = [images[i][control.data_key] for i in indices]
        with runtime.engine_lock:
            runtime.engine.set_classes(_class_specs(control), background=spec.background)
            predictions = _predict_isolating(runtime, batch)
        for index, prediction in zip(indices, predictions, strict=True):
            if isinstance(prediction, str):
                errors[index] = ("engine", prediction)
            else:
                outputs.setdefault(index, {})[control.name] = serialize(prediction)
        if job is not None:
            job.meta["progress"] = {"controls_done": done + 1, "controls": len(spec.controls)}
            job.save_meta()
    return outputs


def _class_specs(control: ControlSpec) -> list[ClassSpec]:
    return [ClassSpec(label, prompts) for label, prompts in zip(control.labels, control.prompts, strict=True)]


def _predict_isolating(runtime: Runtime, batch: list[Image.Image]) -> list[ImagePrediction | str]:
    """Predict a batch; if it fails, predict image by image so one bad image costs only its task."""
    try:
        return list(runtime.engine.predict(batch))
    except (TagCLIPError, ValueError, RuntimeError) as e:
        if len(batch) == 1:
            return [f"{type(e).__name__}: {e}"]
        log.warning("batch of %d failed (%s); retrying image by image", len(batch), e)
    return [item for image in batch for item in _predict_isolating(runtime, [image])]


def serialize(prediction: ImagePrediction) -> dict[str, Any]:
    return {
        "labels": list(prediction.labels),
        "scores": [round(float(s), SCORE_DIGITS) for s in prediction.scores],
        "tags": list(prediction.tags),
    }
