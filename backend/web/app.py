"""The Flask app factory. Routes speak label-studio-ml's protocol: /health, /setup, /predict, /webhook,
plus /metrics. State lives on the app (`app.extensions["tagclip"]`), never in module globals."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import BadRequestError, HTTPError, UnauthorizedError
from ..keys import RedisKeys
from ..memory.store import open_store
from ..resolve import Resolver
from ..settings import Settings
from . import bulk_routes
from .dispatch import Dispatcher, RedisDispatcher, make_dispatcher
from .learning import LearningIntake
from .projects import ProjectStore
from .prometheus import Metrics
from .service import PredictionService

log = logging.getLogger(__name__)

# Routes that answer without basic auth: /health reveals only readiness; /webhook only makes the backend read tasks
# back from Label Studio (Label Studio's webhooks carry no auth headers).
PUBLIC_ENDPOINTS = frozenset({"health", "webhook", "index", "static"})
# Largest request body per route; a larger one gets 413 before it is read. Label Studio sends every selected
# task in one /predict (35 KB for 69 tasks, measured); a label config of 10,000 labels is about 0.5 MB.
BODY_LIMITS = {
    "predict": 64 * 1024 * 1024,
    "setup": 8 * 1024 * 1024,
    "webhook": 64 * 1024,
    "jobs_create": 64 * 1024,
    "jobs_retry": 64 * 1024,
    "jobs_cancel": 64 * 1024,
}
DEFAULT_BODY_LIMIT = 64 * 1024
# Seconds a 503 (busy, Redis down, model loading) asks the caller to wait before trying again.
RETRY_AFTER_S = 5


@dataclass
class BackendState:
    settings: Settings
    dispatcher: Dispatcher
    service: PredictionService
    metrics: Metrics
    learning: LearningIntake


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> Flask:
    """Build the backend app. `settings` default to `Settings.from_env()`; nothing loads until a request
    (embedded mode starts loading the model in the background at the first /health or /setup)."""
    settings = settings or Settings.from_env()
    dispatcher = dispatcher or make_dispatcher(settings)
    metrics = Metrics(dispatcher.queue_depth, dispatcher.worker_count)
    redis = dispatcher.redis if isinstance(dispatcher, RedisDispatcher) else None
    projects = ProjectStore(redis, RedisKeys(settings.queue_name))
    # A learning project's model_version names its memory's generation (backend.memory); read, never computed here.
    resolver = Resolver(settings, generations=open_store(settings, redis).generation)
    service = PredictionService(settings, dispatcher, projects, metrics, resolver)
    state = BackendState(
        settings, dispatcher, service, metrics, LearningIntake(settings, projects, resolver, dispatcher)
    )

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = DEFAULT_BODY_LIMIT
    app.extensions["tagclip"] = state
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(HTTPError, _backend_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)

    app.add_url_rule("/", "index", _index, methods=["GET"])
    app.add_url_rule("/health", "health", _health, methods=["GET"])
    app.add_url_rule("/setup", "setup", _setup, methods=["POST"])
    app.add_url_rule("/predict", "predict", _predict, methods=["POST"])
    app.add_url_rule("/webhook", "webhook", _webhook, methods=["POST"])
    app.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])
    bulk_routes.register(app, settings, redis, resolver)  # POST /jobs, GET /jobs/<id>: bulk pre-annotation
    return app


def warm_up(app: Flask) -> None:
    """Start what takes long, without waiting for it: the embedded model's load, and hashing the checkpoint for
    model_version (the first /setup must answer within Label Studio's 3 s)."""
    state: BackendState = app.extensions["tagclip"]
    state.dispatcher.warm_up()
    threading.Thread(target=lambda: state.service.resolver.model_key, name="tagclip-model-key", daemon=True).start()


def _state() -> BackendState:
    return current_app.extensions["tagclip"]


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


# --- hooks ---
def _before() -> None:
    g.started = time.perf_counter()
    request.max_content_length = BODY_LIMITS.get(request.endpoint or "", DEFAULT_BODY_LIMIT)
    credentials = _state().settings.basic_auth
    if credentials is None or request.endpoint in PUBLIC_ENDPOINTS:
        return
    auth = request.authorization
    given_user = (auth.username or "") if auth else ""
    given_pass = (auth.password or "") if auth else ""
    user_ok = hmac.compare_digest(given_user.encode(), credentials[0].encode())
    pass_ok = hmac.compare_digest(given_pass.encode(), credentials[1].encode())
    if not (auth and user_ok and pass_ok):
        raise UnauthorizedError("wrong or missing basic-auth credentials")


def _after(response: Response) -> Response:
    endpoint = request.endpoint or "unknown"
    metrics = _state().metrics
    metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
    if "started" in g:
        metrics.latency.labels(endpoint).observe(time.perf_counter() - g.started)
    if response.status_code == 503:
        response.headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="tagclip"'
    return response


# --- errors: JSON {"error": ...}, never a traceback ---
def _backend_error(e: HTTPError) -> tuple[Response, int]:
    level = logging.WARNING if e.status >= 500 else logging.INFO
    log.log(level, "%s %s -> %d: %s", request.method, request.path, e.status, e)
    return jsonify(error=str(e)), e.status


def _http_error(e: HTTPException) -> tuple[Response, int]:
    return jsonify(error=f"{e.name}: {e.description}"), e.code or 500


def _unexpected_error(e: Exception) -> tuple[Response, int]:
    log.exception("%s %s failed", request.method, request.path)
    return jsonify(error=f"internal error ({type(e).__name__}); see the backend log"), 500


# --- routes ---
def _index() -> Response:
    return jsonify(name="tagclip-studio", routes=["/health", "/setup", "/predict", "/webhook", "/metrics", "/jobs"])


def _health() -> Response:
    report = _state().dispatcher.health()
    return jsonify(status="UP", model_class="TagCLIP", **report)


def _setup() -> Response:
    return jsonify(_state().service.setup(_json_body()))


def _predict() -> Response:
    return jsonify(_state().service.predict(_json_body()))


def _webhook() -> tuple[Response, int]:
    # At most BODY_LIMITS["webhook"] bytes are read: a larger body is answered 413 unparsed.
    body = request.get_json(silent=True, force=True)
    action = body.get("action") if isinstance(body, dict) else None
    try:
        outcome = _state().learning.handle(body)
    except Exception as e:  # an event never fails the webhook (Label Studio only logs it); a sync catches up
        log.warning("webhook: not handled: %s: %s", type(e).__name__, e)
        outcome = "not handled"
    log.info("webhook: action=%s (%d bytes): %s", action, request.content_length or 0, outcome)
    return jsonify({}), 200


def _metrics() -> Response:
    return Response(_state().metrics.render(), mimetype="text/plain; version=0.0.4")
