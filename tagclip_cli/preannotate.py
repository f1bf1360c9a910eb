"""`tagclip preannotate --project ID`: pre-annotate a whole Label Studio project with the workers.

Lists the project's tasks (all, a Data Manager view, or a filter) that have no prediction of the current
model_version, enqueues them in chunks on the workers' Redis, and follows the job with a progress bar
until every task is done or failed and a worker has checked one prediction per task in Label Studio (the job's
final check). Workers write the predictions to Label Studio. Rerunning is safe:
while a job runs, a rerun attaches to it; after it ends, a rerun finds only tasks still without a
prediction. Ctrl-C stops following, not the job; `--cancel` stops the job (waiting chunks are dropped,
running ones finish, a rerun resumes). `--retry-failed` enqueues the last job's failed tasks alone.
Exit status: 0 all done (or cancelled with --cancel), 1 some tasks failed, 2 bad usage or setup,
3 the job was cancelled (by someone else), 130 interrupted.

Needs REDIS_URL (the workers' Redis) and the workers' TAGCLIP_* settings (the model_version is computed
from them, as the backend's /setup does), plus LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY or --url / --api-key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from backend.contracts.bulk import WRITE_METHODS

from .errors import UsageError
from .studio import add_connection_arguments, studio_client

# Seconds between status polls while following a job.
POLL_SECONDS = 0.5
# Failed tasks printed at the end (all are in the status JSON).
FAILED_SHOWN = 20
EXIT_FAILED_TASKS = 1
EXIT_CANCELLED = 3
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--view", type=int, help="only the tasks of this Data Manager view (its filters)")
    which.add_argument(
        "--filter", help='only tasks matching this Data Manager filter JSON ({"conjunction": "and", ...})'
    )
    add_connection_arguments(parser)
    parser.add_argument("--redis-url", help="the workers' Redis (REDIS_URL)")
    parser.add_argument("--chunk-size", type=_positive, help="tasks per job chunk (default 64)")
    parser.add_argument(
        "--write",
        choices=WRITE_METHODS,
        default="auto",
        help="write back with the bulk import, one POST per task, or per chunk the cheaper so far (default auto)",
    )
    parser.add_argument("--max-tasks", type=_positive, help="take on at most N new tasks (a trial run)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--retry-failed", action="store_true", help="enqueue the failed tasks of the last job again")
    action.add_argument(
        "--cancel", action="store_true", help="cancel the project's job: drop its waiting chunks, let running ones end"
    )
    parser.add_argument("--job", help="with --retry-failed or --cancel: the job id (default: the project's latest)")
    parser.add_argument("--no-wait", action="store_true", help="enqueue and exit; follow with GET /jobs/<id>")
    parser.add_argument(
        "--no-verify", action="store_true", help="a new job skips its final one-prediction-per-task check"
    )
    parser.add_argument("--json", action="store_true", help="print the final status as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from backend.errors import BackendError

    try:
        return _run(args)
    except BackendError as e:
        raise UsageError(str(e)) from e


def _run(args: argparse.Namespace) -> int:
    from redis import Redis

    from backend.bulk.planner import DEFAULT_CHUNK_SIZE, BulkPlanner, BulkRequest
    from backend.settings import Settings

    settings = Settings.from_env()
    if args.redis_url:
        settings = dataclasses.replace(settings, redis_url=args.redis_url)
    if not settings.redis_url:
        raise UsageError(
            "bulk pre-annotation needs Redis: set REDIS_URL (or --redis-url) to the Redis your `tagclip worker`s use"
        )
    client = studio_client(args, settings)
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3.0, socket_timeout=30.0)
    planner = BulkPlanner(settings, redis, client)
    queue = planner.queue
    request = BulkRequest(
        project=args.project,
        view=args.view,
        filters=_filters(args.filter),
        chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
        write=args.write,
        max_tasks=args.max_tasks,
        verify=not args.no_verify,
    )
    try:
        if args.cancel:
            job = _cancel(planner, queue, request, args.job)
        elif args.retry_failed:
            job = _retry(planner, request, args.job)
        else:
            job = _start(planner, request, args.quiet)
        if args.no_wait:
            print(f"job {job}: follow it with GET /jobs/{job} on the backend, or rerun this command")
            if args.json:
                from backend.bulk.status import job_status

                print(json.dumps(job_status(planner.store, queue, job), indent=2))
            return 0
        status = follow(planner, queue, job, args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: the enqueued chunks keep running on the workers; rerun the same command to resume")
        return EXIT_INTERRUPTED
    if status["state"] == "cancelled" or args.cancel:  # BulkState.CANCELLED
        _report(status, args.json)
        return 0 if args.cancel else EXIT_CANCELLED
    _report(status, args.json)
    return EXIT_FAILED_TASKS if status["failed"] else 0


def _filters(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"--filter is not JSON: {e}") from e


def _start(planner: Any, request: Any, quiet: bool) -> str:
    from tqdm import tqdm

    prepared = planner.prepare(request)
    started = planner.start(prepared)
    verb = "attached to running" if started.attached else "started"
    print(f"project {request.project}: {verb} job {started.job}, model_version {prepared.model_version}")
    with tqdm(desc="listing", unit=" tasks", disable=quiet, file=sys.stderr) as bar:

        def progress(listed: int, enqueued: int) -> None:
            bar.update(listed - bar.n)
            bar.set_postfix(enqueued=enqueued)

        count = planner.enqueue_all(started.job, prepared, progress)
    print(f"enqueued {count} task(s) without a prediction of this version")
    return started.job


def _latest_job(planner: Any, request: Any) -> str:
    prepared = planner.prepare(request)
    job = planner.store.latest(planner.project(request.project), prepared.model_version)
    if job is None:
        raise UsageError(f"no bulk job for project {request.project} and model_version {prepared.model_version}")
    return job


def _retry(planner: Any, request: Any, job: str | None) -> str:
    job = job or _latest_job(planner, request)
    count = planner.retry_failed(job)
    print(f"job {job}: {count} failed task(s) enqueued again")
    return job


def _cancel(planner: Any, queue: Any, request: Any, job: str | None) -> str:
    from backend.bulk.cancel import cancel_job

    job = job or _latest_job(planner, request)
    outcome = cancel_job(planner.store, queue, job)
    if outcome.already_finished:
        print(f"job {job} had already finished: nothing to cancel")
    else:
        print(
            f"job {job} cancelled: {outcome.dropped_chunks} waiting chunk(s) dropped, {outcome.running_chunks} "
            "running chunk(s) finish; run the pre-annotation again to resume"
        )
    return job


def follow(planner: Any, queue: Any, job: str, quiet: bool = False) -> dict[str, Any]:
    """Poll the job's status with a progress bar until it has ended; returns the last status. Each poll runs
    the job's maintenance pass first (re-queue chunks of killed workers, settle ended chunks), so a job
    followed here progresses even while every worker is busy."""
    from tqdm import tqdm

    from backend.bulk.maintenance import maintain_job
    from backend.bulk.state import BulkState
    from backend.bulk.status import job_status

    maintain_job(planner.store, queue, job)
    status = job_status(planner.store, queue, job)
    with tqdm(total=status["total"], desc="pre-annotating", unit=" tasks", disable=quiet, file=sys.stderr) as bar:
        while True:
            bar.total = status["total"]
            bar.update(status["done"] + status["failed"] - bar.n)
            eta = status["eta_s"]
            bar.set_postfix(
                failed=status["failed"],
                rate=f"{status['tasks_per_s']:.1f}/s",
                eta="-" if eta is None else f"{eta:.0f}s",
            )
            if BulkState(status["state"]).ended:
                return status
            time.sleep(POLL_SECONDS)
            maintain_job(planner.store, queue, job)
            status = job_status(planner.store, queue, job)


def _report(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    print(
        f"job {status['id']}: {status['state']}; {status['done']} of {status['total']} task(s) have their prediction "
        f"({status['written']} written, {status['recovered']} found already there), {status['failed']} failed"
        + (f", {status['cancelled']} cancelled" if status.get("cancelled") else "")
        + f"; {status['tasks_per_s']:.2f} tasks/s"
    )
    for method, figures in (status.get("methods") or {}).items():
        print(
            f"Label Studio write-back, {method}: {figures['written']} task(s), "
            f"{figures['store_s_per_task'] * 1000:.1f} ms per task"
        )
    verify = status.get("verify")
    if verify and verify.get("error"):
        print(f"not verified: {verify['error']}")
    elif verify:
        print(
            f"verified: {verify['with_prediction']} of {verify['tasks']} task(s) have one prediction of the version; "
            f"{verify['duplicates_removed']} duplicate(s) removed, {len(verify['missing'])} missing"
            + (f", {len(verify['found'])} found after all" if verify.get("found") else "")
        )
    failed = status.get("failed_tasks") or []
    for entry in failed[:FAILED_SHOWN]:
        print(f"  failed task {entry['task']}: {entry['reason']}")
    if len(failed) > FAILED_SHOWN:
        print(f"  ... and {len(failed) - FAILED_SHOWN} more (--json lists them)")
    if status["failed"]:
        print("retry them alone with: tagclip preannotate --project", status["project"], "--retry-failed")
