"""Start (or resume) a bulk job: read the project's label config and ML backend options, compute the
model_version as /setup does, list the tasks without a prediction of that version through Label Studio's
Data Manager API, and enqueue them in chunks on the bulk queue.

Listing pages by task id (`id > last id`, ordered by id) with the user's filters and "model versions do
not contain <version>" ANDed: pages stay correct while workers write predictions meanwhile (offset paging
would skip tasks as the filtered set shrinks). Each page is enqueued in one Redis transaction with the
job's task set (WATCHed), so a killed planner leaves no task half-enqueued and two planners attached to
the same job never enqueue a task twice.

One job per (project, model_version) takes on tasks at a time: a rerun while it runs attaches to it and
only adds what it does not have; a rerun after it finished starts a new job, which finds only the tasks
still without a prediction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from ..contracts.bulk import JOB_FUNCTION, WRITE_METHODS, BulkChunk, WriteMethod, build_payload, task_refs
from ..contracts.source import KeyPlace, source_ref
from ..errors import BulkSetupError
from ..keys import ProjectRef, RedisKeys
from ..labelstudio.auth import same_origin
from ..labelstudio.client import LabelStudioClient, id_after_filter, version_filter
from ..memory.redis_store import RedisMemoryStore
from ..resolve import Resolution, Resolver
from ..settings import Settings
from .ledger import Ledger
from .maintenance import maintain_job
from .state import BulkState, BulkStore
from .timing import chunk_timeout

log = logging.getLogger(__name__)

# Tasks per listing page (Label Studio takes ~1 s per 500 tasks).
DEFAULT_PAGE_SIZE = 500
# Tasks per chunk: one import call and one Label Studio check per chunk. Label Studio 1.23's import
# recounts every predicted task of the project per call (~1 s per 1,000 of them), so bigger chunks
# amortize it (docs/bulk.md).
DEFAULT_CHUNK_SIZE = 64
# Most tasks per chunk a request may ask for (a chunk is one job, one import call and one Label Studio check).
MAX_CHUNK_SIZE = 1000
# Finished chunk results are kept this long in Redis; failed ones a week (rq-dashboard shows them).
RESULT_TTL = 3600
FAILURE_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class BulkRequest:
    """What to pre-annotate and how."""

    project: int
    # A Data Manager view whose filters select the tasks, or filters given directly (DM JSON:
    # {"conjunction": "and", "items": [...]}); neither = every task.
    view: int | None = None
    filters: Mapping[str, Any] | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    write: WriteMethod = WriteMethod.AUTO
    # Take on at most this many new tasks (a trial run); None = all.
    max_tasks: int | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    # When the job ends, a worker checks in Label Studio that each of its tasks has exactly one prediction of
    # the version (backend.bulk.verify).
    verify: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.page_size <= 0:
            raise BulkSetupError(f"chunk size and page size must be positive, got {self.chunk_size}, {self.page_size}")
        if self.chunk_size > MAX_CHUNK_SIZE:
            raise BulkSetupError(f"chunk size must be at most {MAX_CHUNK_SIZE}, got {self.chunk_size}")
        if self.write not in WRITE_METHODS:
            raise BulkSetupError(f"write method must be one of {WRITE_METHODS}, got {self.write!r}")
        object.__setattr__(self, "write", WriteMethod(self.write))
        if self.max_tasks is not None and self.max_tasks <= 0:
            raise BulkSetupError(f"max tasks must be positive, got {self.max_tasks}")
        if self.view is not None and self.filters is not None:
            raise BulkSetupError("give a view or filters, not both")


@dataclass(frozen=True)
class Prepared:
    """A request resolved against Label Studio: its version, options and filter items."""

    request: BulkRequest
    label_config: str
    extra_params: dict[str, Any]
    resolved: Resolution
    filter_items: tuple[dict[str, Any], ...]

    @property
    def model_version(self) -> str:
        return self.resolved.model_version


@dataclass(frozen=True)
class Started:
    job: str
    attached: bool  # True when an already running job of this project and version was resumed


ProgressCallback = Callable[[int, int], None]  # (tasks listed so far, tasks enqueued so far)


class BulkPlanner:
    def __init__(
        self, settings: Settings, redis: Redis, client: LabelStudioClient, resolver: Resolver | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.client = client
        self.keys = RedisKeys(settings.queue_name)
        # A learning project's version names its memory's generation (in this Redis, as the workers read it).
        self.resolver = resolver or Resolver(settings, generations=RedisMemoryStore(redis, self.keys).generation)
        self.store = BulkStore(redis, self.keys)
        self.queue = Queue(self.keys.bulk_queue, connection=redis, serializer=JSONSerializer)
        # Chunks name the job's credential, which Redis keeps while the job runs (backend.contracts.source): the
        # planner cannot know which workers, started with which keys, will take them.
        self.source = source_ref(client.source, workers_hold_key=False, bulk_job=True)

    def project(self, project: int) -> ProjectRef:
        """`project` of this planner's Label Studio."""
        return ProjectRef.of(self.client.base, project)

    # --- resolve ---
    def prepare(self, request: BulkRequest) -> Prepared:
        project = self.client.project(request.project)
        label_config = project.get("label_config") or ""
        extra = project_extra_params(self.client.ml_backends(request.project))
        resolved = self.resolver.resolve(label_config, extra, request.project)
        if not resolved.parsed.plan.controls:
            raise BulkSetupError(
                f"project {request.project}: nothing TagCLIP can predict in its label config "
                f"({'; '.join(resolved.parsed.plan.skipped) or 'no control tags'})"
            )
        return Prepared(request, label_config, extra, resolved, tuple(self._filter_items(request)))

    def _filter_items(self, request: BulkRequest) -> list[dict[str, Any]]:
        filters: Any = request.filters
        if request.view is not None:
            view = self.client.view(request.view)
            if int(view.get("project", request.project)) != request.project:
                raise BulkSetupError(f"view {request.view} belongs to project {view.get('project')}")
            filters = (view.get("data") or {}).get("filters")
        if not filters:
            return []
        if isinstance(filters, list):
            filters = {"conjunction": "and", "items": filters}
        if not isinstance(filters, Mapping) or not isinstance(filters.get("items", []), list):
            raise BulkSetupError(f'filters must be {{"conjunction": "and", "items": [...]}}, got {filters!r}')
        items = [dict(i) for i in filters.get("items", [])]
        if len(items) > 1 and str(filters.get("conjunction", "and")).lower() != "and":
            raise BulkSetupError(
                "only filters joined with 'and' can be paged safely; split an 'or' filter into several runs"
            )
        return items

    # --- start / resume ---
    def start(self, prepared: Prepared) -> Started:
        """Create a job for (project, version), or attach to the one that is taking on tasks."""
        request = prepared.request
        fresh = self.store.create(
            {
                "project": request.project,
                "model_version": prepared.model_version,
                "label_config": prepared.label_config,
                "extra_params": json.dumps(prepared.extra_params),
                "write": request.write.value,
                "chunk_size": request.chunk_size,
                "queue": self.settings.queue_name,
                "label_studio": self.client.base,
                "source": json.dumps(self.source.to_json()),
                "verify": int(request.verify),
                "verify_timeout": chunk_timeout(self.settings),
                "filters": json.dumps(list(prepared.filter_items)),
                "memory_generation": json.dumps(prepared.resolved.memory_generation),
            }
        )
        project = self.project(request.project)
        job = self.store.claim_active(project, prepared.model_version, fresh)
        if job != fresh and maintain_job(self.store, self.queue, job) is BulkState.DONE:
            # It ended before a maintenance pass released it (that pass just did): start anew.
            job = self.store.claim_active(project, prepared.model_version, fresh)
        if job != fresh:
            self.store.discard(fresh)
            log.info("project %s: attaching to running bulk job %s", request.project, job)
        self._keep_credential(job)
        return Started(job, attached=job != fresh)

    def _keep_credential(self, job: str) -> None:
        """Store the key the job's chunks write with, when the workers do not have it themselves."""
        if self.source.key is KeyPlace.BULK_JOB and self.client.source.api_key:
            self.store.store_credential(job, self.client.source.api_key)

    def enqueue_all(self, job: str, prepared: Prepared, on_progress: ProgressCallback | None = None) -> int:
        """List every matching task without a prediction of the version and enqueue the new ones; returns
        how many tasks this call enqueued. Marks the job listed when done."""
        request = prepared.request
        self.store.set_fields(job, listed=0, listing_beat=self.store.now())
        listed = enqueued = 0
        last_id = 0
        while request.max_tasks is None or enqueued < request.max_tasks:
            query = {
                "filters": {
                    "conjunction": "and",
                    "items": [
                        *prepared.filter_items,
                        id_after_filter(last_id),
                        version_filter("not_contains", prepared.model_version),
                    ],
                },
                "ordering": ["tasks:id"],
            }
            page = self.client.task_page(request.project, query, request.page_size)
            if not page:
                break
            last_id = max(int(t["id"]) for t in page)
            listed += len(page)
            if request.max_tasks is not None:
                page = page[: request.max_tasks - enqueued]
            enqueued += self.enqueue_tasks(job, prepared, page)
            self.store.set_fields(job, listing_beat=self.store.now())
            if on_progress is not None:
                on_progress(listed, enqueued)
            if len(page) < request.page_size or self.store.cancelled_at(job) is not None:
                break
        self.store.set_fields(job, listed=1, listing_beat=self.store.now())
        self.store.touch(job)
        return enqueued

    def enqueue_tasks(self, job: str, prepared: Prepared, tasks: Sequence[Mapping[str, Any]]) -> int:
        """Enqueue the tasks the job does not have yet, in chunks, atomically with the job's task set (and
        none once the job is cancelled)."""
        if not tasks:
            return 0
        data_keys = sorted({c.data_key for c in prepared.resolved.parsed.plan.controls})
        refs = task_refs(tasks, data_keys)
        tasks_key, cancelled_key = self.store.job_key(job, "tasks"), self.store.job_key(job, "cancelled")
        ledger = Ledger(self.redis, self.keys, self.project(prepared.request.project), prepared.model_version)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(tasks_key, cancelled_key)
                    if pipe.exists(cancelled_key):
                        pipe.unwatch()
                        return 0
                    present = pipe.smismember(tasks_key, [r.id for r in refs])
                    new = [r for r, is_in in zip(refs, present, strict=True) if not is_in]
                    if not new:
                        pipe.unwatch()
                        return 0
                    pipe.multi()
                    chunks = self._chunks(job, prepared, new)
                    self.store.add_chunks(pipe, job, {rq_id: [t.id for t in c.tasks] for rq_id, c in chunks.items()})
                    # Label Studio says these have no prediction of the version: stale "done" marks go.
                    ledger.forget_done([r.id for r in new], pipe=pipe)
                    self.queue.enqueue_many([self._job_data(rq_id, c) for rq_id, c in chunks.items()], pipeline=pipe)
                    pipe.execute()
                    return len(new)
                except WatchError:
                    continue

    def requeue(self, job: str, prepared: Prepared, task_ids: Sequence[int]) -> int:
        """Enqueue tasks the job already has (failed ones) again, after re-reading them from Label Studio.
        Tasks that meanwhile got their prediction are marked done; returns how many were enqueued."""
        request = prepared.request
        enqueued = 0
        ledger = Ledger(self.redis, self.keys, self.project(request.project), prepared.model_version)
        for start in range(0, len(task_ids), request.page_size):
            ids = list(task_ids[start : start + request.page_size])
            tasks = self.client.tasks_by_id(request.project, ids)
            have = self.client.tasks_with_version(request.project, ids, prepared.model_version)
            gone = sorted(set(ids) - {int(t["id"]) for t in tasks})
            self.store.mark_failed(job, {t: "the task no longer exists in Label Studio" for t in gone})
            if have:
                ledger.confirm(sorted(have))
                self.store.record_chunk(job, [], sorted(have), {}, 0.0, 0.0)
            todo = [t for t in tasks if int(t["id"]) not in have]
            if not todo:
                continue
            data_keys = sorted({c.data_key for c in prepared.resolved.parsed.plan.controls})
            chunks = self._chunks(job, prepared, task_refs(todo, data_keys))
            with self.redis.pipeline() as pipe:
                self.store.add_chunks(pipe, job, {rq_id: [t.id for t in c.tasks] for rq_id, c in chunks.items()})
                ledger.forget_done([int(t["id"]) for t in todo], pipe=pipe)
                self.queue.enqueue_many([self._job_data(rq_id, c) for rq_id, c in chunks.items()], pipeline=pipe)
                pipe.execute()
            enqueued += len(todo)
        return enqueued

    def prepared_for_job(self, job: str) -> Prepared:
        """The Prepared of an existing job, from what it stored (label config, options, write method);
        raises BulkSetupError when these settings now give another model_version."""
        info = self.store.info(job)
        if not same_origin(info.get("label_studio"), self.client.base):
            raise BulkSetupError(f"job {job} belongs to another Label Studio than {self.client.base}")
        request = BulkRequest(project=int(info["project"]), chunk_size=int(info["chunk_size"]), write=info["write"])
        extra = json.loads(info.get("extra_params") or "{}")
        generation = json.loads(info.get("memory_generation") or "null")
        resolved = self.resolver.resolve(info["label_config"], extra, request.project, generation)
        if resolved.model_version != info["model_version"]:
            raise BulkSetupError(
                f"job {job} is for model_version {info['model_version']}, these settings give "
                f"{resolved.model_version}: run with the job's TAGCLIP_* settings and weights"
            )
        filters = tuple(json.loads(info.get("filters") or "[]"))
        return Prepared(request, info["label_config"], extra, resolved, filters)

    def retry_failed(self, job: str) -> int:
        """Enqueue the job's failed tasks again (only those); returns how many were enqueued."""
        if self.store.cancelled_at(job) is not None:
            raise BulkSetupError(
                f"job {job} was cancelled: run the pre-annotation again instead (a new job takes on every task "
                "still without a prediction, the failed ones included)"
            )
        prepared = self.prepared_for_job(job)
        failed = sorted(self.store.failed(job))
        if not failed:
            return 0
        self.store.claim_active(self.project(prepared.request.project), prepared.model_version, job)
        self._keep_credential(job)
        self.store.clear_failed(job, failed)
        self.redis.hdel(self.store.job_key(job), "started_at")  # rate and elapsed restart with the retry
        return self.requeue(job, prepared, failed)

    def _chunks(self, job: str, prepared: Prepared, refs: Sequence[Any]) -> dict[str, BulkChunk]:
        request = prepared.request
        out = {}
        for start in range(0, len(refs), request.chunk_size):
            rq_id = self.keys.bulk_chunk_id(job)
            out[rq_id] = BulkChunk(
                job=job,
                queue=self.settings.queue_name,
                project=request.project,
                model_version=prepared.model_version,
                label_config=prepared.label_config,
                extra_params=prepared.extra_params,
                write=request.write,
                source=self.source,
                tasks=tuple(refs[start : start + request.chunk_size]),
                memory_generation=prepared.resolved.memory_generation,
            )
        return out

    def _job_data(self, rq_id: str, chunk: BulkChunk) -> Any:
        retries = self.settings.job_retries
        return Queue.prepare_data(
            JOB_FUNCTION,
            args=(build_payload(chunk),),
            job_id=rq_id,
            timeout=chunk_timeout(self.settings),
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=Retry(max=retries) if retries else None,
            description=f"preannotate_chunk(project {chunk.project}, {len(chunk.tasks)} tasks, job {chunk.job})",
        )


def project_extra_params(ml_backends: list[dict[str, Any]]) -> dict[str, Any]:
    """The extra_params of the project's ML backend (the first one that has any; {} without one)."""
    for backend in ml_backends:
        extra = backend.get("extra_params")
        if isinstance(extra, Mapping) and extra:
            return dict(extra)
        if isinstance(extra, str) and extra.strip():
            raise BulkSetupError(f"ML backend {backend.get('id')}: extra_params is not a JSON object: {extra[:80]!r}")
    return {}
