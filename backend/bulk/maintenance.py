"""The explicit maintenance pass of bulk jobs, the only place their derived state is written (as rq's
`run_maintenance_tasks`; status reads never write):

* chunks of killed workers are re-queued: the bulk queue's StartedJobRegistry is cleaned, and RQ retries
  the abandoned job (or fails it when its retries are used up);
* chunks whose RQ job has ended are settled once: counted as finished, cancelled or failed, the failed
  ones' tasks that are not done recorded as failed with the chunk's error;
* tasks another worker was writing for another chunk are settled once the ledger knows: done (found, not
  written again), or failed when their writer stopped without storing them;
* when every chunk has ended, the job's final check (backend.bulk.verify: one prediction of the version per
  task) is enqueued for a worker, once, and its report recorded when it ends;
* a job that has ended stops being its project's active job (the next run starts a new one), gets its
  finish time, and leaves the set of live jobs.

Workers run it for every live job each maintenance interval (worker.main); `tagclip preannotate` runs it for
its job on each poll while it follows the job. Several passes may run at once: each chunk settles once, and
the final check is enqueued once.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job, JobStatus

from ..contracts.bulk import VERIFY_FUNCTION, VerifyRequest, build_verify_payload
from ..errors import BulkJobNotFoundError
from .ledger import Ledger, TaskState
from .state import BulkState, BulkStore
from .status import failure_text, job_state, read_chunks, written_elsewhere

# The final check's RQ job: retries, how long its result and failure are kept, its timeout when the job does
# not say (a job records one from its planner's settings: backend.bulk.timing).
VERIFY_RETRIES = 2
VERIFY_RESULT_TTL = 7 * 24 * 3600
DEFAULT_VERIFY_TIMEOUT = 3600
STOPPED_WRITER = (
    "was being written by {owner} for another chunk, which stopped before storing it: --retry-failed writes it"
)


def maintain_job(store: BulkStore, queue: Queue, job: str, now: float | None = None) -> BulkState:
    """One maintenance pass over bulk job `job`; returns its state afterwards."""
    now = store.now() if now is None else now
    with contextlib.suppress(RedisError):
        queue.started_job_registry.cleanup()
    info = store.info(job)
    cancelled = store.cancelled_at(job) is not None
    chunks = read_chunks(store, queue, job, cancelled)
    for rq_id, chunk in chunks.ended.items():
        if store.settle_chunk(job, rq_id, chunk.end) and chunk.failed:
            store.mark_failed(job, chunk.failed, only_if_unset=True)
    settle_elsewhere(store, info, job)
    elsewhere = written_elsewhere(store, job, {**chunks.failed_tasks, **store.failed(job)})
    state = job_state(info, chunks, cancelled, now, len(elsewhere))
    if state is BulkState.VERIFYING:
        state = _final_check(store, queue, job, info)
    if state in (BulkState.DONE, BulkState.CANCELLED):
        store.release_active(store.project_of(info), info["model_version"], job)
        store.forget_credential(job)
        if not info.get("finished_at"):
            store.set_fields(job, finished_at=float(info.get("last_progress_at") or now))
        store.forget_live(job)
    return state


def settle_elsewhere(store: BulkStore, info: Mapping[str, str], job: str) -> None:
    """Tasks another worker was writing: done once the ledger says so, failed once nobody holds them."""
    elsewhere = store.elsewhere(job)
    if not elsewhere:
        return
    ledger = Ledger(store.redis, store.keys, store.project_of(info), info["model_version"])
    states = ledger.states(list(elsewhere))
    done = [t for t, state in states.items() if state is TaskState.DONE]
    stopped = {t: STOPPED_WRITER.format(owner=elsewhere[t]) for t, state in states.items() if state is TaskState.FREE}
    if done or stopped:
        store.record_chunk(job, [], done, stopped, 0.0, 0.0)


def _final_check(store: BulkStore, queue: Queue, job: str, info: Mapping[str, str]) -> BulkState:
    """Enqueue the job's final check once; record its report when it has ended. Returns the job's state."""
    rq_id = info.get("verify_rq")
    if not rq_id:
        rq_id = f"tagclip-verify-{job}-{uuid.uuid4().hex[:10]}"
        if store.redis.hsetnx(store.job_key(job), "verify_rq", rq_id):
            queue.enqueue_call(
                VERIFY_FUNCTION,
                args=(build_verify_payload(VerifyRequest(job, store.queue_name)),),
                job_id=rq_id,
                timeout=int(info.get("verify_timeout") or DEFAULT_VERIFY_TIMEOUT),
                result_ttl=VERIFY_RESULT_TTL,
                failure_ttl=VERIFY_RESULT_TTL,
                retry=Retry(max=VERIFY_RETRIES),
                description=f"verify_bulk_job(job {job}, project {info.get('project')})",
            )
        return BulkState.VERIFYING
    raw = store.redis.hget(Job.key_for(rq_id), "status")
    status = raw.decode() if isinstance(raw, bytes) else raw
    if status == JobStatus.FINISHED.value:
        report = Job.fetch(rq_id, connection=queue.connection, serializer=queue.serializer).return_value()
        store.set_fields(job, verified=json.dumps(report if isinstance(report, dict) else {"error": "no report"}))
    elif status in (JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value, None):
        store.set_fields(job, verified=json.dumps({"error": failure_text(queue, rq_id, status, "the final check")}))
    else:
        return BulkState.VERIFYING
    return BulkState.DONE


def maintain_live_jobs(store: BulkStore, queue: Queue) -> int:
    """A maintenance pass over every live bulk job of the queue; returns how many were looked at."""
    jobs = store.live_jobs()
    for job in jobs:
        try:
            maintain_job(store, queue, job)
        except BulkJobNotFoundError:  # its state expired: nothing left to maintain
            store.forget_live(job)
    return len(jobs)
