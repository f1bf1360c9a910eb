"""Bulk pieces without services: the chunk payload, request validation, the /jobs routes' errors, the
worker-side conversion of outputs to predictions, and that the bulk path and the review commands need no torch."""

from __future__ import annotations

import pytest

from backend.bulk.planner import BulkRequest, project_extra_params
from backend.contracts.bulk import BulkChunk, BulkTask, build_payload, parse_payload
from backend.contracts.source import KeyPlace, SourceRef
from backend.converters import LABEL_SCORES_KEY, task_regions
from backend.errors import BulkSetupError, PayloadError
from backend.resolve import Resolver
from backend.settings import Settings
from backend.web.app import create_app
from tests.unit.test_layers import run_without_torch

pytestmark = pytest.mark.unit

CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="Cat"/><Choice value="Dog"/></Choices></View>'
)


def _chunk(**changes) -> BulkChunk:
    values = {
        "job": "abc",
        "queue": "q",
        "project": 3,
        "model_version": "tagclip-x",
        "label_config": CONFIG,
        "extra_params": {"background": "coco"},
        "write": "import",
        "source": SourceRef("http://ls", None, KeyPlace.BULK_JOB),
        "tasks": (BulkTask(7, {"image": "/data/upload/1/a.png"}),),
    }
    values.update(changes)
    return BulkChunk(**values)


def test_payload_round_trips_and_rejects_what_it_cannot_run():
    chunk = _chunk()
    assert parse_payload(build_payload(chunk)) == chunk
    for bad, message in (
        ({**build_payload(chunk), "schema": 9}, "schema"),
        ({**build_payload(chunk), "write": "fax"}, "write"),
        ({**build_payload(chunk), "tasks": [{"id": "x"}]}, "malformed"),
        ({**build_payload(chunk), "job": ""}, "job"),
        ("nope", "object"),
    ):
        with pytest.raises(PayloadError, match=message):
            parse_payload(bad)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"chunk_size": 0}, "positive"),
        ({"write": "fax"}, "write method"),
        ({"max_tasks": 0}, "max tasks"),
        ({"view": 1, "filters": {"items": []}}, "not both"),
    ],
)
def test_bulk_request_validation(kwargs, message):
    with pytest.raises(BulkSetupError, match=message):
        BulkRequest(project=1, **kwargs)


def test_extra_params_come_from_the_project_ml_backend():
    assert project_extra_params([]) == {}
    assert project_extra_params([{"extra_params": None}, {"extra_params": {"threshold": 0.3}}]) == {"threshold": 0.3}
    with pytest.raises(BulkSetupError, match="not a JSON object"):
        project_extra_params([{"id": 4, "extra_params": "threshold=0.3"}])


def test_version_is_the_one_setup_reports(tiny_checkpoint):
    settings = Settings(checkpoint=str(tiny_checkpoint), device="cpu")
    app = create_app(settings)
    for extra in ({}, {"background": "coco", "threshold": 0.2}):
        setup = app.test_client().post("/setup", json={"project": "3.1", "schema": CONFIG, "extra_params": extra})
        assert Resolver(settings).resolve(CONFIG, extra).model_version == setup.json["model_version"]


def test_outputs_become_regions_with_every_label_score():
    plan = Resolver(Settings()).resolve(CONFIG, {}).plan
    outputs = {"tags": {"labels": ["Cat", "Dog"], "scores": [0.7, 0.2], "tags": ["Cat"]}}
    (region,) = task_regions(outputs, plan.controls)
    assert region["value"] == {"choices": ["Cat"]} and region["score"] == 0.7
    assert region[LABEL_SCORES_KEY] == {"Cat": 0.7, "Dog": 0.2}


def test_jobs_routes_need_redis_and_say_so():
    client = create_app(Settings()).test_client()  # embedded mode: no REDIS_URL
    response = client.post("/jobs", json={"project": 1})
    assert response.status_code == 503 and "REDIS_URL" in response.json["error"]
    assert client.get("/jobs/abc").status_code == 503


def test_jobs_create_validates_its_body():
    client = create_app(Settings(redis_url="redis://127.0.0.1:1/0")).test_client()
    assert client.post("/jobs", json={}).json == {"error": "'project' is required"}
    assert client.post("/jobs", json={"project": "1"}).status_code == 400
    response = client.post("/jobs", json={"project": 1, "write": "fax", "url": "http://ls", "api_key": "k"})
    assert response.status_code == 400 and "write method" in response.json["error"]
    response = client.post("/jobs", json={"project": 1})  # no basic auth: a caller must bring its Label Studio
    assert response.status_code == 401 and "needs your Label Studio URL and key" in response.json["error"]
    response = client.post("/jobs", json={"project": 1, "url": "http://ls"})
    assert response.status_code == 400 and "together" in response.json["error"]
    with_auth = create_app(Settings(redis_url="redis://127.0.0.1:1/0", basic_auth_user="u", basic_auth_pass="p"))
    response = with_auth.test_client().post("/jobs", json={"project": 1}, auth=("u", "p"))
    assert response.status_code == 400 and "LABEL_STUDIO_URL" in response.json["error"]
    assert with_auth.test_client().post("/jobs", json={"project": 1}).status_code == 401


def test_bulk_path_and_review_commands_import_no_torch():
    code = """
import backend.web.app, backend.web.bulk_routes, backend.bulk.planner, backend.bulk.status, backend.bulk.verify
import backend.bulk.maintenance, backend.bulk.cancel
import tagclip_cli.preannotate, tagclip_cli.export, tagclip_cli.report, tagclip_cli.review, tagclip_cli.report_html
import tagclip_cli.export_images, tagclip_cli.export_formats, tagclip_cli.splits, tagclip_cli.dataset_card
from tagclip_cli.main import main
import contextlib, io
for command in ("report", "export"):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([command, "--help"])
import sys
assert "torch" not in sys.modules
print("ok")
"""
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_backoff_grows_to_its_cap_with_jitter_that_never_falls_below_half():
    import random

    from backend.bulk.backoff import Backoff

    backoff = Backoff(first=2.0, factor=2.0, cap=30.0)
    rng = random.Random(0)
    for attempt, step in enumerate([2, 4, 8, 16, 30, 30]):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert step / 2 <= min(delays) and max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # jittered, not in lockstep


def test_a_claim_outlives_the_slowest_call_and_a_chunk_outlives_its_waits():
    from backend.bulk.timing import WriteTiming, chunk_timeout

    settings = Settings.from_env({"LABEL_STUDIO_TIMEOUT": "10", "WRITE_SETTLE_TIMEOUT": "20", "JOB_TIMEOUT": "60"})
    timing = WriteTiming.of(settings)
    assert timing.doubt == 30 and timing.lease > timing.call_timeout and timing.renew_every < timing.lease / 2
    assert chunk_timeout(settings) >= settings.job_timeout + timing.retry_time + 3 * timing.doubt
    with pytest.raises(Exception, match="WRITE_SETTLE_TIMEOUT"):
        Settings.from_env({"WRITE_SETTLE_TIMEOUT": "-1"})


def test_the_final_check_is_a_job_function_workers_run():
    from backend.contracts import JOB_FUNCTIONS
    from backend.contracts.bulk import VERIFY_FUNCTION, VerifyRequest, build_verify_payload, parse_verify_payload

    assert VERIFY_FUNCTION in JOB_FUNCTIONS
    request = VerifyRequest("abc", "tagclip")
    assert parse_verify_payload(build_verify_payload(request)) == request
    with pytest.raises(PayloadError):
        parse_verify_payload({"schema": 1, "job": ""})
