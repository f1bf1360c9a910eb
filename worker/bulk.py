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
from typing import Any

from redis import Redis
from rq import get_current_job

from backend.bulk.ledger import Ledger, owner_name
from backend.bulk.state import BulkStore
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
from .writeback import PredictionWriter

log = logging.getLogger(__name__)

# Predicts the tasks of a spec: worker.jobs.predict_tasks bound to this process's runtime.
TaskPredictor = Callable[[ChunkSpec], list[dict[str, Any]]]


def preannotate_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Predict and write back one bulk chunk (see backend.contracts.bulk); returns its summary."""
    runtime = current_runtime()
    job = get_current_job()
    if job is None:
        raise RuntimeError("preannotate_chunk runs inside an RQ worker (`tagclip worker`)")
    # The owner of this chunk's write claims: the live RQ worker (its presence entry) and this process.
    owner = owner_name(job.worker_name or runtime.name, os.getpid())
    return run_chunk(payload, lambda spec: predict_tasks(spec, runtime), job.connection, runtime.resolver, owner)


def run_chunk(payload: Any, predict: TaskPredictor, redis: Redis, resolver: Resolver, owner: str) -> dict[str, Any]:
    """Run one bulk chunk; returns its summary (plain JSON). Raises when the chunk cannot run at all
    (malformed payload, other weights, Label Studio unreachable) so RQ records and retries it."""
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
    source = resolve_source(chunk.source, resolver.settings.label_studio, job_key)
    store.chunk_started(chunk.job)
    ledger = Ledger(redis, keys, ProjectRef.of(source.url or "", chunk.project), chunk.model_version)
    ids = [t.id for t in chunk.tasks]
    pending_ids = set(ledger.not_done(ids))
    already = [t for t in ids if t not in pending_ids]
    pending = [t for t in chunk.tasks if t.id in pending_ids]

    started = time.perf_counter()
    items, failed = predictions_for(source, pending, resolution, predict) if pending else ({}, {})
    predict_seconds = time.perf_counter() - started

    settings = resolver.settings
    # The chunk's Label Studio came from the planner's caller: it obeys the address policy here too.
    sessions = GuardedSessions(AddressPolicy.of(settings.label_studio_url, settings.allowed_hosts))
    client = LabelStudioClient(source, session=sessions.for_url(source.url or ""))
    writer = PredictionWriter(client, ledger, chunk.project, chunk.model_version, chunk.write, owner)
    outcome = writer.write(items)
    failed.update(outcome.failed)
    recovered = already + outcome.recovered
    store.record_chunk(
        chunk.job,
        outcome.written,
        recovered,
        failed,
        predict_seconds,
        outcome.seconds,
        outcome.store_seconds,
        outcome.methods,
    )
    if failed:
        log.warning("job %s: %d task(s) failed: %s", chunk.job, len(failed), _sample(failed))
    return {
        "schema": SCHEMA,
        "job": chunk.job,
        "worker": owner,
        "written": outcome.written,
        "recovered": recovered,
        "elsewhere": outcome.elsewhere,
        "write": {m: stored for m, (stored, _) in outcome.methods.items()},
        "failed": {str(k): v for k, v in failed.items()},
        "seconds": {
            "predict": round(predict_seconds, 4),
            "write": round(outcome.seconds, 4),
            "store": round(outcome.store_seconds, 4),
        },
    }


def predictions_for(
    source: Source, tasks: Sequence[BulkTask], resolution: Resolution, predict: TaskPredictor
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Predict `tasks` and build their Label Studio predictions. Returns (task -> prediction body,
    task -> failure reason)."""
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
    for index, task in enumerate(tasks):
        result = task_result(entries.get(index), resolution)
        if result.failed:
            failed[task.id] = result.reason or result.kind
        else:
            items[task.id] = {"task": task.id, **result.prediction}
    return items, failed


def _sample(failed: Mapping[int, str], n: int = 3) -> str:
    return "; ".join(f"task {k}: {v}" for k, v in list(failed.items())[:n])
