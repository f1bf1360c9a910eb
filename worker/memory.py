"""Predictions with a learning project's memory (docs/learning.md): the /predict and bulk jobs' step after
TagCLIP. For a chunk whose payload names a memory (schema 3), each image's CLIP embedding and its TagCLIP scores
are cached for the learning jobs, and each learning control's scores and tags are adapted with the memory's
examples and the calibration of the chunk's generation (backend.memory.scoring.adapt). A control without a
calibration of that generation (generation 0, or classes changed since) keeps TagCLIP's output exactly.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from backend.contracts.predict import ChunkSpec, ControlSpec
from backend.memory.examples import Example, control_fingerprint, memory_arrays
from backend.memory.scoring import Calibration, Memory, adapt
from backend.memory.store import MemoryStore
from tagclip_core.types import ImagePrediction

log = logging.getLogger(__name__)

# Projects whose examples a process keeps loaded (the least recently used goes first).
LOADED_PROJECTS = 16
# Digits kept in serialized scores (as worker.jobs).
SCORE_DIGITS = 6


class ProjectMemories:
    """Per process: each learning project's examples and calibrations, read from the store again only when the
    project's memory changed (its change counter moved)."""

    def __init__(self, store: Callable[[], MemoryStore]) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._examples: OrderedDict[int, tuple[int, list[Example], dict[tuple, Memory]]] = OrderedDict()
        self._calibrations: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()

    def calibrations(self, project: int, generation: int) -> dict[str, Any]:
        """The calibrations cut with `generation` ({} for generation 0 or one no longer kept)."""
        key = (project, generation)
        with self._lock:
            if key in self._calibrations:
                return self._calibrations[key]
        found = self._store().calibrations(project, generation) if generation > 0 else None
        with self._lock:
            if found is not None:  # a published generation never changes
                self._calibrations[key] = found
                while len(self._calibrations) > 4 * LOADED_PROJECTS:
                    self._calibrations.popitem(last=False)
        return found or {}

    def arrays(self, project: int, control: str, fingerprint: str, labels: tuple[str, ...]) -> Memory:
        store = self._store()
        changes = store.state(project).changes
        with self._lock:
            cached = self._examples.get(project)
        if cached is None or cached[0] != changes:
            cached = (changes, store.examples(project), {})
            with self._lock:
                self._examples[project] = cached
                self._examples.move_to_end(project)
                while len(self._examples) > LOADED_PROJECTS:
                    self._examples.popitem(last=False)
        key = (control, fingerprint, labels)
        if key not in cached[2]:
            cached[2][key] = memory_arrays(cached[1], control, fingerprint, labels)
        return cached[2][key]


def memory_controls(spec: ChunkSpec) -> list[tuple[ControlSpec, str]]:
    """The chunk's learning controls with their fingerprints (what their TagCLIP scores depend on)."""
    if spec.memory is None:
        return []
    return [
        (c, control_fingerprint(spec.model_key, spec.background, c.name, c.labels, c.prompts))
        for c in spec.controls
        if c.name in spec.memory.controls
    ]


def use_memory(
    spec: ChunkSpec,
    outputs: dict[int, dict[str, dict[str, Any]]],
    predictions: Mapping[tuple, Mapping[int, Any]],
    digests: Mapping[int, Mapping[str, str]],
    runtime: Any,
) -> None:
    """Cache each image's embedding and scores for the learning jobs, then adapt the learning controls' outputs in
    place. `predictions`: worker.jobs's ImagePredictions by classes key and task index."""
    controls = memory_controls(spec)
    if not controls or spec.memory is None:
        return
    task_ids = {t.index: t.id for t in spec.tasks}
    embeddings = _embeddings(controls, predictions)
    _cache(spec, controls, outputs, embeddings, digests, runtime)
    calibrations = runtime.memories.calibrations(spec.memory.project, spec.memory.generation)
    for control, fingerprint in controls:
        data = calibrations.get(control.name)
        if not data or data.get("fingerprint") != fingerprint:
            continue  # generation 0, or a calibration made for other classes: TagCLIP's output stands
        calibration = Calibration.from_json(data)
        if calibration.labels != control.labels or not calibration.active:
            continue
        indices = [i for i in sorted(outputs) if control.name in outputs[i] and i in embeddings]
        if not indices:
            continue
        memory = runtime.memories.arrays(spec.memory.project, control.name, fingerprint, control.labels)
        scores = np.array([outputs[i][control.name]["scores"] for i in indices], dtype=np.float64)
        tags = np.array([[label in outputs[i][control.name]["tags"] for label in control.labels] for i in indices])
        queries = np.stack([embeddings[i] for i in indices])
        adapted, chosen = adapt(calibration, memory, queries, scores, tags, [task_ids.get(i) for i in indices])
        for row, index in enumerate(indices):
            output = outputs[index][control.name]
            output["scores"] = [round(float(s), SCORE_DIGITS) for s in adapted[row]]
            output["tags"] = [label for label, keep in zip(control.labels, chosen[row], strict=True) if keep]


def _embeddings(
    controls: list[tuple[ControlSpec, str]], predictions: Mapping[tuple, Mapping[int, Any]]
) -> dict[int, np.ndarray]:
    """Each task's CLIP embedding (the learning controls share one image)."""
    out: dict[int, np.ndarray] = {}
    for control, _ in controls:
        for index, prediction in predictions.get((control.data_key, control.labels, control.prompts), {}).items():
            if isinstance(prediction, ImagePrediction) and prediction.embedding is not None:
                out.setdefault(index, prediction.embedding)
    return out


def _cache(
    spec: ChunkSpec,
    controls: list[tuple[ControlSpec, str]],
    outputs: Mapping[int, Mapping[str, Mapping[str, Any]]],
    embeddings: Mapping[int, np.ndarray],
    digests: Mapping[int, Mapping[str, str]],
    runtime: Any,
) -> None:
    """What a learning job would compute for these images, before the memory changes the scores."""
    data_key = controls[0][0].data_key
    for index, embedding in embeddings.items():
        image = digests.get(index, {}).get(data_key)
        if image is None:
            continue
        scores = {
            fp: np.asarray(outputs[index][c.name]["scores"]) for c, fp in controls if c.name in outputs.get(index, {})
        }
        try:
            runtime.image_cache.put(spec.model_key, image, embedding, scores)
        except Exception as e:  # a cache is an optimisation: a learning job recomputes what is missing
            log.warning("image cache write failed: %s", e)
