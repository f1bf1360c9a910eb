"""The queue mode's memory store (backend.memory.redis_store) on a real Redis, against the store contract, plus
what only Redis does: concurrent writers in WATCH/MULTI transactions and compact float16 vectors."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
from redis import Redis

from backend.keys import RedisKeys
from backend.memory.cache import RedisImageCache, model_tag
from backend.memory.redis_store import RedisMemoryStore
from backend.memory.store import open_store
from backend.settings import Settings
from tests.fixtures import memory_store_contract as contract

pytestmark = pytest.mark.integration


@pytest.fixture
def keys() -> RedisKeys:
    return RedisKeys(f"tagclip-it-memory-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def store(redis_url, keys):
    store = RedisMemoryStore(Redis.from_url(redis_url), keys)
    yield store
    for project in (contract.PROJECT, contract.PROJECT + 1, 1):
        store.delete(project)
    store.redis.close()


def test_put_replace_and_latest_wins(store):
    contract.check_put_replace_and_latest_wins(store)


def test_bounded_oldest_out_and_remove(store):
    contract.check_bounded_oldest_out_and_remove(store)


def test_generations_and_calibrations(store):
    contract.check_generations_and_calibrations(store)


def test_survives_reopening(redis_url, keys, store):
    contract.check_survives_reopening(lambda: RedisMemoryStore(Redis.from_url(redis_url), keys))


def test_vectors_are_compact_float16(store, keys):
    store.put(1, contract.example(3, 30, "t"), 10)
    raw = store.redis.hget(keys.memory(1, "vectors"), "3")
    assert len(raw) == 8 * 2  # 8 dims x 2 bytes
    assert store.redis.hget(keys.memory(1, "examples"), "3").startswith(b"{")


def test_concurrent_writers_lose_nothing(redis_url, store, keys):
    def write(offset: int) -> None:
        own = RedisMemoryStore(Redis.from_url(redis_url), keys)
        for task in range(offset, 40, 4):
            own.put(1, contract.example(task + 1, task + 1, "t"), 1000)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(e.task for e in store.examples(1)) == list(range(1, 41))
    assert store.state(1).changes == 40


def test_queue_mode_opens_redis_and_the_image_cache_round_trips(redis_url, keys):
    store = open_store(Settings(redis_url=redis_url, queue_name=keys.queue))
    assert isinstance(store, RedisMemoryStore)
    cache = RedisImageCache(store.redis, keys, ttl=60)
    assert cache.get("model", "abc").embedding is None
    cache.put("model", "abc", np.arange(4, dtype=np.float32), {"fp": np.array([0.5, 0.25], dtype=np.float32)})
    cached = cache.get("model", "abc")
    assert cached.embedding.tolist() == [0, 1, 2, 3] and cached.scores["fp"].tolist() == [0.5, 0.25]
    assert 0 < store.redis.ttl(keys.image_cache(model_tag("model"), "abc")) <= 60
    store.redis.delete(*store.redis.keys(f"{keys.prefix}:*"))
