"""/setup and /predict: label config -> plan -> job payloads -> dispatcher -> regions -> validated results.

Per-task outcomes (one entry per task, by position, as Label Studio zips them):
* ok: `{"result": [regions], "score": mean region score, "model_version": v}`;
* failed for a reason of its own (unreadable image, download error): `{"result": [], "score": 0, ...}`,
  stored by Label Studio so the task is not retried forever with the same version; reason logged;
* not done by PREDICT_TIMEOUT, or its job failed as a whole: an entry without "result", which Label
  Studio skips (one log line there), so the task is predicted again next time; reason logged here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .converters import MaskDefaults, task_regions
from .converters.base import prediction_score
from .converters.regions import MASK_MODES
from .errors import BadRequestError
from .fetch import Source
from .identity import model_key, model_version, normalize_background
from .jobspec import build_payloads, chunk_size_for
from .labelconfig import LabelConfigCache, ParsedConfig, PredictionPlan
from .metrics import Metrics
from .projects import ProjectContext, ProjectStore
from .queue import ChunkOutcome, Dispatcher
from .settings import Settings

log = logging.getLogger(__name__)

# extra_params keys of the project's mask defaults (a region control's tag attributes override them).
MASK_MODE_PARAM = "mask_mode"
MIN_AREA_PARAM = "min_region_area"
# extra_params mask_mode that switches the project's masks off (region controls with model_masks="true" keep them).
MASKS_OFF = "off"


@dataclass(frozen=True)
class Options:
    """Per-project options from the ML backend's extra_params (JSON in Label Studio's model settings)."""

    background: str
    threshold: float | None
    masks: MaskDefaults = MaskDefaults()


class Predictor:
    def __init__(self, settings: Settings, dispatcher: Dispatcher, projects: ProjectStore, metrics: Metrics) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.projects = projects
        self.metrics = metrics
        self.configs = LabelConfigCache()
        self._model_key: str | None = None

    @property
    def model_key(self) -> str:
        if self._model_key is None:  # reads the checkpoint's ends once (milliseconds)
            self._model_key = model_key(self.settings)
        return self._model_key

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
        options = self.options(context)
        self.projects.put(project, context)
        self.dispatcher.warm_up()
        if not schema:
            return {"model_version": self._version_without_config(options)}
        parsed = self.configs.get(schema, options.threshold, options.masks)
        return {"model_version": self.version(parsed, options)}

    def options(self, context: ProjectContext | None) -> Options:
        extra = context.extra_params if context else {}
        background = extra.get("background", self.settings.background)
        if not isinstance(background, (str, list)) or (
            isinstance(background, list) and not all(isinstance(w, str) for w in background)
        ):
            raise BadRequestError(f"extra_params.background must be a string or a list of words, got {background!r}")
        threshold = extra.get("threshold", extra.get("model_score_threshold"))
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
                raise BadRequestError(f"extra_params.threshold must be a number in [0, 1], got {threshold!r}")
            threshold = float(threshold)
        masks = _mask_defaults(extra, self.settings)
        return Options(background=normalize_background(background), threshold=threshold, masks=masks)

    def version(self, parsed: ParsedConfig, options: Options) -> str:
        return model_version(self.model_key, self.settings.model_name, parsed.plan, options.background)

    def _version_without_config(self, options: Options) -> str:
        return model_version(self.model_key, self.settings.model_name, PredictionPlan((), ()), options.background)

    # --- /predict ---
    def predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + self.settings.predict_timeout
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequestError("body must have 'tasks': a list of Label Studio tasks")
        if not all(isinstance(t, Mapping) for t in tasks):
            raise BadRequestError("every entry of 'tasks' must be an object")
        project = str(body.get("project") or "")
        context = self.projects.get(project) if project else None
        config = body.get("label_config") or (context.schema if context else None)
        if not isinstance(config, str) or not config.strip():
            raise BadRequestError("body must have 'label_config' (or call /setup with the schema first)")
        options = self.options(context)
        parsed = self.configs.get(config, options.threshold, options.masks)
        version = self.version(parsed, options)
        if not tasks:
            return {"results": []}
        plan = parsed.plan
        if not plan.controls:
            log.warning(
                "project %s: nothing to predict in this label config (%s); %d empty results",
                project or "?",
                "; ".join(plan.skipped) or "no controls",
                len(tasks),
            )
            self.metrics.tasks.labels("empty").inc(len(tasks))
            return {"results": [_empty(version) for _ in tasks]}

        source = Source(
            url=self.settings.label_studio_url or (context.hostname if context else None),
            api_key=self.settings.label_studio_api_key or (context.access_token if context else None),
        )
        chunk = chunk_size_for(len(tasks), self.dispatcher.worker_count(), self.settings.chunk_size)
        payloads = build_payloads(
            [c.to_payload() for c in plan.controls], tasks, source, options.background, self.model_key, chunk
        )
        outcomes = self.dispatcher.run(payloads, deadline)
        results = self._assemble(tasks, payloads, outcomes, parsed, version)
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
        outcomes: list[ChunkOutcome],
        parsed: ParsedConfig,
        version: str,
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        for payload, outcome in zip(payloads, outcomes, strict=True):
            indices = [t["index"] for t in payload["tasks"]]
            if outcome.result is None:
                reason = outcome.error or f"not done within PREDICT_TIMEOUT={self.settings.predict_timeout:g} s"
                kind = "failed_job" if outcome.error else "timeout"
                for i in indices:
                    log.warning(
                        "task %s: no prediction (will be retried by Label Studio later): %s", tasks[i].get("id"), reason
                    )
                    self.metrics.tasks.labels("unfinished").inc()
                    self.metrics.failures.labels(kind).inc()
                    results[i] = _skipped(version, reason)
                continue
            by_index = {t.get("index"): t for t in outcome.result.get("tasks", []) if isinstance(t, Mapping)}
            for i in indices:
                results[i] = self._task_result(tasks[i], by_index.get(i), parsed, version)
        return [r if r is not None else _skipped(version, "lost") for r in results]

    def _task_result(
        self, task: Mapping[str, Any], output: Mapping[str, Any] | None, parsed: ParsedConfig, version: str
    ) -> dict[str, Any]:
        task_id = task.get("id")
        if output is None:
            return self._failed(task_id, version, "worker returned no entry for this task", "missing")
        if output.get("error"):
            return self._failed(task_id, version, str(output["error"]), str(output.get("kind") or "image"))
        try:
            regions = task_regions(output.get("outputs") or {}, parsed.plan.controls)
        except (KeyError, TypeError, ValueError) as e:
            return self._failed(task_id, version, f"malformed worker output: {e}", "malformed")
        errors = parsed.interface.validate_prediction({"result": regions}, return_errors=True)
        if errors:
            return self._failed(task_id, version, f"prediction failed validation: {errors}", "invalid")
        self.metrics.tasks.labels("ok" if regions else "empty").inc()
        return {"result": regions, "score": prediction_score(regions), "model_version": version}

    def _failed(self, task_id: Any, version: str, reason: str, kind: str) -> dict[str, Any]:
        log.warning("task %s: empty prediction: %s", task_id, reason)
        self.metrics.tasks.labels("failed").inc()
        self.metrics.failures.labels(kind).inc()
        return _empty(version)


def _mask_defaults(extra: Mapping[str, Any], settings: Settings) -> MaskDefaults:
    """The project's mask defaults from extra_params: {"mask_mode": "coarse" | "clip-es" | "off",
    "min_region_area": pixels}; absent keys keep the backend's TAGCLIP_MASK_MODE / TAGCLIP_MIN_REGION_AREA."""
    mode = extra.get(MASK_MODE_PARAM)
    if mode is not None and (not isinstance(mode, str) or mode.strip().lower() not in (*MASK_MODES, MASKS_OFF)):
        raise BadRequestError(f"extra_params.{MASK_MODE_PARAM} must be one of {(*MASK_MODES, MASKS_OFF)}, got {mode!r}")
    area = extra.get(MIN_AREA_PARAM, settings.min_region_area)
    if isinstance(area, bool) or not isinstance(area, int) or area < 0:
        raise BadRequestError(f"extra_params.{MIN_AREA_PARAM} must be an integer >= 0, got {area!r}")
    mode = settings.mask_mode if mode is None else mode.strip().lower()
    if mode == MASKS_OFF:
        return MaskDefaults(min_region_area=area, enabled=False)
    return MaskDefaults(mode=mode, min_region_area=area)


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
