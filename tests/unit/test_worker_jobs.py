"""worker.jobs.predict_chunk with the REAL engine on a tiny checkpoint: plain JSON in and out, per-task
failures isolated, whole-job failures raised (so RQ records and retries them)."""

from __future__ import annotations

import copy
import json
import time
from urllib.parse import parse_qs

import pytest
import torch

from backend.contracts.predict import build_payloads, chunk_size_for
from backend.contracts.source import KeyPlace, SourceRef
from backend.errors import ModelMismatchError, PayloadError
from tagclip_core import ClassSpec
from tagclip_core.images import load_image
from tests.fixtures.http_server import serve_directory
from tests.integration.stack import CORRUPT_PNG, png_bytes
from worker.jobs import predict_chunk
from worker.runtime import current_runtime

pytestmark = pytest.mark.unit

# (width, height) of the image whose forward fails even alone in the fallback test.
FAILING_SIZE = (40, 30)
CONTROLS = [
    {
        "name": "tags",
        "data_key": "image",
        "classes": [{"label": "Cat", "prompts": ["cat", "kitten"]}, {"label": "Dog", "prompts": ["dog"]}],
    }
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_directory(tmp_path_factory.mktemp("img")) as s:
        s.put("a.png", png_bytes(64, 80, 1))
        s.put("b.png", png_bytes(100, 60, 2))
        s.put("bad.png", CORRUPT_PNG)
        s.put("c.png", png_bytes(FAILING_SIZE[1], FAILING_SIZE[0], 3))
        yield s


def payload(tiny_runtime, server, images):
    tasks = [{"id": i + 1, "data": {"image": ref}} for i, ref in enumerate(images)]
    return build_payloads(
        copy.deepcopy(CONTROLS), tasks, SourceRef(server.url, "k", KeyPlace.PAYLOAD), "voc", tiny_runtime.model_key, 10
    )[0]


def test_chunk_result_is_plain_json_with_per_task_errors(tiny_runtime, server):
    job_payload = payload(tiny_runtime, server, ["/a.png", "/bad.png", "/b.png", None])
    result = tiny_runtime.run(predict_chunk, job_payload)
    assert json.loads(json.dumps(result)) == result
    tasks = {t["index"]: t for t in result["tasks"]}
    assert set(tasks) == {0, 1, 2, 3}
    for ok, name in ((0, "a.png"), (2, "b.png")):  # the engine API's own scores and tags, serialized
        assert tasks[ok]["outputs"]["tags"] == engine_output(tiny_runtime, server, name)
    assert tasks[1]["kind"] == "image" and "bad.png" in tasks[1]["error"]
    assert tasks[3]["kind"] == "download" and "has no data['image']" in tasks[3]["error"]
    assert result["model_id"] == tiny_runtime.engine.model_id


def engine_output(tiny_runtime, server, name: str) -> dict:
    """What tagclip_core predicts for one served image with CONTROLS' classes, in the job's JSON form."""
    tiny_runtime.engine.set_classes([ClassSpec("Cat", ("cat", "kitten")), ClassSpec("Dog")], background="voc")
    (prediction,) = tiny_runtime.engine.predict([load_image(server.root.joinpath(name).read_bytes())])
    return {
        "labels": ["Cat", "Dog"],
        "scores": [round(float(score), 6) for score in prediction.scores],
        "tags": list(prediction.tags),
    }


def test_a_failed_batch_is_predicted_again_image_by_image(tiny_runtime, server, monkeypatch):
    """An out-of-memory error on the batched forward: the worker retries each image alone, so the chunk still
    answers every task with the same values; an image that fails alone costs only its own task."""
    predict = tiny_runtime.engine.predict
    batches = []

    def out_of_memory_on_batches(images, *args, **kwargs):
        batches.append(len(images))
        if len(images) > 1 or (len(images) == 1 and images[0].size == FAILING_SIZE):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return predict(images, *args, **kwargs)

    monkeypatch.setattr(tiny_runtime.engine, "predict", out_of_memory_on_batches)
    result = tiny_runtime.run(predict_chunk, payload(tiny_runtime, server, ["/a.png", "/b.png", "/c.png"]))
    monkeypatch.undo()
    assert batches == [3, 1, 1, 1]  # the batch, then each image alone
    tasks = {t["index"]: t for t in result["tasks"]}
    assert tasks[0]["outputs"]["tags"] == engine_output(tiny_runtime, server, "a.png")
    assert tasks[1]["outputs"]["tags"] == engine_output(tiny_runtime, server, "b.png")
    assert tasks[2]["kind"] == "engine" and "OutOfMemoryError" in tasks[2]["error"]


def test_download_failures_that_may_pass_are_told_apart_from_failures_for_good(tiny_runtime, server):
    refs = ["/status/503", "/status/401", "/status/429", "/missing.png", "/status/410", "/a.png"]
    tasks = {t["index"]: t for t in tiny_runtime.run(predict_chunk, payload(tiny_runtime, server, refs))["tasks"]}
    assert [tasks[i].get("kind") for i in range(len(refs))] == [
        "unavailable",
        "unavailable",
        "unavailable",
        "download",
        "download",
        None,
    ]
    assert "answered HTTP 503" in tasks[0]["error"] and "answered HTTP 404" in tasks[3]["error"]


def test_a_job_past_its_answer_by_does_no_work(tiny_runtime, server):
    """A retry after JOB_TIMEOUT, or a job that waited in the queue past the backend's deadline: nothing fetched."""
    job_payload = payload(tiny_runtime, server, ["/a.png?late=0", "/b.png?late=1"])
    job_payload["answer_by"] = time.time() - 1
    seen = len(server.requests)
    result = tiny_runtime.run(predict_chunk, job_payload)
    assert result["abandoned"] is True and result["tasks"] == []
    assert server.requests[seen:] == []


def test_a_job_stops_between_groups_of_images_once_no_one_waits(tiny_runtime, server):
    """The backend gave up while the job was downloading its first group (IMAGES_IN_MEMORY=8: groups of 4, the
    next one downloading ahead): that group is predicted, the third is never fetched."""
    delay = 2.0
    refs = [f"/a.png?delay={delay}&task={i}" for i in range(12)]
    job_payload = payload(tiny_runtime, server, refs)
    job_payload["answer_by"] = time.time() + delay / 2
    result = tiny_runtime.run(predict_chunk, job_payload)
    assert result["abandoned"] is True
    assert [t["index"] for t in result["tasks"]] == [0, 1, 2, 3] and all("outputs" in t for t in result["tasks"])
    queries = [parse_qs(r["query"]) for r in server.requests if r["path"] == "/a.png"]
    fetched = {int(q["task"][0]) for q in queries if "task" in q}
    assert {0, 1, 2, 3} <= fetched and not fetched & set(range(8, 12))
    in_time = payload(tiny_runtime, server, ["/a.png", "/b.png"])
    in_time["answer_by"] = time.time() + 600
    result = tiny_runtime.run(predict_chunk, in_time)
    assert "abandoned" not in result and len(result["tasks"]) == 2


def test_malformed_payload_and_other_weights_raise(tiny_runtime, server):
    with pytest.raises(PayloadError, match="schema"):
        tiny_runtime.run(predict_chunk, {"tasks": []})
    bad = payload(tiny_runtime, server, ["/a.png"])
    bad["controls"][0]["classes"][0]["prompts"] = []
    with pytest.raises(PayloadError, match="without prompts"):
        tiny_runtime.run(predict_chunk, bad)
    other = payload(tiny_runtime, server, ["/a.png"])
    other["model_key"] = "ViT-L-14|pretrained:openai|fp32"
    with pytest.raises(ModelMismatchError, match="same TAGCLIP_"):
        tiny_runtime.run(predict_chunk, other)
    late = payload(tiny_runtime, server, ["/a.png"])
    late["answer_by"] = "soon"
    with pytest.raises(PayloadError, match="answer_by"):
        tiny_runtime.run(predict_chunk, late)


def test_job_outside_a_runtime_fails_clearly():
    with pytest.raises(RuntimeError, match="no tagclip runtime is bound"):
        current_runtime()


def test_chunking_spreads_over_workers():
    assert chunk_size_for(30, 4, 8) == 8 and chunk_size_for(30, 8, 8) == 4 and chunk_size_for(1, 4, 8) == 1
    tasks = [{"id": i, "data": {"image": f"/{i}.png"}} for i in range(30)]
    chunks = build_payloads(CONTROLS, tasks, SourceRef(None, None, KeyPlace.PAYLOAD), "voc", "k", 8)
    assert [len(c["tasks"]) for c in chunks] == [8, 8, 8, 6]
    assert [t["index"] for c in chunks for t in c["tasks"]] == list(range(30))
