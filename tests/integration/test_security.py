"""What a stranger can do to the backend as deployed by default (no basic auth), against the real parts: the app
under `tagclip serve`, real Redis and `tagclip worker`s, a real Label Studio, and a "foreign host" played by a
listener on 127.0.0.1 that records every request it gets.

* the Label Studio key only ever goes to its own Label Studio (/jobs, /setup + /predict);
* task images cannot reach private addresses unless allowed, and say "refused by policy";
* Redis is not a way to run code in the workers (job function allowlist, no callbacks);
* no signed query string reaches a log line or a stored failure reason;
* bodies, task counts, label counts and chunk sizes are bounded.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid

import pytest
import requests
from PIL import Image
from redis import Redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from tests.fixtures.callbacks import marker_path
from tests.fixtures.http_server import FOREIGN_BODY, serve_directory

from .conftest import make_stack
from .stack import Process, free_port, image_files, spawn, wait_until, wait_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple"><Choice value="Cat"/><Choice value="Dog"/></Choices></View>'
)
SIGNATURE = "X-Amz-Signature=SECRET-SIGNATURE-91c2"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def listener(tmp_path):
    with serve_directory(tmp_path) as server:
        server.put("img.png", png())
        yield server


def authorizations(server) -> list[str]:
    return [r["headers"].get("Authorization", "") for r in server.requests]


@pytest.fixture(scope="module")
def keyed_stack(engine_env, redis_url, artifacts, label_studio):
    """Queue mode with the operator's Label Studio and key configured, no basic auth, no ALLOWED_IMAGE_HOSTS (only
    LABEL_STUDIO_URL's host, 127.0.0.1, is trusted; `localhost` is not), and one worker."""
    env = {k: v for k, v in engine_env.items() if k != "ALLOWED_IMAGE_HOSTS"}
    stack = make_stack(
        {**env, "REDIS_URL": redis_url},
        artifacts,
        "keyed",
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=label_studio.token,
        MAX_PREDICT_TASKS="5",
        MAX_LABELS_PER_CONTROL="50",
    )
    stack.start_worker()
    wait_workers(stack.url, 1)
    yield stack
    stack.stop()


def predict(stack, tasks: list[dict], **setup) -> requests.Response:
    project = f"{uuid.uuid4().hex[:6]}.0"
    requests.post(stack.url + "/setup", json={"project": project, "schema": CONFIG, **setup}, timeout=5)
    return requests.post(stack.url + "/predict", json={"project": project, "tasks": tasks}, timeout=90)


def untrusted(url: str) -> str:
    """The same server by a name the backend does not trust (it resolves to loopback all the same)."""
    return url.replace("127.0.0.1", "localhost")


def log_since(process: Process, offset: int) -> str:
    return process.log_path.read_text(errors="replace")[offset:]


# --- the key stays home ---
def test_jobs_never_pair_a_callers_url_with_the_backends_key(keyed_stack, label_studio, listener):
    jobs = keyed_stack.url + "/jobs"
    # A URL without its key is refused: the backend's key is never filled in for it.
    assert requests.post(jobs, json={"project": 1, "url": listener.url}, timeout=10).status_code == 400
    # Without basic auth a caller brings its own Label Studio and key; they are checked there, with that key
    # only, and what that host answers is not echoed.
    response = requests.post(jobs, json={"project": 1, "url": listener.url, "api_key": "callers-key"}, timeout=10)
    assert response.status_code == 403 and "FOREIGN-HOST-BODY" not in response.text
    assert authorizations(listener) == ["Token callers-key"]
    # The same through the headers, to an untrusted name: refused by policy before any request.
    headers = {"X-Label-Studio-Url": untrusted(listener.url), "X-Label-Studio-Key": "callers-key"}
    response = requests.post(jobs, json={"project": 1}, headers=headers, timeout=10)
    assert response.status_code == 403 and "refused by policy" in response.json()["error"]
    assert len(listener.requests) == 1
    assert label_studio.token not in json.dumps(listener.requests)
    assert FOREIGN_BODY.decode() not in response.text


def test_setup_hostname_never_receives_the_configured_key(keyed_stack, listener):
    """/setup names the listener as Label Studio; a relative image is still fetched from LABEL_STUDIO_URL."""
    task = {"id": 1, "data": {"image": "/data/upload/1/does-not-exist.png"}}
    answer = predict(keyed_stack, [task], hostname=listener.url, access_token="t").json()
    # The real Label Studio answered (1.23 answers 500 for an unknown upload: no result, it is asked again later).
    (result,) = answer["results"]
    assert "result" not in result and f"{keyed_stack.env['LABEL_STUDIO_URL']}/data/upload/1/" in result["error"]
    assert listener.requests == []


def test_a_key_without_its_url_refuses_to_start(engine_env, artifacts):
    argv = [sys.executable, "-m", "tagclip_cli.main", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    process = spawn("backend-key-without-url", argv, {**engine_env, "LABEL_STUDIO_API_KEY": "some-key"}, artifacts)
    assert process.popen.wait(60) != 0
    assert "LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL" in process.log_tail()


# --- task images and private networks ---
@pytest.mark.parametrize("where", ["loopback", "link-local"])
def test_task_images_on_private_addresses_are_refused_by_policy(keyed_stack, listener, where):
    url = {"loopback": f"{untrusted(listener.url)}/img.png", "link-local": "http://169.254.169.254/latest/"}[where]
    offset = len(keyed_stack.backend.log_path.read_text(errors="replace"))
    answer = predict(keyed_stack, [{"id": 7, "data": {"image": url}}]).json()
    assert answer["results"][0]["result"] == []
    assert listener.requests == []
    log = log_since(keyed_stack.backend, offset)
    assert "refused by policy" in log
    assert "127.0.0.1" not in log and "::1" not in log  # nothing maps the internal network


# --- Redis is not a code-execution path ---
def test_workers_run_only_the_projects_job_functions_and_no_callbacks(keyed_stack, redis_url, tmp_path):
    connection = Redis.from_url(redis_url)
    queue = Queue(keyed_stack.queue_name, connection=connection, serializer=JSONSerializer)
    foreign = queue.enqueue("tests.fixtures.callbacks.touch_marker", "x")
    callback = queue.enqueue(
        "worker.jobs.predict_chunk", {"schema": 99}, on_failure=Callback("tests.fixtures.callbacks.touch_marker")
    )
    for job in (foreign, callback):
        wait_until(lambda j=job: j.get_status(refresh=True) == JobStatus.FAILED, 60, what=f"job {job.id} failed")
    assert (
        "not one of the workers' job functions"
        in Job.fetch(foreign.id, connection, JSONSerializer).latest_result().exc_string
    )
    assert "asks for callbacks" in Job.fetch(callback.id, connection, JSONSerializer).latest_result().exc_string
    time.sleep(1)
    assert not marker_path(foreign.id).exists() and not marker_path(callback.id).exists()
    assert not marker_path("x").exists()


# --- no secrets in text ---
def test_signed_query_strings_stay_out_of_logs_and_failures(keyed_stack):
    url = f"https://no-such-host.invalid/bucket/img.png?{SIGNATURE}&X-Amz-Credential=AKIA"
    answer = predict(keyed_stack, [{"id": 3, "data": {"image": url}}]).json()
    (result,) = answer["results"]
    # A failed DNS lookup may pass: no result (Label Studio asks again later), and no signature in the reason.
    assert "result" not in result and "no-such-host.invalid/bucket/img.png" in result["error"]
    assert "SECRET-SIGNATURE" not in json.dumps(answer) and "AKIA" not in json.dumps(answer)
    time.sleep(0.5)
    logs = keyed_stack.backend.log_path.read_text(errors="replace") + "".join(
        w.log_path.read_text(errors="replace") for w in keyed_stack.workers
    )
    assert "no-such-host.invalid/bucket/img.png" in logs  # the failure is logged ...
    assert "SECRET-SIGNATURE" not in logs and "AKIA" not in logs  # ... without its signature


# --- bounded by default ---
def test_bodies_tasks_labels_and_chunks_are_bounded(keyed_stack):
    url = keyed_stack.url
    big = requests.post(url + "/webhook", data=b"{" + b" " * (100 * 1024) + b"}", timeout=10)
    assert big.status_code == 413
    assert requests.post(url + "/webhook", json={"action": "ANNOTATION_CREATED"}, timeout=10).status_code == 200
    tasks = [{"id": i, "data": {"image": "/x.png"}} for i in range(6)]
    too_many = requests.post(url + "/predict", json={"tasks": tasks, "label_config": CONFIG}, timeout=10)
    assert too_many.status_code == 413 and "MAX_PREDICT_TASKS=5" in too_many.json()["error"]
    labels = "".join(f'<Choice value="L{i}"/>' for i in range(51))
    config = f'<View><Image name="image" value="$image"/><Choices name="c" toName="image">{labels}</Choices></View>'
    setup = requests.post(url + "/setup", json={"project": "9.0", "schema": config}, timeout=10)
    assert setup.status_code == 422 and "MAX_LABELS_PER_CONTROL=50" in setup.json()["error"]
    chunk = requests.post(
        url + "/jobs", json={"project": 1, "chunk_size": 5000, "url": "http://ls.example", "api_key": "k"}, timeout=10
    )
    assert chunk.status_code == 400 and "at most 1000" in chunk.json()["error"]


def test_upload_images_still_work_and_the_jobs_hold_no_key(keyed_stack, label_studio, redis_url):
    """The policy does not get in the way of the normal path (uploads from LABEL_STUDIO_URL's Label Studio), and
    as the workers hold that Label Studio's key themselves, the jobs in Redis carry none."""
    project = label_studio.create_project("TagCLIP security", CONFIG)
    (task_id,) = label_studio.upload_images(project, image_files(1, "sec"))
    task = label_studio.api("GET", f"/api/tasks/{task_id}").json()
    answer = predict(keyed_stack, [task]).json()
    (result,) = answer["results"]
    assert result["result"] and result["result"][0]["value"]["choices"]
    connection = Redis.from_url(redis_url)
    queue = Queue(keyed_stack.queue_name, connection=connection, serializer=JSONSerializer)
    finished = queue.finished_job_registry.get_job_ids()
    assert finished
    for job_id in finished:
        assert label_studio.token.encode() not in connection.hget(Job.key_for(job_id), "data")
        source = Job.fetch(job_id, connection, JSONSerializer).args[0]["source"]
        assert source == {"url": label_studio.url, "api_key": None, "key": "worker"}
