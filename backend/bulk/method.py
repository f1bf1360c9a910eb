"""Which write-back method a chunk uses when the job says "auto": the one that has been cheaper per task.

Label Studio 1.23's bulk import (POST /api/projects/<id>/import/predictions) costs one call per chunk, but
by default that call recounts every task of the project that has a prediction (~1 s per 1,000 of them on
SQLite), so it gets slower as the project fills; one POST /api/predictions per task costs about the same
at any size. The workers keep a running average of each method's seconds per stored task, per project, in
Redis; a chunk takes the cheaper one, and every PROBE_EVERY-th chunk also measures the other, so the
estimates follow the project as it fills. A probe of the per-task POSTs writes only PROBE_TASKS of the
chunk that way (their cost is per task; the rest goes by import); a probe of the import takes a whole chunk
(its cost is mostly per call).

    RedisKeys.write_costs(project of its Label Studio)   hash: import, single (seconds per task, averaged), chunks
"""

from __future__ import annotations

from redis import Redis

from ..contracts.bulk import WriteMethod
from ..keys import ProjectRef, RedisKeys

# Weight of the newest chunk in the running averages.
SMOOTHING = 0.3
# Every this many chunks the costlier method is tried again.
PROBE_EVERY = 8
# Tasks of a chunk written one by one to measure that method while the import is cheaper.
PROBE_TASKS = 4
# The costs of a project are forgotten after a day without chunks.
COSTS_TTL = 24 * 3600


class WriteCosts:
    def __init__(self, redis: Redis, keys: RedisKeys, project: ProjectRef) -> None:
        self.redis = redis
        self.key = keys.write_costs(project)

    def estimates(self) -> dict[str, float]:
        raw = self.redis.hmget(self.key, [WriteMethod.IMPORT, WriteMethod.SINGLE])
        return {
            m: float(v) for m, v in zip((WriteMethod.IMPORT, WriteMethod.SINGLE), raw, strict=True) if v is not None
        }

    def plan(self, requested: str, tasks: int) -> list[tuple[str, int]]:
        """How to write a chunk's `tasks` predictions: [(method, how many), ...] in order."""
        if tasks <= 0:
            return []
        if requested != WriteMethod.AUTO:
            return [(requested, tasks)]
        chunk = int(self.redis.hincrby(self.key, "chunks", 1))
        self.redis.expire(self.key, COSTS_TTL)
        known = self.estimates()
        probe = [(WriteMethod.SINGLE, min(PROBE_TASKS, tasks)), (WriteMethod.IMPORT, tasks - min(PROBE_TASKS, tasks))]
        if WriteMethod.IMPORT not in known:
            return [(WriteMethod.IMPORT, tasks)]
        if WriteMethod.SINGLE not in known:
            return [p for p in probe if p[1]]
        cheaper, costlier = sorted((WriteMethod.IMPORT, WriteMethod.SINGLE), key=lambda m: known[m])
        if chunk % PROBE_EVERY:
            return [(cheaper, tasks)]
        return [p for p in probe if p[1]] if costlier == WriteMethod.SINGLE else [(WriteMethod.IMPORT, tasks)]

    def record(self, method: str, seconds: float, tasks: int) -> None:
        """Fold one write (`tasks` stored in `seconds`) into the method's average."""
        if tasks <= 0:
            return
        per_task = seconds / tasks
        old = self.estimates().get(method)
        new = per_task if old is None else SMOOTHING * per_task + (1 - SMOOTHING) * old
        self.redis.hset(self.key, method, f"{new:.6f}")
        self.redis.expire(self.key, COSTS_TTL)
