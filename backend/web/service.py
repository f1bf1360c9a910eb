"""/setup and /predict: label config -> plan -> job payloads -> dispatcher -> regions -> validated results.

Per-task outcomes (one entry per task, by position, as Label Studio zips them):
* ok: `{"result": [regions], "score": mean region score, "model_version": v}`;
* failed for good, for a reason of its own (not an image, HTTP 404, too large, refused by the address policy):
  `{"result": [], "score": 0, ...}`, stored by Label Studio so the task is not retried forever with the same
  version; reason logged;
* failed for a reason that may pass (a download timeout, HTTP 5xx or 429, 401/403 from a revoked or disabled
  key, a refused connection), not done by PREDICT_TIMEOUT, or its job failed as a whole: an entry without
  "result", which Label Studio skips (one log line there), so the task is predicted again next time; reason
  logged here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..contracts.predict import build_payloads, chunk_size_for
from ..contracts.source import source_ref
from ..contracts.vocab import build_payloads as build_vocabulary_payloads
from ..contracts.vocab import vocabulary_prompts
from ..errors import BadRequestError, BusyError, PayloadTooLargeError, QueueUnavailableError
from ..labelstudio.auth import Source, task_source
from ..resolve import Resolution, Resolver
from ..results import task_result
from ..settings import Settings
from .dispatch import ChunkOutcome, Dispatcher
from .projects import ProjectContext, ProjectStore
from .prometheus import Metrics

log = logging.getLogger(__name__)


class PredictionService:
    """What /setup and /predict do, between the HTTP layer and the dispatcher."""

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        projects: ProjectStore,
        metrics: Metrics,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.projects = projects
        self.metrics = metrics
        self.resolver = resolver or Resolver(settings)
        # A /predict holds a server thread while it waits: at most predict_slots at once, so the reserved threads
        # always answer /health and /setup. Past that, 503 at once rather than a queue behind the waiting ones.
        self._slots = threading.BoundedSemaphore(settings.predict_slots)

    # --- /setup ---
    def setup(self, body: Mapping[str, Any]) -> dict[str, Any]:
        project = _project_id(body)
        extra = body.get("extra_params") or {}
        if not isinstance(extra, Mapping):
            raise BadRequestError(f"extra_params must be an object, got {type(extra).__name__}")
        schema = body.get("schema")
        if schema is not None and not isinstance(schema, str):
            raise BadRequestError("schema must be the label config as a string")
        for field in ("hostname", "access_token"):
            if body.get(field) is not None and not isinstance(body.get(field), str):
                raise BadRequestError(f"{field} must be a string")
        context = ProjectContext(
            hostname=body.get("hostname") or None,
            access_token=body.get("access_token") or None,
            extra_params=dict(extra),
            schema=schema,
        )
        self.resolver.options(context.extra_params)  # refuse malformed extra_params before storing them
        self.projects.put(project, context)
        self.dispatcher.warm_up()
        if not schema:
            return {"model_version": self.resolver.version_without_config(context.extra_params)}
        resolution = self.resolver.resolve(schema, context.extra_params, project)
        self._announce_vocabulary(project, resolution)
        return {"model_version": resolution.model_version}

    def _announce_vocabulary(self, project: str, resolution: Resolution) -> None:
        """Start building the label config's text classifier on the workers (or embedded mode's builder thread),
        never here: /setup must answer within Label Studio's 3 s however many labels there are."""
        prompts = vocabulary_prompts(c.prompts for control in resolution.plan.controls for c in control.classes)
        if not prompts:
            return
        payloads = build_vocabulary_payloads(resolution.model_key, resolution.options.background, prompts)
        try:
            started = self.dispatcher.announce_vocabulary(payloads[0]["vocabulary"], payloads)
        except QueueUnavailableError as e:  # /predict jobs build what they need themselves
            log.warning("project %s: vocabulary build not started: %s", project or "?", e)
            return
        if started:
            log.info(
                "project %s: building %d prompts' text classifier in %d parts", project, len(prompts), len(payloads)
            )

    # --- /predict ---
    def predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if not self._slots.acquire(blocking=False):
            self.metrics.failures.labels("busy").inc()
            raise BusyError(
                f"{self.settings.predict_slots} /predict requests are already waiting on predictions in this process; "
                "try again shortly (more SERVER_THREADS, SERVER_WORKERS or workers raise the limit)"
            )
        try:
            return self._predict(body)
        finally:
            self._slots.release()

    def _predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + self.settings.predict_timeout
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequestError("body must have 'tasks': a list of Label Studio tasks")
        if not all(isinstance(t, Mapping) for t in tasks):
            raise BadRequestError("every entry of 'tasks' must be an object")
        if len(tasks) > self.settings.max_predict_tasks:
            raise PayloadTooLargeError(
                f"{len(tasks)} tasks in one /predict, over MAX_PREDICT_TASKS={self.settings.max_predict_tasks}: "
                "select fewer tasks, or pre-annotate the project with `tagclip preannotate`"
            )
        project = str(body.get("project") or "")
        context = self.projects.get(project) if project else None
        config = body.get("label_config") or (context.schema if context else None)
        if not isinstance(config, str) or not config.strip():
            raise BadRequestError("body must have 'label_config' (or call /setup with the schema first)")
        resolution = self.resolver.resolve(config, context.extra_params if context else None, project or None)
        version = resolution.model_version
        if not tasks:
            return {"results": []}
        plan = resolution.plan
        if not plan.controls:
            log.warning(
                "project %s: nothing to predict in this label config (%s); %d empty results",
                project or "?",
                "; ".join(plan.skipped) or "no controls",
                len(tasks),
            )
            self.metrics.tasks.labels("empty").inc(len(tasks))
            return {"results": [_empty(version) for _ in tasks]}

        announced = Source(context.hostname, context.access_token) if context else None
        source = task_source(self.settings.label_studio, announced)
        chunk = chunk_size_for(len(tasks), self.dispatcher.worker_count(), self.settings.chunk_size)
        payloads = build_payloads(
            [c.to_payload() for c in plan.controls],
            tasks,
            source_ref(source, self.dispatcher.engines_hold_key(source)),
            resolution.options.background,
            resolution.model_key,
            chunk,
            resolution.learning,
        )
        outcomes = self.dispatcher.run(payloads, deadline)
        results = self._assemble(tasks, payloads, outcomes, resolution, deadline)
        log.info(
            "project %s: %d tasks in %d jobs answered in %.2f s",
            project or "?",
            len(tasks),
            len(payloads),
            time.monotonic() - started,
        )
        return {"results": results}

    def _assemble(
        self,
        tasks: list,
        payloads: list[dict[str, Any]],
        outcomes: Iterable[tuple[int, ChunkOutcome]],
        resolution: Resolution,
        deadline: float,
    ) -> list[dict[str, Any]]:
        """Each job's tasks turned into predictions as the job ends; a task not converted by `deadline` (the
        conversion of big masks takes time too) comes back without a result, as one whose job did not end."""
        version = resolution.model_version
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        for position, outcome in outcomes:
            indices = [t["index"] for t in payloads[position]["tasks"]]
            if outcome.result is None:
                kind = "failed_job" if outcome.error else "timeout"
                for i in indices:
                    results[i] = self._unfinished(tasks[i], version, outcome.error or self._late(), kind)
                continue
            by_index = {t.get("index"): t for t in outcome.result.get("tasks", []) if isinstance(t, Mapping)}
            for i in indices:
                if time.monotonic() >= deadline:
                    results[i] = self._unfinished(tasks[i], version, self._late(), "timeout")
                else:
                    results[i] = self._task_result(tasks[i], by_index.get(i), resolution)
        return [r if r is not None else _skipped(version, "lost") for r in results]

    def _late(self) -> str:
        return f"not done within PREDICT_TIMEOUT={self.settings.predict_timeout:g} s"

    def _unfinished(self, task: Mapping[str, Any], version: str, reason: str, kind: str) -> dict[str, Any]:
        log.warning("task %s: no prediction (will be retried by Label Studio later): %s", task.get("id"), reason)
        self.metrics.tasks.labels("unfinished").inc()
        self.metrics.failures.labels(kind).inc()
        return _skipped(version, reason)

    def _task_result(
        self, task: Mapping[str, Any], output: Mapping[str, Any] | None, resolution: Resolution
    ) -> dict[str, Any]:
        result = task_result(output, resolution)
        if result.transient:
            return self._unfinished(task, resolution.model_version, result.reason or result.kind, result.kind)
        if result.failed:
            log.warning("task %s: empty prediction: %s", task.get("id"), result.reason)
            self.metrics.tasks.labels("failed").inc()
            self.metrics.failures.labels(result.kind).inc()
            return _empty(resolution.model_version)
        self.metrics.tasks.labels(result.kind).inc()
        return result.prediction


def _empty(version: str) -> dict[str, Any]:
    return {"result": [], "score": 0.0, "model_version": version}


def _skipped(version: str, reason: str) -> dict[str, Any]:
    # No "result" key: Label Studio stores nothing for this task and predicts it again next time.
    return {"score": 0.0, "model_version": version, "error": reason}


def _project_id(body: Mapping[str, Any]) -> str:
    project = body.get("project")
    if project is None:
        return ""
    if not isinstance(project, (str, int)):
        raise BadRequestError(f"project must be a string, got {type(project).__name__}")
    return str(project)
