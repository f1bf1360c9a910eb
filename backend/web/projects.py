"""What /setup told us about each project (Label Studio hostname, token, extra_params), for /predict.

Kept in memory (the most recent MAX_PROJECTS_IN_MEMORY projects), and in Redis when there is one, so several
gunicorn processes share it. Label Studio calls /setup before every prediction run, so an entry that expired
(PROJECT_TTL_SECONDS: the token it holds is not kept longer) is rebuilt at the next call.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ..keys import RedisKeys

log = logging.getLogger(__name__)

# Redis entries (they hold a token) expire an hour after the project's last /setup.
PROJECT_TTL_SECONDS = 3600
# Projects remembered in one process's memory; the least recently used one goes first.
MAX_PROJECTS_IN_MEMORY = 1024


@dataclass(frozen=True)
class ProjectContext:
    hostname: str | None = None
    access_token: str | None = None
    extra_params: dict[str, Any] = field(default_factory=dict)
    schema: str | None = None


class ProjectStore:
    def __init__(self, redis: Redis | None = None, keys: RedisKeys | None = None) -> None:
        self._memory: OrderedDict[str, ProjectContext] = OrderedDict()
        self._lock = threading.Lock()
        self._redis = redis
        self._keys = keys or RedisKeys("tagclip")

    def put(self, project: str, context: ProjectContext) -> None:
        with self._lock:
            self._memory[project] = context
            self._memory.move_to_end(project)
            while len(self._memory) > MAX_PROJECTS_IN_MEMORY:
                self._memory.popitem(last=False)
        if self._redis is not None:
            try:
                self._redis.set(self._keys.project(project), json.dumps(asdict(context)), ex=PROJECT_TTL_SECONDS)
            except RedisError as e:
                log.debug("project %s: not stored in Redis: %s", project, e)

    def get(self, project: str) -> ProjectContext | None:
        """Redis first (another process may have seen a newer /setup), memory when Redis fails."""
        if self._redis is not None:
            try:
                raw = self._redis.get(self._keys.project(project))
            except RedisError as e:
                log.debug("project %s: Redis lookup failed: %s", project, e)
            else:
                if raw:
                    return ProjectContext(**json.loads(raw))
        with self._lock:
            return self._memory.get(project)
