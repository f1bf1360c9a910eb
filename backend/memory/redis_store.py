"""The memory in Redis (queue mode): every process of one TAGCLIP_QUEUE sees the same examples and generations.

Keys (backend.keys.RedisKeys.memory), per project:
    state         hash: generation, changes, cut_at
    examples      hash: task -> the example without its vector (JSON)
    vectors       hash: task -> CLIP embedding, raw little-endian float16 (1 KB for ViT-B/16)
    order         sorted set: task -> insertion sequence (oldest out beyond the maximum)
    annotations   hash: annotation id -> task (Label Studio's deletion events name annotations only)
    calibrations  hash: generation -> the calibrations cut with it (JSON; the newest KEPT_CALIBRATIONS)
    cut           string with a TTL: held while one process cuts a generation

Writes that read first (put, remove) run in WATCH/MULTI transactions on the examples hash, so two workers
learning from the same project never lose an update. Nothing here expires: the memory survives restarts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from redis import Redis
from redis.exceptions import WatchError

from ..keys import RedisKeys
from .examples import Example, newer
from .store import CUT_CLAIM_SECONDS, KEPT_CALIBRATIONS, MemoryState, MemoryStore, PutOutcome


class RedisMemoryStore(MemoryStore):
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    def _key(self, project: int, part: str) -> str:
        return self.keys.memory(project, part)

    def state(self, project: int) -> MemoryState:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._key(project, "state"), ["generation", "changes", "cut_at"])
            pipe.hlen(self._key(project, "examples"))
            (generation, changes, cut_at), count = pipe.execute()
        return MemoryState(int(generation or 0), int(changes or 0), int(cut_at or 0), int(count))

    def generation(self, project: int) -> int:
        return int(self.redis.hget(self._key(project, "state"), "generation") or 0)

    def example(self, project: int, task: int) -> Example | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self._key(project, "examples"), str(task))
            pipe.hget(self._key(project, "vectors"), str(task))
            meta, vector = pipe.execute()
        return Example.from_stored(meta, vector) if meta and vector is not None else None

    def examples(self, project: int) -> list[Example]:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self._key(project, "order"), 0, -1)
            pipe.hgetall(self._key(project, "examples"))
            pipe.hgetall(self._key(project, "vectors"))
            order, metas, vectors = pipe.execute()
        out = []
        for task in order:
            if task in metas and task in vectors:
                out.append(Example.from_stored(metas[task], vectors[task]))
        return out

    def put(self, project: int, example: Example, max_examples: int) -> PutOutcome:
        examples, vectors = self._key(project, "examples"), self._key(project, "vectors")
        order, annotations, state = (
            self._key(project, "order"),
            self._key(project, "annotations"),
            self._key(project, "state"),
        )
        task = str(example.task)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(examples)
                    current = self._read(pipe, examples, vectors, task)
                    if current is not None and (not newer(example, current) or current.same_review(example)):
                        pipe.unwatch()
                        return PutOutcome(changed=False)
                    count = int(pipe.hlen(examples)) + (current is None)
                    overflow = max(0, count - max_examples)
                    last = pipe.zrange(order, -1, -1, withscores=True)
                    sequence = int(last[0][1]) + 1 if last else 1
                    oldest = [t for t in pipe.zrange(order, 0, overflow) if t != task.encode()][:overflow]
                    evicted_metas = pipe.hmget(examples, oldest) if oldest else []
                    pipe.multi()
                    if current is not None:
                        pipe.hdel(annotations, str(current.annotation))
                    pipe.hset(examples, task, example.meta_json())
                    pipe.hset(vectors, task, example.vector_bytes())
                    pipe.hset(annotations, str(example.annotation), task)
                    pipe.zadd(order, {task: sequence})
                    pipe.hincrby(state, "changes", 1)
                    for evicted, meta in zip(oldest, evicted_metas, strict=True):
                        pipe.hdel(examples, evicted)
                        pipe.hdel(vectors, evicted)
                        pipe.zrem(order, evicted)
                        if meta:
                            pipe.hdel(annotations, str(json.loads(meta)["annotation"]))
                    pipe.execute()
                    return PutOutcome(True, tuple(int(t) for t in oldest))
                except WatchError:
                    continue

    @staticmethod
    def _read(pipe: Any, examples: str, vectors: str, task: str) -> Example | None:
        meta, vector = pipe.hget(examples, task), pipe.hget(vectors, task)
        return Example.from_stored(meta, vector) if meta and vector is not None else None

    def remove_tasks(self, project: int, tasks: Sequence[int]) -> list[int]:
        if not tasks:
            return []
        examples, vectors = self._key(project, "examples"), self._key(project, "vectors")
        order, annotations, state = (
            self._key(project, "order"),
            self._key(project, "annotations"),
            self._key(project, "state"),
        )
        names = [str(t) for t in dict.fromkeys(int(x) for x in tasks)]
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(examples)
                    metas = pipe.hmget(examples, names)
                    present = [(name, json.loads(meta)) for name, meta in zip(names, metas, strict=True) if meta]
                    if not present:
                        pipe.unwatch()
                        return []
                    pipe.multi()
                    for name, meta in present:
                        pipe.hdel(examples, name)
                        pipe.hdel(vectors, name)
                        pipe.zrem(order, name)
                        pipe.hdel(annotations, str(meta["annotation"]))
                    pipe.hincrby(state, "changes", len(present))
                    pipe.execute()
                    return [int(name) for name, _ in present]
                except WatchError:
                    continue

    def tasks_of_annotations(self, project: int, annotations: Sequence[int]) -> list[int]:
        if not annotations:
            return []
        found = self.redis.hmget(self._key(project, "annotations"), [str(a) for a in annotations])
        return sorted({int(t) for t in found if t is not None})

    def claim_cut(self, project: int) -> bool:
        return bool(self.redis.set(self._key(project, "cut"), "1", nx=True, ex=CUT_CLAIM_SECONDS))

    def release_cut(self, project: int) -> None:
        self.redis.delete(self._key(project, "cut"))

    def publish(self, project: int, calibrations: Mapping[str, Any], changes_seen: int) -> int:
        state, stored = self._key(project, "state"), self._key(project, "calibrations")
        generation = self.generation(project) + 1  # the claim makes this process the only cutter
        with self.redis.pipeline() as pipe:
            pipe.hset(stored, str(generation), json.dumps(dict(calibrations), sort_keys=True))
            if generation > KEPT_CALIBRATIONS:
                pipe.hdel(stored, str(generation - KEPT_CALIBRATIONS))
            # The calibrations are written before the generation that names them becomes visible.
            pipe.hset(state, mapping={"generation": generation, "cut_at": changes_seen})
            pipe.delete(self._key(project, "cut"))
            pipe.execute()
        return generation

    def calibrations(self, project: int, generation: int) -> dict[str, Any] | None:
        if generation <= 0:
            return None
        raw = self.redis.hget(self._key(project, "calibrations"), str(generation))
        return json.loads(raw) if raw else None

    def delete(self, project: int) -> None:
        """Forget a project's memory entirely (tests, and a user's explicit reset)."""
        self.redis.delete(*self.keys.memory_keys(project))
