"""/webhook's work: Label Studio's events -> the memory's learning jobs (docs/learning.md). The web process only
decides and submits; a worker (queue mode) or the embedded engine's threads read the tasks back from Label Studio
and compute what the memory needs.

An event counts only for a project the backend has seen /setup for (its Label Studio address, key and
extra_params, backend.web.projects) and that learns (extra_params.learn). Anything else is skipped with a reason
(logged): "Start Training" or `tagclip learn` bring a memory up to date later.
"""

from __future__ import annotations

from typing import Any

from ..contracts.learn import (
    REFRESH_FUNCTION,
    SYNC_FUNCTION,
    RefreshRequest,
    SyncRequest,
    refresh_payload,
    sync_payload,
)
from ..contracts.source import source_ref
from ..errors import HTTPError
from ..labelstudio.auth import Source, task_source
from ..memory.events import EventKind, parse_event
from ..resolve import Resolver
from ..settings import Settings
from .dispatch import Dispatcher
from .projects import ProjectStore


class LearningIntake:
    def __init__(self, settings: Settings, projects: ProjectStore, resolver: Resolver, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.projects = projects
        self.resolver = resolver
        self.dispatcher = dispatcher

    def handle(self, body: Any) -> str:
        """Submit the learning job a webhook body asks for; returns what was done, for the log."""
        event = parse_event(body)
        if event is None:
            return "nothing to learn"
        context = self.projects.get(event.project_uid) if event.project_uid else None
        if context is None:
            return f"project {event.project}: no /setup seen for it yet; skipped"
        config = event.label_config or context.schema
        if not config:
            return f"project {event.project}: no label config known; skipped"
        try:
            resolution = self.resolver.resolve(config, context.extra_params, event.project)
        except HTTPError as e:
            return f"project {event.project}: {e}; skipped"
        if not resolution.options.learn:
            return f"project {event.project}: learning is off"
        if resolution.learning is None:
            return f"project {event.project}: nothing to learn in its label config (Choices or Taxonomy on an Image)"
        source = task_source(self.settings.label_studio, Source(context.hostname, context.access_token))
        source = source_ref(source, self.dispatcher.engines_hold_key(source))
        if event.kind is EventKind.SYNC:
            payload = sync_payload(SyncRequest(event.project, source))
            job = self.dispatcher.submit(SYNC_FUNCTION, payload, dedupe=f"sync-{event.project}")
            return f"project {event.project}: sync {'job ' + job if job else 'already waiting'}"
        request = RefreshRequest(event.project, config, context.extra_params, source, event.tasks, event.annotations)
        job = self.dispatcher.submit(REFRESH_FUNCTION, refresh_payload(request))
        what = f"{len(event.tasks)} task(s), {len(event.annotations)} deleted annotation(s)"
        return f"project {event.project}: refresh of {what}, job {job}"
