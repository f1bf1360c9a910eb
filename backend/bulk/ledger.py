"""Exactly one prediction per (project, model_version, task): write claims in Redis, checked against Label
Studio before every write.

    RedisKeys.ledger(project, version)   hash: task -> "d" (has its prediction)
                                                            | "w|<lease expiry>|<owner>" (being written)

A worker claims the tasks of a chunk atomically just before writing (owner = worker name and pid), asks
Label Studio which of them already have a prediction of the version (a killed writer's prediction, or one
Label Studio's own /predict stored), writes the others, and marks them "d". A claim held by another owner
blocks the write until it is confirmed, released, its lease expires, or its owner is gone (no live worker
with that name and pid); then the next writer re-checks Label Studio, so a prediction stored by a worker
killed before it confirmed is found, not written twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis import Redis
from redis.client import Pipeline

from .. import presence
from ..keys import ProjectRef, RedisKeys

DONE = "d"
# Seconds a write claim holds against live owners (a chunk's write takes well under this).
WRITE_LEASE_SECONDS = 120.0
# How often a writer blocked by another owner's claims looks again.
BLOCKED_POLL_SECONDS = 0.5

# KEYS[1] ledger; ARGV: owner, now, lease, n_dead, dead owners..., task ids...
# Returns one entry per task: "claimed", "done" or "busy|<owner>".
_CLAIM = """
local owner, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n_dead = tonumber(ARGV[4])
local dead = {}
for i = 5, 4 + n_dead do dead[ARGV[i]] = true end
local out = {}
for i = 5 + n_dead, #ARGV do
  local task = ARGV[i]
  local v = redis.call('HGET', KEYS[1], task)
  if v == 'd' then
    out[#out + 1] = 'done'
  else
    local holder, expiry = nil, 0
    if v then
      local first = string.find(v, '|', 3, true)
      expiry = tonumber(string.sub(v, 3, first - 1))
      holder = string.sub(v, first + 1)
    end
    if v == false or holder == owner or expiry <= now or dead[holder] then
      redis.call('HSET', KEYS[1], task, 'w|' .. string.format('%.3f', now + lease) .. '|' .. owner)
      out[#out + 1] = 'claimed'
    else
      out[#out + 1] = 'busy|' .. holder
    end
  end
end
return out
"""

# KEYS[1] ledger; ARGV: owner, task ids... -> drop this owner's claims.
_RELEASE = """
local n = 0
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and string.sub(v, 1, 2) == 'w|' then
    local first = string.find(v, '|', 3, true)
    if string.sub(v, first + 1) == ARGV[1] then
      redis.call('HDEL', KEYS[1], ARGV[i]); n = n + 1
    end
  end
end
return n
"""

# KEYS[1] ledger; ARGV: task ids... -> forget "done" marks (Label Studio says these have no prediction).
_FORGET_DONE = """
local n = 0
for i = 1, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == 'd' then redis.call('HDEL', KEYS[1], ARGV[i]); n = n + 1 end
end
return n
"""


@dataclass
class ClaimResult:
    claimed: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    busy: dict[int, str] = field(default_factory=dict)  # task -> owner


def owner_name(worker: str, pid: int) -> str:
    return f"{worker}#{pid}"


class Ledger:
    """The write ledger of one (project, model_version) on one queue."""

    def __init__(self, redis: Redis, keys: RedisKeys, project: ProjectRef, model_version: str) -> None:
        self.redis = redis
        self.keys = keys
        self.project = project
        self.key = keys.ledger(project, model_version)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._forget = redis.register_script(_FORGET_DONE)

    def not_done(self, ids: Sequence[int]) -> list[int]:
        """The tasks without a "done" mark."""
        if not ids:
            return []
        values = self.redis.hmget(self.key, [str(i) for i in ids])
        return [i for i, v in zip(ids, values, strict=True) if v not in (b"d", "d")]

    def claim(self, ids: Sequence[int], owner: str, lease: float = WRITE_LEASE_SECONDS) -> ClaimResult:
        """Claim `ids` for writing; claims of owners that are no longer alive are taken over."""
        if not ids:
            return ClaimResult()
        dead = self._dead_owners(ids, owner)
        answer = self._claim(keys=[self.key], args=[owner, time.time(), lease, len(dead), *dead, *ids])
        result = ClaimResult()
        for task, raw in zip(ids, answer, strict=True):
            status = raw.decode() if isinstance(raw, bytes) else raw
            if status == "claimed":
                result.claimed.append(task)
            elif status == "done":
                result.done.append(task)
            else:
                result.busy[task] = status.split("|", 1)[1]
        return result

    def claim_waiting(
        self, ids: Sequence[int], owner: str, patience: float = WRITE_LEASE_SECONDS + 5
    ) -> tuple[ClaimResult, dict[int, str]]:
        """Claim `ids`, waiting while other live owners hold some. Returns the combined result and the
        tasks still held by others after `patience` seconds (they are being written elsewhere)."""
        combined = ClaimResult()
        pending = list(ids)
        deadline = time.monotonic() + patience
        while pending:
            result = self.claim(pending, owner)
            combined.claimed += result.claimed
            combined.done += result.done
            pending = list(result.busy)
            if not pending or time.monotonic() >= deadline:
                return combined, result.busy
            time.sleep(BLOCKED_POLL_SECONDS)
        return combined, {}

    def confirm(self, ids: Sequence[int]) -> None:
        if ids:
            self.redis.hset(self.key, mapping={str(i): DONE for i in ids})

    def release(self, ids: Sequence[int], owner: str) -> int:
        return int(self._release(keys=[self.key], args=[owner, *ids])) if ids else 0

    def forget_done(self, ids: Sequence[int], pipe: Pipeline | None = None) -> None:
        if ids:
            self._forget(keys=[self.key], args=list(ids), client=pipe or self.redis)

    def _dead_owners(self, ids: Sequence[int], me: str) -> list[str]:
        """Owners of current claims on `ids` with no live worker of that name and pid."""
        values = self.redis.hmget(self.key, [str(i) for i in ids])
        holders = set()
        for raw in values:
            value = raw.decode() if isinstance(raw, bytes) else raw
            if value and value.startswith("w|"):
                holders.add(value.split("|", 2)[2])
        holders.discard(me)
        if not holders:
            return []
        workers = presence.alive(self.redis, self.keys)
        alive = {owner_name(w.get("name", ""), int(w.get("pid", -1))) for w in workers}
        return sorted(holders - alive)
