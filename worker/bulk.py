"""RQ job function of bulk pre-annotation: one chunk of a project's tasks, predicted with this worker's
engine (the same `predict_chunk` /predict uses) and written back to Label Studio exactly once. The work
outside the model is `backend.bulk.chunk.run_chunk`."""

from __future__ import annotations

import os
from typing import Any

from rq import get_current_job

from backend.bulk.chunk import run_chunk
from backend.bulk.ledger import owner_name

from .jobs import predict_chunk
from .runtime import current_runtime


def preannotate_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Predict and write back one bulk chunk (see backend.bulk.payload); returns its summary."""
    runtime = current_runtime()
    job = get_current_job()
    if job is None:
        raise RuntimeError("preannotate_chunk runs inside an RQ worker (`tagclip worker`)")
    # The owner of this chunk's write claims: the live RQ worker (its presence entry) and this process.
    owner = owner_name(job.worker_name or runtime.name, os.getpid())
    return run_chunk(payload, predict_chunk, job.connection, runtime.settings, owner, runtime.versions)
