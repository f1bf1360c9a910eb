"""The Redis server's clock: the one clock every process of a deployment shares.

Liveness (worker presence) and write leases are compared across hosts; each host's own clock may be off by
seconds or minutes, Redis's is the same for all of them. Lua scripts read it with `redis.call('TIME')`
(`LUA_NOW`); Python code with `server_now`.
"""

from __future__ import annotations

from redis import Redis
from redis.client import Pipeline

# A Lua prelude that sets `now` to the server's time in seconds (with microseconds).
LUA_NOW = "local __t = redis.call('TIME'); local now = tonumber(__t[1]) + tonumber(__t[2]) / 1000000\n"


def server_now(redis: Redis | Pipeline) -> float:
    """The Redis server's time, unix seconds."""
    seconds, micros = redis.time()
    return float(seconds) + float(micros) / 1_000_000
