"""After a bulk run: every task of the job has exactly one prediction of the version in Label Studio.

Reads the project's predictions once. Extra predictions of the version on a task (a race the ledger
cannot see, e.g. Label Studio's own /predict storing one while a worker wrote) are deleted, keeping the
oldest. Tasks the job counts as done but that have none (deleted meanwhile) are marked failed, so
--retry-failed or a rerun predicts them again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..labelstudio.client import LabelStudioClient
from .ledger import Ledger
from .state import BulkStore

MISSING = "its prediction is missing from Label Studio (deleted after it was written?)"


@dataclass
class VerifyReport:
    tasks: int = 0  # tasks of the job
    with_prediction: int = 0  # of those, tasks with exactly one prediction of the version (after repair)
    duplicates_removed: int = 0
    missing: list[int] = field(default_factory=list)


def verify_job(client: LabelStudioClient, store: BulkStore, job: str) -> VerifyReport:
    info = store.info(job)
    project, version = int(info["project"]), info["model_version"]
    ref = store.project_of(info)
    by_task: dict[int, list[int]] = defaultdict(list)
    for prediction in client.predictions(project=project):
        if prediction.get("model_version") == version and prediction.get("task") is not None:
            by_task[int(prediction["task"])].append(int(prediction["id"]))
    report = VerifyReport()
    for ids in by_task.values():
        for extra in sorted(ids)[1:]:
            client.delete_prediction(extra)
            report.duplicates_removed += 1
    tasks = sorted(int(t) for t in store.redis.smembers(store.job_key(job, "tasks")))
    done = store.done_among(job, tasks)
    report.tasks = len(tasks)
    report.with_prediction = sum(1 for t in tasks if by_task.get(t))
    report.missing = [t for t, is_done in zip(tasks, done, strict=True) if is_done and not by_task.get(t)]
    if report.missing:
        store.forget_done(job, report.missing)
        Ledger(store.redis, store.keys, ref, version).forget_done(report.missing)
        store.mark_failed(job, {t: MISSING for t in report.missing})
    return report
