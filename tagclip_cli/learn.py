"""`tagclip learn --project ID`: build, or bring up to date, a project's memory of reviewed examples from every
annotated task in Label Studio (docs/learning.md): a backfill when learning is turned on for a project that
already has reviews, and a rebuild after its label config changed. When anything changed, a new generation is
cut (whatever TAGCLIP_MEMORY_GENERATION_EVERY says), so the model_version changes and Label Studio predicts the
unreviewed tasks again.

Queue mode (REDIS_URL or --redis-url): the job runs on the workers (`tagclip worker`), this command waits for it.
Embedded mode: the job runs here with the engine loaded in this process, into the same SQLite memory the
embedded backend reads (under TAGCLIP_CACHE_DIR: give both the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from .errors import UsageError
from .studio import add_connection_arguments, studio_client

# Seconds between looks at the job while waiting for it.
POLL_SECONDS = 0.5
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    add_connection_arguments(parser)
    parser.add_argument("--redis-url", help="the workers' Redis (REDIS_URL); without one the engine runs here")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the workers (default 3600)")
    parser.add_argument("--json", action="store_true", help="print the job's summary as JSON")


def run(args: argparse.Namespace) -> int:
    from backend.bulk.planner import project_extra_params
    from backend.contracts.learn import SyncRequest, sync_payload
    from backend.contracts.source import source_ref
    from backend.errors import BackendError
    from backend.resolve import Resolver
    from backend.settings import Settings

    settings = Settings.from_env()
    if args.redis_url:
        settings = dataclasses.replace(settings, redis_url=args.redis_url)
    try:
        client = studio_client(args, settings)
        extra = project_extra_params(client.ml_backends(args.project))
        learn = Resolver(settings).options(extra).learn
        source = source_ref(client.source, workers_hold_key=False)  # the command's own key, in the job
        payload = sync_payload(SyncRequest(args.project, source, rebuild=True))
        summary = _on_workers(settings, payload, args.timeout) if settings.redis_url else _here(settings, payload)
    except BackendError as e:
        raise UsageError(str(e)) from e
    print(json.dumps(summary, indent=2) if args.json else describe(summary))
    if not learn:
        print(
            f"note: project {args.project}'s ML backend does not set extra_params learn: true, so predictions do not "
            "use this memory until it does"
        )
    return EXIT_FAILED if summary.get("failed") else 0


def describe(summary: dict[str, Any]) -> str:
    failed = summary.get("failed") or {}
    lines = [
        f"project {summary['project']}: {summary['examples']} reviewed example(s) in the memory "
        f"({len(summary['added'])} added or updated, {len(summary['removed'])} removed, {summary['unchanged']} "
        f"unchanged, {len(failed)} failed; {summary['computed']} image(s) run through the engine)",
    ]
    if summary.get("cut"):
        lines.append(
            f"generation {summary['generation']}: a new model_version; Label Studio predicts unreviewed tasks again "
            "(Retrieve Predictions, or `tagclip preannotate`)"
        )
    else:
        lines.append(f"generation {summary['generation']}: nothing changed")
    lines += [f"  task {task}: {reason}" for task, reason in list(failed.items())[:20]]
    return "\n".join(lines)


def _on_workers(settings: Any, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    from redis import Redis
    from rq import Queue
    from rq.job import JobStatus
    from rq.serializers import JSONSerializer

    from backend.contracts.learn import SYNC_FUNCTION
    from backend.keys import RedisKeys

    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3.0)
    queue = Queue(RedisKeys(settings.queue_name).learn_queue, connection=redis, serializer=JSONSerializer)
    job = queue.enqueue(SYNC_FUNCTION, payload, job_timeout=max(settings.job_timeout, int(timeout)), result_ttl=3600)
    deadline = time.monotonic() + timeout
    while True:
        status = job.get_status(refresh=True)
        if status == JobStatus.FINISHED:
            return job.return_value()
        if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            result = job.latest_result()
            lines = (result.exc_string or "").strip().splitlines() if result is not None else []
            raise UsageError(f"the learning job {job.id} {status}: {lines[-1] if lines else 'see the worker log'}")
        if time.monotonic() > deadline:
            raise UsageError(
                f"the learning job {job.id} did not finish within {timeout:g} s (is a `tagclip worker` up?)"
            )
        time.sleep(POLL_SECONDS)


def _here(settings: Any, payload: dict[str, Any]) -> dict[str, Any]:
    from worker.learning import sync_project
    from worker.runtime import Runtime

    runtime = Runtime.load(settings, name="tagclip-learn")
    try:
        return runtime.run(sync_project, payload)
    finally:
        runtime.close()
