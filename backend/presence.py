"""Worker liveness in Redis, independent of RQ's own registry (whose keys outlive a killed worker by
minutes). Each worker beats every WORKER_HEARTBEAT seconds; one silent for 3 beats is gone.

    tagclip:<queue>:workers          sorted set: worker name -> expiry (unix time)
    tagclip:<queue>:worker:<name>    JSON: model_id, device, pid, host (expires with the worker)
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

# A worker counts as dead after this many missed heartbeats.
MISSED_BEATS = 3


def workers_key(queue_name: str) -> str:
    return f"tagclip:{queue_name}:workers"


def worker_key(queue_name: str, name: str) -> str:
    return f"tagclip:{queue_name}:worker:{name}"


def beat(redis: Redis, queue_name: str, name: str, info: dict[str, Any], interval: float) -> None:
    """Record that worker `name` is alive for the next MISSED_BEATS intervals."""
    ttl = interval * MISSED_BEATS
    with redis.pipeline() as pipe:
        pipe.zadd(workers_key(queue_name), {name: time.time() + ttl})
        pipe.set(worker_key(queue_name, name), json.dumps(info), px=int(ttl * 1000))
        pipe.execute()


def leave(redis: Redis, queue_name: str, name: str) -> None:
    with redis.pipeline() as pipe:
        pipe.zrem(workers_key(queue_name), name)
        pipe.delete(worker_key(queue_name, name))
        pipe.execute()


def alive(redis: Redis, queue_name: str) -> list[dict[str, Any]]:
    """The live workers with their info, oldest registration first."""
    now = time.time()
    key = workers_key(queue_name)
    with redis.pipeline() as pipe:
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zrangebyscore(key, now, "+inf")
        _, names = pipe.execute()
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    if not names:
        return []
    infos = redis.mget([worker_key(queue_name, n) for n in names])
    out = []
    for name, raw in zip(names, infos, strict=True):
        info = json.loads(raw) if raw else {}
        out.append({"name": name, **info})
    return out
