"""The final check of a bulk job, as a job of its own: once every chunk has ended (backend.bulk.maintenance
enqueues it), a worker checks in Label Studio that each task has exactly one prediction of the version
(backend.bulk.verify). It first waits until no write of the job may still land (the ledger's doubt), so a
late write is counted, not missed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq import get_current_job

from backend.bulk.backoff import retrying
from backend.bulk.ledger import Ledger
from backend.bulk.state import BulkStore
from backend.bulk.timing import WriteTiming
from backend.bulk.verify import verify_job
from backend.contracts.bulk import parse_verify_payload
from backend.contracts.source import KeyPlace, SourceRef, resolve_source
from backend.keys import RedisKeys
from backend.labelstudio.client import LabelStudioClient
from backend.netpolicy import AddressPolicy, GuardedSessions
from backend.settings import Settings

from .runtime import current_runtime

log = logging.getLogger(__name__)


def verify_bulk_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Verify (and repair) one prediction per task of a bulk job; returns the report (plain JSON)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("verify_bulk_job runs inside an RQ worker (`tagclip worker`)")
    return run_verification(payload, job.connection, current_runtime().settings)


def run_verification(
    payload: Any, redis: Redis, settings: Settings, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    request = parse_verify_payload(payload)
    store = BulkStore(redis, RedisKeys(request.queue))
    info = store.info(request.job)
    raw = json.loads(info.get("source") or "null") or {"url": info["label_studio"], "key": KeyPlace.BULK_JOB.value}
    ref = SourceRef.from_json(raw)
    key = store.credential(request.job) if ref.key is KeyPlace.BULK_JOB else None
    source = resolve_source(ref, settings.label_studio, key)
    sessions = GuardedSessions(AddressPolicy.of(settings.label_studio_url, settings.allowed_hosts))
    client = LabelStudioClient(
        source, session=sessions.for_url(source.url or ""), timeout=settings.label_studio_timeout
    )
    timing = WriteTiming.of(settings)
    _wait_for_doubts(store, request.job, info, sleep)
    report = verify_job(client, store, request.job, call=lambda f: retrying(f, timing.retry_time, sleep=sleep))
    log.info(
        "job %s verified: %d of %d task(s) with one prediction; %d duplicate(s) removed, %d missing, %d found",
        request.job,
        report.with_prediction,
        report.tasks,
        report.duplicates_removed,
        len(report.missing),
        len(report.found),
    )
    return dataclasses.asdict(report)


def _wait_for_doubts(store: BulkStore, job: str, info: dict[str, str], sleep: Callable[[float], None]) -> None:
    """Wait until no write of the job's tasks may still land in Label Studio."""
    ledger = Ledger(store.redis, store.keys, store.project_of(info), info["model_version"])
    tasks = [int(t) for t in store.redis.smembers(store.job_key(job, "tasks"))]
    until = ledger.doubt_until(tasks)
    now = ledger.now()
    if until > now:
        log.info("job %s: a write may still land for %.0f s; verifying after that", job, until - now)
        sleep(until - now)
