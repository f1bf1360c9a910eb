"""Every Redis key and RQ queue name of one TAGCLIP_QUEUE, built in one place (as rq's `Job.key_for`).

<queue>                                   RQ queue of interactive /predict jobs
<queue>-bulk                              RQ queue of bulk pre-annotation chunks (taken after /predict jobs)
tagclip-bulk-<job>-<random>                the RQ job id of a bulk chunk (bulk_chunk_id)
tagclip:<queue>:project:<project>         what /setup said about a project (backend.web.projects)
tagclip:<queue>:workers                   sorted set: live worker -> expiry (backend.presence)
tagclip:<queue>:worker:<name>             a live worker's info
tagclip:<queue>:bulk:job:<id>[:<part>]    a bulk job's state (backend.bulk.state; parts in BULK_JOB_PARTS)
tagclip:<queue>:bulk:live                 set: bulk jobs that have not ended (what maintenance looks at)
tagclip:<queue>:bulk:active:<studio>:<project>:<version>   the bulk job taking on tasks for a project and version
tagclip:<queue>:bulk:latest:<studio>:<project>:<version>   the newest bulk job of a project and version
tagclip:<queue>:bulk:ledger:<studio>:<project>:<version>   per-task write claims (backend.bulk.ledger)
<studio> names the Label Studio (a hash of its URL's origin): two Label Studios' project 1 never share state.
tagclip:<queue>:bulk:costs:<studio>:<project>   write-back method costs (backend.bulk.method)
<queue>-learn                             RQ queue of the memory's learning jobs (after /predict, before bulk)
tagclip:<queue>:memory:<project>:<part>   a project's memory of reviewed examples (backend.memory.redis_store;
                                          parts in MEMORY_PARTS)
tagclip:<queue>:image:<model>:<sha256>    an image's CLIP embedding and TagCLIP scores, cached (backend.memory.cache)
tagclip:<queue>:learn:waiting:<key>       the learning job last submitted under a dedupe key (backend.web.dispatch)
<queue>-vocab                             RQ queue of vocabulary builds (text classifier columns; after /predict)
tagclip:<queue>:vocab:<vocabulary>        a vocabulary's build claim: its parts not yet done (backend.vocabulary)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .labelstudio.auth import origin_id

# The parts of a bulk job's state besides its main hash (backend.bulk.state says what each holds).
BULK_JOB_PARTS = (
    "tasks",
    "done",
    "recovered",
    "failed",
    "elsewhere",
    "chunks",
    "progress",
    "cancelled",
    "credential",
)


@dataclass(frozen=True)
class ProjectRef:
    """A project of one Label Studio: project ids are only unique within their Label Studio."""

    studio: str  # origin_id of the Label Studio's URL
    project: int

    @classmethod
    def of(cls, label_studio_url: str, project: int) -> ProjectRef:
        return cls(origin_id(label_studio_url), int(project))

    def __str__(self) -> str:
        return f"{self.studio}:{self.project}"


# The parts of a project's memory (backend.memory.redis_store says what each holds).
MEMORY_PARTS = ("state", "examples", "vectors", "order", "annotations", "calibrations", "cut")


@dataclass(frozen=True)
class RedisKeys:
    """The key names of one queue's state."""

    # TAGCLIP_QUEUE: the RQ queue name, also the namespace of every key here.
    queue: str

    @property
    def prefix(self) -> str:
        return f"tagclip:{self.queue}"

    # --- RQ queues ---
    @property
    def predict_queue(self) -> str:
        return self.queue

    @property
    def bulk_queue(self) -> str:
        return f"{self.queue}-bulk"

    @property
    def learn_queue(self) -> str:
        return f"{self.queue}-learn"

    @property
    def vocab_queue(self) -> str:
        return f"{self.queue}-vocab"

    # --- the web process ---
    def project(self, project: str) -> str:
        return f"{self.prefix}:project:{project}"

    # --- workers ---
    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    # --- bulk pre-annotation ---
    def bulk_job(self, job: str, part: str = "") -> str:
        if part and part not in BULK_JOB_PARTS:
            raise ValueError(f"unknown bulk job part {part!r}; one of {BULK_JOB_PARTS}")
        return f"{self.prefix}:bulk:job:{job}" + (f":{part}" if part else "")

    @staticmethod
    def bulk_chunk_id(job: str) -> str:
        """A new RQ job id for a chunk of bulk job `job` (the prefix names the job, so its chunks can be found)."""
        return f"tagclip-bulk-{job}-{uuid.uuid4().hex[:10]}"

    def bulk_job_keys(self, job: str) -> list[str]:
        """Every key of one bulk job's state."""
        return [self.bulk_job(job)] + [self.bulk_job(job, part) for part in BULK_JOB_PARTS]

    @property
    def bulk_live(self) -> str:
        return f"{self.prefix}:bulk:live"

    def bulk_active(self, project: ProjectRef, version: str) -> str:
        return f"{self.prefix}:bulk:active:{project}:{version}"

    def bulk_latest(self, project: ProjectRef, version: str) -> str:
        return f"{self.prefix}:bulk:latest:{project}:{version}"

    def ledger(self, project: ProjectRef, version: str) -> str:
        return f"{self.prefix}:bulk:ledger:{project}:{version}"

    def write_costs(self, project: ProjectRef) -> str:
        return f"{self.prefix}:bulk:costs:{project}"

    # --- the memory of reviewed examples ---
    def memory(self, project: int, part: str) -> str:
        if part not in MEMORY_PARTS:
            raise ValueError(f"unknown memory part {part!r}; one of {MEMORY_PARTS}")
        return f"{self.prefix}:memory:{int(project)}:{part}"

    def memory_keys(self, project: int) -> list[str]:
        """Every key of one project's memory."""
        return [self.memory(project, part) for part in MEMORY_PARTS]

    def learn_waiting(self, dedupe: str) -> str:
        """The id of the learning job last submitted under a dedupe key (backend.web.dispatch)."""
        return f"{self.prefix}:learn:waiting:{dedupe}"

    def vocabulary(self, vocabulary: str) -> str:
        """A vocabulary's build claim (backend.vocabulary)."""
        return f"{self.prefix}:vocab:{vocabulary}"

    def image_cache(self, model: str, image: str) -> str:
        return f"{self.prefix}:image:{model}:{image}"
