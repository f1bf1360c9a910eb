"""A bulk job's final check: every task of the job has exactly one prediction of the version in Label Studio.

Run by a worker when every chunk of the job has ended (backend.bulk.maintenance enqueues it, worker.verify runs
it), for jobs started by `tagclip preannotate`, `--no-wait` or `POST /jobs` alike. It reads the job's tasks in
pages of VERIFY_PAGE through the Data Manager API (each page one call, whatever the project's size), and:

* deletes extra predictions of the version on a task (a race the ledger cannot see, e.g. Label Studio's own
  /predict storing one while a worker wrote), keeping the oldest;
* marks failed the tasks the job counts as done that have none (deleted meanwhile), so --retry-failed or a
  rerun predicts them again;
* marks done the failed tasks that have one after all (a write whose answer was lost landed later).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..labelstudio.client import LabelStudioClient
from .ledger import Ledger
from .state import BulkStore

MISSING = "its prediction is missing from Label Studio (deleted after it was written?)"
# Tasks per Data Manager page of the check (each page carries the tasks' predictions).
VERIFY_PAGE = 200

T = TypeVar("T")
Caller = Callable[[Callable[[], T]], T]


@dataclass
class VerifyReport:
    tasks: int = 0  # tasks of the job
    with_prediction: int = 0  # of those, tasks with exactly one prediction of the version (after repair)
    duplicates_removed: int = 0
    missing: list[int] = field(default_factory=list)  # counted done, but had none: now failed
    found: list[int] = field(default_factory=list)  # counted failed, but had one: now done


def verify_job(
    client: LabelStudioClient,
    store: BulkStore,
    job: str,
    page_size: int = VERIFY_PAGE,
    call: Caller | None = None,
) -> VerifyReport:
    """Check (and repair) one prediction of the version per task of `job`. `call` wraps each Label Studio call
    (e.g. backend.bulk.backoff.retrying); by default it is made once."""
    call = call or (lambda f: f())
    info = store.info(job)
    project, version = int(info["project"]), info["model_version"]
    tasks = sorted(int(t) for t in store.redis.smembers(store.job_key(job, "tasks")))
    failed = store.failed(job)
    report = VerifyReport(tasks=len(tasks))
    for start in range(0, len(tasks), page_size):
        page = tasks[start : start + page_size]
        by_task = call(lambda page=page: client.task_predictions(project, page))
        for task, is_done in zip(page, store.done_among(job, page), strict=True):
            ours = sorted(int(p["id"]) for p in by_task.get(task, []) if p.get("model_version") == version)
            for extra in ours[1:]:
                call(lambda extra=extra: client.delete_prediction(extra))
                report.duplicates_removed += 1
            if ours:
                report.with_prediction += 1
                if not is_done and task in failed:
                    report.found.append(task)
            elif is_done:
                report.missing.append(task)
    ledger = Ledger(store.redis, store.keys, store.project_of(info), version)
    if report.missing:
        store.forget_done(job, report.missing)
        ledger.forget_done(report.missing)
        store.mark_failed(job, {t: MISSING for t in report.missing})
    if report.found:
        ledger.confirm(report.found)
        store.record_chunk(job, [], report.found, {}, 0.0, 0.0)
    return report
