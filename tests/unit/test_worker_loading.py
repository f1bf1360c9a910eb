"""worker.loading: a chunk's images are decoded a bounded few at a time, whatever the chunk's size, and the
chunk's outputs do not depend on the bound. The real engine on a tiny checkpoint, images from a local HTTP
server; the count of decoded images alive is read through weak references to what the real decoder returns."""

from __future__ import annotations

import copy
import dataclasses
import gc
import weakref

import pytest

from backend.contracts.predict import build_payloads
from backend.contracts.source import KeyPlace, SourceRef
from tests.fixtures.http_server import serve_directory
from tests.integration.stack import CORRUPT_PNG, png_bytes
from worker import loading
from worker.jobs import predict_chunk
from worker.loading import group_size
from worker.runtime import Runtime

pytestmark = pytest.mark.unit

TASKS = 12
CONTROLS = [
    {
        "name": "tags",
        "data_key": "image",
        "classes": [{"label": "Cat", "prompts": ["cat"]}, {"label": "Dog", "prompts": ["dog"]}],
    }
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_directory(tmp_path_factory.mktemp("img")) as s:
        for i in range(TASKS):
            s.put(f"{i}.png", png_bytes(48 + 8 * (i % 3), 64, seed=i))
        s.put("bad.png", CORRUPT_PNG)
        yield s


class LiveImages:
    """Wraps the real decoder: remembers each decoded image weakly and the most alive at any decode."""

    def __init__(self, decode) -> None:
        self._decode = decode
        self._refs: list[weakref.ref] = []  # PIL images are not hashable: no WeakSet
        self.most = 0
        self.decoded = 0

    def __call__(self, *args, **kwargs):
        image = self._decode(*args, **kwargs)
        gc.collect()
        self._refs.append(weakref.ref(image))
        self.decoded += 1
        self.most = max(self.most, sum(1 for ref in self._refs if ref() is not None))
        return image


def run_chunk(runtime: Runtime, server, refs: list[str], monkeypatch) -> tuple[dict, LiveImages]:
    tasks = [{"id": i + 1, "data": {"image": ref}} for i, ref in enumerate(refs)]
    payload = build_payloads(
        copy.deepcopy(CONTROLS), tasks, SourceRef(server.url, "k", KeyPlace.PAYLOAD), "voc", runtime.model_key, 100
    )[0]
    live = LiveImages(loading.load_image)
    monkeypatch.setattr(loading, "load_image", live)
    result = runtime.run(predict_chunk, payload)
    monkeypatch.undo()
    return result, live


def runtime_with(tiny_runtime: Runtime, images_in_memory: int) -> Runtime:
    """A runtime on the same loaded engine, with another IMAGES_IN_MEMORY."""
    settings = dataclasses.replace(tiny_runtime.settings, images_in_memory=images_in_memory)
    return Runtime(settings, tiny_runtime.engine, name=f"bounded-{images_in_memory}")


@pytest.mark.parametrize("images_in_memory", [1, 2, 4, 5])
def test_at_most_images_in_memory_tasks_are_decoded_at_once(tiny_runtime, server, monkeypatch, images_in_memory):
    runtime = runtime_with(tiny_runtime, images_in_memory)
    try:
        result, live = run_chunk(runtime, server, [f"/{i}.png" for i in range(TASKS)], monkeypatch)
    finally:
        runtime.close()
    assert live.decoded == TASKS
    assert 1 <= live.most <= images_in_memory
    assert [t["index"] for t in result["tasks"]] == list(range(TASKS))
    assert all("outputs" in t for t in result["tasks"])


def test_the_bound_is_what_limits_memory(tiny_runtime, server, monkeypatch):
    """With the bound at the chunk's size the whole chunk is decoded at once: the count above can see it."""
    runtime = runtime_with(tiny_runtime, 2 * TASKS)
    try:
        _, live = run_chunk(runtime, server, [f"/{i}.png" for i in range(TASKS)], monkeypatch)
    finally:
        runtime.close()
    assert live.most == TASKS


def test_outputs_and_per_task_errors_do_not_depend_on_the_bound(tiny_runtime, server, monkeypatch):
    refs = [f"/{i}.png" for i in range(5)] + ["/bad.png", "/missing.png", None] + [f"/{i}.png" for i in range(5, 9)]
    outputs = []
    for images_in_memory in (1, 3, 64):
        runtime = runtime_with(tiny_runtime, images_in_memory)
        try:
            result, _ = run_chunk(runtime, server, refs, monkeypatch)
        finally:
            runtime.close()
        outputs.append(result["tasks"])
    assert outputs[0] == outputs[1] == outputs[2]
    kinds = [t.get("kind") for t in outputs[0]]
    assert kinds == [None] * 5 + ["image", "download", "download"] + [None] * 4


@pytest.mark.parametrize(("bound", "expected"), [(1, (1, False)), (2, (1, True)), (8, (4, True)), (9, (4, True))])
def test_group_size_keeps_the_group_and_the_one_ahead_within_the_bound(bound, expected):
    size, ahead = group_size(bound)
    assert (size, ahead) == expected
    assert size * (2 if ahead else 1) <= bound


def test_a_job_checks_its_text_columns_once_whatever_its_groups(tiny_runtime, server, monkeypatch):
    """A chunk of TASKS images in groups of one: the control's columns are looked up once for the job (a file test
    per prompt for a vocabulary past the in-memory cache), not once per group."""
    runtime = runtime_with(tiny_runtime, 1)
    lookups = []
    real = runtime.engine.uncached_prompts

    def counting(prompts):
        lookups.append(list(prompts))
        return real(prompts)

    monkeypatch.setattr(runtime.engine, "uncached_prompts", counting)
    try:
        result, live = run_chunk(runtime, server, [f"/{i}.png" for i in range(TASKS)], monkeypatch)
    finally:
        runtime.close()
    assert live.most == 1 and all("outputs" in t for t in result["tasks"])
    assert len(lookups) == 1
    assert {"cat", "dog"} <= set(lookups[0])
