"""The bulk pre-annotation job function: one chunk of a project's tasks, predicted with this worker's engine
(the same steps as /predict's jobs: `worker.jobs.predict_tasks`), turned into validated Label Studio
predictions (backend.results), written back exactly once (worker.writeback under backend.bulk.ledger), and
recorded in the bulk job's state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import get_current_job

from backend.bulk.backoff import Backoff
from backend.bulk.ledger import Ledger, owner_name
from backend.bulk.state import BulkStore
from backend.bulk.timing import WriteTiming
from backend.contracts.bulk import SCHEMA, BulkTask, parse_payload
from backend.contracts.predict import ChunkSpec, TaskRef, parse_controls
from backend.contracts.source import KeyPlace, SourceRef, resolve_source
from backend.errors import ModelMismatchError
from backend.keys import ProjectRef, RedisKeys
from backend.labelstudio.auth import Source
from backend.labelstudio.client import LabelStudioClient
from backend.netpolicy import AddressPolicy, GuardedSessions
from backend.resolve import Resolution, Resolver
from backend.results import task_result

from .jobs import predict_tasks
from .runtime import current_runtime
from .writeback import PredictionWriter, WriteOutcome

log = logging.getLogger(__name__)

# Predicts the tasks of a spec: worker.jobs.predict_tasks bound to this process's runtime.
TaskPredictor = Callable[[ChunkSpec], list[dict[str, Any]]]
# Waits before predicting again the tasks that failed for a reason that may pass.
TRANSIENT_BACKOFF = Backoff(first=2.0, factor=2.0, cap=30.0)


def preannotate_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Predict and write back one bulk chunk (see backend.contracts.bulk); returns its summary."""
    runtime = current_runtime()
    job = get_current_job()
    if job is None:
        raise RuntimeError("preannotate_chunk runs inside an RQ worker (`tagclip worker`)")
    # The owner of this chunk's write claims: the live RQ worker (its presence entry) and this process.
    owner = owner_name(job.worker_name or runtime.name, os.getpid())
    return run_chunk(payload, lambda spec: predict_tasks(spec, runtime), job.connection, runtime.resolver, owner)


def run_chunk(
    payload: Any,
    predict: TaskPredictor,
    redis: Redis,
    resolver: Resolver,
    owner: str,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run one bulk chunk; returns its summary (plain JSON). Raises when the chunk cannot run at all
    (malformed payload, other weights, Label Studio unreachable past the retries, writes left in doubt) so RQ
    records and retries it.

    Tasks that fail for a reason that may pass (backend.results.TRANSIENT_KINDS: a download timeout, HTTP 5xx,
    a revoked key) are predicted again, with backoff, for TRANSIENT_RETRY_TIME (less when the whole job has been
    meeting such failures that long); then they are reported failed with their reason."""
    chunk = parse_payload(payload)
    keys = RedisKeys(chunk.queue)
    store = BulkStore(redis, keys)
    if store.cancelled_at(chunk.job) is not None:
        # Taken from the queue just as the job was cancelled (backend.bulk.cancel): nothing to do.
        log.info("job %s was cancelled: skipping a chunk of %d task(s)", chunk.job, len(chunk.tasks))
        return {"schema": SCHEMA, "job": chunk.job, "worker": owner, "skipped": "cancelled"}
    resolution = resolver.resolve(chunk.label_config, chunk.extra_params, chunk.project, chunk.memory_generation)
    if resolution.model_version != chunk.model_version:
        raise ModelMismatchError(
            f"chunk of job {chunk.job} is for model_version {chunk.model_version}, this worker computes "
            f"{resolution.model_version}: give the planner and the workers the same TAGCLIP_* settings and weights"
        )
    job_key = store.credential(chunk.job) if chunk.source.key is KeyPlace.BULK_JOB else None
    settings = resolver.settings
    source = resolve_source(chunk.source, settings.label_studio, job_key)
    store.chunk_started(chunk.job)
    ledger = Ledger(redis, keys, ProjectRef.of(source.url or "", chunk.project), chunk.model_version)
    ids = [t.id for t in chunk.tasks]
    pending_ids = set(ledger.not_done(ids))
    summary = ChunkSummary(recovered=[t for t in ids if t not in pending_ids])
    pending = [t for t in chunk.tasks if t.id in pending_ids]
    if summary.recovered:
        store.record_chunk(chunk.job, [], summary.recovered, {}, 0.0, 0.0)

    # The chunk's Label Studio came from the planner's caller: it obeys the address policy here too.
    sessions = GuardedSessions(AddressPolicy.of(settings.label_studio_url, settings.allowed_hosts))
    client = LabelStudioClient(
        source, session=sessions.for_url(source.url or ""), timeout=settings.label_studio_timeout
    )
    timing = WriteTiming.of(settings)
    writer = PredictionWriter(
        client, ledger, chunk.project, chunk.model_version, chunk.write, owner, timing, sleep=sleep
    )
    attempt = 0
    first_failure: float | None = None  # when this chunk first met failures that may pass (Redis time)
    while pending:
        started = time.perf_counter()
        items, failed, transient = predictions_for(source, pending, resolution, predict)
        predict_seconds = time.perf_counter() - started
        outcome = writer.write(items)
        summary.add(outcome, failed, predict_seconds)
        store.record_chunk(
            chunk.job,
            outcome.written,
            outcome.recovered,
            {**failed, **outcome.failed},
            predict_seconds,
            outcome.seconds,
            outcome.store_seconds,
            outcome.methods,
            elsewhere=outcome.elsewhere,
        )
        if outcome.error is not None:
            raise outcome.error
        if not transient:
            store.clear_transient(chunk.job)
            break
        delay = TRANSIENT_BACKOFF.delay(attempt)
        first_failure = store.now() if first_failure is None else first_failure
        # The chunk's own retry time, cut short when the whole job has met such failures that long (an outage:
        # no chunk got through since), so later chunks do not each wait it out again.
        left = min(first_failure, store.transient_since(chunk.job)) + timing.retry_time - store.now()
        if delay > left:
            gave_up = {t: f"{reason} (still failing after {attempt + 1} tries)" for t, reason in transient.items()}
            summary.failed.update(gave_up)
            store.record_chunk(chunk.job, [], [], gave_up, 0.0, 0.0)
            break
        log.warning(
            "job %s: %d task(s) failed for now, trying again in %.1f s: %s",
            chunk.job,
            len(transient),
            delay,
            _sample(transient),
        )
        sleep(delay)
        attempt += 1
        pending = [t for t in pending if t.id in transient]
    if summary.failed:
        log.warning("job %s: %d task(s) failed: %s", chunk.job, len(summary.failed), _sample(summary.failed))
    return summary.to_json(chunk.job, owner)


@dataclass
class ChunkSummary:
    """What a chunk did over its tries (the job function's result)."""

    written: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)
    elsewhere: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)
    predict_seconds: float = 0.0
    write_seconds: float = 0.0
    store_seconds: float = 0.0

    def add(self, outcome: WriteOutcome, failed: Mapping[int, str], predict_seconds: float) -> None:
        self.written += outcome.written
        self.recovered += outcome.recovered
        self.elsewhere += list(outcome.elsewhere)
        self.failed.update({**failed, **outcome.failed})
        for method, (stored, _) in outcome.methods.items():
            self.methods[method] = self.methods.get(method, 0) + stored
        self.predict_seconds += predict_seconds
        self.write_seconds += outcome.seconds
        self.store_seconds += outcome.store_seconds

    def to_json(self, job: str, owner: str) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "job": job,
            "worker": owner,
            "written": self.written,
            "recovered": self.recovered,
            "elsewhere": self.elsewhere,
            "write": self.methods,
            "failed": {str(k): v for k, v in self.failed.items()},
            "seconds": {
                "predict": round(self.predict_seconds, 4),
                "write": round(self.write_seconds, 4),
                "store": round(self.store_seconds, 4),
            },
        }


def predictions_for(
    source: Source, tasks: Sequence[BulkTask], resolution: Resolution, predict: TaskPredictor
) -> tuple[dict[int, dict[str, Any]], dict[int, str], dict[int, str]]:
    """Predict `tasks` and build their Label Studio predictions. Returns (task -> prediction body,
    task -> reason it failed for good, task -> reason it failed for now)."""
    spec = ChunkSpec(
        model_key=resolution.model_key,
        background=resolution.options.background,
        controls=parse_controls([c.to_payload() for c in resolution.plan.controls]),
        tasks=tuple(TaskRef(index=i, id=t.id, images=dict(t.data)) for i, t in enumerate(tasks)),
        source=SourceRef(source.url, source.api_key, KeyPlace.PAYLOAD),  # in-process: never serialized
        memory=resolution.learning,
    )
    entries = {e.get("index"): e for e in predict(spec) if isinstance(e, Mapping)}
    items: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    transient: dict[int, str] = {}
    for index, task in enumerate(tasks):
        result = task_result(entries.get(index), resolution)
        if result.failed:
            (transient if result.transient else failed)[task.id] = result.reason or result.kind
        else:
            items[task.id] = {"task": task.id, **result.prediction}
    return items, failed, transient


def _sample(failed: Mapping[int, str], n: int = 3) -> str:
    return "; ".join(f"task {k}: {v}" for k, v in list(failed.items())[:n])
