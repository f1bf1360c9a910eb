"""Cancelling a bulk job: it takes on no more tasks, and its chunks still waiting in the queue are dropped.

Chunks a worker is already running are left to finish, so their predictions are written exactly once
(stopping a worker between Label Studio storing and the ledger confirming would only make the next run
recover them). The order makes every path safe:

1. the job is marked cancelled: a planner still listing stops at its next page, and its enqueue
   transaction (which watches the mark) takes on nothing more; a worker that picks up one of the job's
   chunks from now on skips it;
2. the job stops being the project's active job, so the next run starts a new job, which finds every
   task still without a prediction of the version;
3. each chunk still waiting is cancelled in RQ and settled as "cancelled" (its tasks are neither done
   nor failed: the status counts them as cancelled).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from .state import BulkState, BulkStore, ChunkEnd
from .status import current_state

_WAITING = {JobStatus.QUEUED.value, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value, JobStatus.CREATED.value}


@dataclass(frozen=True)
class CancelOutcome:
    job: str
    dropped_chunks: int  # waiting chunks taken out of the queue
    running_chunks: int  # chunks a worker is running; they finish
    already_finished: bool = False  # the job had ended: nothing was changed


def cancel_job(store: BulkStore, queue: Queue, job: str) -> CancelOutcome:
    """Cancel bulk job `job` (raises BulkJobNotFoundError for an unknown id); cancelling twice is harmless,
    and a job that has ended is left as it is."""
    if current_state(store, queue, job) is BulkState.DONE:
        return CancelOutcome(job, 0, 0, already_finished=True)
    info = store.info(job)
    store.mark_cancelled(job)
    store.release_active(store.project_of(info), info["model_version"], job)
    chunks = list(store.live_chunks(job))
    with store.redis.pipeline() as pipe:
        for rq_id in chunks:
            pipe.hget(Job.key_for(rq_id), "status")
        statuses = pipe.execute() if chunks else []
    dropped = running = 0
    for rq_id, raw in zip(chunks, statuses, strict=True):
        status = raw.decode() if isinstance(raw, bytes) else raw
        if status in _WAITING and _drop(queue, rq_id):
            # A maintenance pass may settle it first (it sees the RQ job cancelled); it is counted once either way.
            store.settle_chunk(job, rq_id, ChunkEnd.CANCELLED)
            dropped += 1
        elif status == JobStatus.STARTED.value:
            running += 1
    return CancelOutcome(job, dropped, running)


def _drop(queue: Queue, rq_id: str) -> bool:
    """Cancel the RQ job of a chunk that no worker has started; False when it is gone from Redis (a maintenance
    pass settles it). A worker may take it meanwhile: it then sees the job's cancel mark and skips the chunk."""
    try:
        job = Job.fetch(rq_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return False
    with contextlib.suppress(InvalidJobOperation):
        job.cancel()
    return True
