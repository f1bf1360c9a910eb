"""What every memory store does, and which store a process uses (`open_store`).

Per project: the examples (one per reviewed task, the latest submitted annotation wins), bounded to a maximum
(oldest out); a change counter; and generations. A generation is cut (`publish`) every
TAGCLIP_MEMORY_GENERATION_EVERY changes, with the calibrations chosen on the memory at that moment; the
generation enters the model_version (backend.resolve), so Label Studio predicts unreviewed tasks again, and
predictions of a generation use its calibrations. Until the first cut (generation 0) the memory changes
nothing.

Queue mode keeps it in Redis (`RedisMemoryStore`, compact float16 vectors), embedded mode in one SQLite file
under the cache dir (`SqliteMemoryStore`); both survive restarts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from ..settings import Settings
from .examples import Example

# File name of the embedded mode's store under the cache dir.
SQLITE_FILE = "memory.sqlite3"
# Seconds a generation cut may hold its claim (a crashed cut releases it after this).
CUT_CLAIM_SECONDS = 120
# Generations whose calibrations are kept (a prediction in flight may still read the previous one).
KEPT_CALIBRATIONS = 3


@dataclass(frozen=True)
class MemoryState:
    """A project's memory at a glance."""

    generation: int  # cuts so far (0: the memory changes nothing yet)
    changes: int  # examples added, replaced or removed, ever
    cut_at: int  # `changes` when the current generation was cut
    examples: int

    @property
    def pending(self) -> int:
        """Changes since the current generation was cut."""
        return self.changes - self.cut_at


@dataclass(frozen=True)
class PutOutcome:
    changed: bool  # False when the store already had this or a newer annotation of the task
    evicted: tuple[int, ...] = ()  # tasks dropped, oldest first, to stay within the maximum


class MemoryStore(ABC):
    """A project's reviewed examples, change counter, generations and calibrations."""

    @abstractmethod
    def state(self, project: int) -> MemoryState: ...

    def generation(self, project: int) -> int:
        return self.state(project).generation

    @abstractmethod
    def example(self, project: int, task: int) -> Example | None: ...

    @abstractmethod
    def examples(self, project: int) -> list[Example]:
        """Every example, oldest first."""

    @abstractmethod
    def put(self, project: int, example: Example, max_examples: int) -> PutOutcome:
        """Add or replace the task's example unless the stored one is from a newer annotation; then drop the
        oldest examples beyond `max_examples`. One change when it changed anything."""

    @abstractmethod
    def remove_tasks(self, project: int, tasks: Sequence[int]) -> list[int]:
        """Remove the tasks' examples; returns the tasks that had one (one change each)."""

    @abstractmethod
    def tasks_of_annotations(self, project: int, annotations: Sequence[int]) -> list[int]:
        """The tasks whose example was made from one of these annotations."""

    @abstractmethod
    def claim_cut(self, project: int) -> bool:
        """Claim the right to cut the next generation (one cutter at a time); False if another holds it."""

    @abstractmethod
    def publish(self, project: int, calibrations: Mapping[str, Any], changes_seen: int) -> int:
        """Cut a new generation with these calibrations (per control, plain JSON), chosen on the memory when it
        had `changes_seen` changes; releases the claim. Returns the new generation."""

    @abstractmethod
    def release_cut(self, project: int) -> None: ...

    @abstractmethod
    def calibrations(self, project: int, generation: int) -> dict[str, Any] | None:
        """The calibrations cut with `generation` (None for generation 0 or one no longer kept)."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections."""


def cache_root(settings: Settings) -> Path:
    """TAGCLIP_CACHE_DIR, else the user cache dir the engine uses too."""
    return Path(settings.cache_dir).expanduser() if settings.cache_dir else Path(user_cache_dir("tagclip"))


def open_store(settings: Settings, redis: Any = None) -> MemoryStore:
    """The process's store: Redis in queue mode (`redis`, else a connection to REDIS_URL), SQLite under the
    cache dir in embedded mode."""
    from ..keys import RedisKeys

    if settings.redis_url:
        from redis import Redis

        from .redis_store import RedisMemoryStore

        connection = redis if redis is not None else Redis.from_url(settings.redis_url, socket_connect_timeout=2.0)
        return RedisMemoryStore(connection, RedisKeys(settings.queue_name))
    from .sqlite_store import SqliteMemoryStore

    return SqliteMemoryStore(cache_root(settings) / SQLITE_FILE)
