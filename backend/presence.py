"""Worker liveness in Redis, independent of RQ's own registry (whose keys outlive a killed worker by
minutes). Each worker beats every WORKER_HEARTBEAT seconds; one silent for 3 beats is gone. Expiries are on
the Redis server's clock (backend.servertime), so workers and readers on hosts whose clocks disagree still
agree on who is alive.

    RedisKeys.workers         sorted set: worker name -> expiry (Redis server time)
    RedisKeys.worker(name)    JSON: model_id, device, pid, host (expires with the worker)
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from .keys import RedisKeys
from .servertime import LUA_NOW

# A worker counts as dead after this many missed heartbeats.
MISSED_BEATS = 3

# KEYS: workers, worker info; ARGV: name, ttl seconds, info JSON.
_BEAT = (
    LUA_NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', math.floor(tonumber(ARGV[2]) * 1000))
"""
)
# KEYS: workers -> the names of live workers (dead ones are dropped).
_ALIVE = (
    LUA_NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""
)


def beat(redis: Redis, keys: RedisKeys, name: str, info: dict[str, Any], interval: float) -> None:
    """Record that worker `name` is alive for the next MISSED_BEATS intervals."""
    redis.eval(_BEAT, 2, keys.workers, keys.worker(name), name, interval * MISSED_BEATS, json.dumps(info))


def leave(redis: Redis, keys: RedisKeys, name: str) -> None:
    with redis.pipeline() as pipe:
        pipe.zrem(keys.workers, name)
        pipe.delete(keys.worker(name))
        pipe.execute()


def alive(redis: Redis, keys: RedisKeys) -> list[dict[str, Any]]:
    """The live workers with their info, oldest registration first."""
    names = redis.eval(_ALIVE, 1, keys.workers)
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    if not names:
        return []
    infos = redis.mget([keys.worker(n) for n in names])
    out = []
    for name, raw in zip(names, infos, strict=True):
        info = json.loads(raw) if raw else {}
        out.append({"name": name, **info})
    return out
