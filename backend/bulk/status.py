"""A bulk job's JSON status: counts, chunk states, rate and ETA, failed tasks with reasons.

Reading the status also settles chunks whose RQ job ended (finished, or failed after its retries): the
tasks of a failed chunk that are not done are recorded as failed with the chunk's error. It also cleans
the bulk queue's StartedJobRegistry, so a chunk of a killed worker is re-queued (RQ Retry) without
waiting for a worker's maintenance pass. Several readers may do this at once; each chunk settles once.

A cancelled job (backend.bulk.cancel) is "cancelling" while chunks a worker had started run, then
"cancelled"; its tasks that will not run are counted as `cancelled`, not failed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job, JobStatus

from .payload import WRITE_IMPORT, WRITE_SINGLE
from .state import BulkStore

# Seconds of recent progress the rate is computed over.
RATE_WINDOW = 60.0
# A listing whose planner has not reported for this long was interrupted (rerun the command to resume).
LISTING_STALE_SECONDS = 120.0
# Failed tasks listed in a status (all of them are in Redis; --retry-failed takes all).
MAX_FAILED_LISTED = 1000
_TERMINAL_FAILED = {JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


def job_status(store: BulkStore, queue: Queue, job: str, now: float | None = None) -> dict[str, Any]:
    """The status of bulk job `job` (raises BulkJobNotFoundError for an unknown id)."""
    now = time.time() if now is None else now
    info = store.info(job)
    cancelled_at = store.cancelled_at(job)
    _cleanup_abandoned(queue)
    chunk_states = _settle_chunks(store, queue, job, cancelled=cancelled_at is not None)
    counts = store.counts(job)
    failed = store.failed(job)
    total = counts["tasks"]
    finished = counts["done"] + counts["failed"]
    remaining = max(0, total - finished)
    running = min(remaining, chunk_states["running_tasks"])
    # A cancelled job's tasks that are neither finished nor running will not run.
    cancelled = remaining - running if cancelled_at is not None else 0
    listed = info.get("listed") == "1"
    live = chunk_states["queued"] + chunk_states["running"]
    state = _state(info, listed, live, now, cancelled_at is not None)
    if state in ("done", "cancelled"):
        store.release_active(int(info["project"]), info["model_version"], job)
        if not info.get("finished_at"):
            finished_at = float(info.get("last_progress_at") or now)
            store.set_fields(job, finished_at=finished_at)
            info["finished_at"] = str(finished_at)
    rate = _rate(store.progress(job), info, now)
    written = int(info.get("written", 0) or 0)
    write_seconds = float(info.get("write_seconds", 0) or 0)
    store_seconds = float(info.get("store_seconds", 0) or 0)
    return {
        "id": job,
        "project": int(info["project"]),
        "model_version": info["model_version"],
        "state": state,
        "write": info.get("write"),
        "total": total,
        "queued": remaining - running - cancelled,
        "running": running,
        "cancelled": cancelled,
        "done": counts["done"],
        "written": written,
        "recovered": counts["recovered"],
        "failed": counts["failed"],
        "failed_tasks": [{"task": t, "reason": r} for t, r in sorted(failed.items())[:MAX_FAILED_LISTED]],
        "chunks": {
            "queued": chunk_states["queued"],
            "running": chunk_states["running"],
            "finished": int(info.get("chunks_finished", 0) or 0),
            "failed": int(info.get("chunks_failed", 0) or 0),
            "cancelled": int(info.get("chunks_cancelled", 0) or 0),
        },
        "tasks_per_s": round(rate, 3),
        "eta_s": _eta(remaining - cancelled, rate),
        "elapsed_s": round(_elapsed(info, now), 1),
        # The whole write phase (claims, the Label Studio check, the writes) and only the storing calls.
        "write_s_per_task": round(write_seconds / written, 4) if written else None,
        "store_s_per_task": round(store_seconds / written, 4) if written else None,
        "methods": _methods(info),
        "predict_s": round(float(info.get("predict_seconds", 0) or 0), 2),
        "created_at": float(info["created_at"]),
        "finished_at": float(info["finished_at"]) if info.get("finished_at") else None,
        "cancelled_at": cancelled_at,
    }


def _state(info: Mapping[str, str], listed: bool, live_chunks: int, now: float, cancelled: bool) -> str:
    if cancelled:
        return "cancelling" if live_chunks else "cancelled"
    if not listed:
        beat = float(info.get("listing_beat") or info.get("created_at") or now)
        return "listing" if now - beat < LISTING_STALE_SECONDS else "interrupted"
    return "running" if live_chunks else "done"


def _settle_chunks(store: BulkStore, queue: Queue, job: str, cancelled: bool) -> dict[str, int]:
    chunks = store.live_chunks(job)
    ids = list(chunks)
    with store.redis.pipeline() as pipe:
        for rq_id in ids:
            pipe.hget(Job.key_for(rq_id), "status")
        statuses = pipe.execute() if ids else []
    states = {"queued": 0, "running": 0, "running_tasks": 0}
    for rq_id, raw in zip(ids, statuses, strict=True):
        status = raw.decode() if isinstance(raw, bytes) else raw
        if status == JobStatus.FINISHED.value:
            store.settle_chunk(job, rq_id, "finished")
        elif cancelled and status == JobStatus.CANCELED.value:
            store.settle_chunk(job, rq_id, "cancelled")  # dropped by cancel_job: its tasks are not failures
        elif status in _TERMINAL_FAILED or status is None:
            _settle_failed(store, queue, job, rq_id, chunks[rq_id], status)
        elif status == JobStatus.STARTED.value:
            states["running"] += 1
            states["running_tasks"] += len(chunks[rq_id])
        else:
            states["queued"] += 1
    return states


def _settle_failed(
    store: BulkStore, queue: Queue, job: str, rq_id: str, task_ids: list[int], status: str | None
) -> None:
    reason = _failure_text(queue, rq_id, status)
    if not store.settle_chunk(job, rq_id, "failed"):
        return
    done = store.done_among(job, task_ids)
    store.mark_failed(job, {t: reason for t, is_done in zip(task_ids, done, strict=True) if not is_done}, True)


def _failure_text(queue: Queue, rq_id: str, status: str | None) -> str:
    if status is None:
        return f"chunk {rq_id} vanished from Redis"
    try:
        result = Job.fetch(rq_id, connection=queue.connection, serializer=queue.serializer).latest_result()
        lines = (result.exc_string or "").strip().splitlines() if result is not None else []
    except Exception:  # the job's data may have expired; the status alone still explains it
        lines = []
    return f"chunk {status} after its retries: {lines[-1] if lines else status}"


def _cleanup_abandoned(queue: Queue) -> None:
    with contextlib.suppress(RedisError):
        queue.started_job_registry.cleanup()


def _methods(info: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Tasks written and seconds per stored task, by write-back method."""
    out = {}
    for method in (WRITE_IMPORT, WRITE_SINGLE):
        written = int(info.get(f"written_{method}", 0) or 0)
        seconds = float(info.get(f"store_seconds_{method}", 0) or 0)
        if written:
            out[method] = {"written": written, "store_s_per_task": round(seconds / written, 4)}
    return out


def _eta(remaining: int, rate: float) -> float | None:
    if not remaining:
        return 0.0
    return round(remaining / rate, 1) if rate > 0 else None


def _elapsed(info: Mapping[str, str], now: float) -> float:
    started = float(info.get("started_at") or info.get("created_at") or now)
    end = float(info["finished_at"]) if info.get("finished_at") else now
    return max(0.0, end - started)


def _rate(progress: list[tuple[float, int]], info: Mapping[str, str], now: float) -> float:
    """Tasks finished per second over the last RATE_WINDOW seconds of activity."""
    if not progress:
        return 0.0
    end = float(info["finished_at"]) if info.get("finished_at") else now
    started = float(info.get("started_at") or progress[-1][0])
    window = min(RATE_WINDOW, max(end - started, 1e-6))
    recent = sum(n for stamp, n in progress if stamp >= end - window)
    return recent / window
