"""A vocabulary's build claim in Redis: one /setup enqueues its build, the concurrent and later ones do not.

The claim holds the number of parts (backend.contracts.vocab) not yet done; each part's job counts itself off
when it ends. It expires CLAIM_TTL after it was made or after the last part ended, so a build whose jobs were
lost (RQ gave up on a killed worker's job, Redis flushed the queue) is enqueued again by a later /setup, and
parts whose columns are all cached then cost a file test per prompt.
"""

from __future__ import annotations

from redis import Redis

from .keys import RedisKeys

# Seconds a claim lives after it was made or a part ended: longer than any part takes (JOB_TIMEOUT).
CLAIM_TTL = 24 * 3600


class VocabularyClaims:
    """The build claims of one queue's vocabularies."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    def claim(self, vocabulary: str, parts: int) -> bool:
        """True when this caller is the one to enqueue the build (no claim existed)."""
        return bool(self._redis.set(self._keys.vocabulary(vocabulary), parts, nx=True, ex=CLAIM_TTL))

    def release(self, vocabulary: str) -> None:
        """Drop a claim whose jobs could not be enqueued, so the next /setup tries again."""
        self._redis.delete(self._keys.vocabulary(vocabulary))

    def part_done(self, vocabulary: str) -> None:
        """Count one part off (only while the claim exists: a part run after it expired changes nothing)."""
        key = self._keys.vocabulary(vocabulary)
        self._redis.eval(_PART_DONE, 1, key, CLAIM_TTL)

    def remaining(self, vocabulary: str) -> int | None:
        """Parts not yet done; None when there is no claim."""
        value = self._redis.get(self._keys.vocabulary(vocabulary))
        return None if value is None else int(value)


# Decrement an existing claim, never below zero, and give it a fresh TTL.
_PART_DONE = """
local left = redis.call('GET', KEYS[1])
if not left then return nil end
left = math.max(tonumber(left) - 1, 0)
redis.call('SET', KEYS[1], left, 'EX', ARGV[1])
return left
"""
