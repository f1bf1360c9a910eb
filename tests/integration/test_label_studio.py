"""The backend against a real Label Studio 1.23.2, real Redis and real `tagclip worker` processes.

Figures (latency for one task, a 30-task batch) are written to test-artifacts/integration/figures.json;
they are measurements, not assertions (speed targets live in bench/).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from label_studio_sdk.label_interface import LabelInterface
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .conftest import make_stack
from .latency import HEALTH_LIMIT_S, MIN_SAMPLES, SETUP_LIMIT_S, Prober, Samples
from .stack import CORRUPT_PNG, free_port, image_files, start_redis, wait_until, wait_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABELS = ["Cat", "Dog", "Car", "Tree", "Person"]
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="Cat" predicted_values="cat,kitten"/><Choice value="Dog"/><Choice value="Car"/>'
    '<Choice value="Tree"/><Choice value="Person" predicted_values="person,human"/></Choices></View>'
)
BATCH = 30


def record_figure(artifacts, key: str, value) -> None:
    path = artifacts / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[key] = value
    path.write_text(json.dumps(figures, indent=1, sort_keys=True))


def assert_valid_prediction(prediction: dict, version: str, interface: LabelInterface) -> None:
    assert prediction["model_version"] == version
    assert interface.validate_prediction({"result": prediction["result"]}, return_errors=True) == []
    regions = prediction["result"]
    assert len(regions) == 1
    region = regions[0]
    assert (region["from_name"], region["to_name"], region["type"]) == ("tags", "image", "choices")
    assert region["value"]["choices"] and set(region["value"]["choices"]) <= set(LABELS)
    # Every label's score, stored by Label Studio with the region (what `tagclip report` uses).
    scores = region["label_scores"]
    assert set(scores) == set(LABELS) and all(0 <= v <= 1 for v in scores.values())
    chosen = [scores[label] for label in region["value"]["choices"]]
    assert region["score"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-6)


@pytest.fixture(scope="module")
def project(label_studio, stack):
    """A project with BATCH + 2 images (one corrupt), connected to the queue-mode backend with 2 workers."""
    stack.start_worker()
    stack.start_worker()
    wait_workers(stack.url, 2)
    project_id = label_studio.create_project("TagCLIP integration", CONFIG)
    files = image_files(BATCH + 1, "img", size=(192, 256))
    files.insert(7, ("corrupt.png", CORRUPT_PNG))
    task_ids = label_studio.upload_images(project_id, files)
    backend = label_studio.connect_backend(project_id, stack.url)
    assert backend["state"] == "CO", backend
    version = requests.post(
        stack.url + "/setup", json={"project": f"{project_id}.0", "schema": CONFIG}, timeout=3
    ).json()["model_version"]
    return {"id": project_id, "tasks": task_ids, "corrupt": task_ids[7], "ml": backend, "version": version}


def test_opening_a_task_stores_a_prediction(label_studio, project, artifacts):
    task_id = project["tasks"][0]
    started = time.perf_counter()
    label_studio.api("GET", f"/api/tasks/{task_id}?project={project['id']}")
    elapsed = time.perf_counter() - started
    stored = label_studio.api("GET", f"/api/predictions?task={task_id}").json()
    assert len(stored) == 1
    assert_valid_prediction(stored[0], project["version"], LabelInterface(CONFIG))
    record_figure(artifacts, "open_one_task_s", round(elapsed, 3))


def test_retrieve_predictions_for_a_batch_stores_all_and_corrupt_costs_only_its_task(
    label_studio, project, stack, artifacts
):
    batch = [t for t in project["tasks"] if t != project["tasks"][0]]
    assert len(batch) >= BATCH
    setup = {"project": f"{project['id']}.0", "schema": CONFIG}
    routes = {  # Label Studio gives /health 1 s and /setup 3 s, even while /predict runs
        "health": (HEALTH_LIMIT_S, lambda timeout: requests.get(stack.url + "/health", timeout=timeout)),
        "setup": (SETUP_LIMIT_S, lambda timeout: requests.post(stack.url + "/setup", json=setup, timeout=timeout)),
    }
    with Prober(routes) as prober:
        started = time.perf_counter()
        answer = label_studio.retrieve_predictions(project["id"], batch)
        elapsed = time.perf_counter() - started
    latencies = prober.results()
    assert answer["processed_items"] == len(batch)

    stored = {p["task"]: p for p in label_studio.predictions(project["id"])}
    assert set(batch) <= set(stored)
    interface = LabelInterface(CONFIG)
    for task_id in batch:
        if task_id == project["corrupt"]:
            assert stored[task_id]["result"] == [] and stored[task_id]["model_version"] == project["version"]
        else:
            assert_valid_prediction(stored[task_id], project["version"], interface)
    record_figure(
        artifacts,
        "retrieve_batch",
        {
            "tasks": len(batch),
            "seconds": round(elapsed, 2),
            "tasks_per_s": round(len(batch) / elapsed, 2),
            "workers": 2,
            "max_health_s": round(max(latencies["health"].seconds), 3),
            "health_s": latencies["health"].report(),
            "setup_s": latencies["setup"].report(),
        },
    )
    latencies["health"].check()
    latencies["setup"].check()


def test_direct_single_task_latency(label_studio, project, stack, artifacts):
    """One task straight to /predict (no Label Studio round trip), after warm-up: the backend's own latency."""
    task = label_studio.api("GET", f"/api/tasks/{project['tasks'][1]}").json()
    requests.post(
        stack.url + "/setup",
        json={
            "project": f"{project['id']}.0",
            "schema": CONFIG,
            "hostname": label_studio.url,
            "access_token": label_studio.token,
        },
    )
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        response = requests.post(
            stack.url + "/predict",
            timeout=90,
            json={"tasks": [task], "project": f"{project['id']}.0", "label_config": CONFIG},
        )
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200 and response.json()["results"][0]["result"]
    record_figure(
        artifacts, "backend_one_task_s", {"median": round(sorted(samples)[2], 3), "min": round(min(samples), 3)}
    )


def test_worker_killed_mid_batch_loses_nothing(label_studio, stack, redis_url):
    for worker in stack.workers:
        worker.stop()
    victim = stack.start_worker("victim")
    wait_until(
        lambda: requests.get(stack.url + "/health", timeout=2).json()["workers"] == 1,
        60,
        what="only the victim worker alive",
    )
    project_id = label_studio.create_project("TagCLIP kill -9", CONFIG)
    task_ids = label_studio.upload_images(project_id, image_files(BATCH, "kill", size=(384, 384)))
    label_studio.connect_backend(project_id, stack.url)
    started_registry = Queue(
        stack.queue_name, connection=Redis.from_url(redis_url), serializer=JSONSerializer
    ).started_job_registry
    with ThreadPoolExecutor(1) as pool:  # result() re-raises here whatever failed in the helper thread
        action = pool.submit(label_studio.retrieve_predictions, project_id, task_ids)
        wait_until(lambda: started_registry.get_job_ids(), 60, interval=0.02, what="a job running on the victim")
        victim.kill9()
        killed = started_registry.get_job_ids()  # still registered as started: the victim held them when it died
        assert killed
        rescuer = stack.start_worker("rescuer")
        assert action.result(timeout=110)["processed_items"] == BATCH
    for job_id in killed:  # each killed job ran again, to the end, on the rescuer
        job = Job.fetch(job_id, connection=Redis.from_url(redis_url), serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FINISHED, (job_id, job.get_status())
        assert job.return_value()["worker"] == rescuer.name, (job_id, job.return_value()["worker"])
    stored = {p["task"]: p for p in label_studio.predictions(project_id)}
    assert set(stored) == set(task_ids), f"lost {sorted(set(task_ids) - set(stored))}"
    interface = LabelInterface(CONFIG)
    version = stored[task_ids[0]]["model_version"]
    for task_id in task_ids:
        assert_valid_prediction(stored[task_id], version, interface)


def test_redis_outage_gives_503_and_not_ready_then_recovers(engine_env, artifacts, label_studio, redis_server):
    port = free_port()
    redis_process = start_redis(redis_server, port, artifacts)
    outage = make_stack(
        {**engine_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"},
        artifacts,
        "outage",
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=label_studio.token,
    )
    try:
        outage.start_worker()
        wait_workers(outage.url, 1)
        project_id = label_studio.create_project("TagCLIP outage", CONFIG)
        task_ids = label_studio.upload_images(project_id, image_files(2, "outage"))
        tasks = [label_studio.api("GET", f"/api/tasks/{t}").json() for t in task_ids]
        body = {"tasks": tasks, "project": f"{project_id}.0", "label_config": CONFIG}
        assert requests.post(outage.url + "/predict", json=body, timeout=90).status_code == 200

        redis_process.stop()
        health_samples = Samples("health", HEALTH_LIMIT_S)
        for _ in range(MIN_SAMPLES):  # within Label Studio's 1 s even with Redis gone
            health_samples.time(lambda timeout: requests.get(outage.url + "/health", timeout=timeout))
        health_samples.check()
        health = requests.get(outage.url + "/health", timeout=5)
        assert health.status_code == 200 and health.json()["ready"] is False
        assert "unreachable" in health.json()["reason"]
        down = requests.post(outage.url + "/predict", json=body, timeout=30)
        assert down.status_code == 503
        assert "Redis" in down.json()["error"] and "Traceback" not in down.text

        redis_process = start_redis(redis_server, port, artifacts)
        wait_workers(outage.url, 1, timeout=60)
        again = requests.post(outage.url + "/predict", json=body, timeout=90)
        assert again.status_code == 200
        assert all(r["result"] for r in again.json()["results"])
    finally:
        outage.stop()
        redis_process.stop()


def test_basic_auth_and_bad_requests_over_http(engine_env, redis_url, artifacts, label_studio):
    guarded = make_stack(
        {**engine_env, "REDIS_URL": redis_url}, artifacts, "auth", BASIC_AUTH_USER="studio", BASIC_AUTH_PASS="s3cret"
    )
    try:
        url = guarded.url
        setup = {"project": "1.0", "schema": CONFIG}
        for auth in (None, ("studio", "wrong")):
            response = requests.post(url + "/setup", json=setup, auth=auth, timeout=3)
            assert response.status_code == 401 and response.json() == {
                "error": "wrong or missing basic-auth credentials"
            }
        good = ("studio", "s3cret")
        assert requests.post(url + "/setup", json=setup, auth=good, timeout=3).status_code == 200
        # Label Studio with the wrong password: the backend is not usable (not connected).
        project_id = label_studio.create_project("TagCLIP auth", CONFIG)
        answer = label_studio.api(
            "POST",
            "/api/ml",
            expect=(201, 400),
            json={
                "url": url,
                "project": project_id,
                "title": "TagCLIP",
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": "studio",
                "basic_auth_pass": "wrong",
            },
        )
        assert answer.status_code == 400 or answer.json()["state"] != "CO"

        bad_config = requests.post(
            url + "/setup", json={"project": "1.0", "schema": "<View><Image"}, auth=good, timeout=3
        )
        assert bad_config.status_code == 422 and "cannot be parsed" in bad_config.json()["error"]
        malformed = requests.post(
            url + "/predict", data=b"{not json", auth=good, timeout=3, headers={"Content-Type": "application/json"}
        )
        assert malformed.status_code == 400 and "JSON object" in malformed.json()["error"]
        assert "Traceback" not in malformed.text
    finally:
        guarded.stop()
