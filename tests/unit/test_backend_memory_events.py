"""Label Studio's webhook bodies -> learning events (backend.memory.events), on bodies a real Label Studio 1.23.2
posted (tests/fixtures/label_studio_webhooks.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from backend.memory.events import EventKind, parse_event, project_uid

pytestmark = pytest.mark.unit

RECORDED = json.loads((Path(__file__).parents[1] / "fixtures" / "label_studio_webhooks.json").read_text())


def body(key: str) -> dict:
    return copy.deepcopy(RECORDED[key]["body"])


def test_annotation_created_and_updated_name_their_task():
    for key in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_CREATED_cancelled"):
        event = parse_event(body(key))
        assert event.kind is EventKind.REFRESH and event.action == key.split("_cancelled")[0]
        assert event.tasks == (body(key)["annotation"]["task"],) and event.annotations == ()
        assert event.project == body(key)["project"]["id"]
        assert event.label_config == body(key)["project"]["label_config"]


def test_project_uid_is_what_setup_calls_the_project():
    """/setup's "project" is "<id>.<int(created_at.timestamp())>" (measured: "1.1796201045" for this one)."""
    assert parse_event(body("ANNOTATION_CREATED")).project_uid == "1.1796201045"
    assert project_uid({"id": 3, "created_at": "2026-12-02T08:44:05.9Z"}) == "3.1796201045"
    assert project_uid({"id": 3, "created_at": "2026-12-02T08:44:05"}) is None  # no time zone: unknown instant
    assert project_uid({"id": 3}) is None


def test_deletions_name_annotations_only():
    event = parse_event(body("ANNOTATIONS_DELETED_two"))
    assert event.kind is EventKind.REFRESH and event.tasks == ()
    assert event.annotations == tuple(a["id"] for a in body("ANNOTATIONS_DELETED_two")["annotations"])
    deleted_tasks = {
        "action": "TASKS_DELETED",
        "tasks": [{"id": 5}, {"id": 6}],
        "project": body("START_TRAINING")["project"],
    }
    assert parse_event(deleted_tasks).tasks == (5, 6)


def test_start_training_asks_for_a_sync_and_carries_auth():
    event = parse_event(body("START_TRAINING"))
    assert event.kind is EventKind.SYNC and event.tasks == () and event.project == 1
    # Measured: the train call carries the ML backend's auth, project webhooks do not.
    assert RECORDED["START_TRAINING"]["authorization"] and not RECORDED["ANNOTATION_CREATED"]["authorization"]


def test_bulk_created_annotations_name_every_task():
    single = body("ANNOTATION_CREATED")
    many = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [{**single["annotation"], "task": 4}, {**single["annotation"], "id": 9, "task": 5}],
        "task": [{**single["task"], "id": 4}, {**single["task"], "id": 5}],
        "project": single["project"],
    }
    assert parse_event(many).tasks == (4, 5)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"action": "PROJECT_UPDATED"},
        {"action": "ANNOTATION_CREATED", "project": {"id": "1"}, "annotation": {"task": 1}},
        {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"task": True}},
        {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": []},
        {"action": 5, "project": {"id": 1}},
    ],
)
def test_what_the_memory_ignores(bad):
    assert parse_event(bad) is None


def test_other_recorded_actions_are_ignored():
    assert parse_event(body("PROJECT_UPDATED")) is None
