"""The explicit maintenance pass of bulk jobs, the only place their derived state is written (as rq's
`run_maintenance_tasks`; status reads never write):

* chunks of killed workers are re-queued: the bulk queue's StartedJobRegistry is cleaned, and RQ retries
  the abandoned job (or fails it when its retries are used up);
* chunks whose RQ job has ended are settled once: counted as finished, cancelled or failed, the failed
  ones' tasks that are not done recorded as failed with the chunk's error;
* a job that has ended stops being its project's active job (the next run starts a new one), gets its
  finish time, and leaves the set of live jobs.

Workers run it for every live job each maintenance interval (worker.main); `tagclip preannotate` runs it for
its job on each poll while it follows the job. Several passes may run at once: each chunk settles once.
"""

from __future__ import annotations

import contextlib
import time

from redis.exceptions import RedisError
from rq import Queue

from ..errors import BulkJobNotFoundError
from .state import BulkState, BulkStore
from .status import job_state, read_chunks


def maintain_job(store: BulkStore, queue: Queue, job: str, now: float | None = None) -> BulkState:
    """One maintenance pass over bulk job `job`; returns its state afterwards."""
    now = time.time() if now is None else now
    with contextlib.suppress(RedisError):
        queue.started_job_registry.cleanup()
    info = store.info(job)
    cancelled = store.cancelled_at(job) is not None
    chunks = read_chunks(store, queue, job, cancelled)
    for rq_id, chunk in chunks.ended.items():
        if store.settle_chunk(job, rq_id, chunk.end) and chunk.failed:
            store.mark_failed(job, chunk.failed, only_if_unset=True)
    state = job_state(info, chunks, cancelled, now)
    if state in (BulkState.DONE, BulkState.CANCELLED):
        store.release_active(store.project_of(info), info["model_version"], job)
        store.forget_credential(job)
        if not info.get("finished_at"):
            store.set_fields(job, finished_at=float(info.get("last_progress_at") or now))
        store.forget_live(job)
    return state


def maintain_live_jobs(store: BulkStore, queue: Queue) -> int:
    """A maintenance pass over every live bulk job of the queue; returns how many were looked at."""
    jobs = store.live_jobs()
    for job in jobs:
        try:
            maintain_job(store, queue, job)
        except BulkJobNotFoundError:  # its state expired: nothing left to maintain
            store.forget_live(job)
    return len(jobs)
