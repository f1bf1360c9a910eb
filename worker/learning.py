"""The memory's learning jobs (backend.contracts.learn): look at reviewed tasks again, or at a whole project, and
keep one example per reviewed task (docs/learning.md).

A task is always read back from Label Studio (its data and annotations, through the export endpoint), never
taken from the webhook body: its latest submitted annotation becomes its example; a task without one (or gone)
loses its example. An example's image embedding and TagCLIP scores come from the image cache when /predict saw
the image (worker.memory), else from one engine forward, which fills the cache. After the changes, a new
generation is cut when TAGCLIP_MEMORY_GENERATION_EVERY changes have gathered since the last (or, for a rebuild,
when anything changed): the memory is calibrated (backend.memory.scoring.calibrate) and the calibrations are
published with the generation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.annotations import latest_annotation
from backend.bulk.planner import project_extra_params
from backend.contracts.learn import SCHEMA, parse_refresh, parse_sync
from backend.contracts.predict import ChunkSpec, TaskRef, parse_controls
from backend.contracts.source import KeyPlace, SourceRef
from backend.converters import ControlPlan
from backend.errors import LearningError
from backend.labelstudio.auth import Source
from backend.labelstudio.client import LabelStudioClient
from backend.memory.examples import (
    ControlReview,
    Example,
    learning_controls,
    memory_arrays,
    plan_fingerprint,
    reviewed_labels,
)
from backend.memory.scoring import ScoringConfig, calibrate
from backend.memory.store import MemoryStore
from backend.resolve import Resolution
from tagclip_core.types import ImagePrediction

from .loading import load_in_groups
from .runtime import Runtime, current_runtime
from .vocab import ReadyColumns

log = logging.getLogger(__name__)

# Reviewed tasks whose images are fetched and predicted together.
LEARN_BATCH = 16
# Up to this many tasks, their stored examples are read one by one; beyond, all at once.
FEW_TASKS = 64


@dataclass
class LearnOutcome:
    """What one job did to a project's memory."""

    project: int
    added: list[int] = field(default_factory=list)  # tasks whose example was added or replaced
    removed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    computed: int = 0  # images the engine ran on (the others came from the image cache)
    generation: int = 0
    cut: bool = False  # this job cut the generation
    examples: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "project": self.project,
            "added": self.added,
            "removed": self.removed,
            "unchanged": len(self.unchanged),
            "failed": {str(k): v for k, v in self.failed.items()},
            "computed": self.computed,
            "generation": self.generation,
            "cut": self.cut,
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
        }


# --- job functions (by dotted path: backend.contracts.learn.LEARN_JOB_FUNCTIONS) ---
def refresh_tasks(payload: dict[str, Any]) -> dict[str, Any]:
    """Look at some tasks again (annotation created, updated or deleted; task deleted)."""
    runtime = current_runtime()
    request = parse_refresh(payload)
    resolution = runtime.resolver.resolve(request.label_config, request.extra_params, request.project)
    learner = Learner(runtime, resolution, request.project, runtime.source(request.source))
    tasks = list(
        dict.fromkeys([*request.tasks, *runtime.memory.tasks_of_annotations(request.project, request.annotations)])
    )
    return learner.refresh(tasks).to_json()


def sync_project(payload: dict[str, Any]) -> dict[str, Any]:
    """Bring a project's memory up to date with Label Studio ("Start Training", `tagclip learn`)."""
    runtime = current_runtime()
    request = parse_sync(payload)
    source = runtime.source(request.source)
    client = runtime.label_studio_client(source)
    project = client.project(request.project)
    extra = project_extra_params(client.ml_backends(request.project))
    resolution = runtime.resolver.resolve(project.get("label_config") or "", extra, request.project)
    learner = Learner(runtime, resolution, request.project, source, client)
    return learner.sync(rebuild=request.rebuild).to_json()


class Learner:
    """Keeps one project's memory in step with its reviewed tasks, for one resolved label config."""

    def __init__(
        self,
        runtime: Runtime,
        resolution: Resolution,
        project: int,
        source: Source,
        client: LabelStudioClient | None = None,
    ) -> None:
        self.runtime = runtime
        self.store: MemoryStore = runtime.memory
        self.resolution = resolution
        self.project = project
        self.source = source
        self.client = client
        self.controls: tuple[ControlPlan, ...] = learning_controls(resolution.plan)
        self.fingerprints = {
            c.name: plan_fingerprint(resolution.model_key, resolution.options.background, c) for c in self.controls
        }
        settings = runtime.settings
        self.scoring = ScoringConfig(min_support=settings.memory_min_support)
        if not self.controls:
            raise LearningError(
                f"project {project}: nothing to learn in its label config (the memory learns Choices and Taxonomy "
                "on an Image, without model_score_threshold)"
            )

    # --- the two jobs ---
    def refresh(self, task_ids: Sequence[int]) -> LearnOutcome:
        """Look at these tasks again, as Label Studio holds them now."""
        found = {int(t["id"]): t for t in self._client().annotated_tasks(self.project, list(task_ids))}
        return self.learn([found[t] for t in task_ids if t in found], [t for t in task_ids if t not in found])

    def sync(self, rebuild: bool) -> LearnOutcome:
        """Every annotated task of the project; examples of tasks no longer annotated go."""
        annotated = self._client().annotated_tasks(self.project)
        present = {int(t["id"]) for t in annotated}
        stale = [e.task for e in self.store.examples(self.project) if e.task not in present]
        return self.learn(annotated, stale, force_cut=rebuild)

    def learn(
        self, tasks: Sequence[Mapping[str, Any]], gone: Sequence[int] = (), force_cut: bool = False
    ) -> LearnOutcome:
        """Learn `tasks` (Label Studio tasks with their annotations), forget `gone`, then cut a generation if due
        (with `force_cut`, whenever anything changed)."""
        started = time.monotonic()
        outcome = LearnOutcome(self.project)
        if len(tasks) > FEW_TASKS:
            current = {e.task: e for e in self.store.examples(self.project)}
        else:
            ids = [int(t["id"]) for t in tasks]
            current = {t: e for t in ids if (e := self.store.example(self.project, t)) is not None}
        self._apply(tasks, gone, current, outcome)
        return self._finish(outcome, force_cut, started)

    def _client(self) -> LabelStudioClient:
        if self.client is None:
            self.client = self.runtime.label_studio_client(self.source)
        return self.client

    # --- steps ---
    def _apply(
        self,
        tasks: Sequence[Mapping[str, Any]],
        gone: Sequence[int],
        current: Mapping[int, Example],
        outcome: LearnOutcome,
    ) -> None:
        """Examples for `tasks` (Label Studio tasks with annotations), removal for `gone` and for tasks whose
        annotations were all cancelled. `current`: the stored examples of these tasks."""
        reviews = []
        for task in tasks:
            annotation = latest_annotation(task)
            if annotation is None or not isinstance(annotation.get("id"), int):
                gone = [*gone, int(task["id"])]
            elif self._unchanged(current.get(int(task["id"])), annotation):
                outcome.unchanged.append(int(task["id"]))
            else:
                reviews.append((task, annotation))
        outcome.removed += self.store.remove_tasks(self.project, list(gone))
        max_examples = self.runtime.settings.memory_max_examples
        for start in range(0, len(reviews), LEARN_BATCH):
            for example in self._examples(reviews[start : start + LEARN_BATCH], outcome):
                put = self.store.put(self.project, example, max_examples)
                (outcome.added if put.changed else outcome.unchanged).append(example.task)

    def _unchanged(self, current: Example | None, annotation: Mapping[str, Any]) -> bool:
        """The stored example already holds this annotation, for the current classes."""
        return (
            current is not None
            and current.annotation == annotation["id"]
            and current.updated_at == _updated_at(annotation)
            and all(
                (r := current.controls.get(name)) is not None and r.fingerprint == fp
                for name, fp in self.fingerprints.items()
            )
        )

    def _examples(
        self, reviews: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], outcome: LearnOutcome
    ) -> list[Example]:
        """One example per review whose image could be fetched and predicted (the others go to `failed`)."""
        data_key = self.controls[0].data_key
        spec = ChunkSpec(
            model_key=self.resolution.model_key,
            background=self.resolution.options.background,
            controls=parse_controls([c.to_payload() for c in self.controls]),
            tasks=tuple(
                TaskRef(index=i, id=int(task["id"]), images={data_key: (task.get("data") or {}).get(data_key)})
                for i, (task, _) in enumerate(reviews)
            ),
            source=SourceRef(self.source.url, self.source.api_key, KeyPlace.PAYLOAD),  # in-process: never serialized
        )
        digests: dict[int, dict[str, str]] = {}
        features: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        columns = ReadyColumns(self.runtime)
        for group in load_in_groups(spec, self.runtime, digests):
            for index, (kind, message) in group.errors.items():
                outcome.failed[int(reviews[index][0]["id"])] = f"{kind}: {message}"
            features.update(self._features(group.spec, group.images, digests, outcome, columns))
        examples = []
        for index, (task, annotation) in enumerate(reviews):
            if index not in features:
                continue
            embedding, scores = features[index]
            labels = reviewed_labels(annotation.get("result") or [], self.controls)
            examples.append(
                Example(
                    task=int(task["id"]),
                    annotation=int(annotation["id"]),
                    updated_at=_updated_at(annotation),
                    image=digests[index][data_key],
                    embedding=embedding.astype(np.float16),
                    controls={
                        c.name: ControlReview(
                            self.fingerprints[c.name], c.labels, labels[c.name], tuple(float(s) for s in scores[c.name])
                        )
                        for c in self.controls
                    },
                )
            )
        return examples

    def _features(
        self,
        spec: ChunkSpec,
        images: Mapping[int, Mapping[str, Any]],
        digests: Mapping[int, Mapping[str, str]],
        outcome: LearnOutcome,
        columns: ReadyColumns,
    ) -> dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Each image's embedding and per-control TagCLIP scores: from the image cache, else from the engine."""
        data_key = self.controls[0].data_key
        model_key = self.resolution.model_key
        out: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        missing = []
        for index in images:
            cached = self.runtime.image_cache.get(model_key, digests[index][data_key])
            scores = {c.name: cached.scores.get(self.fingerprints[c.name]) for c in self.controls}
            if cached.embedding is not None and all(s is not None for s in scores.values()):
                out[index] = (cached.embedding, scores)
            else:
                missing.append(index)
        if missing:
            out.update(self._compute(spec, missing, images, digests, outcome, columns))
        return out

    def _compute(
        self,
        spec: ChunkSpec,
        indices: list[int],
        images: Mapping[int, Mapping[str, Any]],
        digests: Mapping[int, Mapping[str, str]],
        outcome: LearnOutcome,
        columns: ReadyColumns,
    ) -> dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Run the engine on the images the cache did not have (one forward per set of classes) and cache them."""
        data_key = self.controls[0].data_key
        batch = [images[i][data_key] for i in indices]
        found: dict[int, tuple[np.ndarray | None, dict[str, np.ndarray]]] = {i: (None, {}) for i in indices}
        predicted: dict[tuple, list] = {}
        for control in spec.controls:
            classes = (control.labels, control.prompts)
            if classes not in predicted:
                # As /predict jobs do: missing columns one lock hold each, so a timeout keeps what was built.
                classes_of_control = columns.classes(control, spec.background)
                with self.runtime.engine_lock:
                    self.runtime.engine.set_classes(classes_of_control, background=spec.background)
                    predicted[classes] = self.runtime.engine.predict_each(batch, embeddings=True)
            for index, prediction in zip(indices, predicted[classes], strict=True):
                if isinstance(prediction, ImagePrediction) and prediction.embedding is not None:
                    found[index] = (prediction.embedding, {**found[index][1], control.name: prediction.scores})
                else:
                    outcome.failed[spec.tasks[index].id or 0] = f"engine: {prediction}"
        outcome.computed += len(indices)
        out = {}
        for index, (embedding, scores) in found.items():
            if embedding is None or len(scores) != len(self.controls):
                continue
            out[index] = (embedding, scores)
            by_fingerprint = {self.fingerprints[name]: s for name, s in scores.items()}
            self.runtime.image_cache.put(self.resolution.model_key, digests[index][data_key], embedding, by_fingerprint)
        return out

    def _finish(self, outcome: LearnOutcome, force_cut: bool, started: float) -> LearnOutcome:
        every = 1 if force_cut else self.runtime.settings.memory_generation_every
        generation = cut_if_due(self.store, self.project, self.resolution, self.controls, every, self.scoring)
        state = self.store.state(self.project)
        outcome.cut = generation is not None
        outcome.generation = state.generation
        outcome.examples = state.examples
        outcome.seconds = time.monotonic() - started
        log.info(
            "project %s memory: %d added, %d removed, %d unchanged, %d failed; %d examples, generation %d%s",
            self.project,
            len(outcome.added),
            len(outcome.removed),
            len(outcome.unchanged),
            len(outcome.failed),
            outcome.examples,
            outcome.generation,
            " (new)" if outcome.cut else "",
        )
        return outcome


def cut_if_due(
    store: MemoryStore,
    project: int,
    resolution: Resolution,
    controls: Sequence[ControlPlan],
    every: int,
    scoring: ScoringConfig,
) -> int | None:
    """Cut a new generation when `every` changes have gathered since the last: calibrate each learning control
    on the memory as it is, and publish. Returns the new generation, or None (not due, or another process is
    cutting: its cut includes these changes or the next one will)."""
    if store.state(project).pending < max(1, every) or not store.claim_cut(project):
        return None
    try:
        state = store.state(project)
        examples = store.examples(project)
        calibrations = {}
        for control in controls:
            fingerprint = plan_fingerprint(resolution.model_key, resolution.options.background, control)
            memory = memory_arrays(examples, control.name, fingerprint, control.labels)
            calibration = calibrate(memory, control.labels, scoring)
            calibrations[control.name] = {"fingerprint": fingerprint, **calibration.to_json()}
        return store.publish(project, calibrations, state.changes)
    except BaseException:
        store.release_cut(project)
        raise


def _updated_at(annotation: Mapping[str, Any]) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")
