"""The web process under load, against the real parts (the backend under `tagclip serve`, real Redis):

* requests waiting on predictions never hold the threads /health and /setup need (Label Studio gives them 1 s
  and 3 s): past the /predict slots a request gets 503 with Retry-After at once;
* the whole /predict, conversion of the workers' masks included, answers within PREDICT_TIMEOUT; a task not
  converted by then comes back without a result (Label Studio predicts it again later);
* a job the backend stopped waiting for stops on its worker, which is then free for the next /predict.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import pytest
import requests
from PIL import Image
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from backend.keys import RedisKeys
from tests.fixtures.http_server import serve_directory

from .conftest import make_stack
from .latency import HEALTH_LIMIT_S, MIN_SAMPLES, SETUP_LIMIT_S, TIMEOUT_FACTOR, Samples
from .stack import png_bytes, start_backend, wait_until, wait_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHOICES = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple"><Choice value="Cat"/><Choice value="Dog"/></Choices></View>'
)
BRUSH = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="mask" toName="image" model_mask_mode="coarse" model_score_threshold="0">'
    '<Label value="Cat"/><Label value="Dog"/><Label value="Car"/></BrushLabels></View>'
)
# SERVER_THREADS of the starved backend: 4 of them are reserved, 4 may wait on predictions.
THREADS = 8
SLOTS = THREADS - 4
WAIT_S = 8


def test_waiting_predicts_never_starve_health_and_setup(engine_env, redis_url, artifacts):
    """No worker runs, so every /predict waits its whole PREDICT_TIMEOUT holding a thread: three times more of
    them than there are slots. /health and /setup keep answering; the extra requests are told to come back."""
    stack = make_stack(
        {**engine_env, "REDIS_URL": redis_url},
        artifacts,
        "starve",
        SERVER_THREADS=str(THREADS),
        PREDICT_TIMEOUT=str(WAIT_S),
    )
    task = {"id": 1, "data": {"image": "http://127.0.0.1:9/never-fetched.png"}}
    body = {"tasks": [task], "label_config": CHOICES}

    def predict(_: int) -> tuple[int, float, requests.Response]:
        started = time.perf_counter()
        response = requests.post(stack.url + "/predict", json=body, timeout=60)
        return response.status_code, time.perf_counter() - started, response

    try:
        with ThreadPoolExecutor(3 * SLOTS) as pool:
            pending = [pool.submit(predict, i) for i in range(3 * SLOTS)]
            time.sleep(0.5)  # every request is in by now
            health, setup = Samples("health", HEALTH_LIMIT_S), Samples("setup", SETUP_LIMIT_S)
            while not all(f.done() for f in pending) or len(health.seconds) < MIN_SAMPLES:
                health.time(lambda t: requests.get(stack.url + "/health", timeout=t))
                setup.time(lambda t: requests.post(stack.url + "/setup", json={"schema": CHOICES}, timeout=t))
                time.sleep(0.2)
            answers = [f.result() for f in pending]
    finally:
        stack.stop()
    # Only samples taken while the waiting requests held their threads: a starved route would time out there.
    for samples in (health, setup):
        samples.check()
        assert max(samples.seconds) < TIMEOUT_FACTOR * samples.limit, samples.report()
    waited = [a for a in answers if a[0] == 200]
    turned_away = [a for a in answers if a[0] == 503]
    assert len(waited) == SLOTS and len(turned_away) == len(answers) - SLOTS
    for _, seconds, response in turned_away:
        assert seconds < WAIT_S / 2 and response.headers["Retry-After"] and "try again" in response.json()["error"]
    for _, _, response in waited:  # not done within PREDICT_TIMEOUT: no result, so Label Studio asks again
        assert "result" not in response.json()["results"][0]


@pytest.fixture
def big_images(tmp_path):
    with serve_directory(tmp_path) as server:
        for i in range(6):
            buffer = io.BytesIO()
            Image.effect_noise((2048, 1536), 60 + 10 * i).convert("RGB").save(buffer, format="PNG")
            server.put(f"{i}.png", buffer.getvalue())
        yield server


def test_predict_answers_within_its_budget_conversion_included(engine_env, artifacts, big_images):
    """Embedded mode, brush masks of 3 MP images for every label (threshold 0): converting them is real work
    after the engine is done. The answer comes within PREDICT_TIMEOUT plus one task's conversion, and every task
    is either a valid prediction or comes back without a result."""
    budget = 6.0
    env = {**engine_env, "PREDICT_TIMEOUT": str(budget), "ALLOWED_IMAGE_HOSTS": "127.0.0.1"}
    backend, url = start_backend(env, artifacts, name="backend-budget")
    try:
        wait_until(lambda: requests.get(url + "/health", timeout=2).json()["ready"], 120, what="the embedded model")
        tasks = [{"id": i, "data": {"image": f"{big_images.url}/{i}.png"}} for i in range(6)]
        started = time.perf_counter()
        answer = requests.post(url + "/predict", json={"tasks": tasks, "label_config": BRUSH}, timeout=60)
        seconds = time.perf_counter() - started
    finally:
        backend.stop()
    assert answer.status_code == 200
    assert seconds < budget + 2.0, f"answered after {seconds:.1f} s with PREDICT_TIMEOUT={budget:g}"
    for result in answer.json()["results"]:
        if "result" in result:
            assert result["result"] and {r["type"] for r in result["result"]} == {"brushlabels"}
        else:
            assert "PREDICT_TIMEOUT" in result["error"]


def test_a_job_no_one_waits_for_stops_and_frees_its_worker(engine_env, redis_url, artifacts, tmp_path):
    """One worker, 20 tasks whose images each take 2.5 s to download (groups of 4): about 12 s of work, while
    the backend waits 4 s. The job stops at the first group boundary past the backend's deadline, so a /predict
    sent right after the first one answered is served in its own 4 s (it would wait behind the whole job)."""
    delay, tasks_n = 2.5, 20
    stack = make_stack(
        {**engine_env, "REDIS_URL": redis_url}, artifacts, "giveup", PREDICT_TIMEOUT="4", CHUNK_SIZE=str(tasks_n)
    )
    redis = Redis.from_url(redis_url)
    queue = Queue(RedisKeys(stack.queue_name).predict_queue, connection=redis, serializer=JSONSerializer)
    try:
        with serve_directory(tmp_path) as images:
            images.put("a.png", png_bytes(64, 64, 1))
            stack.start_worker()
            wait_workers(stack.url, 1)
            slow = [{"id": i, "data": {"image": f"{images.url}/a.png?delay={delay}&task={i}"}} for i in range(tasks_n)]
            first = requests.post(stack.url + "/predict", json={"tasks": slow, "label_config": CHOICES}, timeout=60)
            fast = [{"id": 100, "data": {"image": f"{images.url}/a.png"}}]
            second = requests.post(stack.url + "/predict", json={"tasks": fast, "label_config": CHOICES}, timeout=60)
            job = wait_until(lambda: _finished_job(queue, f"predict_chunk({tasks_n} tasks)"), 60, what="the slow job")
            fetched = {int(q["task"][0]) for q in (parse_qs(r["query"]) for r in images.requests) if "task" in q}
    finally:
        stack.stop()
        redis.close()
    assert first.status_code == 200 and all("result" not in r for r in first.json()["results"])
    assert second.status_code == 200 and second.json()["results"][0]["result"], second.json()
    result = job.return_value()
    assert result["abandoned"] is True and 0 < len(result["tasks"]) < tasks_n
    assert not fetched & set(range(len(result["tasks"]) + 4, tasks_n)), sorted(fetched)


def _finished_job(queue: Queue, description: str):
    for job_id in queue.finished_job_registry.get_job_ids():
        job = queue.fetch_job(job_id)
        if job is not None and job.description == description:
            return job
    return None
