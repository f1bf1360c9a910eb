"""Vocabulary builds: the payload contract, the job on the real engine (tiny random weights), and embedded mode,
where /setup hands the build to a thread of its own and never runs the text tower in the request."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from backend.contracts import JOB_FUNCTIONS
from backend.contracts.vocab import (
    JOB_FUNCTION,
    PROMPTS_PER_JOB,
    build_payloads,
    parse_payload,
    vocabulary_id,
    vocabulary_prompts,
)
from backend.errors import ModelMismatchError, PayloadError
from backend.web.app import create_app
from tagclip_core.prompts import BACKGROUND_VOC
from worker.vocab import build_vocabulary

pytestmark = pytest.mark.unit


def test_a_vocabulary_is_split_into_parts_that_name_it():
    prompts = vocabulary_prompts([["cat", "kitten"], ["dog"], ["cat"]] + [[f"p{i}"] for i in range(70)])
    assert prompts[:3] == ["cat", "kitten", "dog"] and len(prompts) == 73
    payloads = build_payloads("model", "voc", prompts)
    assert [len(p["prompts"]) for p in payloads] == [PROMPTS_PER_JOB, PROMPTS_PER_JOB, 73 - 2 * PROMPTS_PER_JOB]
    assert [q for p in payloads for q in parse_payload(p).prompts] == prompts
    assert {p["vocabulary"] for p in payloads} == {vocabulary_id("model", "voc", prompts)}
    assert vocabulary_id("model", "none", prompts) != vocabulary_id("model", "voc", prompts)
    assert vocabulary_id("other", "voc", prompts) != vocabulary_id("model", "voc", prompts)
    assert JOB_FUNCTION in JOB_FUNCTIONS


@pytest.mark.parametrize(
    "payload",
    [None, {"schema": 2}, {"schema": 1, "vocabulary": "v", "model_key": "m", "background": "voc", "prompts": [""]}],
)
def test_malformed_payloads_are_refused(payload):
    with pytest.raises(PayloadError):
        parse_payload(payload)


def test_the_job_builds_what_is_missing_and_refuses_other_weights(tiny_runtime):
    (payload,) = build_payloads(tiny_runtime.model_key, "voc", ["vocab test cat", "vocab test dog"])
    first = tiny_runtime.run(build_vocabulary, payload)
    assert first["built"] + first["cached"] == 2 + len(BACKGROUND_VOC)
    assert tiny_runtime.engine.uncached_prompts(["vocab test cat", "vocab test dog", *BACKGROUND_VOC]) == []
    again = tiny_runtime.run(build_vocabulary, payload)
    assert (again["built"], again["cached"]) == (0, 2 + len(BACKGROUND_VOC))
    with pytest.raises(ModelMismatchError):
        tiny_runtime.run(build_vocabulary, {**payload, "model_key": "other weights"})


class _RecordingTextTower(torch.nn.Module):
    """Wraps the engine's text tower and records the threads it runs on."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower
        self.threads: set[str] = set()

    def forward(self, *args, **kwargs):
        self.threads.add(threading.current_thread().name)
        return self.tower(*args, **kwargs)


def test_embedded_setup_builds_on_its_own_thread_never_in_the_request(tiny_settings):
    labels = 5000
    choices = "".join(f'<Choice value="embedded kind {i}"/>' for i in range(labels))
    config = f'<View><Image name="image" value="$image"/><Choices name="t" toName="image">{choices}</Choices></View>'
    app = create_app(tiny_settings)
    dispatcher = app.extensions["tagclip"].dispatcher
    client = app.test_client()
    try:
        assert client.get("/health").status_code == 200  # starts loading the engine
        runtime = _wait(lambda: dispatcher._runtime, "the engine loaded")
        model = runtime.engine.clip.model
        recorder = _RecordingTextTower(model.transformer)
        model.transformer = recorder
        for _ in range(3):  # Label Studio calls /setup again and again: one build
            assert client.post("/setup", json={"project": "9.0", "schema": config}).status_code == 200
        assert threading.current_thread().name not in recorder.threads
        _wait(lambda: recorder.threads, "the build started")
        assert {name.rsplit("_", 1)[0] for name in recorder.threads} == {"tagclip-vocab"}
        assert len(dispatcher._vocabularies) == 1
    finally:
        dispatcher.close()


def _wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)
