"""What a worker does with one bulk chunk, minus the model: check the payload and the version, skip tasks
already done, predict the rest (through the `predict` function the worker passes in: its existing
`predict_chunk`), turn outputs into validated Label Studio predictions with the backend's converters,
write them back exactly once, and record the outcome in the job's state.

No torch here: worker/bulk.py binds the engine; tests can run this with the real worker through RQ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis import Redis

from ..converters import task_regions
from ..converters.base import prediction_score
from ..errors import ModelMismatchError
from ..jobspec import build_payloads
from ..lsapi import LabelStudioClient
from ..predict import Predictor
from ..settings import Settings
from .ledger import Ledger
from .payload import SCHEMA, BulkChunk, BulkTask, parse_payload
from .state import BulkStore
from .version import ResolvedVersion, resolve_version, versions_predictor
from .writeback import PredictionWriter

log = logging.getLogger(__name__)

PredictFunction = Callable[[dict[str, Any]], dict[str, Any]]


def run_chunk(
    payload: Any,
    predict: PredictFunction,
    redis: Redis,
    settings: Settings,
    owner: str,
    versions: Predictor | None = None,
) -> dict[str, Any]:
    """Run one bulk chunk; returns its summary (plain JSON). Raises when the chunk cannot run at all
    (malformed payload, other weights, Label Studio unreachable) so RQ records and retries it.

    versions: the worker's versions_predictor(settings), kept across chunks so the weights' identity and the
    parsed label config are computed once per worker, not per chunk (built here when not given)."""
    chunk = parse_payload(payload)
    store = BulkStore(redis, chunk.queue)
    if store.cancelled_at(chunk.job) is not None:
        # Taken from the queue just as the job was cancelled (backend.bulk.cancel): nothing to do.
        log.info("job %s was cancelled: skipping a chunk of %d task(s)", chunk.job, len(chunk.tasks))
        return {"schema": SCHEMA, "job": chunk.job, "worker": owner, "skipped": "cancelled"}
    resolved = resolve_version(versions or versions_predictor(settings), chunk.label_config, chunk.extra_params)
    if resolved.model_version != chunk.model_version:
        raise ModelMismatchError(
            f"chunk of job {chunk.job} is for model_version {chunk.model_version}, this worker computes "
            f"{resolved.model_version}: give the planner and the workers the same TAGCLIP_* settings and weights"
        )
    store.chunk_started(chunk.job)
    ledger = Ledger(redis, chunk.queue, chunk.project, chunk.model_version)
    ids = [t.id for t in chunk.tasks]
    pending_ids = set(ledger.not_done(ids))
    already = [t for t in ids if t not in pending_ids]
    pending = [t for t in chunk.tasks if t.id in pending_ids]

    started = time.perf_counter()
    items, failed = predictions_for(chunk, pending, resolved, predict) if pending else ({}, {})
    predict_seconds = time.perf_counter() - started

    client = LabelStudioClient(chunk.source)
    writer = PredictionWriter(client, ledger, chunk.project, chunk.model_version, chunk.write, owner)
    outcome = writer.write(items)
    failed.update(outcome.failed)
    recovered = already + outcome.recovered
    store.record_chunk(
        chunk.job,
        outcome.written,
        recovered,
        failed,
        predict_seconds,
        outcome.seconds,
        outcome.store_seconds,
        outcome.methods,
    )
    if failed:
        log.warning("job %s: %d task(s) failed: %s", chunk.job, len(failed), _sample(failed))
    return {
        "schema": SCHEMA,
        "job": chunk.job,
        "worker": owner,
        "written": outcome.written,
        "recovered": recovered,
        "elsewhere": outcome.elsewhere,
        "write": {m: stored for m, (stored, _) in outcome.methods.items()},
        "failed": {str(k): v for k, v in failed.items()},
        "seconds": {
            "predict": round(predict_seconds, 4),
            "write": round(outcome.seconds, 4),
            "store": round(outcome.store_seconds, 4),
        },
    }


def predictions_for(
    chunk: BulkChunk, tasks: Sequence[BulkTask], resolved: ResolvedVersion, predict: PredictFunction
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Predict `tasks` and build their Label Studio predictions. Returns (task -> prediction body,
    task -> failure reason)."""
    plan = resolved.parsed.plan
    job_payload = build_payloads(
        [c.to_payload() for c in plan.controls],
        [{"id": t.id, "data": dict(t.data)} for t in tasks],
        chunk.source,
        resolved.options.background,
        resolved.model_key,
        max(1, len(tasks)),
    )[0]
    result = predict(job_payload)
    entries = {e.get("index"): e for e in result.get("tasks", []) if isinstance(e, Mapping)}
    items: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    for index, task in enumerate(tasks):
        entry = entries.get(index)
        if entry is None:
            failed[task.id] = "the worker returned no entry for this task"
        elif entry.get("error"):
            failed[task.id] = f"{entry.get('kind') or 'error'}: {entry['error']}"
        else:
            try:
                regions = task_regions(entry.get("outputs") or {}, plan.controls)
            except (KeyError, TypeError, ValueError) as e:
                failed[task.id] = f"malformed worker output: {e}"
                continue
            errors = resolved.parsed.interface.validate_prediction({"result": regions}, return_errors=True)
            if errors:
                failed[task.id] = f"prediction failed validation: {errors}"
                continue
            items[task.id] = {
                "task": task.id,
                "result": regions,
                "score": prediction_score(regions),
                "model_version": resolved.model_version,
            }
    return items, failed


def _sample(failed: Mapping[int, str], n: int = 3) -> str:
    return "; ".join(f"task {k}: {v}" for k, v in list(failed.items())[:n])
