"""Exactly one prediction per (project, model_version, task): write claims in Redis, checked against Label
Studio before every write.

    RedisKeys.ledger(project, version)   hash: task -> "d" (has its prediction)
                                                     | "c|<lease until>|<in doubt until>|<owner>" (claimed)

A worker claims the tasks of a chunk atomically just before writing (owner = worker name and pid), asks
Label Studio which of them already have a prediction of the version (a killed writer's prediction, or one
Label Studio's own /predict stored), writes the others, and marks them "d". Every time is the Redis server's
(backend.servertime), never a host's.

* The **lease** keeps other writers off while its owner works; the owner renews it while it writes
  (`renew`), so it outlives the slowest write. A claim whose lease lapsed, or whose owner is gone (no live
  worker with that name and pid), may be taken over.
* **In doubt**: just before a write is sent, its tasks are marked in doubt until the latest time that write
  could still land in Label Studio (`arm`: now + the call's timeout + the settle time). A write that ended
  without a clear answer (a timeout, a 5xx, a reset connection) leaves them so. Whoever holds such a claim
  next (the owner's retry, or the worker that took it over) must not write those tasks before Label Studio
  shows their prediction (then they are done) or the doubt has passed (then the write is known not to have
  landed): it asks Label Studio until it knows, instead of writing again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from redis import Redis
from redis.client import Pipeline

from .. import presence
from ..keys import ProjectRef, RedisKeys
from ..servertime import LUA_NOW, server_now

DONE = "d"
# How often a writer blocked by another owner's claims looks again.
BLOCKED_POLL_SECONDS = 0.5

# Lua: parse a ledger value into holder, lease expiry and doubt expiry ("w|<expiry>|<owner>": the older form).
_PARSE = """
local function parse(v)
  if not v or v == 'd' then return nil, 0, 0 end
  local kind = string.sub(v, 1, 2)
  local first = string.find(v, '|', 3, true)
  local lease = tonumber(string.sub(v, 3, first - 1))
  if kind == 'w|' then return string.sub(v, first + 1), lease, 0 end
  local second = string.find(v, '|', first + 1, true)
  return string.sub(v, second + 1), lease, tonumber(string.sub(v, first + 1, second - 1))
end
local function claim(lease, doubt, owner)
  return 'c|' .. string.format('%.3f', lease) .. '|' .. string.format('%.3f', doubt) .. '|' .. owner
end
"""

# KEYS[1] ledger; ARGV: owner, lease seconds, n_dead, dead owners..., task ids...
# Returns one entry per task: "claimed", "doubt|<until>" (claimed, but a write may still land), "done" or
# "busy|<owner>". Taking a claim over keeps its doubt: the earlier owner's write may still land.
_CLAIM = (
    LUA_NOW
    + _PARSE
    + """
local owner, lease = ARGV[1], tonumber(ARGV[2])
local n_dead = tonumber(ARGV[3])
local dead = {}
for i = 4, 3 + n_dead do dead[ARGV[i]] = true end
local out = {}
for i = 4 + n_dead, #ARGV do
  local task = ARGV[i]
  local v = redis.call('HGET', KEYS[1], task)
  if v == 'd' then
    out[#out + 1] = 'done'
  else
    local holder, until_, doubt = parse(v)
    if not v or holder == owner or until_ <= now or dead[holder] then
      redis.call('HSET', KEYS[1], task, claim(now + lease, doubt, owner))
      if doubt > now then out[#out + 1] = 'doubt|' .. doubt else out[#out + 1] = 'claimed' end
    else
      out[#out + 1] = 'busy|' .. holder
    end
  end
end
return out
"""
)

# KEYS[1] ledger; ARGV: owner, lease seconds, doubt seconds (0: keep it), task ids...
# For the tasks this owner still holds: lease renewed, and with doubt seconds > 0 in doubt until now + that.
# Returns the ids it holds.
_RENEW = (
    LUA_NOW
    + _PARSE
    + """
local owner, lease, doubt_for = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local held = {}
for i = 4, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local holder, until_, doubt = parse(v)
  if holder == owner then
    if doubt_for > 0 then doubt = math.max(doubt, now + doubt_for) end
    redis.call('HSET', KEYS[1], ARGV[i], claim(math.max(until_, now + lease), doubt, owner))
    held[#held + 1] = ARGV[i]
  end
end
return held
"""
)

# KEYS[1] ledger; ARGV: owner, task ids... -> drop this owner's claims (a write Label Studio clearly refused).
_RELEASE = (
    _PARSE
    + """
local n = 0
for i = 2, #ARGV do
  local holder = parse(redis.call('HGET', KEYS[1], ARGV[i]))
  if holder == ARGV[1] then redis.call('HDEL', KEYS[1], ARGV[i]); n = n + 1 end
end
return n
"""
)

# KEYS[1] ledger; ARGV: task ids... -> forget "done" marks (Label Studio says these have no prediction).
_FORGET_DONE = """
local n = 0
for i = 1, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == 'd' then redis.call('HDEL', KEYS[1], ARGV[i]); n = n + 1 end
end
return n
"""


class TaskState(str, Enum):
    """Where one task stands in the ledger (`Ledger.states`)."""

    DONE = "done"  # has its prediction
    HELD = "held"  # a live owner's claim within its lease, or a write of it may still land
    FREE = "free"  # nobody is writing it


@dataclass
class ClaimResult:
    claimed: list[int] = field(default_factory=list)  # includes the ones in doubt
    done: list[int] = field(default_factory=list)
    busy: dict[int, str] = field(default_factory=dict)  # task -> owner
    doubt: dict[int, float] = field(default_factory=dict)  # claimed task -> until when a write may still land


@dataclass(frozen=True)
class Claim:
    """A parsed claim value."""

    owner: str
    lease_until: float
    doubt_until: float


def owner_name(worker: str, pid: int) -> str:
    return f"{worker}#{pid}"


def parse_claim(value: str | bytes | None) -> Claim | None:
    """A ledger value as a claim; None for "done" or no value."""
    text = value.decode() if isinstance(value, bytes) else value
    if not text or text == DONE:
        return None
    kind, rest = text[:2], text[2:]
    if kind == "w|":  # the older form: no doubt
        lease, owner = rest.split("|", 1)
        return Claim(owner, float(lease), 0.0)
    lease, doubt, owner = rest.split("|", 2)
    return Claim(owner, float(lease), float(doubt))


class Ledger:
    """The write ledger of one (project, model_version) on one queue."""

    def __init__(self, redis: Redis, keys: RedisKeys, project: ProjectRef, model_version: str) -> None:
        self.redis = redis
        self.keys = keys
        self.project = project
        self.key = keys.ledger(project, model_version)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._forget = redis.register_script(_FORGET_DONE)

    def now(self) -> float:
        """The Redis server's time (every lease and doubt is on it)."""
        return server_now(self.redis)

    def not_done(self, ids: Sequence[int]) -> list[int]:
        """The tasks without a "done" mark."""
        if not ids:
            return []
        values = self.redis.hmget(self.key, [str(i) for i in ids])
        return [i for i, v in zip(ids, values, strict=True) if v not in (b"d", "d")]

    def claim(self, ids: Sequence[int], owner: str, lease: float) -> ClaimResult:
        """Claim `ids` for writing for `lease` seconds; claims of owners that are no longer alive, or whose lease
        lapsed, are taken over (in doubt if a write of theirs may still land)."""
        if not ids:
            return ClaimResult()
        dead = self._dead_owners(ids, owner)
        answer = self._claim(keys=[self.key], args=[owner, lease, len(dead), *dead, *ids])
        result = ClaimResult()
        for task, raw in zip(ids, answer, strict=True):
            status = raw.decode() if isinstance(raw, bytes) else raw
            if status == "claimed":
                result.claimed.append(task)
            elif status == "done":
                result.done.append(task)
            elif status.startswith("doubt|"):
                result.claimed.append(task)
                result.doubt[task] = float(status.split("|", 1)[1])
            else:
                result.busy[task] = status.split("|", 1)[1]
        return result

    def claim_waiting(
        self, ids: Sequence[int], owner: str, lease: float, patience: float
    ) -> tuple[ClaimResult, dict[int, str]]:
        """Claim `ids`, waiting while other live owners hold some. Returns the combined result and the
        tasks still held by others after `patience` seconds (they are being written elsewhere)."""
        combined = ClaimResult()
        pending = list(ids)
        deadline = time.monotonic() + patience
        while pending:
            result = self.claim(pending, owner, lease)
            combined.claimed += result.claimed
            combined.done += result.done
            combined.doubt.update(result.doubt)
            pending = list(result.busy)
            if not pending or time.monotonic() >= deadline:
                return combined, result.busy
            time.sleep(BLOCKED_POLL_SECONDS)
        return combined, {}

    def renew(self, ids: Sequence[int], owner: str, lease: float) -> list[int]:
        """Extend this owner's lease on `ids`; returns the ids it still holds."""
        return self._held(self._renew(keys=[self.key], args=[owner, lease, 0, *ids])) if ids else []

    def arm(self, ids: Sequence[int], owner: str, lease: float, doubt: float) -> list[int]:
        """Just before sending a write of `ids`: put them in doubt for `doubt` seconds (the longest the write
        may take to land) and renew the lease. Returns the ids this owner still holds: only those may be sent."""
        return self._held(self._renew(keys=[self.key], args=[owner, lease, doubt, *ids])) if ids else []

    def confirm(self, ids: Sequence[int]) -> None:
        if ids:
            self.redis.hset(self.key, mapping={str(i): DONE for i in ids})

    def release(self, ids: Sequence[int], owner: str) -> int:
        return int(self._release(keys=[self.key], args=[owner, *ids])) if ids else 0

    def forget_done(self, ids: Sequence[int], pipe: Pipeline | None = None) -> None:
        if ids:
            self._forget(keys=[self.key], args=list(ids), client=pipe or self.redis)

    def claims(self, ids: Sequence[int]) -> dict[int, Claim | None]:
        """Each task's claim (None: done or unclaimed)."""
        if not ids:
            return {}
        values = self.redis.hmget(self.key, [str(i) for i in ids])
        return {i: parse_claim(v) for i, v in zip(ids, values, strict=True)}

    def states(self, ids: Sequence[int]) -> dict[int, TaskState]:
        """Whether each task is done, held by a writer (or in doubt), or free."""
        if not ids:
            return {}
        values = self.redis.hmget(self.key, [str(i) for i in ids])
        now = self.now()
        alive = self._alive_owners()
        out = {}
        for task, raw in zip(ids, values, strict=True):
            if raw in (b"d", "d"):
                out[task] = TaskState.DONE
                continue
            claim = parse_claim(raw)
            held = claim is not None and (claim.doubt_until > now or (claim.lease_until > now and claim.owner in alive))
            out[task] = TaskState.HELD if held else TaskState.FREE
        return out

    def doubt_until(self, ids: Sequence[int]) -> float:
        """The latest time a write of any of `ids` may still land (0: none is in doubt)."""
        return max((c.doubt_until for c in self.claims(ids).values() if c is not None), default=0.0)

    @staticmethod
    def _held(answer: Sequence[bytes | str]) -> list[int]:
        return [int(x.decode() if isinstance(x, bytes) else x) for x in answer]

    def _alive_owners(self) -> set[str]:
        return {owner_name(w.get("name", ""), int(w.get("pid", -1))) for w in presence.alive(self.redis, self.keys)}

    def _dead_owners(self, ids: Sequence[int], me: str) -> list[str]:
        """Owners of current claims on `ids` with no live worker of that name and pid."""
        holders = {c.owner for c in self.claims(ids).values() if c is not None}
        holders.discard(me)
        return sorted(holders - self._alive_owners()) if holders else []
