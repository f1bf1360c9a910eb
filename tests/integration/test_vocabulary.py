"""Big vocabularies against real Label Studio 1.23.2, Redis and `tagclip worker` processes: connecting the backend
(Label Studio's /setup) starts building the label config's text classifier on the workers; a worker SIGKILLed
mid-build loses only the column it was on, the next worker resumes without building a saved column again, and
the predictions equal a cold build's. /setup at 5,000 labels only enqueues the build, once however many /setups
come (timing figures are in bench/bench_vocabulary.py, not here)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from backend.contracts.vocab import PROMPTS_PER_JOB
from backend.keys import RedisKeys
from backend.vocabulary import VocabularyClaims
from tagclip_core.prompts import BACKGROUND_VOC

from .conftest import make_stack
from .stack import image_files, wait_until, wait_workers
from .vocab_helpers import claimed_vocabulary, label_config, saved_columns

pytestmark = pytest.mark.integration

VOC_BACKGROUND_WORDS = len(BACKGROUND_VOC)  # TAGCLIP_BACKGROUND's default set: built with the first part


def regions(prediction: dict) -> list[dict]:
    return [{k: v for k, v in region.items() if k != "id"} for region in prediction["result"]]


def test_a_killed_worker_mid_build_loses_nothing_and_predictions_equal_a_cold_build(
    label_studio, engine_env, redis_url, artifacts, tmp_path
):
    labels = 120
    config = label_config(labels)
    redis = Redis.from_url(redis_url)
    warm_cache = tmp_path / "warm"
    stack = make_stack({**engine_env, "REDIS_URL": redis_url, "TAGCLIP_CACHE_DIR": str(warm_cache)}, artifacts, "vocab")
    try:
        first = stack.start_worker("first")
        wait_workers(stack.url, 1)
        project = label_studio.create_project("TagCLIP big vocabulary", config)
        (task_id,) = label_studio.upload_images(project, image_files(1, "vocab"))
        label_studio.connect_backend(project, stack.url)  # Label Studio calls /setup: the build starts there
        wait_until(lambda: len(saved_columns(warm_cache)) >= labels // 3, 300, what="a third of the columns saved")
        first.kill9()
        saved = saved_columns(warm_cache)
        assert len(saved) < labels, "the build ended before the kill: raise `labels`"
        vocabulary = claimed_vocabulary(redis, stack.queue_name)
        claims = VocabularyClaims(redis, RedisKeys(stack.queue_name))
        assert claims.remaining(vocabulary) > 0

        stack.start_worker("second")
        wait_until(lambda: claims.remaining(vocabulary) == 0, 600, interval=1.0, what="every part of the build done")
        built = saved_columns(warm_cache)
        assert len(built) == labels + VOC_BACKGROUND_WORDS
        assert {path: built[path] for path in saved} == saved, "a column saved before the kill was built again"

        label_studio.retrieve_predictions(project, [task_id])
        (stored,) = label_studio.predictions(project)
        task = label_studio.api("GET", f"/api/tasks/{task_id}").json()
    finally:
        stack.stop()

    cold_cache = tmp_path / "cold"
    cold = make_stack({**engine_env, "REDIS_URL": redis_url, "TAGCLIP_CACHE_DIR": str(cold_cache)}, artifacts, "cold")
    try:
        cold.start_worker()
        wait_workers(cold.url, 1)
        setup = {"project": f"{project}.0", "schema": config, "hostname": label_studio.url}
        requests.post(cold.url + "/setup", json={**setup, "access_token": label_studio.token}, timeout=3)
        body = {"tasks": [task], "project": f"{project}.0", "label_config": config}

        def answered() -> dict | None:
            answer = requests.post(cold.url + "/predict", json=body, timeout=100).json()["results"][0]
            return answer if "result" in answer else None

        fresh = wait_until(answered, 600, interval=1.0, what="a prediction from the cold build")
    finally:
        cold.stop()
    assert len(saved_columns(cold_cache)) == labels + VOC_BACKGROUND_WORDS
    assert regions(stored) == regions(fresh) and stored["score"] == fresh["score"]


def test_setup_at_5000_labels_enqueues_the_build_once_and_builds_nothing_itself(
    engine_env, redis_url, artifacts, tmp_path
):
    """No worker runs: what /setup did is what is in Redis. The web process (queue mode) never imports torch,
    so it cannot build; its cache stays empty."""
    labels = 5000
    config = label_config(labels)
    cache = tmp_path / "cache"
    stack = make_stack({**engine_env, "REDIS_URL": redis_url, "TAGCLIP_CACHE_DIR": str(cache)}, artifacts, "setup5k")
    redis = Redis.from_url(redis_url)
    try:
        body = {"project": "7.0", "schema": config}

        def setup(_: int) -> int:
            return requests.post(stack.url + "/setup", json=body, timeout=30).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(setup, range(8))) == [200] * 8  # Label Studio calls /setup often, also at once
        parts = math.ceil(labels / PROMPTS_PER_JOB)
        queue = Queue(RedisKeys(stack.queue_name).vocab_queue, connection=redis, serializer=JSONSerializer)
        assert queue.count == parts
        vocabulary = claimed_vocabulary(redis, stack.queue_name)
        assert VocabularyClaims(redis, RedisKeys(stack.queue_name)).remaining(vocabulary) == parts
        prompts = [prompt for job in queue.get_jobs() for prompt in job.args[0]["prompts"]]
        assert prompts == [f"object kind {i}" for i in range(labels)]
        assert saved_columns(cache) == {}
    finally:
        stack.stop()
