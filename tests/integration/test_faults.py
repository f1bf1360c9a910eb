"""Faults injected into the real parts: a real Label Studio 1.23.2 behind a fault-injecting HTTP proxy on
127.0.0.1 (tests/fixtures/fault_proxy.py), real Redis, real `tagclip worker`s and the real `tagclip preannotate`,
with Label Studio calls timing out after LABEL_STUDIO_TIMEOUT = 3 s:

* the job's first prediction write held 8 s before it reaches Label Studio (after its sender gave up);
* the answer to the first write held 8 s after Label Studio committed it;
* every request answered 502 for 30 s from the first write on (downloads, checks and writes alike);

each on a project of its own: every task ends with exactly one prediction, none lost, none written twice
(the job's own verification removed nothing: there was nothing to remove).

Tasks another live worker is writing (its claims held when the job's chunk came to them) count as running, not
vanished, until that worker confirms them (then they are done, not written again) or stops without storing them
(then they are failed with that reason).

And failures that may pass are never stored as empty predictions:

* a bulk job whose images answer 503 for 10 s gets them all once they are back; an image that answers 401 the
  whole time is retried for TRANSIENT_RETRY_TIME and then reported failed with its reason; one answering 404
  fails at once;
* with the organisation's legacy tokens disabled (POST /api/jwt/settings), "Retrieve Predictions" through the
  connected backend stores nothing (Label Studio asks again later) instead of an empty prediction per task; with
  them enabled again, the same action predicts every task.
"""

from __future__ import annotations

import time

import pytest
import requests
from redis import Redis

from backend import presence
from backend.bulk.ledger import Ledger, owner_name
from backend.bulk.maintenance import maintain_job
from backend.bulk.planner import BulkPlanner, BulkRequest
from backend.bulk.status import job_status
from backend.labelstudio.auth import Source
from backend.labelstudio.client import LabelStudioClient
from backend.settings import Settings
from tests.fixtures.fault_proxy import Fault, FaultKind, fault_proxy

from .browser import login_cookies
from .bulk_helpers import cli_env, forget_bulk_state, make_project, predictions_by_task, run_cli
from .conftest import make_stack
from .stack import LS_PASSWORD, LS_USER, png_bytes, wait_until, wait_workers
from .test_label_studio import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TASKS = 100
CHUNK = 10
LABEL_STUDIO_TIMEOUT = 3.0
HOLD = 8.0
OUTAGE = 30.0
TRANSIENT_RETRY_TIME = 60.0
FAULTS = {
    "write_held_before_label_studio": lambda: Fault(FaultKind.HOLD_REQUEST, HOLD),
    "answer_held_after_commit": lambda: Fault(FaultKind.HOLD_RESPONSE, HOLD),
    "502_for_30_s": lambda: Fault(FaultKind.FAIL, OUTAGE),
}


@pytest.fixture(scope="module")
def fault_stack(engine_env, redis_url, artifacts):
    stack = make_stack(
        {**engine_env, "REDIS_URL": redis_url},
        artifacts,
        "faults",
        LABEL_STUDIO_TIMEOUT=f"{LABEL_STUDIO_TIMEOUT:g}",
        WRITE_SETTLE_TIMEOUT="12",
        TRANSIENT_RETRY_TIME=f"{TRANSIENT_RETRY_TIME:g}",
    )
    stack.start_worker("a")
    stack.start_worker("b")
    wait_workers(stack.url, 2)
    yield stack
    stack.stop()
    forget_bulk_state(redis_url, stack.queue_name)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_write_back_is_exactly_once_under_a_slow_or_failing_label_studio(fault, label_studio, fault_stack, artifacts):
    project = make_project(label_studio, f"TagCLIP fault {fault}", N_TASKS, n_images=6, size=48)
    with fault_proxy(label_studio.url) as proxy:
        proxy.add(FAULTS[fault]())
        started = time.monotonic()
        code, status, stdout = run_cli(
            cli_env(fault_stack.env, label_studio),
            "--project",
            str(project.id),
            "--url",
            proxy.url,
            "--chunk-size",
            str(CHUNK),
        )
        seconds = time.monotonic() - started
        proxy.wait_idle(120)  # a held write reaches Label Studio before anything is counted
        faulted = proxy.faulted(FaultKind(FAULTS[fault]().kind))
    stored = predictions_by_task(label_studio, project.id)
    duplicated = sorted(t for t, p in stored.items() if len(p) > 1)
    lost = sorted(set(project.tasks) - set(stored))
    record_figure(
        artifacts,
        f"fault_{fault}",
        {"tasks": N_TASKS, "seconds": round(seconds, 1), "duplicated": len(duplicated), "lost": len(lost)},
    )
    # The fault happened as meant.
    assert faulted, f"the proxy injected no {fault}"
    if fault == "write_held_before_label_studio":
        (held,) = faulted
        assert held.forwarded - held.arrived >= HOLD and held.upstream_status == 201 and held.client_gone
    elif fault == "answer_held_after_commit":
        (held,) = faulted
        assert held.upstream_status == 201 and held.client_gone
    else:
        assert faulted[-1].arrived - faulted[0].arrived > OUTAGE / 2 and all(e.forwarded is None for e in faulted)
    assert not duplicated and not lost, f"{len(duplicated)} task(s) with two predictions, {len(lost)} lost"
    assert code == 0, stdout
    assert (status["done"], status["failed"], status["state"]) == (N_TASKS, 0, "done")
    assert status["verify"]["duplicates_removed"] == 0 and status["verify"]["missing"] == []


def test_images_failing_for_a_while_are_retried_and_the_reason_of_the_rest_is_reported(
    label_studio, fault_stack, artifacts
):
    project = make_project(label_studio, "TagCLIP transient images", 20, n_images=6, size=48)
    (refused,) = label_studio.upload_images(project.id, [("refused.png", png_bytes(48, 48, seed=77))])
    upload = project.good_urls[0].rsplit("/", 1)[0]
    missing = label_studio.api(
        "POST",
        f"/api/projects/{project.id}/import?return_task_ids=true",
        json=[{"data": {"image": f"{upload}/no-such-file.png"}}],
    ).json()["task_ids"][0]
    with fault_proxy(label_studio.url) as proxy:
        # One image answers 401 the whole time (a key its store no longer takes), one 404 (it is gone); the
        # others 503 for 10 s.
        proxy.add(Fault(FaultKind.FAIL, 3600, "GET", r"^/data/upload/.*refused\.png$", status=401, everything=False))
        proxy.add(
            Fault(FaultKind.FAIL, 3600, "GET", r"^/data/upload/.*no-such-file\.png$", status=404, everything=False)
        )
        proxy.add(Fault(FaultKind.FAIL, 10.0, "GET", r"^/data/upload/", status=503, everything=False))
        started = time.monotonic()
        code, status, stdout = run_cli(
            cli_env(fault_stack.env, label_studio), "--project", str(project.id), "--url", proxy.url
        )
        seconds = time.monotonic() - started
        downloads = [
            e
            for e in proxy.exchanges
            if e.path.startswith("/data/upload/") and "refused" not in e.path and "no-such-file" not in e.path
        ]
    assert {503, 200} <= {e.answered for e in downloads}
    assert code == 1 and status["state"] == "done", stdout
    reasons = {f["task"]: f["reason"] for f in status["failed_tasks"]}
    assert set(reasons) == {refused, missing}
    assert reasons[refused].startswith("unavailable: ") and "HTTP 401" in reasons[refused]
    assert "still failing after" in reasons[refused] and seconds >= TRANSIENT_RETRY_TIME / 2
    assert reasons[missing].startswith("download: ") and "HTTP 404" in reasons[missing]
    stored = predictions_by_task(label_studio, project.id)
    assert set(stored) == set(project.tasks) and all(len(p) == 1 and p[0]["result"] for p in stored.values())
    record_figure(artifacts, "transient_images", {"tasks": 22, "seconds": round(seconds, 1)})


def _legacy_tokens(session: requests.Session, base: str, enabled: bool) -> None:
    """Switch the organisation's legacy tokens, as an admin logged in through the web page (the switch itself
    must not depend on a legacy token)."""
    answer = session.post(
        base + "/api/jwt/settings",
        json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": enabled},
        headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": base + "/"},
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text[:300]


def test_a_disabled_legacy_token_no_longer_empties_retrieve_predictions(label_studio, fault_stack):
    project = make_project(label_studio, "TagCLIP legacy token off", 12, n_images=4, size=48)
    label_studio.connect_backend(project.id, fault_stack.url)
    admin = requests.Session()
    admin.trust_env = False
    admin.cookies.update(login_cookies(label_studio.url, LS_USER, LS_PASSWORD))
    csrf = {"X-CSRFToken": admin.cookies["csrftoken"], "Referer": label_studio.url + "/"}
    retrieve = f"{label_studio.url}/api/dm/actions?id=retrieve_tasks_predictions&project={project.id}"
    selection = {"selectedItems": {"all": False, "included": project.tasks}}
    try:
        _legacy_tokens(admin, label_studio.url, enabled=False)
        assert label_studio.session.get(label_studio.url + "/api/projects", timeout=30).status_code == 401
        answer = admin.post(retrieve, json=selection, headers=csrf, timeout=120)
        assert answer.status_code == 200, answer.text[:300]
        # Every download was refused (401): nothing is stored, so Label Studio predicts these tasks next time.
        assert admin.get(f"{label_studio.url}/api/predictions?project={project.id}", timeout=30).json() == []
    finally:
        _legacy_tokens(admin, label_studio.url, enabled=True)
    label_studio.retrieve_predictions(project.id, project.tasks)
    stored = predictions_by_task(label_studio, project.id)
    assert set(stored) == set(project.tasks)
    assert all(len(p) == 1 and p[0]["result"] for p in stored.values())


def test_tasks_another_worker_is_writing_stay_in_progress_until_it_ends(label_studio, fault_stack):
    settings = Settings.from_env(fault_stack.env)
    redis = Redis.from_url(settings.redis_url)
    planner = BulkPlanner(settings, redis, LabelStudioClient(Source(label_studio.url, label_studio.token)))
    project = make_project(label_studio, "TagCLIP written elsewhere", 8, n_images=3, size=48)
    prepared = planner.prepare(BulkRequest(project=project.id, chunk_size=8))
    version = prepared.model_version
    ledger = Ledger(redis, planner.keys, planner.project(project.id), version)
    finished, abandoned = project.tasks[:2], project.tasks[2]
    presence.beat(redis, planner.keys, "other-writer", {"pid": 4242}, interval=600)
    other = owner_name("other-writer", 4242)
    try:
        assert ledger.claim([*finished, abandoned], other, lease=600).claimed == [*finished, abandoned]
        job = planner.start(prepared).job
        planner.enqueue_all(job, prepared)

        def status() -> dict:
            return job_status(planner.store, planner.queue, job)

        # The chunk waits a lease for the other writer, then writes the rest and leaves it those three.
        during = wait_until(
            lambda: (lambda s: s if s["done"] == 5 and not s["chunks"]["running"] else None)(status()), 180
        )
        assert (during["state"], during["total"], during["running"], during["queued"], during["failed"]) == (
            "running",
            8,
            3,
            0,
            0,
        )
        # The other writer stores two and stops without storing the third.
        for task in finished:
            body = {"task": task, "result": [], "score": 0.0, "model_version": version}
            label_studio.api("POST", "/api/predictions", json=body)
        ledger.confirm(finished)
        ledger.release([abandoned], other)
        maintain_job(planner.store, planner.queue, job)
        final = wait_until(lambda: (lambda s: s if s["state"] == "done" else None)(status()), 120)
    finally:
        presence.leave(redis, planner.keys, "other-writer")
    assert (final["done"], final["written"], final["recovered"], final["failed"]) == (7, 5, 2, 1)
    (failure,) = final["failed_tasks"]
    assert failure["task"] == abandoned and "other-writer" in failure["reason"] and "stopped" in failure["reason"]
    assert final["verify"]["duplicates_removed"] == 0 and final["verify"]["with_prediction"] == 7
    stored = predictions_by_task(label_studio, project.id)
    assert abandoned not in stored and all(len(stored[t]) == 1 for t in project.tasks if t != abandoned)
