"""Learning from reviewers (docs/learning.md) against a real Label Studio 1.23.2, real Redis and a real
`tagclip worker`: the training switch set through the API, annotations submitted through the API reaching
/webhook, the memory growing, the version advancing every N changes, a Retrieve Predictions moving an unreviewed
near-duplicate of reviewed images to the reviewers' labels, deleting the annotations undoing it, learning off
giving exactly TagCLIP's output, and `tagclip learn` / `tagclip report` on a project reviewed before it learned.

Random weights carry no meaning, so the test is meaningful by construction: the reviewed images come in pairs of
the same picture (PNG and a JPEG round trip of it), and the unreviewed one is that picture cropped by 2 pixels;
under the random ViT their embeddings are near-identical (cosine >= 0.9999) while different pictures are not
(<= 0.99).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import requests
from PIL import Image
from redis import Redis

from backend.keys import RedisKeys
from backend.memory.redis_store import RedisMemoryStore
from tests.fixtures.images import synthetic_pixels

from .bulk_helpers import cli_env
from .conftest import make_stack
from .stack import ROOT, wait_until, wait_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABELS = ["Cat", "Dog", "Car", "Tree"]
CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    + "".join(f'<Choice value="{x}"/>' for x in LABELS)
    + "</Choices></View>"
)
# A generation every 4 changes to a project's memory.
EVERY = 4


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_round_trip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def image_files() -> list[tuple[str, bytes]]:
    a = Image.fromarray(synthetic_pixels(128, 160, 1))
    b = Image.fromarray(synthetic_pixels(128, 160, 2))
    return [
        ("a.png", _png(a)),
        ("a-again.png", _png(_jpeg_round_trip(a))),
        ("b.png", _png(b)),
        ("b-again.png", _png(_jpeg_round_trip(b))),
        ("a-crop.png", _png(a.crop((2, 2, 158, 126)))),  # never reviewed
    ]


@pytest.fixture(scope="module")
def learning_stack(engine_env, redis_url, artifacts):
    stack = make_stack(
        {**engine_env, "REDIS_URL": redis_url}, artifacts, "learn", TAGCLIP_MEMORY_GENERATION_EVERY=str(EVERY)
    )
    stack.start_worker()
    wait_workers(stack.url, 1)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def memory(learning_stack, redis_url) -> RedisMemoryStore:
    return RedisMemoryStore(Redis.from_url(redis_url), RedisKeys(learning_stack.queue_name))


def make_project(studio, stack, title: str, learn: bool, connect: bool = True) -> dict:
    project = studio.create_project(title, CONFIG)
    files = image_files()
    ids = dict(zip([name for name, _ in files], studio.upload_images(project, files), strict=True))
    ml = None
    if connect:
        ml = studio.connect_backend(project, stack.url, extra_params={"learn": learn})
        assert ml["state"] == "CO", ml
    return {"id": project, "tasks": ids, "ml": ml}


def choices(prediction: dict) -> list[str]:
    return [c for region in prediction["result"] for c in region["value"]["choices"]]


def latest_predictions(studio, project: int) -> dict[int, dict]:
    """Each task's newest prediction."""
    out: dict[int, dict] = {}
    for prediction in studio.predictions(project):
        if prediction["task"] not in out or prediction["id"] > out[prediction["task"]]["id"]:
            out[prediction["task"]] = prediction
    return out


def annotate(studio, task: int, labels: list[str]) -> dict:
    result = [{"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": labels}}]
    return studio.api("POST", f"/api/tasks/{task}/annotations", json={"result": result}).json()


def webhook_lines(stack) -> list[str]:
    return [line for line in stack.backend.log_path.read_text(errors="replace").splitlines() if "webhook:" in line]


def test_reviews_reach_the_memory_and_move_a_near_duplicate_then_deleting_them_undoes_it(
    label_studio, learning_stack, memory
):
    studio, stack = label_studio, learning_stack
    learning = make_project(studio, stack, "TagCLIP learning", learn=True)
    plain = make_project(studio, stack, "TagCLIP learning off", learn=False)
    project, tasks = learning["id"], learning["tasks"]

    # The switch "Start model training after any annotations are submitted or updated", through the API.
    switched = studio.api(
        "PATCH", f"/api/projects/{project}", json={"start_training_on_annotation_update": True}
    ).json()
    assert switched["start_training_on_annotation_update"] is True
    assert switched["min_annotations_to_start_training"] == 1

    # Generation 0: the learning project's predictions are TagCLIP's, exactly those of the project that does not learn.
    for p in (learning, plain):
        studio.retrieve_predictions(p["id"], list(p["tasks"].values()))
    before = latest_predictions(studio, project)
    off = latest_predictions(studio, plain["id"])
    for name, task in tasks.items():
        assert before[task]["result"] == off[plain["tasks"][name]]["result"], name
        assert before[task]["score"] == off[plain["tasks"][name]]["score"]
    first_version = before[tasks["a-crop.png"]]["model_version"]
    assert first_version != off[plain["tasks"]["a-crop.png"]]["model_version"]
    tagclip_crop = choices(before[tasks["a-crop.png"]])
    # The reviewers' labels for the a-pictures: what TagCLIP did not suggest for the crop.
    a_labels = [label for label in LABELS if label not in tagclip_crop][:2]
    b_labels = [tagclip_crop[0]]

    reviews = [("a.png", a_labels), ("a-again.png", a_labels), ("b.png", b_labels), ("b-again.png", b_labels)]
    annotations = []
    for count, (name, labels) in enumerate(reviews, start=1):
        annotations.append(annotate(studio, tasks[name], labels)["id"])
        state = wait_until(
            lambda n=count: (lambda s: s if s.examples == n else None)(memory.state(project)),
            60,
            what=f"{count} example(s) in the memory",
        )
        # The version advances at N changes, not at every annotation.
        assert state.generation == (1 if count >= EVERY else 0), (count, state)
    lines = webhook_lines(stack)
    assert any("action=ANNOTATION_CREATED" in line and f"project {project}: refresh" in line for line in lines)
    assert any("action=START_TRAINING" in line and f"project {project}: sync" in line for line in lines)
    assert not any(f"project {plain['id']}" in line for line in lines)  # nothing was annotated there
    example = memory.example(project, tasks["a.png"])
    assert example.annotation == annotations[0] and list(example.controls["tags"].positive) == a_labels

    # Generation 1: Label Studio's /setup version changed, so Retrieve Predictions predicts the crop again.
    studio.retrieve_predictions(project, [tasks["a-crop.png"]])
    moved = latest_predictions(studio, project)[tasks["a-crop.png"]]
    assert moved["model_version"] != first_version
    assert choices(moved) == a_labels, (tagclip_crop, choices(moved))
    assert set(moved["result"][0]["label_scores"]) == set(LABELS)

    # Deleting the annotations: the memory empties, the next generation gives TagCLIP's output again.
    for annotation in annotations:
        studio.api("DELETE", f"/api/annotations/{annotation}", expect=(204, 200))
    state = wait_until(
        lambda: (lambda s: s if s.examples == 0 and s.generation == 2 else None)(memory.state(project)),
        60,
        what="an empty memory at generation 2",
    )
    assert state.pending == 0
    assert any("action=ANNOTATIONS_DELETED" in line for line in webhook_lines(stack))
    studio.retrieve_predictions(project, [tasks["a-crop.png"]])
    undone = latest_predictions(studio, project)[tasks["a-crop.png"]]
    assert undone["model_version"] not in (first_version, moved["model_version"])
    assert undone["result"] == off[plain["tasks"]["a-crop.png"]]["result"]


def test_learn_backfills_a_project_reviewed_before_it_learned_and_report_compares(
    label_studio, learning_stack, memory, artifacts
):
    studio, stack = label_studio, learning_stack
    # Reviewed while no backend was connected: no webhook ever told the memory.
    reviewed = make_project(studio, stack, "TagCLIP backfill", learn=True, connect=False)
    tasks = reviewed["tasks"]
    for name in ("a.png", "a-again.png"):
        annotate(studio, tasks[name], ["Cat"])
    for name in ("b.png", "b-again.png"):
        annotate(studio, tasks[name], ["Dog", "Tree"])
    studio.connect_backend(reviewed["id"], stack.url, extra_params={"learn": True})
    assert memory.state(reviewed["id"]).examples == 0

    env = cli_env(stack.env, studio)
    argv = [sys.executable, "-m", "tagclip_cli.main"]
    learn = subprocess.run(
        [*argv, "learn", "--project", str(reviewed["id"]), "--json"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert learn.returncode == 0, learn.stderr
    summary = json.loads(learn.stdout)
    assert sorted(summary["added"]) == sorted(tasks[n] for n in ("a.png", "a-again.png", "b.png", "b-again.png"))
    assert summary["cut"] and summary["generation"] == 1 and summary["examples"] == 4
    # Nothing changed since: a second run cuts nothing.
    again = subprocess.run(
        [*argv, "learn", "--project", str(reviewed["id"])], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout + again.stderr

    report_json = artifacts / "learning-report.json"
    report = subprocess.run(
        [*argv, "report", "--project", str(reviewed["id"]), "--folds", "2", "--json", str(report_json)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert "memory of reviewed examples: 4 example(s), generation 1" in report.stdout
    section = json.loads(report_json.read_text())["memory"]
    (control,) = section["controls"]
    assert control["examples"] == 4 and control["folds"] == 2
    by_label = {x["label"]: x for x in control["labels"]}
    assert by_label["Cat"]["support"] == 2 and by_label["Tree"]["support"] == 2
    # Each near-duplicate pair is split or kept by the folds; either way the memory side is a real computation.
    assert control["memory"]["f1"] is not None and control["alone"]["f1"] is not None


def test_learning_needs_setup_and_a_learning_project(label_studio, learning_stack):
    """A webhook for a project the backend never saw /setup for, or one that does not learn, starts nothing."""
    body = {"action": "START_TRAINING", "project": {"id": 999999, "created_at": "2026-01-01T00:00:00Z"}}
    assert requests.post(learning_stack.url + "/webhook", json=body, timeout=5).status_code == 200
    assert requests.post(learning_stack.url + "/webhook", data=b"{not json", timeout=5).status_code == 200
    lines = webhook_lines(learning_stack)
    assert any("project 999999: no /setup seen for it yet" in line for line in lines)


def test_embedded_mode_learns_on_the_engine_threads(label_studio, engine_env, artifacts, tmp_path):
    """Without REDIS_URL the backend's own engine threads run the learning jobs, into SQLite under the cache dir."""
    from backend.memory.sqlite_store import SqliteMemoryStore

    from .stack import start_backend

    cache = tmp_path / "embedded-cache"
    env = {**engine_env, "TAGCLIP_CACHE_DIR": str(cache), "TAGCLIP_MEMORY_GENERATION_EVERY": "2"}
    backend, url = start_backend(env, artifacts, name="backend-embedded-learning")
    try:
        wait_until(lambda: requests.get(url + "/health", timeout=2).json()["ready"], 120, what="embedded model loaded")
        project = label_studio.create_project("TagCLIP embedded learning", CONFIG)
        files = image_files()[:2]
        ids = label_studio.upload_images(project, files)
        label_studio.connect_backend(project, url, extra_params={"learn": True})
        for task in ids:
            annotate(label_studio, task, ["Cat"])
        store = SqliteMemoryStore(cache / "memory.sqlite3")
        state = wait_until(
            lambda: (lambda s: s if s.examples == 2 and s.generation == 1 else None)(store.state(project)),
            120,
            what="2 examples and generation 1 in the embedded memory",
        )
        assert state.pending == 0
        store.close()
        # `tagclip learn` in embedded mode runs the engine in its own process, on the same SQLite memory.
        learn = subprocess.run(
            [sys.executable, "-m", "tagclip_cli.main", "learn", "--project", str(project), "--json"],
            env=cli_env(env, label_studio),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert learn.returncode == 0, learn.stderr
        summary = json.loads(learn.stdout)
        assert summary["examples"] == 2 and summary["unchanged"] == 2 and not summary["cut"]
    finally:
        backend.stop()
