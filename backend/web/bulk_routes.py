"""Bulk pre-annotation over HTTP, next to the ML-backend routes:

    POST /jobs {"project": id, "view": id | "filters": {...}, "chunk_size": n, "write": "auto" | "import" | "single",
                "max_tasks": n, "url": LS URL, "api_key": key}          -> 202 {"id", "attached", ...}
    GET  /jobs/<id>                                                        -> 200 status (backend.bulk.status)
    POST /jobs/<id>/retry {"url", "api_key"}                               -> 202 {"id", "requeued"}
    POST /jobs/<id>/cancel                                                 -> 202 {"id", "dropped_chunks",
                                                                              "running_chunks", "state"}

Who may use them:
* With basic auth configured (BASIC_AUTH_USER/BASIC_AUTH_PASS), the basic-auth credentials; a request may then
  leave out its Label Studio and use the backend's LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY.
* Without basic auth (the default), only callers that bring a Label Studio URL and a key of it, as `url` and
  `api_key` in the body or in the X-Label-Studio-Url and X-Label-Studio-Key headers, which the backend checks
  against that Label Studio (the key must read the project) before acting; a job is reached only with a key of
  its own Label Studio. The backend's own key is never used for them.
A caller's URL obeys the address policy (backend.netpolicy), and no Label Studio answer is echoed.

The project is read and the model_version computed within the request (errors answer at once); listing
and enqueueing run on a background thread of this process, so the answer comes before a 100k-task
listing ends. Needs REDIS_URL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from ..bulk.cancel import cancel_job
from ..bulk.planner import DEFAULT_CHUNK_SIZE, BulkPlanner, BulkRequest, Prepared
from ..bulk.state import BulkStore
from ..bulk.status import job_status
from ..errors import (
    BackendError,
    BadRequestError,
    ForbiddenError,
    LabelStudioAPIError,
    QueueRequiredError,
    UnauthorizedError,
)
from ..keys import RedisKeys
from ..labelstudio.auth import Source, same_origin
from ..labelstudio.client import LabelStudioClient
from ..netpolicy import AddressPolicy, GuardedSessions
from ..resolve import Resolver
from ..settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "tagclip_jobs"
# Background listings running at once in one backend process.
LISTING_THREADS = 2
# Headers that name the caller's Label Studio and key (a body may give them as url and api_key instead).
URL_HEADER = "X-Label-Studio-Url"
KEY_HEADER = "X-Label-Studio-Key"


@dataclass
class BulkService:
    settings: Settings
    redis: Redis | None
    resolver: Resolver
    executor: ThreadPoolExecutor
    sessions: GuardedSessions  # for callers' Label Studio URLs: public addresses only, unless trusted

    def redis_or_fail(self) -> Redis:
        if self.redis is None:
            raise QueueRequiredError(
                "bulk pre-annotation needs REDIS_URL (the job state and chunks live in Redis, workers run them); "
                "this backend runs in embedded mode"
            )
        return self.redis

    def store_and_queue(self) -> tuple[BulkStore, Queue]:
        redis = self.redis_or_fail()
        keys = RedisKeys(self.settings.queue_name)
        return BulkStore(redis, keys), Queue(keys.bulk_queue, connection=redis, serializer=JSONSerializer)

    def planner(self, body: Mapping[str, Any], project: int) -> BulkPlanner:
        """A planner on the Label Studio this request may use (see the module docstring), checked to read
        `project` when the caller brought it."""
        return BulkPlanner(self.settings, self.redis_or_fail(), self.client(body, project), self.resolver)

    def client(self, body: Mapping[str, Any], project: int) -> LabelStudioClient:
        supplied = _supplied_source(body)
        if supplied is None:
            if self.settings.basic_auth is None:
                raise UnauthorizedError(
                    f"without basic auth on the backend, /jobs needs your Label Studio URL and key ({URL_HEADER} and "
                    f"{KEY_HEADER} headers, or url and api_key in the body)"
                )
            if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
                raise BadRequestError(
                    "no Label Studio URL and key: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY on the backend, "
                    "or pass url and api_key"
                )
            return LabelStudioClient(
                Source(self.settings.label_studio_url, self.settings.label_studio_api_key),
                timeout=self.settings.label_studio_timeout,
            )
        client = LabelStudioClient(
            supplied, session=self.sessions.for_url(supplied.url or ""), timeout=self.settings.label_studio_timeout
        )
        try:
            client.project(project)
        except LabelStudioAPIError as e:
            raise ForbiddenError(f"this key cannot read project {project} there: {e}") from e
        return client

    def authorize(self, job: str, body: Mapping[str, Any]) -> None:
        """Check the caller may reach `job`: basic auth let it in, or it brought a key of the job's own Label
        Studio that reads the job's project."""
        store, _ = self.store_and_queue()
        info = store.info(job)
        supplied = _supplied_source(body)
        if supplied is None and self.settings.basic_auth is not None:
            return
        if supplied is not None and not same_origin(supplied.url, info.get("label_studio")):
            raise ForbiddenError(f"job {job} belongs to another Label Studio")
        self.client(body, int(info["project"]))


def register(app: Flask, settings: Settings, redis: Redis | None, resolver: Resolver) -> None:
    """Add the /jobs routes to the backend app; their state lives on the app."""
    executor = ThreadPoolExecutor(LISTING_THREADS, thread_name_prefix="tagclip-bulk-listing")
    sessions = GuardedSessions(AddressPolicy.of(settings.label_studio_url, settings.allowed_hosts))
    app.extensions[EXTENSION] = BulkService(settings, redis, resolver, executor, sessions)
    app.add_url_rule("/jobs", "jobs_create", _create, methods=["POST"])
    app.add_url_rule("/jobs/<job_id>", "jobs_status", _status, methods=["GET"])
    app.add_url_rule("/jobs/<job_id>/retry", "jobs_retry", _retry, methods=["POST"])
    app.add_url_rule("/jobs/<job_id>/cancel", "jobs_cancel", _cancel, methods=["POST"])


def _service() -> BulkService:
    return current_app.extensions[EXTENSION]


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True)
    if body is None and not request.get_data():
        return {}
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def _create() -> tuple[Response, int]:
    body = _body()
    service = _service()
    bulk_request = BulkRequest(
        project=_int(body, "project", required=True),
        view=_int(body, "view"),
        filters=_mapping(body, "filters"),
        chunk_size=_int(body, "chunk_size") or DEFAULT_CHUNK_SIZE,
        write=_opt_str(body, "write") or "auto",
        max_tasks=_int(body, "max_tasks"),
    )
    planner = service.planner(body, bulk_request.project)
    prepared = planner.prepare(bulk_request)
    started = planner.start(prepared)
    service.executor.submit(_list_in_background, planner, started.job, prepared)
    return (
        jsonify(
            id=started.job,
            attached=started.attached,
            project=bulk_request.project,
            model_version=prepared.model_version,
            status_url=f"/jobs/{started.job}",
        ),
        202,
    )


def _list_in_background(planner: BulkPlanner, job: str, prepared: Prepared) -> None:
    started = time.monotonic()
    try:
        count = planner.enqueue_all(job, prepared)
    except BackendError as e:
        log.warning("bulk job %s: listing stopped: %s", job, e)
        planner.store.set_fields(job, listing_error=str(e))
    except Exception:
        log.exception("bulk job %s: listing failed", job)
        planner.store.set_fields(job, listing_error="internal error; see the backend log")
    else:
        log.info("bulk job %s: %d tasks enqueued in %.1f s", job, count, time.monotonic() - started)


def _status(job_id: str) -> Response:
    _service().authorize(job_id, {})
    store, queue = _service().store_and_queue()
    status = job_status(store, queue, job_id)
    error = store.info(job_id).get("listing_error")
    if error:
        status["listing_error"] = error
    return jsonify(status)


def _retry(job_id: str) -> tuple[Response, int]:
    service, body = _service(), _body()
    store, _ = service.store_and_queue()
    # The planner refuses a job of another Label Studio than the client's.
    planner = service.planner(body, int(store.info(job_id)["project"]))
    return jsonify(id=job_id, requeued=planner.retry_failed(job_id)), 202


def _cancel(job_id: str) -> tuple[Response, int]:
    _service().authorize(job_id, _body())
    store, queue = _service().store_and_queue()
    outcome = cancel_job(store, queue, job_id)
    state = job_status(store, queue, job_id)["state"]
    return (
        jsonify(
            id=job_id,
            dropped_chunks=outcome.dropped_chunks,
            running_chunks=outcome.running_chunks,
            already_finished=outcome.already_finished,
            state=state,
        ),
        202,
    )


def _int(body: Mapping[str, Any], key: str, required: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequestError(f"'{key}' is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"'{key}' must be an integer, got {value!r}")
    return value


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequestError(f"'{key}' must be a string")
    return value or None


def _mapping(body: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, (Mapping, list)):
        raise BadRequestError(f"'{key}' must be a Data Manager filter object")
    return value


def _supplied_source(body: Mapping[str, Any]) -> Source | None:
    """The Label Studio URL and key the caller brought (both, or neither: 400 for one alone)."""
    url = _opt_str(body, "url") or request.headers.get(URL_HEADER) or None
    key = _opt_str(body, "api_key") or request.headers.get(KEY_HEADER) or None
    if (url is None) != (key is None):
        raise BadRequestError("give a Label Studio URL and its key together (url and api_key), or neither")
    return Source(url, key) if url else None
