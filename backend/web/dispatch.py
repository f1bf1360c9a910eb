"""Run job payloads and collect their results before a deadline: through RQ (`RedisDispatcher`), or in
this process (`EmbeddedDispatcher`, when REDIS_URL is unset).

Both reach the job function by its dotted path (`jobspec.JOB_FUNCTION`) with plain JSON, so the web
process imports torch only in embedded mode, and only through that path. `submit` runs a background job
without waiting for it (the memory's learning jobs): on the `<queue>-learn` RQ queue, or on embedded mode's
threads once the engine is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .. import presence
from ..contracts.predict import JOB_FUNCTION, RUNTIME_LOADER, with_answer_by
from ..contracts.source import configured_studio
from ..contracts.vocab import JOB_FUNCTION as VOCAB_FUNCTION
from ..errors import EngineUnavailableError, QueueUnavailableError
from ..keys import RedisKeys
from ..labelstudio.auth import Source, same_origin
from ..redaction import scrub
from ..servertime import server_now
from ..settings import Settings
from ..vocabulary import VocabularyClaims

log = logging.getLogger(__name__)

# How often /predict looks at its jobs, and how often it re-queues jobs of dead workers.
POLL_INTERVAL = 0.05
ABANDONED_CHECK_INTERVAL = 1.0
# Finished job results are kept this long in Redis (they are read within the request).
RESULT_TTL = 300
# Failed jobs stay for inspection (rq-dashboard) this long; a job holds a /setup token when it names one.
FAILURE_TTL = 3600
# RQ states of a job that has not started.
_WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
# Seconds between tries to load the embedded engine after a failure.
EMBEDDED_RELOAD_INTERVAL = 30.0
# Vocabularies an embedded backend remembers having built (a /setup of one of them builds nothing).
REMEMBERED_VOCABULARIES = 256


@dataclass
class ChunkOutcome:
    """One payload's fate: its result, a terminal error, or neither (not done by the deadline)."""

    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


class Dispatcher(ABC):
    mode: str

    @abstractmethod
    def run(self, payloads: Sequence[dict[str, Any]], deadline: float) -> Iterator[tuple[int, ChunkOutcome]]:
        """Start every payload now (raising when that is impossible), then yield (position, outcome) for each as it
        ends, until `deadline` (time.monotonic()); the payloads not done by then are yielded last, unfinished.
        The caller works on each outcome as it comes, so its own work counts against the same deadline. The jobs
        carry the deadline (`answer_by` on their shared clock), so a job still running or retried after it stops
        instead of working for no one."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """Fast (< 1 s) readiness report: {"ready": bool, "mode": ..., "reason": ...}."""

    @abstractmethod
    def worker_count(self) -> int:
        """How many engines can run jobs in parallel now (for chunking); 0 when unknown."""

    @abstractmethod
    def queue_depth(self) -> int | None:
        """Jobs waiting; None when it cannot be read."""

    @abstractmethod
    def engines_hold_key(self, source: Source) -> bool:
        """True when every engine that may run a job holds its own key for `source`'s Label Studio, and `source`'s
        key is that key (so payloads need not carry it)."""

    @abstractmethod
    def submit(self, function: str, payload: dict[str, Any], dedupe: str | None = None) -> str | None:
        """Run the job function `function` (dotted path) on `payload` in the background; returns the job's id, or
        None when a job submitted with the same `dedupe` key is still waiting to start."""

    @abstractmethod
    def announce_vocabulary(self, vocabulary: str, payloads: Sequence[dict[str, Any]]) -> bool:
        """Start building a vocabulary's text classifier in the background (backend.contracts.vocab payloads),
        unless its build was already started; True when this call started it. Returns at once."""

    def warm_up(self) -> None:  # noqa: B027 - an optional hook, a no-op unless overridden
        """Start whatever takes long (embedded: loading the model) without waiting for it."""

    def close(self) -> None:  # noqa: B027 - an optional hook, a no-op unless overridden
        """Release threads and connections."""


def import_string(dotted: str) -> Any:
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


class RedisDispatcher(Dispatcher):
    """Enqueue one RQ job per payload (JSON serializer, retries), poll until done or the deadline."""

    mode = "queue"

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        self._settings = settings
        self._keys = RedisKeys(settings.queue_name)
        self.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
        # /health must answer within Label Studio's 1 s even when Redis hangs.
        self._fast_redis = Redis.from_url(settings.redis_url, socket_connect_timeout=0.3, socket_timeout=0.4)
        self.queue = Queue(self._keys.predict_queue, connection=self.redis, serializer=JSONSerializer)

    def run(self, payloads: Sequence[dict[str, Any]], deadline: float) -> Iterator[tuple[int, ChunkOutcome]]:
        try:
            payloads = with_answer_by(payloads, server_now(self.redis) + max(0.0, deadline - time.monotonic()))
            jobs = self.queue.enqueue_many(
                [
                    Queue.prepare_data(
                        JOB_FUNCTION,
                        args=(payload,),
                        timeout=self._settings.job_timeout,
                        result_ttl=RESULT_TTL,
                        failure_ttl=FAILURE_TTL,
                        retry=Retry(max=self._settings.job_retries) if self._settings.job_retries else None,
                        description=f"predict_chunk({len(payload['tasks'])} tasks)",
                    )
                    for payload in payloads
                ]
            )
        except RedisError as e:
            raise QueueUnavailableError(
                f"Redis at {_redis_address(self._settings.redis_url)} is unreachable: {e}"
            ) from e
        return self._collect(jobs, deadline)

    def _collect(self, jobs: list[Job], deadline: float) -> Iterator[tuple[int, ChunkOutcome]]:
        pending = set(range(len(jobs)))
        next_abandoned_check = time.monotonic() + ABANDONED_CHECK_INTERVAL
        while pending:
            try:
                ended = self._ended(jobs, sorted(pending))
            except RedisError as e:
                raise QueueUnavailableError(f"lost Redis while waiting for jobs: {e}") from e
            for i, outcome in ended:
                pending.discard(i)
                yield i, outcome
            now = time.monotonic()  # the caller's work on what was yielded counts too
            if not pending:
                return
            if now >= deadline:
                self._give_up([jobs[i] for i in pending])
                break
            if now >= next_abandoned_check:
                # Jobs of killed workers: their heartbeat lapsed; RQ re-queues them (Retry) or fails them.
                with contextlib.suppress(RedisError):
                    self.queue.started_job_registry.cleanup()
                next_abandoned_check = now + ABANDONED_CHECK_INTERVAL
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - now)))
        for i in sorted(pending):
            yield i, ChunkOutcome()

    def _ended(self, jobs: list[Job], pending: list[int]) -> list[tuple[int, ChunkOutcome]]:
        """The outcomes of the pending jobs that have ended (one pipelined status read)."""
        with self.redis.pipeline() as pipe:
            for i in pending:
                pipe.hget(jobs[i].key, "status")
            statuses = pipe.execute()
        ended = []
        for i, raw in zip(pending, statuses, strict=True):
            status = raw.decode() if isinstance(raw, bytes) else raw
            if status == JobStatus.FINISHED.value:
                value = jobs[i].return_value(refresh=True)
                if isinstance(value, dict):
                    ended.append((i, ChunkOutcome(result=value)))
                else:
                    ended.append((i, ChunkOutcome(error=f"job {jobs[i].id} returned {type(value).__name__}")))
            elif status in (JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value, None):
                ended.append((i, ChunkOutcome(error=self._failure_text(jobs[i], status))))
        return ended

    def submit(self, function: str, payload: dict[str, Any], dedupe: str | None = None) -> str | None:
        queue = Queue(self._keys.learn_queue, connection=self.redis, serializer=JSONSerializer)
        waiting = self._keys.learn_waiting(dedupe) if dedupe else None
        try:
            if waiting is not None:
                previous = self.redis.get(waiting)
                earlier = queue.fetch_job(previous.decode()) if previous else None
                if earlier is not None and earlier.get_status(refresh=True) in _WAITING:
                    return None
            job = queue.enqueue(
                function,
                payload,
                job_timeout=self._settings.job_timeout,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                retry=Retry(max=self._settings.job_retries) if self._settings.job_retries else None,
                description=f"{function.rsplit('.', 1)[-1]}(project {payload.get('project')})",
            )
            if waiting is not None:
                self.redis.set(waiting, job.id, ex=FAILURE_TTL)
        except RedisError as e:
            raise QueueUnavailableError(
                f"Redis at {_redis_address(self._settings.redis_url)} is unreachable: {e}"
            ) from e
        return job.id

    def announce_vocabulary(self, vocabulary: str, payloads: Sequence[dict[str, Any]]) -> bool:
        claims = VocabularyClaims(self.redis, self._keys)
        queue = Queue(self._keys.vocab_queue, connection=self.redis, serializer=JSONSerializer)
        try:
            if not claims.claim(vocabulary, len(payloads)):
                return False
            try:
                queue.enqueue_many([self._vocabulary_job(payload) for payload in payloads])
            except RedisError:
                claims.release(vocabulary)
                raise
        except RedisError as e:
            raise QueueUnavailableError(
                f"Redis at {_redis_address(self._settings.redis_url)} is unreachable: {e}"
            ) from e
        return True

    def _vocabulary_job(self, payload: dict[str, Any]) -> Any:
        return Queue.prepare_data(
            VOCAB_FUNCTION,
            args=(payload,),
            timeout=self._settings.job_timeout,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            # A killed worker's part goes back to the queue (RQ's abandoned-job cleanup), its saved columns kept.
            retry=Retry(max=self._settings.job_retries) if self._settings.job_retries else None,
            description=f"build_vocabulary({len(payload['prompts'])} prompts)",
        )

    def _failure_text(self, job: Job, status: str | None) -> str:
        if status is None:
            return f"job {job.id} vanished from Redis"
        try:
            result = job.latest_result()
            text = (result.exc_string or "").strip().splitlines() if result is not None else []
        except RedisError:
            text = []
        last = text[-1] if text else status
        return scrub(f"job {job.id} {status}: {last}")

    def _give_up(self, jobs: list[Job]) -> None:
        for job in jobs:
            try:
                if job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
                    job.cancel()
            except Exception as e:  # a job that started meanwhile cannot be canceled; leave it
                log.debug("job %s not canceled: %s", job.id, e)

    def health(self) -> dict[str, Any]:
        address = _redis_address(self._settings.redis_url)
        try:
            self._fast_redis.ping()
            workers = presence.alive(self._fast_redis, self._keys)
        except RedisError as e:
            return {
                "ready": False,
                "mode": self.mode,
                "redis": "unreachable",
                "workers": 0,
                "reason": f"Redis at {address} is unreachable: {type(e).__name__}",
            }
        report: dict[str, Any] = {
            "ready": bool(workers),
            "mode": self.mode,
            "redis": "ok",
            "workers": len(workers),
            "worker_models": sorted({w.get("model_id", "?") for w in workers}),
        }
        if not workers:
            report["reason"] = f"no worker alive on queue {self._settings.queue_name!r} (start `tagclip worker`)"
        return report

    def worker_count(self) -> int:
        try:
            return len(presence.alive(self._fast_redis, self._keys))
        except RedisError:
            return 0

    def engines_hold_key(self, source: Source) -> bool:
        if not _is_configured(self._settings, source):
            return False
        try:
            workers = presence.alive(self._fast_redis, self._keys)
        except RedisError:
            return False
        studio = configured_studio(self._settings)
        return bool(workers) and all(w.get("studio_key") == studio for w in workers)

    def queue_depth(self) -> int | None:
        try:
            return int(self._fast_redis.llen(self.queue.key))
        except RedisError:
            return None

    def close(self) -> None:
        self.redis.close()
        self._fast_redis.close()


class EmbeddedDispatcher(Dispatcher):
    """Run jobs in a thread pool of this process, with one engine loaded lazily in the background."""

    mode = "embedded"

    def __init__(
        self, settings: Settings, runtime_loader: str = RUNTIME_LOADER, job_function: str = JOB_FUNCTION
    ) -> None:
        self._settings = settings
        self._runtime_loader = runtime_loader
        self._job_function = job_function
        self._executor = ThreadPoolExecutor(settings.embedded_threads, thread_name_prefix="tagclip-job")
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._loader: threading.Thread | None = None
        self._runtime: Any = None
        self._job: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._error: str | None = None
        self._failed_at = 0.0
        self._pending = 0
        self._waiting: set[str] = set()  # dedupe keys of submitted jobs that have not started
        # Vocabulary builds run on a thread of their own, so they never hold a /predict thread; the most recent
        # vocabularies announced are remembered so a repeated /setup does not build again.
        self._vocab_builder = ThreadPoolExecutor(1, thread_name_prefix="tagclip-vocab")
        self._vocabularies: OrderedDict[str, None] = OrderedDict()
        self._closing = threading.Event()  # a build stops between parts when the dispatcher closes

    def warm_up(self) -> None:
        with self._lock:
            if self._loader is not None and (self._loader.is_alive() or self._runtime is not None):
                return
            if self._error is not None and time.monotonic() - self._failed_at < EMBEDDED_RELOAD_INTERVAL:
                return
            self._loaded.clear()
            self._error = None
            self._loader = threading.Thread(target=self._load, name="tagclip-engine-loader", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        started = time.monotonic()
        try:
            job = import_string(self._job_function)
            runtime = import_string(self._runtime_loader)(self._settings)
        except Exception as e:
            log.exception("embedded engine failed to load")
            with self._lock:
                self._error = f"{type(e).__name__}: {e}"
                self._failed_at = time.monotonic()
        else:
            with self._lock:
                self._job, self._runtime = job, runtime
            log.info("embedded engine loaded in %.1f s", time.monotonic() - started)
        finally:
            self._loaded.set()

    def run(self, payloads: Sequence[dict[str, Any]], deadline: float) -> Iterator[tuple[int, ChunkOutcome]]:
        self.warm_up()
        if not self._loaded.wait(timeout=max(0.0, deadline - time.monotonic())):
            raise EngineUnavailableError("the model is still loading; try again shortly")
        if self._runtime is None or self._job is None:
            raise EngineUnavailableError(f"the model failed to load: {self._error}")
        # The same plain-JSON boundary as the queue: what would not survive RQ does not pass here either.
        futures: list[Future] = []
        for payload in with_answer_by(payloads, time.time() + max(0.0, deadline - time.monotonic())):
            with self._lock:
                self._pending += 1
            future = self._executor.submit(self._runtime.run, self._job, json.loads(json.dumps(payload)))
            future.add_done_callback(self._finished)
            futures.append(future)
        return self._collect(futures, deadline)

    def _collect(self, futures: list[Future], deadline: float) -> Iterator[tuple[int, ChunkOutcome]]:
        position = {future: i for i, future in enumerate(futures)}
        unyielded = set(futures)
        with contextlib.suppress(FuturesTimeoutError):
            for future in as_completed(futures, timeout=max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:  # the caller's work on the earlier ones used the time up
                    break
                unyielded.discard(future)
                yield position[future], _outcome_of(future)
        for future in sorted(unyielded, key=position.__getitem__):
            future.cancel()
            yield position[future], ChunkOutcome()

    def submit(self, function: str, payload: dict[str, Any], dedupe: str | None = None) -> str | None:
        with self._lock:
            if dedupe is not None and dedupe in self._waiting:
                return None
            if dedupe is not None:
                self._waiting.add(dedupe)
            self._pending += 1
        job_id = uuid.uuid4().hex
        data = json.loads(json.dumps(payload))  # the same plain-JSON boundary as the queue

        def background() -> None:
            with self._lock:
                self._waiting.discard(dedupe or "")
            self._loaded.wait()
            if self._runtime is None:
                log.warning(
                    "background job %s (%s) dropped: the model failed to load: %s", job_id, function, self._error
                )
                return
            try:
                result = self._runtime.run(import_string(function), data)
                log.info("background job %s (%s) done: %s", job_id, function, json.dumps(result)[:300])
            except Exception:
                log.exception("background job %s (%s) failed", job_id, function)

        self.warm_up()
        future = self._executor.submit(background)
        future.add_done_callback(self._finished)
        return job_id

    def announce_vocabulary(self, vocabulary: str, payloads: Sequence[dict[str, Any]]) -> bool:
        with self._lock:
            if vocabulary in self._vocabularies:
                self._vocabularies.move_to_end(vocabulary)
                return False
            self._vocabularies[vocabulary] = None
            while len(self._vocabularies) > REMEMBERED_VOCABULARIES:
                self._vocabularies.popitem(last=False)
        data = json.loads(json.dumps(list(payloads)))  # the same plain-JSON boundary as the queue
        self.warm_up()
        self._vocab_builder.submit(self._build_vocabulary, vocabulary, data)
        return True

    def _build_vocabulary(self, vocabulary: str, payloads: list[dict[str, Any]]) -> None:
        self._loaded.wait()
        if self._runtime is None:
            log.warning("vocabulary %s not built: the model failed to load: %s", vocabulary[:8], self._error)
            with self._lock:
                self._vocabularies.pop(vocabulary, None)  # the next /setup tries again
            return
        try:
            job = import_string(VOCAB_FUNCTION)
            for payload in payloads:
                if self._closing.is_set():
                    return
                self._runtime.run(job, payload)
        except Exception:
            log.exception("vocabulary %s: build failed", vocabulary[:8])
            with self._lock:
                self._vocabularies.pop(vocabulary, None)

    def _finished(self, _future: Future) -> None:
        with self._lock:
            self._pending -= 1

    def health(self) -> dict[str, Any]:
        self.warm_up()
        if self._runtime is not None:
            return {"ready": True, "mode": self.mode, "model": "loaded"}
        if self._error is not None:
            return {
                "ready": False,
                "mode": self.mode,
                "model": "failed",
                "reason": f"model failed to load: {self._error}",
            }
        return {"ready": False, "mode": self.mode, "model": "loading", "reason": "the model is loading"}

    def worker_count(self) -> int:
        return self._settings.embedded_threads

    def engines_hold_key(self, source: Source) -> bool:
        return _is_configured(self._settings, source)  # the engine runs here, with these settings

    def queue_depth(self) -> int | None:
        return self._pending

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._closing.set()
        self._vocab_builder.shutdown(wait=False, cancel_futures=True)


def _is_configured(settings: Settings, source: Source) -> bool:
    """`source` is LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY."""
    configured = settings.label_studio
    return bool(
        configured
        and configured.api_key
        and source.api_key == configured.api_key
        and same_origin(source.url, configured.url)
    )


def _outcome_of(future: Future) -> ChunkOutcome:
    error = future.exception()
    if error is not None:
        return ChunkOutcome(error=scrub(f"{type(error).__name__}: {error}"))
    return ChunkOutcome(result=future.result())


def make_dispatcher(settings: Settings) -> Dispatcher:
    return EmbeddedDispatcher(settings) if settings.embedded else RedisDispatcher(settings)


def _redis_address(url: str | None) -> str:
    """host:port/db of a Redis URL, without credentials."""
    parts = urlsplit(url or "")
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"
