"""Bulk state on real Redis: the write ledger's claims (taken atomically, blocked by live owners, taken over
from dead ones or after the lease, renewed, released, confirmed, forgotten when Label Studio says a task has
nothing; a write in doubt holds its tasks past its owner's death until the doubt passes), leases and worker
liveness on the Redis server's clock (a host whose clock is an hour off changes nothing), and the choice of
write-back method from measured costs."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from backend import presence
from backend.bulk.ledger import Ledger, TaskState, owner_name, parse_claim
from backend.bulk.method import PROBE_EVERY, PROBE_TASKS, WriteCosts
from backend.keys import ProjectRef, RedisKeys
from backend.servertime import server_now

pytestmark = pytest.mark.integration

LEASE = 120.0


@pytest.fixture
def ledger(redis_url):
    connection = redis.Redis.from_url(redis_url)
    queue = f"tagclip-it-ledger-{uuid.uuid4().hex[:8]}"
    yield Ledger(connection, RedisKeys(queue), ProjectRef.of("http://ls.example:8080", 5), model_version="tagclip-test")
    for key in connection.scan_iter(f"{RedisKeys(queue).prefix}:*"):
        connection.delete(key)


def test_claims_are_exclusive_until_confirmed_or_released(ledger):
    presence.beat(ledger.redis, ledger.keys, "alive", {"pid": 42}, interval=30)
    me = owner_name("alive", 42)
    presence.beat(ledger.redis, ledger.keys, "alive2", {"pid": 43}, interval=30)
    other = owner_name("alive2", 43)
    first = ledger.claim([1, 2, 3], me, LEASE)
    assert first.claimed == [1, 2, 3] and not first.busy
    second = ledger.claim([2, 3, 4], other, LEASE)
    assert second.claimed == [4] and second.busy == {2: me, 3: me}
    assert ledger.claim([1], me, LEASE).claimed == [1]  # the owner may claim again (a retry of its own chunk)
    ledger.confirm([1])
    assert ledger.claim([1], other, LEASE).done == [1] and ledger.not_done([1, 2, 5]) == [2, 5]
    assert ledger.release([2, 4], me) == 1  # only its own claims
    assert ledger.claim([2], other, LEASE).claimed == [2]


def test_claims_of_dead_owners_and_lapsed_leases_are_taken_over(ledger):
    ghost = owner_name("gone", 1)  # no presence entry: its worker is dead
    assert ledger.claim([7], ghost, LEASE).claimed == [7]
    presence.beat(ledger.redis, ledger.keys, "alive", {"pid": 42}, interval=30)
    me = owner_name("alive", 42)
    assert ledger.claim([7], me, LEASE).claimed == [7]
    # A live owner's claim holds until its lease lapses; claim_waiting waits for that.
    presence.beat(ledger.redis, ledger.keys, "alive2", {"pid": 43}, interval=30)
    other = owner_name("alive2", 43)
    assert ledger.claim([8], me, lease=1.0).claimed == [8]
    started = time.monotonic()
    result, still_busy = ledger.claim_waiting([8], other, LEASE, patience=10)
    assert result.claimed == [8] and not still_busy and 0.5 < time.monotonic() - started < 5
    # A restarted worker with the same name but another pid does not own the old claims.
    assert ledger.claim([9], owner_name("alive", 41), LEASE).claimed == [9]
    assert ledger.claim([9], me, LEASE).claimed == [9]


def test_waiting_ends_when_the_holder_confirms(ledger):
    presence.beat(ledger.redis, ledger.keys, "a", {"pid": 1}, interval=30)
    presence.beat(ledger.redis, ledger.keys, "b", {"pid": 2}, interval=30)
    holder, waiter = owner_name("a", 1), owner_name("b", 2)
    ledger.claim([10, 11], holder, LEASE)
    threading.Timer(0.6, ledger.confirm, args=([10, 11],)).start()
    result, still_busy = ledger.claim_waiting([10, 11], waiter, LEASE, patience=10)
    assert result.done == [10, 11] and not result.claimed and not still_busy


def test_a_write_in_doubt_holds_its_tasks_past_its_owners_death_until_the_doubt_passes(ledger):
    presence.beat(ledger.redis, ledger.keys, "writer", {"pid": 7}, interval=30)
    presence.beat(ledger.redis, ledger.keys, "rescuer", {"pid": 8}, interval=30)
    writer, rescuer = owner_name("writer", 7), owner_name("rescuer", 8)
    assert ledger.claim([1, 2], writer, LEASE).claimed == [1, 2]
    # The writer sends task 1 (in doubt for 1.5 s: the longest it may take to land), then dies.
    assert ledger.arm([1], writer, LEASE, doubt=1.5) == [1]
    presence.leave(ledger.redis, ledger.keys, "writer")
    assert ledger.states([1, 2]) == {1: TaskState.HELD, 2: TaskState.FREE}
    taken = ledger.claim([1, 2], rescuer, LEASE)
    # Both are taken over, but task 1 only in doubt: its write may still land, so it must not be sent again.
    assert taken.claimed == [1, 2] and set(taken.doubt) == {1} and taken.doubt[1] > server_now(ledger.redis)
    assert ledger.arm([1, 2], writer, LEASE, doubt=1.5) == []  # the dead writer holds nothing any more
    time.sleep(1.6)
    again = ledger.claim([1], rescuer, LEASE)
    assert again.claimed == [1] and not again.doubt  # the doubt has passed: the write did not land
    ledger.confirm([1])
    assert ledger.states([1]) == {1: TaskState.DONE}


def test_a_renewed_lease_outlives_its_first_expiry(ledger):
    presence.beat(ledger.redis, ledger.keys, "slow", {"pid": 1}, interval=30)
    presence.beat(ledger.redis, ledger.keys, "eager", {"pid": 2}, interval=30)
    slow, eager = owner_name("slow", 1), owner_name("eager", 2)
    ledger.claim([5], slow, lease=1.0)
    assert ledger.renew([5, 6], slow, lease=30.0) == [5]  # only what it holds
    time.sleep(1.2)
    assert ledger.claim([5], eager, LEASE).busy == {5: slow}
    assert ledger.states([5]) == {5: TaskState.HELD}


def test_leases_and_liveness_follow_the_redis_clock_not_the_hosts(ledger, monkeypatch):
    """A host whose clock runs an hour ahead (or stands at 1970) neither expires others' claims nor its own."""
    presence.beat(ledger.redis, ledger.keys, "w1", {"pid": 1}, interval=30)
    presence.beat(ledger.redis, ledger.keys, "w2", {"pid": 2}, interval=30)
    one, two = owner_name("w1", 1), owner_name("w2", 2)
    before = server_now(ledger.redis)
    ledger.claim([3], one, LEASE)
    claim = parse_claim(ledger.redis.hget(ledger.key, "3"))
    assert before + LEASE - 1 < claim.lease_until < server_now(ledger.redis) + LEASE + 1
    for skew in (3600.0, -time.time()):
        monkeypatch.setattr(time, "time", lambda skew=skew: before + skew)
        assert {w["name"] for w in presence.alive(ledger.redis, ledger.keys)} >= {"w1", "w2"}
        assert ledger.claim([3], two, LEASE).busy == {3: one}
        presence.beat(ledger.redis, ledger.keys, "w3", {"pid": 3}, interval=30)
        score = ledger.redis.zscore(ledger.keys.workers, "w3")
        assert abs(score - (server_now(ledger.redis) + 90)) < 2


def test_forgetting_done_marks_leaves_claims(ledger):
    ledger.confirm([1, 2])
    ledger.claim([3], owner_name("x", 1), LEASE)
    ledger.forget_done([1, 3])
    assert ledger.not_done([1, 2, 3]) == [1, 3]
    assert ledger.claim([3], owner_name("y", 2), LEASE).claimed == [3]  # x is dead (no presence)


def test_auto_write_method_measures_both_then_takes_the_cheaper_and_probes(ledger):
    costs = WriteCosts(ledger.redis, ledger.keys, ledger.project)
    assert costs.plan("single", 64) == [("single", 64)]  # an explicit method is kept
    assert costs.plan("auto", 0) == []
    assert costs.plan("auto", 64) == [("import", 64)]  # no estimate yet: the import first
    costs.record("import", seconds=3.2, tasks=64)  # 50 ms per task
    # No estimate of the per-task POSTs: a few tasks that way, the rest by import.
    assert costs.plan("auto", 64) == [("single", PROBE_TASKS), ("import", 64 - PROBE_TASKS)]
    costs.record("single", seconds=0.4, tasks=PROBE_TASKS)  # 100 ms per task
    plans = [costs.plan("auto", 64) for _ in range(2 * PROBE_EVERY)]
    assert plans.count([("import", 64)]) == 2 * PROBE_EVERY - 2
    assert plans.count([("single", PROBE_TASKS), ("import", 64 - PROBE_TASKS)]) == 2
    # The import gets slower as the project fills: the averages follow, and the choice flips.
    for _ in range(6):
        costs.record("import", seconds=12.8, tasks=64)  # 200 ms per task
    costs.record("import", seconds=5.0, tasks=0)  # nothing stored: no sample
    assert costs.estimates()["import"] > costs.estimates()["single"]
    plans = [costs.plan("auto", 64) for _ in range(PROBE_EVERY)]
    assert plans.count([("single", 64)]) == PROBE_EVERY - 1 and plans.count([("import", 64)]) == 1


def test_a_chunk_of_a_cancelled_job_is_skipped_without_predicting(redis_url):
    """A worker that takes a chunk just as its job is cancelled skips it: no prediction, no write, no start."""
    from backend.bulk.state import BulkStore
    from backend.contracts.bulk import BulkChunk, BulkTask, build_payload
    from backend.contracts.source import KeyPlace, SourceRef
    from backend.resolve import Resolver
    from backend.settings import Settings
    from worker.bulk import run_chunk

    connection = redis.Redis.from_url(redis_url)
    queue = f"tagclip-it-cancel-{uuid.uuid4().hex[:8]}"
    store = BulkStore(connection, RedisKeys(queue))
    job = store.create({"project": 3, "model_version": "tagclip-x"})
    chunk = BulkChunk(
        job=job,
        queue=queue,
        project=3,
        model_version="tagclip-x",
        label_config="<View/>",
        extra_params={},
        write="import",
        source=SourceRef("http://127.0.0.1:9", None, KeyPlace.BULK_JOB),  # nothing listens: any write would fail
        tasks=(BulkTask(7, {"image": "/data/upload/1/a.png"}),),
    )

    def predict(_spec):
        raise AssertionError("a cancelled job's chunk must not be predicted")

    try:
        store.mark_cancelled(job)
        resolver = Resolver(Settings.from_env({}))
        summary = run_chunk(build_payload(chunk), predict, connection, resolver, owner_name("w", 1))
        assert summary["skipped"] == "cancelled" and summary["job"] == job
        assert "started_at" not in store.info(job) and store.cancelled_at(job) is not None
    finally:
        for key in connection.scan_iter(f"{RedisKeys(queue).prefix}:*"):
            connection.delete(key)


def test_two_label_studios_never_share_claims_or_active_jobs(redis_url):
    """Project 5 of one Label Studio and project 5 of another are different projects in every key."""
    from backend.bulk.state import BulkStore

    connection = redis.Redis.from_url(redis_url)
    keys = RedisKeys(f"tagclip-it-studios-{uuid.uuid4().hex[:8]}")
    one = ProjectRef.of("http://studio-one:8080", 5)
    other = ProjectRef.of("https://studio-two.example", 5)
    try:
        first = Ledger(connection, keys, one, "tagclip-v").claim([1, 2], owner_name("w", 1), LEASE)
        second = Ledger(connection, keys, other, "tagclip-v").claim([1, 2], owner_name("w", 2), LEASE)
        assert first.claimed == [1, 2] and second.claimed == [1, 2] and not second.busy
        store = BulkStore(connection, keys)
        assert store.claim_active(one, "tagclip-v", "job-a") == "job-a"
        assert store.claim_active(other, "tagclip-v", "job-b") == "job-b"
        assert store.active(one, "tagclip-v") == "job-a" and store.active(other, "tagclip-v") == "job-b"
    finally:
        for key in connection.scan_iter(f"{keys.prefix}:*"):
            connection.delete(key)
