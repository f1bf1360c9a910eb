"""Bulk pre-annotation, review export and report against a real Label Studio 1.23.2, real Redis, real
`tagclip worker` processes and the real `tagclip` commands (subprocesses):

* the command killed halfway and rerun, a worker killed in the middle of a chunk: every task ends with
  exactly one prediction of the version; a third run writes nothing; failed tasks are listed with their
  reason and retried alone;
* a worker killed after Label Studio stored its predictions but before it confirmed them: the next run
  finds them there and does not write them again; the final check (paged) removes a duplicate;
* the same over HTTP (POST /jobs, GET /jobs/<id>) with one POST per task, verified by a worker at its end;
* the export of reviewed annotations (tags and brush masks) and the report against numbers computed here.

The 10,000-task version of the first scenario is test_bulk_scale.py (opt-in).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import mask2rle
from redis import Redis
from rq.suspension import resume, suspend

from backend.bulk.ledger import Ledger, owner_name
from backend.bulk.planner import BulkPlanner, BulkRequest
from backend.bulk.status import job_status
from backend.bulk.verify import verify_job
from backend.errors import BulkSetupError
from backend.keys import ProjectRef
from backend.labelstudio.auth import Source
from backend.labelstudio.client import LabelStudioClient
from backend.settings import Settings
from tagclip_cli.review import floor_threshold

from .browser import Browser, login_cookies
from .bulk_helpers import (
    CONFIG,
    LABELS,
    active_job,
    assert_exactly_one,
    cli_env,
    forget_bulk_state,
    kill_worker_mid_chunk,
    make_project,
    predictions_by_task,
    run_cli,
    run_cli_releasing,
    start_cli,
    store_and_queue,
)
from .stack import LS_PASSWORD, LS_USER, ROOT, wait_until, wait_workers
from .test_label_studio import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TASKS = 80
CHUNK = 4


@pytest.fixture(scope="module")
def workers(stack, redis_url):
    stack.start_worker("a")
    stack.start_worker("b")
    wait_workers(stack.url, 2)
    yield stack
    forget_bulk_state(redis_url, stack.queue_name)


@pytest.fixture(scope="module")
def env(workers, label_studio):
    return cli_env(workers.env, label_studio)


def setup_version(stack, project: int) -> str:
    body = {"project": f"{project}.0", "schema": CONFIG}
    return requests.post(stack.url + "/setup", json=body, timeout=5).json()["model_version"]


@pytest.fixture(scope="module")
def interrupted_run(label_studio, workers, env, redis_url, artifacts):
    """80 tasks (2 corrupt): the command killed while chunks run, a worker killed mid-chunk, then rerun."""
    project = make_project(label_studio, "TagCLIP bulk", N_TASKS, size=160, n_corrupt=2)
    label_studio.connect_backend(project.id, workers.url)
    version = setup_version(workers, project.id)
    store, queue = store_and_queue(redis_url, workers.queue_name)
    started = time.monotonic()
    first = start_cli(
        env, artifacts, f"preannotate-{project.id}-first", "--project", str(project.id), "--chunk-size", str(CHUNK)
    )
    job = active_job(store, label_studio.url, project.id, version)
    wait_until(lambda: store.counts(job)["done"] >= 2 * CHUNK, 120, what="some chunks done")
    victim, killed_chunk = kill_worker_mid_chunk(queue, workers.workers)
    # Workers take nothing more until the rerun has attached (RQ's own switch): on a fast machine the surviving
    # worker could otherwise finish the job before the rerun's Python has started.
    connection = Redis.from_url(redis_url)
    suspend(connection)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    done_at_kill = store.counts(job)["done"]
    workers.start_worker("rescuer")
    code, status, stdout = run_cli_releasing(
        env, "attached to running job", lambda: resume(connection), "--project", str(project.id),
        "--chunk-size", str(CHUNK),
    )  # fmt: skip
    return {
        "project": project,
        "version": version,
        "job": job,
        "code": code,
        "status": status,
        "stdout": stdout,
        "victim": victim,
        "killed_chunk": killed_chunk,
        "done_at_kill": done_at_kill,
        "seconds": time.monotonic() - started,
    }


def test_killed_command_and_worker_end_with_exactly_one_prediction_per_task(
    interrupted_run, label_studio, redis_url, workers, artifacts
):
    run = interrupted_run
    project, status = run["project"], run["status"]
    assert 0 < run["done_at_kill"] < N_TASKS
    (artifacts / "bulk-status-example.json").write_text(json.dumps(status, indent=1))
    # The rerun resumed the same job (it was still running) and finished it; the corrupt tasks failed.
    assert "attached to running job " + run["job"] in run["stdout"]
    assert run["code"] == 1 and status["id"] == run["job"] and status["state"] == "done"
    assert status["total"] == N_TASKS and status["done"] == N_TASKS - 2 and status["failed"] == 2
    assert status["cancelled"] == 0 and status["cancelled_at"] is None
    # No task was enqueued twice: the rerun added nothing the job had (80 tasks in chunks of 4).
    assert status["chunks"] == {"queued": 0, "running": 0, "finished": N_TASKS // CHUNK, "failed": 0, "cancelled": 0}
    assert {f["task"] for f in status["failed_tasks"]} == set(project.corrupt)
    assert all("not an image in a supported format" in f["reason"] for f in status["failed_tasks"])
    assert status["verify"]["duplicates_removed"] == 0 and status["verify"]["missing"] == []
    assert_exactly_one(label_studio, project, run["version"], project.good)
    # RQ ran the killed chunk again on another worker.
    _, queue = store_and_queue(redis_url, workers.queue_name)
    from rq.job import Job

    chunk = Job.fetch(run["killed_chunk"], connection=queue.connection, serializer=queue.serializer)
    assert chunk.get_status() == "finished" and chunk.worker_name != run["victim"].name
    record_figure(
        artifacts,
        "bulk_80_tasks",
        {
            "seconds_incl_kills": round(run["seconds"], 1),
            "tasks_per_s": status["tasks_per_s"],
            "store_s_per_task_import": status["store_s_per_task"],
            "write_s_per_task_import": status["write_s_per_task"],
            "chunk_size": CHUNK,
        },
    )


def test_running_again_writes_nothing_and_the_job_is_visible_over_http(interrupted_run, label_studio, env, workers):
    run = interrupted_run
    project = run["project"]
    before = {p["id"] for ps in predictions_by_task(label_studio, project.id).values() for p in ps}
    code, status, stdout = run_cli(env, "--project", str(project.id))
    assert "enqueued 2 task(s)" in stdout  # only the two without a prediction: the corrupt ones
    assert code == 1 and status["written"] == 0 and status["total"] == 2 and status["failed"] == 2
    after = {p["id"] for ps in predictions_by_task(label_studio, project.id).values() for p in ps}
    assert after == before
    answer = requests.get(f"{workers.url}/jobs/{run['job']}", headers=studio_headers(label_studio), timeout=10).json()
    assert answer["state"] == "done" and answer["done"] == N_TASKS - 2 and answer["project"] == project.id


def test_failed_tasks_are_retried_alone(interrupted_run, label_studio, env):
    run = interrupted_run
    project = run["project"]
    fixed, broken = project.corrupt
    label_studio.api("PATCH", f"/api/tasks/{fixed}", json={"data": {"image": project.good_urls[0]}})
    code, status, stdout = run_cli(env, "--project", str(project.id), "--retry-failed")
    assert "2 failed task(s) enqueued again" in stdout
    assert code == 1 and [f["task"] for f in status["failed_tasks"]] == [broken]
    assert_exactly_one(label_studio, project, run["version"], [*project.good, fixed])


def _planner(workers, label_studio) -> BulkPlanner:
    settings = Settings.from_env(workers.env)
    from redis import Redis

    client = LabelStudioClient(Source(label_studio.url, label_studio.token))
    return BulkPlanner(settings, Redis.from_url(settings.redis_url), client)


def studio_headers(label_studio) -> dict[str, str]:
    """What a caller of /jobs brings when the backend has no basic auth: its Label Studio and a key of it."""
    return {"X-Label-Studio-Url": label_studio.url, "X-Label-Studio-Key": label_studio.token}


def _follow(planner: BulkPlanner, job: str, timeout: float = 180) -> dict:
    queue = planner.queue
    return wait_until(
        lambda: (lambda s: s if s["state"] == "done" else None)(job_status(planner.store, queue, job)),
        timeout,
        interval=0.3,
        what=f"bulk job {job} done",
    )


def test_predictions_stored_by_a_killed_worker_are_found_not_written_twice(label_studio, workers):
    """The state a worker killed between Label Studio storing its predictions and confirming them leaves:
    predictions in Label Studio, claims in the ledger owned by a worker that no longer exists."""
    project = make_project(label_studio, "TagCLIP bulk race", 12, n_images=3)
    planner = _planner(workers, label_studio)
    prepared = planner.prepare(BulkRequest(project=project.id, chunk_size=5))
    version = prepared.model_version
    landed = project.tasks[:3]
    stored_before = {}
    for task in landed:
        body = {"task": task, "result": [], "score": 0.0, "model_version": version}
        stored_before[task] = label_studio.api("POST", "/api/predictions", json=body).json()["id"]
    ledger = Ledger(planner.redis, planner.keys, planner.project(project.id), version)
    ghost = owner_name("killed-worker", 999999)
    assert ledger.claim(landed, ghost, lease=3600).claimed == landed
    started = planner.start(prepared)
    # The chunk was enqueued before the killed worker wrote: enqueue all tasks, the landed ones included.
    tasks = planner.client.tasks_by_id(project.id, project.tasks)
    assert planner.enqueue_tasks(started.job, prepared, tasks) == 12
    planner.store.set_fields(started.job, listed=1)  # what enqueue_all does after its last page
    status = _follow(planner, started.job)
    assert status["recovered"] == 3 and status["written"] == 9 and status["failed"] == 0
    stored = predictions_by_task(label_studio, project.id)
    assert all(len(stored[t]) == 1 for t in project.tasks)
    assert {t: stored[t][0]["id"] for t in landed} == stored_before
    assert ledger.not_done(project.tasks) == []
    # A duplicate that slipped past (e.g. Label Studio's own /predict racing a worker) is removed, oldest kept.
    label_studio.api("POST", "/api/predictions", json={"task": landed[0], "result": [], "model_version": version})
    report = verify_job(planner.client, planner.store, started.job, page_size=5)  # three pages
    assert report.duplicates_removed == 1 and report.with_prediction == 12 and report.missing == []
    assert [p["id"] for p in predictions_by_task(label_studio, project.id)[landed[0]]] == [stored_before[landed[0]]]


def test_jobs_over_http_with_one_post_per_task(label_studio, workers, artifacts):
    project = make_project(label_studio, "TagCLIP bulk http", 10, n_images=3)
    keys = {"url": label_studio.url, "api_key": label_studio.token}

    def follow(job: str) -> dict:
        return wait_until(
            lambda: (lambda s: s if s["state"] == "done" else None)(
                requests.get(f"{workers.url}/jobs/{job}", headers=studio_headers(label_studio), timeout=10).json()
            ),
            180,
            interval=0.3,
            what=f"job {job} done",
        )

    body = {"project": project.id, "write": "single", "max_tasks": 6, "chunk_size": 3, **keys}
    created = requests.post(workers.url + "/jobs", json=body, timeout=30)
    assert created.status_code == 202 and created.json()["attached"] is False
    first = follow(created.json()["id"])
    assert (first["total"], first["done"], first["written"], first["write"]) == (6, 6, 6, "single")
    # A job started over HTTP is verified too, by a worker, when its chunks have ended.
    assert first["verify"] == {"tasks": 6, "with_prediction": 6, "duplicates_removed": 0, "missing": [], "found": []}
    assert first["store_s_per_task"] > 0 and first["tasks_per_s"] > 0 and first["eta_s"] == 0
    rest = follow(requests.post(workers.url + "/jobs", json={"project": project.id, **keys}, timeout=30).json()["id"])
    assert rest["total"] == 4 and rest["written"] == 4
    nothing = follow(
        requests.post(workers.url + "/jobs", json={"project": project.id, **keys}, timeout=30).json()["id"]
    )
    assert nothing["total"] == 0
    assert all(len(p) == 1 for p in predictions_by_task(label_studio, project.id).values())
    assert len(predictions_by_task(label_studio, project.id)) == 10
    missing = requests.get(workers.url + "/jobs/nope", headers=studio_headers(label_studio), timeout=10)
    assert missing.status_code == 404 and "no bulk job" in missing.json()["error"]
    bad = requests.post(workers.url + "/jobs", json={"project": 999999, **keys}, timeout=30)
    assert bad.status_code == 403 and "999999" in bad.json()["error"] and "404" in bad.json()["error"]
    record_figure(artifacts, "bulk_single_post", {"store_s_per_task": first["store_s_per_task"], "tasks": 6})


# What the labeling page shows for a bulk prediction: the version's tab, and a draft pre-filled with it.
PAGE_DRAFT = """(() => {
  const store = window.Htx && Htx.annotationStore;
  if (!store || !store.selected || store.predictions.length !== 1) return false;
  const result = store.selected.serializeAnnotation();
  return result.length ? {result, predictions: store.predictions.length} : false;
})()"""


def test_labeling_page_prefills_the_bulk_prediction(interrupted_run, label_studio, artifacts, chromium):
    run = interrupted_run
    project = run["project"]
    task = project.good[-1]
    (prediction,) = predictions_by_task(label_studio, project.id)[task]
    browser = Browser(chromium, artifacts / "chromium-bulk.log")
    try:
        browser.set_cookies(label_studio.url, login_cookies(label_studio.url, LS_USER, LS_PASSWORD))
        browser.navigate(f"{label_studio.url}/projects/{project.id}/data?task={task}")
        page = browser.wait_for(PAGE_DRAFT, 90, what="the labeling page with the prediction's draft")
        # The store holds the draft before the page draws the prediction's tab: wait for the tab too.
        suffix = json.dumps(run["version"][-6:])
        shown = browser.wait_for(
            f"document.body.innerText.includes({suffix})", 60, what="the prediction's tab with its model version"
        )
        browser.screenshot(artifacts / "label-studio-bulk-task.png")
    finally:
        browser.close()
    (choices,) = [r for r in page["result"] if r["type"] == "choices"]
    assert set(choices["value"]["choices"]) == set(prediction["result"][0]["value"]["choices"])
    assert shown is True  # the prediction's tab


# --- review: export and report ---
def _annotate(label_studio, task: int, choices: list[str], extra: list[dict] | None = None) -> None:
    result = [{"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": choices}}]
    label_studio.api("POST", f"/api/tasks/{task}/annotations", json={"result": result + (extra or [])})


def _review(label_studio, run) -> dict[int, tuple[set, set]]:
    """Review 24 tasks: accept a quarter unchanged, correct the others; returns task -> (truth, suggested)."""
    project = run["project"]
    stored = predictions_by_task(label_studio, project.id)
    pairs = {}
    for i, task in enumerate(project.good[:24]):
        suggested = list(stored[task][0]["result"][0]["value"]["choices"])
        if i % 4 == 0:
            truth = suggested
        elif i % 4 == 1:
            truth = [x for x in LABELS if x not in suggested][:1] or ["Cat"]
        elif i % 4 == 2:
            truth = sorted(set(suggested) | {LABELS[i % len(LABELS)]})
        else:
            truth = [LABELS[(i // 4) % len(LABELS)]]
        _annotate(label_studio, task, truth)
        pairs[task] = (set(truth), set(suggested))
    return pairs


def _tagclip(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tagclip_cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_report_numbers_match_the_reviews_and_thresholds_go_into_the_config(
    interrupted_run, label_studio, env, tmp_path, artifacts
):
    run = interrupted_run
    project = run["project"]
    pairs = _review(label_studio, run)
    result = _tagclip(
        env,
        "report",
        "--project",
        str(project.id),
        "--json",
        str(tmp_path / "r.json"),
        "--html",
        str(tmp_path / "r.html"),
    )
    assert result.returncode == 0, result.stderr
    (artifacts / "bulk-report-example.txt").write_text(result.stdout)
    report = json.loads((tmp_path / "r.json").read_text())
    accepted = sum(1 for truth, suggested in pairs.values() if truth == suggested)
    assert report["model_version"] == run["version"]
    assert (report["reviewed"], report["compared"], report["with_label_scores"]) == (24, 24, 24)
    assert report["accepted_unchanged"] == accepted and f"accepted unchanged: {accepted} of 24" in result.stdout
    (control,) = report["controls"]
    for metrics in control["labels"]:
        label = metrics["label"]
        tp = sum(1 for t, s in pairs.values() if label in t and label in s)
        fp = sum(1 for t, s in pairs.values() if label not in t and label in s)
        fn = sum(1 for t, s in pairs.values() if label in t and label not in s)
        assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (tp, fp, fn), label
    assert "<svg" in (tmp_path / "r.html").read_text()

    written = _tagclip(env, "report", "--project", str(project.id), "--write-thresholds", "--force")
    assert written.returncode == 0, written.stderr
    config = label_studio.api("GET", f"/api/projects/{project.id}").json()["label_config"]
    assert f'model_score_threshold="{floor_threshold(control["threshold"]):g}"' in config


def test_export_of_reviewed_tags_and_masks(label_studio, env, tmp_path):
    config = CONFIG.replace(
        "</View>",
        '<BrushLabels name="mask" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels></View>',
    )
    project_id = label_studio.create_project("TagCLIP export", config)
    files = {"data": {"image": "/data/upload/1/a.png"}}
    ids = label_studio.api(
        "POST", f"/api/projects/{project_id}/import?return_task_ids=true", json=[files, files, files]
    ).json()["task_ids"]
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[4:10, 5:25] = 255
    brush = {
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": 40,
        "original_height": 30,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Dog"]},
    }
    _annotate(label_studio, ids[0], ["Cat", "Tree"], [brush])
    _annotate(label_studio, ids[1], ["Car"])
    outputs = {}
    for fmt in ("jsonl", "csv", "coco"):
        out = tmp_path / f"export.{fmt}"
        result = _tagclip(
            env, "export", "--project", str(project_id), "--format", fmt, "--out", str(out), "--no-images"
        )
        assert result.returncode == 0, result.stderr
        assert "exported 2 reviewed task(s)" in result.stderr
        outputs[fmt] = out.read_text()
    rows = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert [r["task"] for r in rows] == ids[:2] and all(r["image"] == "/data/upload/1/a.png" for r in rows)
    assert rows[0]["tags"] == {"tags": ["Cat", "Tree"]} and rows[1]["tags"] == {"tags": ["Car"]}
    (exported,) = rows[0]["masks"]
    assert exported["label"] == "Dog" and exported["area"] == 120 and exported["bbox"] == [5, 4, 20, 6]
    assert outputs["csv"].splitlines()[1].startswith(f"{ids[0]},/data/upload/1/a.png,Cat;Tree,1,")
    coco = json.loads(outputs["coco"])
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 1 and len(coco["image_labels"]) == 3
    assert coco["annotations"][0]["segmentation"]["size"] == [30, 40]
    assert {image["file_name"] for image in coco["images"]} == {"a.png"}


def test_cancel_drops_waiting_chunks_and_a_rerun_resumes(label_studio, workers, env, redis_url):
    """Workers suspended (RQ's own switch) while the command enqueues, so the chunks wait; `--cancel` drops
    them (a worker that was already blocked on the queue may have taken one: it finishes or skips it); the
    cancelled job takes on nothing more; a rerun starts a new job that predicts exactly the rest."""
    project = make_project(label_studio, "TagCLIP bulk cancel", 12, n_images=3)
    version = setup_version(workers, project.id)
    store, queue = store_and_queue(redis_url, workers.queue_name)
    connection = Redis.from_url(redis_url)
    suspend(connection)
    try:
        code, _, stdout = run_cli(env, "--project", str(project.id), "--chunk-size", "1", "--no-wait")
        assert code == 0, stdout
        job = store.latest(ProjectRef.of(label_studio.url, project.id), version)
        chunks = len(store.live_chunks(job))
        assert chunks == 12
        code, status, stdout = run_cli(env, "--project", str(project.id), "--cancel")
        assert code == 0 and f"job {job} cancelled" in stdout, stdout
    finally:
        resume(connection)
    dropped = int(stdout.split("cancelled: ")[1].split(" waiting")[0])
    assert dropped >= chunks - len(workers.workers)  # at most one chunk per worker was taken before the cancel
    assert status["id"] == job and status["state"] == "cancelled" and status["failed"] == 0
    assert status["done"] + status["cancelled"] == 12 and status["chunks"]["cancelled"] == dropped
    assert not [j for j in queue.get_job_ids() if j.startswith(f"tagclip-bulk-{job}-")]
    stored = predictions_by_task(label_studio, project.id)
    assert len(stored) == status["done"] and all(len(p) == 1 for p in stored.values())
    over_http = requests.get(f"{workers.url}/jobs/{job}", headers=studio_headers(label_studio), timeout=10).json()
    assert over_http["state"] == "cancelled" and over_http["cancelled_at"] is not None
    assert requests.get(f"{workers.url}/jobs/{job}", timeout=10).status_code == 401  # no Label Studio key: no status
    again = requests.post(f"{workers.url}/jobs/{job}/cancel", headers=studio_headers(label_studio), timeout=10)
    assert again.status_code == 202 and again.json()["dropped_chunks"] == 0 and again.json()["state"] == "cancelled"
    # The cancelled job takes on nothing more, and its failed tasks cannot be retried: a rerun is the way.
    planner = _planner(workers, label_studio)
    prepared = planner.prepare(BulkRequest(project=project.id, chunk_size=4))
    assert planner.enqueue_tasks(job, prepared, planner.client.tasks_by_id(project.id, project.tasks)) == 0
    with pytest.raises(BulkSetupError, match="cancelled"):
        planner.retry_failed(job)
    code, rerun, stdout = run_cli(env, "--project", str(project.id), "--chunk-size", "4")
    assert code == 0, stdout
    assert rerun["id"] != job and rerun["state"] == "done" and rerun["total"] == status["cancelled"]
    assert_exactly_one(label_studio, project, version, project.tasks)
    late = requests.post(f"{workers.url}/jobs/{rerun['id']}/cancel", headers=studio_headers(label_studio), timeout=10)
    late = late.json()
    assert late["already_finished"] is True and late["state"] == "done"  # a finished job stays as it was
