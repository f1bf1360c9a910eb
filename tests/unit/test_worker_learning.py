"""The learning jobs (worker.learning) and predictions with the memory (worker.memory), with the REAL engine on the
tiny checkpoint and the embedded mode's SQLite store. The images are near-duplicates by construction (the same
picture re-encoded or cropped: cosine >= 0.9999 under the random weights, against <= 0.99 between different
pictures), so what the memory does is visible even though random weights carry no meaning.

Label Studio's side (webhooks, reading tasks back) is tested against a real Label Studio in
tests/integration/test_learning.py; here tasks are given as Label Studio's export returns them."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from backend.contracts.predict import build_payloads
from backend.contracts.source import KeyPlace, SourceRef
from backend.labelstudio.auth import Source
from backend.memory.examples import plan_fingerprint
from tests.fixtures.http_server import serve_directory
from tests.fixtures.images import synthetic_pixels
from worker.jobs import predict_chunk
from worker.learning import Learner
from worker.runtime import Runtime

pytestmark = pytest.mark.unit

PROJECT = 5
LABELS = ["Cat", "Dog", "Car", "Tree"]
CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    + "".join(f'<Choice value="{x}"/>' for x in LABELS)
    + "</Choices></View>"
)
LEARN = {"learn": True}


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    a = Image.fromarray(synthetic_pixels(128, 160, 1))
    b = Image.fromarray(synthetic_pixels(128, 160, 2))
    with serve_directory(tmp_path_factory.mktemp("learn-img")) as s:
        s.put("a.png", _encoded(a, "PNG"))
        s.put("a95.jpg", _encoded(a, "JPEG", quality=95))  # the same picture, re-encoded
        s.put("a-crop.png", _encoded(a.crop((2, 2, 158, 126)), "PNG"))  # ... and cropped by 2 px: never reviewed
        s.put("b.png", _encoded(b, "PNG"))
        s.put("b95.jpg", _encoded(b, "JPEG", quality=95))
        yield s


@pytest.fixture(scope="module")
def runtime(tiny_runtime, tiny_settings, tmp_path_factory):
    """A runtime on the tiny engine whose memory cuts a generation every 3 changes, in a SQLite file of its own."""
    settings = dataclasses.replace(
        tiny_settings, cache_dir=str(tmp_path_factory.mktemp("learn-cache")), memory_generation_every=3
    )
    runtime = Runtime(settings, tiny_runtime.engine, name="learn")
    yield runtime
    runtime.close()


def task(task_id: int, image: str, *annotations: tuple[int, str, list[str]], cancelled: bool = False) -> dict:
    """A task as Label Studio's export gives it: data and full annotations (id, updated_at, result)."""
    return {
        "id": task_id,
        "data": {"image": image},
        "annotations": [
            {
                "id": annotation_id,
                "updated_at": updated_at,
                "was_cancelled": cancelled,
                "result": [{"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": labels}}],
            }
            for annotation_id, updated_at, labels in annotations
        ],
    }


def predict(runtime: Runtime, server, images: dict[int, str], learn: bool) -> dict[int, dict]:
    """worker.jobs.predict_chunk on these tasks, as /predict sends them: outputs of the "tags" control by task."""
    resolution = runtime.resolver.resolve(CONFIG, LEARN if learn else None, PROJECT)
    tasks = [{"id": t, "data": {"image": ref}} for t, ref in images.items()]
    controls = [c.to_payload() for c in resolution.plan.controls]
    payload = build_payloads(
        controls, tasks, SourceRef(server.url, "k", KeyPlace.PAYLOAD), "voc", runtime.model_key, 10, resolution.learning
    )[0]
    result = runtime.run(predict_chunk, json.loads(json.dumps(payload)))
    ids = list(images)
    return {ids[t["index"]]: t["outputs"]["tags"] for t in result["tasks"]}


def learner(runtime: Runtime, server) -> Learner:
    resolution = runtime.resolver.resolve(CONFIG, LEARN, PROJECT)
    return Learner(runtime, resolution, PROJECT, Source(server.url, "k"))


def test_a_learning_project_learns_from_reviews_and_forgets_them_again(runtime, server):
    images = {1: "/a.png", 2: "/a95.jpg", 3: "/b.png", 4: "/b95.jpg", 9: "/a-crop.png"}
    tagclip = predict(runtime, server, images, learn=False)
    # Generation 0: the payload names the memory, the output is TagCLIP's to the byte; the images get cached.
    off_version = runtime.resolver.resolve(CONFIG, None, PROJECT).model_version
    first = runtime.resolver.resolve(CONFIG, LEARN, PROJECT)
    assert first.memory_generation == 0 and first.model_version != off_version
    assert predict(runtime, server, images, learn=True) == tagclip
    assert tagclip[9]["tags"] == ["Tree"]  # TagCLIP's tag on the unreviewed near-duplicate of a.png

    # Reviews: the a-pictures are Cat and Car (not Tree), the b-pictures Tree. An older annotation of task 1
    # says Dog: the latest submitted annotation wins.
    reviewed = [
        task(1, "/a.png", (10, "2026-01-01T00:00:00Z", ["Dog"]), (11, "2026-01-02T00:00:00Z", ["Cat", "Car"])),
        task(2, "/a95.jpg", (12, "2026-01-02T00:00:00Z", ["Cat", "Car"])),
        task(3, "/b.png", (13, "2026-01-02T00:00:00Z", ["Tree"])),
        task(4, "/b95.jpg", (14, "2026-01-02T00:00:00Z", ["Tree"])),
        task(5, "/b.png", (15, "2026-01-02T00:00:00Z", ["Dog"]), cancelled=True),  # skipped: not a review
    ]
    outcome = learner(runtime, server).learn(reviewed)
    assert sorted(outcome.added) == [1, 2, 3, 4] and outcome.removed == [] and outcome.failed == {}
    assert outcome.computed == 0  # every image came from the cache /predict filled
    assert outcome.cut and outcome.generation == 1 and outcome.examples == 4

    example = runtime.memory.example(PROJECT, 1)
    assert example.annotation == 11 and example.controls["tags"].positive == ("Cat", "Car")
    engine = runtime.engine
    engine.set_classes(LABELS, background="voc")
    with Image.open(io.BytesIO(_encoded(Image.fromarray(synthetic_pixels(128, 160, 1)), "PNG"))) as image:
        direct = engine.predict([image.convert("RGB")], embeddings=True)[0]
    np.testing.assert_allclose(example.embedding.astype(np.float32), direct.embedding, atol=2e-3)  # float16
    np.testing.assert_allclose(example.controls["tags"].scores, direct.scores, atol=1e-6)

    # Generation 1: a new version, and the unreviewed near-duplicate moves to its original's reviewed labels.
    second = runtime.resolver.resolve(CONFIG, LEARN, PROJECT)
    assert second.memory_generation == 1 and second.model_version not in (first.model_version, off_version)
    calibration = runtime.memory.calibrations(PROJECT, 1)["tags"]
    assert calibration["fingerprint"] == plan_fingerprint(runtime.model_key, "voc", second.plan.controls[0])
    assert calibration["alpha"] > 0 and calibration["seen"] == [True, False, True, True]
    learned = predict(runtime, server, images, learn=True)
    assert learned[9]["tags"] == ["Cat", "Car"]
    assert learned[9]["labels"] == LABELS and all(0 <= s <= 1 for s in learned[9]["scores"])
    # A reviewed task's own example never votes on it: task 1 gets its labels from its near-duplicate, task 2.
    # Dog, which no reviewer chose, keeps TagCLIP's behaviour (TagCLIP tags it on the b-pictures).
    assert learned[1]["tags"] == ["Cat", "Car"] and learned[3]["tags"] == ["Dog", "Tree"]
    assert tagclip[3]["tags"] == ["Dog"]
    # The same review again changes nothing.
    assert learner(runtime, server).learn(reviewed[1:2]).unchanged == [2]

    # Deleting the reviews (the tasks lost their annotations): the next generation is TagCLIP's output again.
    forgotten = learner(runtime, server).learn([], gone=[1, 2, 3, 4])
    assert sorted(forgotten.removed) == [1, 2, 3, 4] and forgotten.examples == 0 and forgotten.generation == 2
    assert predict(runtime, server, images, learn=True) == tagclip


def test_learn_off_payloads_and_outputs_are_unchanged(runtime, server):
    """Without extra_params.learn the payload is schema 1 without a memory, as before the memory existed."""
    resolution = runtime.resolver.resolve(CONFIG, {"learn": False}, PROJECT)
    assert resolution.learning is None
    payload = build_payloads(
        [c.to_payload() for c in resolution.plan.controls],
        [{"id": 1, "data": {"image": "/a.png"}}],
        SourceRef(server.url, "k", KeyPlace.PAYLOAD),
        "voc",
        runtime.model_key,
        10,
        resolution.learning,
    )[0]
    assert payload["schema"] == 1 and "memory" not in payload


def test_a_rebuild_cuts_a_generation_for_any_change(runtime, server):
    project_learner = learner(runtime, server)
    before = runtime.memory.state(PROJECT)
    outcome = project_learner.learn([task(7, "/b.png", (70, "2026-02-01T00:00:00Z", ["Dog"]))], force_cut=True)
    assert outcome.cut and outcome.generation == before.generation + 1
    # A task whose image cannot be fetched fails alone.
    failed = project_learner.learn([task(8, "/missing.png", (80, "2026-02-01T00:00:00Z", ["Dog"]))])
    assert list(failed.failed) == [8] and "download" in failed.failed[8]
