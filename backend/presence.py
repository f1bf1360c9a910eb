"""Worker liveness in Redis, independent of RQ's own registry (whose keys outlive a killed worker by
minutes). Each worker beats every WORKER_HEARTBEAT seconds; one silent for 3 beats is gone.

    RedisKeys.workers         sorted set: worker name -> expiry (unix time)
    RedisKeys.worker(name)    JSON: model_id, device, pid, host (expires with the worker)
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

from .keys import RedisKeys

# A worker counts as dead after this many missed heartbeats.
MISSED_BEATS = 3


def beat(redis: Redis, keys: RedisKeys, name: str, info: dict[str, Any], interval: float) -> None:
    """Record that worker `name` is alive for the next MISSED_BEATS intervals."""
    ttl = interval * MISSED_BEATS
    with redis.pipeline() as pipe:
        pipe.zadd(keys.workers, {name: time.time() + ttl})
        pipe.set(keys.worker(name), json.dumps(info), px=int(ttl * 1000))
        pipe.execute()


def leave(redis: Redis, keys: RedisKeys, name: str) -> None:
    with redis.pipeline() as pipe:
        pipe.zrem(keys.workers, name)
        pipe.delete(keys.worker(name))
        pipe.execute()


def alive(redis: Redis, keys: RedisKeys) -> list[dict[str, Any]]:
    """The live workers with their info, oldest registration first."""
    now = time.time()
    with redis.pipeline() as pipe:
        pipe.zremrangebyscore(keys.workers, "-inf", now)
        pipe.zrangebyscore(keys.workers, now, "+inf")
        _, names = pipe.execute()
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    if not names:
        return []
    infos = redis.mget([keys.worker(n) for n in names])
    out = []
    for name, raw in zip(names, infos, strict=True):
        info = json.loads(raw) if raw else {}
        out.append({"name": name, **info})
    return out
