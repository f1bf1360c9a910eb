"""A bulk job's JSON status: counts, chunk states, rate and ETA, failed tasks with reasons.

Reading a status never writes (as rq's registries, which clean up only in an explicit maintenance pass:
backend.bulk.maintenance). Chunks whose RQ job has ended but that no maintenance pass has settled yet are
counted by their RQ status: a finished chunk as finished, a failed one's tasks that are not done as
failed with the chunk's error, so a status is exact whether or not maintenance has run.

A cancelled job (backend.bulk.cancel) is "cancelling" while chunks a worker had started run, then
"cancelled"; its tasks that will not run are counted as `cancelled`, not failed.

Tasks another worker is writing for another chunk (their claims were held when this job's chunk came to them)
count as running until maintenance finds them done or their writer gone; a job is "running" while there are
any. Once every chunk has ended, the job is "verifying" while a worker checks that each task has exactly one
prediction of the version (backend.bulk.verify), then "done" with that check's report as `verify`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rq import Queue
from rq.job import Job, JobStatus

from ..contracts.bulk import WriteMethod
from ..redaction import scrub
from .state import BulkState, BulkStore, ChunkEnd

# Seconds of recent progress the rate is computed over.
RATE_WINDOW = 60.0
# A listing whose planner has not reported for this long was interrupted (rerun the command to resume).
LISTING_STALE_SECONDS = 120.0
# Failed tasks listed in a status (all of them are in Redis; --retry-failed takes all).
MAX_FAILED_LISTED = 1000
_TERMINAL_FAILED = {JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


@dataclass(frozen=True)
class EndedChunk:
    """A chunk whose RQ job has ended but that is not settled yet."""

    end: ChunkEnd  # what maintenance will settle it as
    failed: Mapping[int, str]  # a failed chunk's tasks that are not done -> the chunk's error


@dataclass
class ChunkView:
    """The live (unsettled) chunks of a job, by their RQ status."""

    queued: int = 0
    running: int = 0
    running_tasks: int = 0
    ended: dict[str, EndedChunk] = field(default_factory=dict)  # RQ id -> how it ended

    @property
    def live(self) -> int:
        return self.queued + self.running

    @property
    def failed_tasks(self) -> dict[int, str]:
        return {task: reason for chunk in self.ended.values() for task, reason in chunk.failed.items()}

    def ended_count(self, end: ChunkEnd) -> int:
        return sum(1 for chunk in self.ended.values() if chunk.end is end)


def read_chunks(store: BulkStore, queue: Queue, job: str, cancelled: bool) -> ChunkView:
    """The job's unsettled chunks by their RQ status (one pipelined read)."""
    chunks = store.live_chunks(job)
    ids = list(chunks)
    with store.redis.pipeline() as pipe:
        for rq_id in ids:
            pipe.hget(Job.key_for(rq_id), "status")
        statuses = pipe.execute() if ids else []
    view = ChunkView()
    for rq_id, raw in zip(ids, statuses, strict=True):
        status = raw.decode() if isinstance(raw, bytes) else raw
        if status == JobStatus.FINISHED.value:
            view.ended[rq_id] = EndedChunk(ChunkEnd.FINISHED, {})
        elif cancelled and status == JobStatus.CANCELED.value:
            view.ended[rq_id] = EndedChunk(ChunkEnd.CANCELLED, {})  # dropped by a cancel: its tasks did not fail
        elif status in _TERMINAL_FAILED or status is None:
            reason = failure_text(queue, rq_id, status)
            done = store.done_among(job, chunks[rq_id])
            failed = {t: reason for t, is_done in zip(chunks[rq_id], done, strict=True) if not is_done}
            view.ended[rq_id] = EndedChunk(ChunkEnd.FAILED, failed)
        elif status == JobStatus.STARTED.value:
            view.running += 1
            view.running_tasks += len(chunks[rq_id])
        else:
            view.queued += 1
    return view


def job_state(info: Mapping[str, str], chunks: ChunkView, cancelled: bool, now: float, elsewhere: int = 0) -> BulkState:
    """`elsewhere`: tasks of the job another worker is still writing."""
    if cancelled:
        return BulkState.CANCELLING if chunks.live else BulkState.CANCELLED
    if info.get("listed") != "1":
        beat = float(info.get("listing_beat") or info.get("created_at") or now)
        return BulkState.LISTING if now - beat < LISTING_STALE_SECONDS else BulkState.INTERRUPTED
    if chunks.live or elsewhere:
        return BulkState.RUNNING
    if info.get("verify", "1") != "0" and not info.get("verified"):
        return BulkState.VERIFYING
    return BulkState.DONE


def written_elsewhere(store: BulkStore, job: str, failed: Mapping[int, str]) -> list[int]:
    """The job's tasks another worker is still writing (neither done nor failed yet)."""
    elsewhere = [t for t in store.elsewhere(job) if t not in failed]
    return [t for t, done in zip(elsewhere, store.done_among(job, elsewhere), strict=True) if not done]


def current_state(store: BulkStore, queue: Queue, job: str, now: float | None = None) -> BulkState:
    """Where bulk job `job` stands now (raises BulkJobNotFoundError for an unknown id)."""
    info = store.info(job)
    cancelled = store.cancelled_at(job) is not None
    chunks = read_chunks(store, queue, job, cancelled)
    elsewhere = len(written_elsewhere(store, job, {**chunks.failed_tasks, **store.failed(job)}))
    return job_state(info, chunks, cancelled, store.now() if now is None else now, elsewhere)


def job_status(store: BulkStore, queue: Queue, job: str, now: float | None = None) -> dict[str, Any]:
    """The status of bulk job `job` (raises BulkJobNotFoundError for an unknown id)."""
    now = store.now() if now is None else now
    info = store.info(job)
    cancelled_at = store.cancelled_at(job)
    chunks = read_chunks(store, queue, job, cancelled=cancelled_at is not None)
    counts = store.counts(job)
    failed = {**chunks.failed_tasks, **store.failed(job)}
    elsewhere = written_elsewhere(store, job, failed)
    total = counts["tasks"]
    finished = counts["done"] + len(failed)
    remaining = max(0, total - finished)
    running = min(remaining, chunks.running_tasks + len(elsewhere))
    # A cancelled job's tasks that are neither finished nor running will not run.
    cancelled = remaining - running if cancelled_at is not None else 0
    state = job_state(info, chunks, cancelled_at is not None, now, len(elsewhere))
    if state in (BulkState.DONE, BulkState.CANCELLED) and not info.get("finished_at"):
        info = {**info, "finished_at": str(float(info.get("last_progress_at") or now))}
    rate = _rate(store.progress(job), info, now)
    written = int(info.get("written", 0) or 0)
    write_seconds = float(info.get("write_seconds", 0) or 0)
    store_seconds = float(info.get("store_seconds", 0) or 0)
    return {
        "id": job,
        "project": int(info["project"]),
        "model_version": info["model_version"],
        "state": state.value,
        "write": info.get("write"),
        "total": total,
        "queued": remaining - running - cancelled,
        "running": running,
        "cancelled": cancelled,
        "done": counts["done"],
        "written": written,
        "recovered": counts["recovered"],
        "failed": len(failed),
        "failed_tasks": [{"task": t, "reason": r} for t, r in sorted(failed.items())[:MAX_FAILED_LISTED]],
        "chunks": {
            "queued": chunks.queued,
            "running": chunks.running,
            **{end.value: _settled(info, end) + chunks.ended_count(end) for end in ChunkEnd},
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
        "verify": json.loads(info["verified"]) if info.get("verified") else None,
    }


def failure_text(queue: Queue, rq_id: str, status: str | None, what: str = "chunk") -> str:
    """Why a chunk's (or `what`'s) RQ job failed: the last line of its exception, or its status."""
    if status is None:
        return f"{what} {rq_id} vanished from Redis"
    try:
        result = Job.fetch(rq_id, connection=queue.connection, serializer=queue.serializer).latest_result()
        lines = (result.exc_string or "").strip().splitlines() if result is not None else []
    except Exception:  # the job's data may have expired; the status alone still explains it
        lines = []
    return scrub(f"{what} {status} after its retries: {lines[-1] if lines else status}")


def _settled(info: Mapping[str, str], end: ChunkEnd) -> int:
    return int(info.get(f"chunks_{end.value}", 0) or 0)


def _methods(info: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Tasks written and seconds per stored task, by write-back method."""
    out = {}
    for method in (WriteMethod.IMPORT.value, WriteMethod.SINGLE.value):
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
