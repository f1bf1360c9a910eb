"""A bulk job's state in Redis, shared by the CLI, the backend and the workers (key names: backend.keys).

    tagclip:<queue>:bulk:job:<id>             hash: project, label_studio (its URL), source (how workers find its
                                              key), model_version, label_config, extra_params, write, chunk_size,
                                              verify ("0": no final check), created_at, listed, listing_beat,
                                              started_at, finished_at, predict_seconds, write_seconds, written,
                                              transient_since, verify_rq (the final check's RQ job), verified
                                              (its report, JSON)
    tagclip:<queue>:bulk:job:<id>:tasks       set: every task the job took on
    tagclip:<queue>:bulk:job:<id>:done        set: tasks that have their prediction (written or found)
    tagclip:<queue>:bulk:job:<id>:recovered   set: the done tasks whose prediction was found in Label Studio
    tagclip:<queue>:bulk:job:<id>:failed      hash: task -> reason (cleared when the task is done later)
    tagclip:<queue>:bulk:job:<id>:elsewhere   hash: task -> the worker writing it for another chunk (in progress
                                              until maintenance finds it done, or its writer gone)
    tagclip:<queue>:bulk:job:<id>:chunks      hash: RQ job id -> JSON task ids, for chunks not yet settled
    tagclip:<queue>:bulk:job:<id>:progress    list: "<unix time> <tasks finished>" per chunk, newest first
    tagclip:<queue>:bulk:job:<id>:cancelled   the unix time the job was cancelled (absent: not cancelled)
    tagclip:<queue>:bulk:job:<id>:credential  the Label Studio key its chunks write with, when the workers do not
                                              have it themselves; expires CREDENTIAL_TTL after its last use and
                                              is deleted when the job ends
    tagclip:<queue>:bulk:active:<studio>:<project>:<version>   the job taking on new tasks for this project/version
    tagclip:<queue>:bulk:latest:<studio>:<project>:<version>   the newest job (for --retry-failed)

Every other key expires STATE_TTL after the job's last planner write. Times are the Redis server's
(backend.servertime): every host reads and writes the same clock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from redis import Redis
from redis.client import Pipeline

from ..errors import BulkJobNotFoundError
from ..keys import ProjectRef, RedisKeys
from ..servertime import server_now

# Job state is kept this long after the planner last touched it.
STATE_TTL = 30 * 24 * 3600
# A job's Label Studio key outlives its last use by this much (workers renew it with every chunk).
CREDENTIAL_TTL = 24 * 3600
# Progress entries kept per job (one per chunk); the rate uses the recent ones.
PROGRESS_ENTRIES = 2000


class BulkState(str, Enum):
    """Where a bulk job stands (the `state` of its status)."""

    LISTING = "listing"  # the planner is listing tasks and enqueueing chunks
    INTERRUPTED = "interrupted"  # the planner stopped before listing everything (rerun to resume)
    RUNNING = "running"  # listed; chunks are queued or running, or another worker is writing some of its tasks
    VERIFYING = "verifying"  # every chunk has ended; a worker checks one prediction per task in Label Studio
    DONE = "done"  # listed, every chunk has ended, and the final check (unless switched off) is done
    CANCELLING = "cancelling"  # cancelled; chunks a worker had started are finishing
    CANCELLED = "cancelled"  # cancelled, and no chunk runs any more

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        """No chunk of the job will run any more."""
        return self in (BulkState.DONE, BulkState.CANCELLED, BulkState.INTERRUPTED)


class ChunkEnd(str, Enum):
    """How a chunk's RQ job ended, as counted in the job's `chunks_<end>` fields."""

    FINISHED = "finished"
    FAILED = "failed"  # after its retries
    CANCELLED = "cancelled"  # dropped from the queue by a cancel

    def __str__(self) -> str:
        return self.value


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BulkStore:
    """Reads and writes one queue's bulk jobs."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    @property
    def queue_name(self) -> str:
        return self.keys.queue

    def now(self) -> float:
        """The Redis server's time: every timestamp of a job's state is on it."""
        return server_now(self.redis)

    # --- keys ---
    def job_key(self, job: str, part: str = "") -> str:
        return self.keys.bulk_job(job, part)

    def active_key(self, project: ProjectRef, version: str) -> str:
        return self.keys.bulk_active(project, version)

    def latest_key(self, project: ProjectRef, version: str) -> str:
        return self.keys.bulk_latest(project, version)

    def all_keys(self, job: str) -> list[str]:
        return self.keys.bulk_job_keys(job)

    # --- jobs ---
    def create(self, fields: Mapping[str, Any]) -> str:
        """A new job (hash fields as given, plus id and created_at); returns its id."""
        job = new_job_id()
        values = {k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in fields.items()}
        values.update({"id": job, "created_at": self.now(), "listed": 0})
        with self.redis.pipeline() as pipe:
            pipe.hset(self.job_key(job), mapping=values)
            pipe.expire(self.job_key(job), STATE_TTL)
            pipe.sadd(self.keys.bulk_live, job)
            pipe.execute()
        return job

    def discard(self, job: str) -> None:
        """Forget a job that never took on a task (a planner attached to another job instead)."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self.job_key(job))
            pipe.srem(self.keys.bulk_live, job)
            pipe.execute()

    def live_jobs(self) -> list[str]:
        """Jobs that have not ended (maintenance settles them)."""
        return sorted(_text(j) for j in self.redis.smembers(self.keys.bulk_live))

    def forget_live(self, job: str) -> None:
        self.redis.srem(self.keys.bulk_live, job)

    def claim_active(self, project: ProjectRef, version: str, job: str) -> str:
        """Make `job` the active job of (project, version) unless one is; returns the active job's id."""
        key = self.active_key(project, version)
        if self.redis.set(key, job, nx=True, ex=STATE_TTL):
            self.redis.set(self.latest_key(project, version), job, ex=STATE_TTL)
            return job
        current = self.redis.get(key)
        return _text(current) if current else self.claim_active(project, version, job)

    def active(self, project: ProjectRef, version: str) -> str | None:
        value = self.redis.get(self.active_key(project, version))
        return _text(value) if value else None

    def latest(self, project: ProjectRef, version: str) -> str | None:
        value = self.redis.get(self.latest_key(project, version))
        return _text(value) if value else None

    def release_active(self, project: ProjectRef, version: str, job: str) -> None:
        """The job takes on no more tasks (it finished): the next run starts a new one."""
        key = self.active_key(project, version)
        with self.redis.pipeline() as pipe:
            pipe.watch(key)
            if _text(pipe.get(key) or b"") == job:
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
            else:
                pipe.unwatch()

    def mark_cancelled(self, job: str) -> None:
        """The job takes on no more tasks and its workers skip the chunks they have not started."""
        self.redis.set(self.job_key(job, "cancelled"), self.now(), nx=True, ex=STATE_TTL)

    def cancelled_at(self, job: str) -> float | None:
        value = self.redis.get(self.job_key(job, "cancelled"))
        return float(_text(value)) if value else None

    def project_of(self, info: Mapping[str, str]) -> ProjectRef:
        """The project (of its Label Studio) a job's info belongs to."""
        return ProjectRef.of(info["label_studio"], int(info["project"]))

    # --- the key its chunks write with ---
    def store_credential(self, job: str, api_key: str) -> None:
        self.redis.set(self.job_key(job, "credential"), api_key, ex=CREDENTIAL_TTL)

    def credential(self, job: str) -> str | None:
        """The job's Label Studio key (renewed for another CREDENTIAL_TTL), or None once it expired."""
        with self.redis.pipeline() as pipe:
            pipe.get(self.job_key(job, "credential"))
            pipe.expire(self.job_key(job, "credential"), CREDENTIAL_TTL)
            value, _ = pipe.execute()
        return _text(value) if value else None

    def forget_credential(self, job: str) -> None:
        self.redis.delete(self.job_key(job, "credential"))

    def info(self, job: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.job_key(job))
        if not raw:
            raise BulkJobNotFoundError(f"no bulk job {job!r} on queue {self.queue_name!r} (unknown or expired)")
        return {_text(k): _text(v) for k, v in raw.items()}

    def set_fields(self, job: str, **fields: Any) -> None:
        self.redis.hset(self.job_key(job), mapping=fields)

    def touch(self, job: str, pipe: Pipeline | None = None) -> None:
        target = pipe if pipe is not None else self.redis.pipeline()
        for key in self.all_keys(job):
            if not key.endswith(":credential"):  # the credential keeps its own, shorter, lifetime
                target.expire(key, STATE_TTL)
        if pipe is None:
            target.execute()

    # --- tasks and chunks (planner) ---
    def add_chunks(self, pipe: Pipeline, job: str, chunks: Mapping[str, Sequence[int]]) -> None:
        """Inside the planner's transaction: record chunks (RQ id -> task ids) and their tasks."""
        ids = [t for tasks in chunks.values() for t in tasks]
        pipe.sadd(self.job_key(job, "tasks"), *ids)
        pipe.hdel(self.job_key(job, "failed"), *ids)
        pipe.hset(self.job_key(job, "chunks"), mapping={k: json.dumps(list(v)) for k, v in chunks.items()})
        # A retry brings an ended job back to life, and its final check runs again.
        pipe.hdel(self.job_key(job), "finished_at", "verify_rq", "verified")
        pipe.sadd(self.keys.bulk_live, job)
        self.touch(job, pipe)

    def live_chunks(self, job: str) -> dict[str, list[int]]:
        raw = self.redis.hgetall(self.job_key(job, "chunks"))
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def settle_chunk(self, job: str, rq_id: str, end: ChunkEnd) -> bool:
        """Drop a chunk from the live set once its RQ job is terminal; True for the caller that did it."""
        if not self.redis.hdel(self.job_key(job, "chunks"), rq_id):
            return False
        self.redis.hincrby(self.job_key(job), f"chunks_{ChunkEnd(end).value}", 1)
        return True

    def failed(self, job: str) -> dict[int, str]:
        return {int(_text(k)): _text(v) for k, v in self.redis.hgetall(self.job_key(job, "failed")).items()}

    def mark_failed(self, job: str, reasons: Mapping[int, str], only_if_unset: bool = False) -> None:
        """Record failure reasons (tasks already done are left alone)."""
        if not reasons:
            return
        ids = list(reasons)
        done = self.redis.smismember(self.job_key(job, "done"), ids)
        with self.redis.pipeline() as pipe:
            for task, is_done in zip(ids, done, strict=True):
                if is_done:
                    continue
                if only_if_unset:
                    pipe.hsetnx(self.job_key(job, "failed"), str(task), reasons[task])
                else:
                    pipe.hset(self.job_key(job, "failed"), str(task), reasons[task])
            pipe.execute()

    def clear_failed(self, job: str, ids: Iterable[int]) -> None:
        ids = [str(i) for i in ids]
        if ids:
            self.redis.hdel(self.job_key(job, "failed"), *ids)

    def forget_done(self, job: str, ids: Iterable[int]) -> None:
        """Tasks the verification found without a prediction: no longer done."""
        ids = list(ids)
        if ids:
            with self.redis.pipeline() as pipe:
                pipe.srem(self.job_key(job, "done"), *ids)
                pipe.srem(self.job_key(job, "recovered"), *ids)
                pipe.execute()

    # --- chunk outcomes (workers) ---
    def chunk_started(self, job: str) -> None:
        self.redis.hsetnx(self.job_key(job), "started_at", self.now())

    def transient_since(self, job: str) -> float:
        """When the job's chunks began to meet failures that may pass (Label Studio or image hosts failing): now,
        unless an earlier chunk already did. Chunks stop retrying TRANSIENT_RETRY_TIME after it."""
        self.redis.hsetnx(self.job_key(job), "transient_since", self.now())
        return float(_text(self.redis.hget(self.job_key(job), "transient_since")))

    def clear_transient(self, job: str) -> None:
        """A chunk got through without such failures: the next ones get their whole retry time again."""
        self.redis.hdel(self.job_key(job), "transient_since")

    def record_chunk(
        self,
        job: str,
        written: Sequence[int],
        recovered: Sequence[int],
        failed: Mapping[int, str],
        predict_seconds: float,
        write_seconds: float,
        store_seconds: float = 0.0,
        methods: Mapping[str, tuple[int, float]] | None = None,
        elsewhere: Mapping[int, str] | None = None,
    ) -> None:
        """A chunk's outcome, in one transaction: done and failed tasks, tasks another worker is writing, timings,
        a progress entry."""
        now = self.now()
        done = list(written) + list(recovered)
        with self.redis.pipeline() as pipe:
            if done:
                pipe.sadd(self.job_key(job, "done"), *done)
                pipe.hdel(self.job_key(job, "failed"), *done)
            if recovered:
                pipe.sadd(self.job_key(job, "recovered"), *recovered)
            if failed:
                pipe.hset(self.job_key(job, "failed"), mapping={str(k): v for k, v in failed.items()})
            if done or failed:
                pipe.hdel(self.job_key(job, "elsewhere"), *done, *failed)
            if elsewhere:
                pipe.hset(self.job_key(job, "elsewhere"), mapping={str(k): v for k, v in elsewhere.items()})
            pipe.hincrbyfloat(self.job_key(job), "predict_seconds", predict_seconds)
            pipe.hincrbyfloat(self.job_key(job), "write_seconds", write_seconds)
            pipe.hincrbyfloat(self.job_key(job), "store_seconds", store_seconds)
            for method, (stored, seconds) in (methods or {}).items():
                pipe.hincrbyfloat(self.job_key(job), f"store_seconds_{method}", seconds)
                pipe.hincrby(self.job_key(job), f"written_{method}", stored)
            pipe.hincrby(self.job_key(job), "written", len(written))
            pipe.hset(self.job_key(job), "last_progress_at", now)
            if done or failed:
                pipe.lpush(self.job_key(job, "progress"), f"{now:.3f} {len(done) + len(failed)}")
            pipe.ltrim(self.job_key(job, "progress"), 0, PROGRESS_ENTRIES - 1)
            pipe.execute()

    def elsewhere(self, job: str) -> dict[int, str]:
        """Tasks of the job another worker is writing (for another chunk), with that worker."""
        raw = self.redis.hgetall(self.job_key(job, "elsewhere"))
        return {int(_text(k)): _text(v) for k, v in raw.items()}

    # --- counts ---
    def counts(self, job: str) -> dict[str, int]:
        with self.redis.pipeline() as pipe:
            for part in ("tasks", "done", "recovered"):
                pipe.scard(self.job_key(job, part))
            pipe.hlen(self.job_key(job, "failed"))
            tasks, done, recovered, failed = pipe.execute()
        return {"tasks": tasks, "done": done, "recovered": recovered, "failed": failed}

    def done_among(self, job: str, ids: Sequence[int]) -> list[bool]:
        if not ids:
            return []
        return [bool(x) for x in self.redis.smismember(self.job_key(job, "done"), list(ids))]

    def progress(self, job: str) -> list[tuple[float, int]]:
        entries = self.redis.lrange(self.job_key(job, "progress"), 0, -1)
        out = []
        for entry in entries:
            stamp, count = _text(entry).split()
            out.append((float(stamp), int(count)))
        return out
