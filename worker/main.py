"""`tagclip worker`: load the engine once, then consume jobs with RQ's SimpleWorker (no fork, so a CUDA
context survives between jobs). Run one per GPU, pinned with CUDA_VISIBLE_DEVICES.

A heartbeat thread keeps the job's RQ execution alive every WORKER_HEARTBEAT seconds with a short TTL
(3 beats), and publishes the worker's presence (backend.presence). When a worker is killed, its job's
execution lapses within 3 beats; the backend (while it waits) and the other workers (in maintenance)
clean RQ's StartedJobRegistry, which re-queues the abandoned job (Retry) for the next worker.

Losing Redis does not lose the loaded model: the worker waits for Redis and starts consuming again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from backend import presence
from backend.bulk.maintenance import maintain_live_jobs
from backend.bulk.state import BulkStore
from backend.errors import SettingsError
from backend.keys import RedisKeys
from backend.logging_setup import configure_logging
from backend.settings import Settings

from .jobclass import ProjectJob
from .runtime import Runtime

log = logging.getLogger(__name__)

# RQ's own worker registration TTL while idle (its blocking dequeue wakes every WORKER_TTL - 15 s).
WORKER_TTL = 60
# Seconds between maintenance passes (abandoned-job cleanup) in each worker.
MAINTENANCE_INTERVAL = 15
# Backoff while Redis is unreachable.
RECONNECT_DELAY_MAX = 5.0


class TagclipWorker(SimpleWorker):
    """A SimpleWorker that binds the process's Runtime around each job and heartbeats while it runs."""

    def __init__(
        self,
        queues: list[Queue],
        *,
        runtime: Runtime,
        keys: RedisKeys,
        heartbeat_interval: float,
        presence_connection: Redis,
        **kwargs: Any,
    ) -> None:
        super().__init__(queues, **kwargs)
        self.runtime = runtime
        self.keys = keys
        self.heartbeat_interval = heartbeat_interval
        self.stop_requested = False
        self._presence = presence_connection
        self._current: tuple[Job, Execution] | None = None
        self._current_lock = threading.Lock()
        self._beats_stop = threading.Event()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # Short: the beat thread renews it, so a killed worker's job lapses within 3 beats.
        return int(math.ceil(self.heartbeat_interval * presence.MISSED_BEATS)) + 1

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        with self._current_lock:
            self._current = (job, execution)
        try:
            with self.runtime.activate():
                return super().perform_job(job, queue, execution)
        finally:
            with self._current_lock:
                self._current = None

    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance (registry cleanup), then the bulk jobs' (backend.bulk.maintenance)."""
        super().run_maintenance_tasks()
        bulk_queue = next(q for q in self.queues if q.name == self.keys.bulk_queue)
        try:
            maintain_live_jobs(BulkStore(self.connection, self.keys), bulk_queue)
        except RedisError as e:
            log.debug("bulk maintenance skipped: %s", e)

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        super().request_stop(signum, frame)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        beats = threading.Thread(target=self._beat_loop, name="tagclip-heartbeat", daemon=True)
        beats.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._beats_stop.set()
            beats.join(timeout=2)
            with contextlib.suppress(RedisError):
                presence.leave(self._presence, self.keys, self.name)

    def _beat_loop(self) -> None:
        info = {**self.runtime.info, "pid": os.getpid(), "host": socket.gethostname()}
        while not self._beats_stop.is_set():
            try:
                presence.beat(self._presence, self.keys, self.name, info, self.heartbeat_interval)
                with self._current_lock:
                    if self._current is not None:
                        self.maintain_heartbeats(*self._current)
            except RedisError as e:
                log.debug("heartbeat failed: %s", e)
            except Exception:  # never let the beat thread die silently
                log.exception("heartbeat failed")
            self._beats_stop.wait(self.heartbeat_interval)


def run_worker(settings: Settings, name: str | None = None, burst: bool = False) -> int:
    """Load the engine, then consume jobs until SIGTERM/SIGINT (or the queue is empty with `burst`)."""
    if not settings.redis_url:
        raise SettingsError("tagclip worker needs REDIS_URL (redis://host:port/db)")
    base_name = name or f"tagclip-{socket.gethostname()}-{os.getpid()}"
    runtime = Runtime.load(settings, name=base_name)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    incarnation = 0
    delay = 0.5
    try:
        while not stop.is_set():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            connection = Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, socket_keepalive=True)
            beats_connection = Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=2.0)
            try:
                connection.ping()
            except RedisError as e:
                log.warning("Redis unreachable (%s); retrying in %.1f s", e, delay)
                stop.wait(delay)
                delay = min(RECONNECT_DELAY_MAX, delay * 2)
                continue
            delay = 0.5
            keys = RedisKeys(settings.queue_name)
            queue = Queue(keys.predict_queue, connection=connection, serializer=JSONSerializer, job_class=ProjectJob)
            # Vocabulary builds (/setup's new labels), learning jobs (the memory of reviewed examples), then bulk
            # pre-annotation chunks, wait behind interactive /predict jobs (RQ takes queues in order).
            vocab = Queue(keys.vocab_queue, connection=connection, serializer=JSONSerializer, job_class=ProjectJob)
            learn = Queue(keys.learn_queue, connection=connection, serializer=JSONSerializer, job_class=ProjectJob)
            bulk = Queue(keys.bulk_queue, connection=connection, serializer=JSONSerializer, job_class=ProjectJob)
            worker = TagclipWorker(
                [queue, vocab, learn, bulk],
                connection=connection,
                serializer=JSONSerializer,
                job_class=ProjectJob,
                runtime=runtime,
                keys=keys,
                heartbeat_interval=settings.worker_heartbeat,
                presence_connection=beats_connection,
                name=base_name if incarnation == 0 else f"{base_name}-{incarnation}",
                worker_ttl=WORKER_TTL,
                maintenance_interval=MAINTENANCE_INTERVAL,
            )
            incarnation += 1
            log.info("worker %s consuming queues %s", worker.name, ", ".join(q.name for q in worker.queues))
            try:
                worker.work(burst=burst, logging_level=settings.log_level)
            except RedisError as e:
                log.warning("worker %s lost Redis: %s", worker.name, e)
            finally:
                connection.close()
                beats_connection.close()
            if worker.stop_requested or burst:
                break
            # work() returns on its own only when Redis failed under it: wait, then start again.
            stop.wait(1.0)
    finally:
        runtime.close()
    return 0


def main(environ: dict[str, str] | None = None, name: str | None = None, burst: bool = False) -> int:
    settings = Settings.from_env(environ)
    configure_logging(settings.log_level)
    started = time.monotonic()
    try:
        return run_worker(settings, name=name, burst=burst)
    finally:
        log.info("worker exiting after %.0f s", time.monotonic() - started)
