"""The memory in one SQLite file (embedded mode): `<cache dir>/memory.sqlite3`.

Tables: state (per project: generation, changes, cut_at, the cut claim's expiry), examples (per project and
task: insertion sequence, annotation, the example as JSON, the CLIP embedding as raw little-endian float16),
calibrations (per project and generation). Each write is one transaction; SQLite's file locking lets
`tagclip learn` write while the embedded backend runs.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .examples import Example, newer
from .store import CUT_CLAIM_SECONDS, KEPT_CALIBRATIONS, MemoryState, MemoryStore, PutOutcome

# Seconds a writer waits for another process's transaction.
BUSY_TIMEOUT = 30.0
# Pause between tries to prepare a file another connection is preparing.
SETUP_RETRY_SECONDS = 0.05

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    project INTEGER PRIMARY KEY, generation INTEGER NOT NULL DEFAULT 0, changes INTEGER NOT NULL DEFAULT 0,
    cut_at INTEGER NOT NULL DEFAULT 0, cut_until REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS examples (
    project INTEGER NOT NULL, task INTEGER NOT NULL, seq INTEGER NOT NULL, annotation INTEGER NOT NULL,
    meta TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (project, task));
CREATE INDEX IF NOT EXISTS examples_by_seq ON examples (project, seq);
CREATE INDEX IF NOT EXISTS examples_by_annotation ON examples (project, annotation);
CREATE TABLE IF NOT EXISTS calibrations (
    project INTEGER NOT NULL, generation INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (project, generation));
"""


class SqliteMemoryStore(MemoryStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
            try:
                self._prepare(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    @staticmethod
    def _prepare(connection: sqlite3.Connection) -> None:
        """WAL mode and the schema, retried while another connection is preparing the same new file.

        Switching a file to WAL needs it to itself, and two connections doing so at once can make SQLite
        answer "database is locked" at once, without waiting out the busy timeout (it would deadlock).
        """
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                # WAL with NORMAL sync: a crash cannot corrupt the file, a power loss may drop the newest
                # examples (a sync or `tagclip learn` puts them back).
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(SETUP_RETRY_SECONDS)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: read-then-write steps see no other writer in between)."""
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._connect().execute(sql, params).fetchall()

    def state(self, project: int) -> MemoryState:
        row = self._read("SELECT generation, changes, cut_at FROM state WHERE project = ?", (project,))
        count = self._read("SELECT COUNT(*) FROM examples WHERE project = ?", (project,))[0][0]
        generation, changes, cut_at = row[0] if row else (0, 0, 0)
        return MemoryState(generation, changes, cut_at, count)

    def example(self, project: int, task: int) -> Example | None:
        rows = self._read("SELECT meta, vector FROM examples WHERE project = ? AND task = ?", (project, task))
        return Example.from_stored(rows[0][0], rows[0][1]) if rows else None

    def examples(self, project: int) -> list[Example]:
        rows = self._read("SELECT meta, vector FROM examples WHERE project = ? ORDER BY seq", (project,))
        return [Example.from_stored(meta, vector) for meta, vector in rows]

    def put(self, project: int, example: Example, max_examples: int) -> PutOutcome:
        with self._transaction() as db:
            row = db.execute(
                "SELECT meta, vector FROM examples WHERE project = ? AND task = ?", (project, example.task)
            ).fetchone()
            current = Example.from_stored(row[0], row[1]) if row else None
            if current is not None and (not newer(example, current) or current.same_review(example)):
                return PutOutcome(changed=False)
            sequence = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM examples WHERE project = ?", (project,))
            row = (project, example.task, sequence.fetchone()[0], example.annotation)
            db.execute(
                "INSERT OR REPLACE INTO examples (project, task, seq, annotation, meta, vector) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*row, example.meta_json(), example.vector_bytes()),
            )
            self._count_changes(db, project, 1)
            count = db.execute("SELECT COUNT(*) FROM examples WHERE project = ?", (project,)).fetchone()[0]
            evicted = [
                t
                for (t,) in db.execute(
                    "SELECT task FROM examples WHERE project = ? ORDER BY seq LIMIT ?",
                    (project, max(0, count - max_examples)),
                )
            ]
            db.executemany("DELETE FROM examples WHERE project = ? AND task = ?", [(project, t) for t in evicted])
            return PutOutcome(True, tuple(evicted))

    @staticmethod
    def _count_changes(db: sqlite3.Connection, project: int, n: int) -> None:
        db.execute("INSERT OR IGNORE INTO state (project) VALUES (?)", (project,))
        db.execute("UPDATE state SET changes = changes + ? WHERE project = ?", (n, project))

    def remove_tasks(self, project: int, tasks: Sequence[int]) -> list[int]:
        if not tasks:
            return []
        with self._transaction() as db:
            present = [
                t
                for t in dict.fromkeys(int(x) for x in tasks)
                if db.execute("SELECT 1 FROM examples WHERE project = ? AND task = ?", (project, t)).fetchone()
            ]
            db.executemany("DELETE FROM examples WHERE project = ? AND task = ?", [(project, t) for t in present])
            if present:
                self._count_changes(db, project, len(present))
            return present

    def tasks_of_annotations(self, project: int, annotations: Sequence[int]) -> list[int]:
        if not annotations:
            return []
        marks = ",".join("?" * len(annotations))
        rows = self._read(
            f"SELECT DISTINCT task FROM examples WHERE project = ? AND annotation IN ({marks})",
            (project, *[int(a) for a in annotations]),
        )
        return sorted(t for (t,) in rows)

    def claim_cut(self, project: int) -> bool:
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO state (project) VALUES (?)", (project,))
            claimed = db.execute(
                "UPDATE state SET cut_until = ? WHERE project = ? AND cut_until < ?",
                (now + CUT_CLAIM_SECONDS, project, now),
            )
            return claimed.rowcount == 1

    def release_cut(self, project: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE state SET cut_until = 0 WHERE project = ?", (project,))

    def publish(self, project: int, calibrations: Mapping[str, Any], changes_seen: int) -> int:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO state (project) VALUES (?)", (project,))
            generation = db.execute("SELECT generation FROM state WHERE project = ?", (project,)).fetchone()[0] + 1
            db.execute(
                "INSERT OR REPLACE INTO calibrations (project, generation, body) VALUES (?, ?, ?)",
                (project, generation, json.dumps(dict(calibrations), sort_keys=True)),
            )
            db.execute(
                "DELETE FROM calibrations WHERE project = ? AND generation <= ?",
                (project, generation - KEPT_CALIBRATIONS),
            )
            db.execute(
                "UPDATE state SET generation = ?, cut_at = ?, cut_until = 0 WHERE project = ?",
                (generation, changes_seen, project),
            )
            return generation

    def calibrations(self, project: int, generation: int) -> dict[str, Any] | None:
        if generation <= 0:
            return None
        rows = self._read("SELECT body FROM calibrations WHERE project = ? AND generation = ?", (project, generation))
        return json.loads(rows[0][0]) if rows else None

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
