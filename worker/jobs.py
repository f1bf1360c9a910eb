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
from rq import get_current_job

from backend.contracts.predict import SCHEMA, ChunkSpec, ControlSpec, TaskRef, parse_payload
from backend.contracts.source import resolve_source
from backend.converters import ControlOutput
from backend.converters.base import choose_labels
from backend.errors import DownloadUnavailableError, ImageFetchError, ModelMismatchError
from backend.fetch import redact
from backend.memory.cache import image_digest
from backend.redaction import scrub
from backend.results import UNAVAILABLE
from tagclip_core.errors import ImageLoadError, TagCLIPError
from tagclip_core.images import load_image
from tagclip_core.masks import coarse_masks
from tagclip_core.types import ClassSpec, ImagePrediction, MaskMode, PredictionFailure

from .memory import use_memory
from .runtime import Runtime, current_runtime
from .vocab import build_columns

log = logging.getLogger(__name__)

# Digits kept in serialized scores (float32 has ~7 significant digits).
SCORE_DIGITS = 6


def predict_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Predict every control of a chunk of tasks; returns plain JSON (see backend.contracts.predict)."""
    runtime = current_runtime()
    started = time.monotonic()
    spec = parse_payload(payload)
    if spec.model_key != runtime.model_key:
        raise ModelMismatchError(
            f"the backend expects model {spec.model_key!r}, worker {runtime.name} runs {runtime.model_key!r}: "
            "give the backend and the workers the same TAGCLIP_* settings and weights"
        )
    return {
        "schema": SCHEMA,
        "model_id": runtime.engine.model_id,
        "worker": runtime.name,
        "seconds": round(time.monotonic() - started, 4),
        "tasks": predict_tasks(spec, runtime),
    }


def predict_tasks(spec: ChunkSpec, runtime: Runtime) -> list[dict[str, Any]]:
    """Every task's output, in task order: `{"index", "outputs": {control: ...}}`, or `{"index", "error",
    "kind"}` for a task whose image could not be fetched, decoded or predicted (the others go on)."""
    digests: dict[int, dict[str, str]] | None = {} if spec.memory is not None else None
    images, errors = fetch_images(spec, runtime, digests)
    outputs = predict_controls(spec, images, errors, runtime, digests)
    tasks = []
    for task in spec.tasks:
        if task.index in errors:
            tasks.append({"index": task.index, "error": errors[task.index][1], "kind": errors[task.index][0]})
        else:
            tasks.append({"index": task.index, "outputs": outputs.get(task.index, {})})
    return tasks


def fetch_images(
    spec: ChunkSpec, runtime: Runtime, digests: dict[int, dict[str, str]] | None = None
) -> tuple[dict[int, dict[str, Image.Image]], dict[int, tuple[str, str]]]:
    """Fetch and decode each task's images in parallel. Returns images by task index, and
    (kind, message) errors by task index. Raises LabelStudioAuthError when this worker has no key for the
    payload's Label Studio (a setup mistake: the job fails and is retried, no task is marked failed). `digests`,
    when given, receives each image's SHA-256 by task index and data key (what the memory's image cache is keyed
    by)."""
    keys = sorted({c.data_key for c in spec.controls})
    source = resolve_source(spec.source, runtime.settings.label_studio)

    def load(task: TaskRef) -> dict[str, Image.Image]:
        out = {}
        for key in keys:
            ref = task.images.get(key)
            if ref is None:
                raise ImageFetchError(f"task {task.id} has no data[{key!r}]")
            data = runtime.fetcher.fetch(ref, task.id or 0, source)
            out[key] = load_image(data, runtime.image_limits, name=redact(str(ref)))
            if digests is not None:
                digests.setdefault(task.index, {})[key] = image_digest(data)
        return out

    images: dict[int, dict[str, Image.Image]] = {}
    errors: dict[int, tuple[str, str]] = {}
    futures = {task.index: runtime.downloads.submit(load, task) for task in spec.tasks}
    for task in spec.tasks:
        try:
            images[task.index] = futures[task.index].result()
        except ImageFetchError as e:
            errors[task.index] = (fetch_failure_kind(e), str(e))
        except ImageLoadError as e:
            errors[task.index] = ("image", str(e))
        except Exception as e:  # a bug in one task's path must not sink the chunk
            log.exception("task %s: unexpected error while loading its image", task.id)
            errors[task.index] = ("internal", scrub(f"{type(e).__name__}: {e}"))
    for index, (kind, message) in errors.items():
        log.warning("task index %d: %s error: %s", index, kind, message)
    return images, errors


def fetch_failure_kind(error: ImageFetchError) -> str:
    """The failure kind of a task whose image could not be fetched: UNAVAILABLE when the failure may pass (a
    timeout, HTTP 5xx, a revoked or disabled key: the task is predicted again later, never stored empty),
    "download" when it will fail the same way every time (not found, too large, refused by policy)."""
    return UNAVAILABLE if isinstance(error, DownloadUnavailableError) else "download"


def predict_controls(
    spec: ChunkSpec,
    images: dict[int, dict[str, Image.Image]],
    errors: dict[int, tuple[str, str]],
    runtime: Runtime,
    digests: dict[int, dict[str, str]] | None = None,
) -> dict[int, dict[str, dict[str, Any]]]:
    """Scores (and masks, where asked) of every control for every task whose images loaded. Engine failures on
    one image are isolated to its task (recorded in `errors`). With a memory (spec.memory), the learning
    controls' scores and tags are adapted (worker.memory)."""
    outputs: dict[int, dict[str, dict[str, Any]]] = {}
    embeddings = spec.memory is not None
    job = get_current_job()
    predicted: dict[tuple, dict[int, ImagePrediction | PredictionFailure]] = {}
    masks_done: dict[tuple, dict[str, Any]] = {}
    for done, control in enumerate(spec.controls):
        indices = [t.index for t in spec.tasks if t.index in images and t.index not in errors]
        if not indices:
            break
        classes_key = (control.data_key, control.labels, control.prompts)
        known = predicted.setdefault(classes_key, {})
        todo = [i for i in indices if i not in known]
        if todo:
            batch = [images[i][control.data_key] for i in todo]
            classes = _class_specs(control)
            # Missing columns first, one lock hold each: a job timeout keeps what was built (worker.vocab).
            build_columns(runtime, runtime.engine.text_prompts(classes, spec.background))
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
        if job is not None:
            job.meta["progress"] = {"controls_done": done + 1, "controls": len(spec.controls)}
            job.save_meta()
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


def _class_specs(control: ControlSpec) -> list[ClassSpec]:
    return [ClassSpec(label, prompts) for label, prompts in zip(control.labels, control.prompts, strict=True)]


def serialize(prediction: ImagePrediction) -> dict[str, Any]:
    return {
        "labels": list(prediction.labels),
        "scores": [round(float(s), SCORE_DIGITS) for s in prediction.scores],
        "tags": list(prediction.tags),
    }
