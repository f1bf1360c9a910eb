"""The Flask app through its test client, in embedded mode with the REAL engine on a tiny random-weight
checkpoint, fetching images from a real local HTTP server."""

from __future__ import annotations

import dataclasses
import time

import pytest

from backend.settings import Settings
from backend.web.app import create_app
from tests.fixtures.http_server import serve_directory
from tests.integration.stack import CORRUPT_PNG, png_bytes

pytestmark = pytest.mark.unit

CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="Cat" predicted_values="cat,kitten"/><Choice value="Dog"/><Choice value="Car"/>'
    '</Choices><Choices name="scene" toName="image"><Choice value="Indoor"/><Choice value="Outdoor"/>'
    "</Choices></View>"
)
NOTHING_TO_PREDICT = (
    '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>'
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    with serve_directory(root) as server:
        for i in range(5):
            server.put(f"img{i}.png", png_bytes(96 + 16 * i, 128, seed=i))
        server.put("corrupt.png", CORRUPT_PNG)
        yield server


@pytest.fixture(scope="module")
def client(tiny_client):
    return tiny_client


def setup(client, images, **extra):
    body = {"project": "3.1700000000", "schema": CONFIG, "hostname": images.url, "access_token": "legacy-key", **extra}
    response = client.post("/setup", json=body)
    assert response.status_code == 200, response.json
    return response.json["model_version"]


def predict(client, tasks, config=CONFIG):
    return client.post("/predict", json={"tasks": tasks, "project": "3.1700000000", "label_config": config})


def test_health_answers_at_once_and_reports_loading_then_ready(client, images):
    started = time.perf_counter()
    first = client.get("/health")
    assert time.perf_counter() - started < 1.0
    assert first.status_code == 200 and first.json["status"] == "UP" and first.json["mode"] == "embedded"
    setup(client, images)
    predict(client, [{"id": 1, "data": {"image": "/img0.png"}}])  # waits for the model if needed
    assert client.get("/health").json["ready"] is True


def test_setup_is_fast_and_deterministic(client, images):
    started = time.perf_counter()
    version = setup(client, images)
    assert time.perf_counter() - started < 3.0
    assert version == setup(client, images)
    assert version != setup(client, images, extra_params={"background": "coco"})


def test_predict_returns_valid_aligned_results_and_a_corrupt_image_costs_only_its_task(client, images):
    version = setup(client, images)
    tasks = [{"id": 10 + i, "data": {"image": f"/img{i}.png"}} for i in range(5)]
    tasks.insert(2, {"id": 99, "data": {"image": "/corrupt.png"}})
    tasks.append({"id": 100, "data": {"image": "/missing.png"}})
    response = predict(client, tasks)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == len(tasks)
    for task, result in zip(tasks, results, strict=True):
        assert result["model_version"] == version
        if task["id"] in (99, 100):
            assert result == {"result": [], "score": 0.0, "model_version": version}
            continue
        names = sorted(r["from_name"] for r in result["result"])
        assert names == ["scene", "tags"]
        for region in result["result"]:
            assert region["to_name"] == "image" and region["type"] == "choices" and 0 <= region["score"] <= 1
        scene = next(r for r in result["result"] if r["from_name"] == "scene")
        assert len(scene["value"]["choices"]) == 1  # single choice keeps the top label
        tags = next(r for r in result["result"] if r["from_name"] == "tags")
        assert set(tags["value"]["choices"]) <= {"Cat", "Dog", "Car"} and tags["value"]["choices"]
        # Every label's score rides along (tagclip report reads it); the region's score is the chosen ones' mean.
        assert set(tags["label_scores"]) == {"Cat", "Dog", "Car"}
        chosen = [tags["label_scores"][label] for label in tags["value"]["choices"]]
        assert tags["score"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-6)
        assert result["score"] == pytest.approx(sum(r["score"] for r in result["result"]) / 2, abs=1e-6)


def test_a_failure_that_may_pass_is_left_for_label_studio_to_retry_a_failure_for_good_is_stored_empty(client, images):
    """HTTP 503, 401 (a disabled legacy token) and a refused connection: an entry without "result", which Label
    Studio does not store, so it asks again later; HTTP 404: an empty prediction, stored so it is not asked again."""
    version = setup(client, images)
    tasks = [
        {"id": 1, "data": {"image": "/status/503"}},
        {"id": 2, "data": {"image": "/status/401"}},
        {"id": 3, "data": {"image": "http://127.0.0.1:9/x.png"}},
        {"id": 4, "data": {"image": "/missing.png"}},
        {"id": 5, "data": {"image": "/img0.png"}},
    ]
    results = predict(client, tasks).json["results"]
    for result, status in zip(results[:3], ("HTTP 503", "HTTP 401", "ConnectionError"), strict=True):
        assert "result" not in result and result["model_version"] == version
        assert result["error"].startswith("unavailable: ") and status in result["error"]
    assert results[3] == {"result": [], "score": 0.0, "model_version": version}
    assert len(results[4]["result"]) == 2
    metrics = client.get("/metrics").text
    assert 'tagclip_task_failures_total{reason="unavailable"} 3.0' in metrics


def test_same_image_same_prediction(client, images):
    setup(client, images)
    a = predict(client, [{"id": 1, "data": {"image": "/img1.png"}}]).json["results"][0]
    b = predict(client, [{"id": 2, "data": {"image": "/img1.png"}}, {"id": 3, "data": {"image": "/img2.png"}}])
    assert b.json["results"][0] == a


def test_absolute_threshold_from_extra_params(client, images):
    setup(client, images, extra_params={"threshold": 0.0})
    result = predict(client, [{"id": 1, "data": {"image": "/img3.png"}}]).json["results"][0]
    tags = next(r for r in result["result"] if r["from_name"] == "tags")
    assert tags["value"]["choices"] == ["Cat", "Dog", "Car"]  # every score >= 0
    setup(client, images)


def test_config_with_nothing_to_predict_gives_empty_results(client, images):
    response = predict(
        client, [{"id": 1, "data": {"text": "hi"}}, {"id": 2, "data": {"text": "yo"}}], config=NOTHING_TO_PREDICT
    )
    assert response.status_code == 200
    assert [r["result"] for r in response.json["results"]] == [[], []]
    setup_answer = client.post("/setup", json={"project": "9.1", "schema": NOTHING_TO_PREDICT})
    assert setup_answer.status_code == 200 and setup_answer.json["model_version"].startswith("tagclip-")


def test_empty_task_list(client, images):
    assert predict(client, []).json == {"results": []}


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"not json", 400, "JSON object"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"tasks": "nope", "label_config": "<View/>"}', 400, "tasks"),
        (b'{"tasks": [1], "label_config": "<View/>"}', 400, "every entry"),
        (b'{"tasks": [{"id": 1}]}', 400, "label_config"),
        (b'{"tasks": [{"id": 1}], "label_config": "<View><Image"}', 422, "cannot be parsed"),
    ],
)
def test_bad_predict_bodies_get_4xx_json(client, body, status, message):
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == status
    assert message in response.json["error"]
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"project": "1.1", "schema": "<View><Image"}, 422, "cannot be parsed"),
        ({"project": "1.1", "schema": CONFIG, "extra_params": {"threshold": 3}}, 400, "threshold"),
        ({"project": "1.1", "schema": CONFIG, "extra_params": {"background": 5}}, 400, "background"),
        ({"project": "1.1", "schema": 12}, 400, "schema"),
    ],
)
def test_bad_setup_gets_4xx_json(client, body, status, message):
    response = client.post("/setup", json=body)
    assert response.status_code == status and message in response.json["error"]


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json


def test_webhook_accepts_anything(client):
    for body in (b'{"action": "TASKS_CREATED", "tasks": []}', b"garbage", b""):
        response = client.post("/webhook", data=body, content_type="application/json")
        assert response.status_code == 200


def test_metrics_count_requests_and_tasks(client, images):
    setup(client, images)
    predict(client, [{"id": 1, "data": {"image": "/img0.png"}}, {"id": 2, "data": {"image": "/corrupt.png"}}])
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tagclip_http_requests_total{endpoint="predict",method="POST",status="200"}' in text
    assert 'tagclip_tasks_total{outcome="ok"}' in text and 'tagclip_task_failures_total{reason="image"}' in text
    assert "tagclip_http_request_duration_seconds_bucket" in text and "tagclip_queue_depth" in text


def test_basic_auth(tiny_settings, images):
    app = create_app(dataclasses.replace(tiny_settings, basic_auth_user="ls", basic_auth_pass="s3cret"))
    client = app.test_client()
    try:
        for auth in (None, ("ls", "wrong"), ("other", "s3cret")):
            response = client.post("/setup", json={"project": "1.1", "schema": CONFIG}, auth=auth)
            assert response.status_code == 401
            assert response.json == {"error": "wrong or missing basic-auth credentials"}
            assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert client.get("/metrics", auth=("ls", "wrong")).status_code == 401
        assert (
            client.post("/setup", json={"project": "1.1", "schema": CONFIG}, auth=("ls", "s3cret")).status_code == 200
        )
        assert client.get("/health").status_code == 200  # public: readiness only
        assert client.post("/webhook", json={}).status_code == 200
    finally:
        app.extensions["tagclip"].dispatcher.close()


def test_embedded_engine_that_cannot_load_gives_503_json(tmp_path):
    bad = Settings(
        checkpoint=str(tmp_path / "missing.pt"),
        cache_dir=str(tmp_path),
        device="cpu",
        allow_download=False,
        predict_timeout=30,
    )
    app = create_app(bad)
    client = app.test_client()
    try:
        response = predict(client, [{"id": 1, "data": {"image": "http://127.0.0.1:9/x.png"}}])
        assert response.status_code == 503
        assert "failed to load" in response.json["error"]
        health = client.get("/health").json
        assert health["ready"] is False and "failed to load" in health["reason"]
    finally:
        app.extensions["tagclip"].dispatcher.close()


def test_the_project_store_keeps_only_the_most_recent_projects_in_memory():
    from backend.web.projects import MAX_PROJECTS_IN_MEMORY, ProjectContext, ProjectStore

    store = ProjectStore()
    for i in range(MAX_PROJECTS_IN_MEMORY + 10):
        store.put(str(i), ProjectContext(hostname=f"http://ls-{i}"))
        if i == 5:
            store.get("0")  # reading does not make it recent; only /setup does
    newest = MAX_PROJECTS_IN_MEMORY + 9
    assert store.get("9") is None and store.get(str(newest)).hostname == f"http://ls-{newest}"
