"""The embedded mode's memory store (one SQLite file) against the store contract."""

from __future__ import annotations

import threading

import pytest

from backend.memory.sqlite_store import SqliteMemoryStore
from backend.memory.store import open_store
from backend.settings import Settings
from tests.fixtures import memory_store_contract as contract

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    store = SqliteMemoryStore(tmp_path / "memory.sqlite3")
    yield store
    store.close()


def test_put_replace_and_latest_wins(store):
    contract.check_put_replace_and_latest_wins(store)


def test_bounded_oldest_out_and_remove(store):
    contract.check_bounded_oldest_out_and_remove(store)


def test_generations_and_calibrations(store):
    contract.check_generations_and_calibrations(store)


def test_survives_reopening(tmp_path):
    contract.check_survives_reopening(lambda: SqliteMemoryStore(tmp_path / "memory.sqlite3"))


def test_embedded_mode_opens_sqlite_under_the_cache_dir(tmp_path):
    store = open_store(Settings(cache_dir=str(tmp_path)))
    assert isinstance(store, SqliteMemoryStore) and store.path == tmp_path / "memory.sqlite3"
    assert store.generation(1) == 0


def test_two_stores_on_one_file_do_not_lose_writes(tmp_path):
    """Two connections (the web process and the embedded threads, or `tagclip learn` beside the server)."""
    a, b = SqliteMemoryStore(tmp_path / "m.sqlite3"), SqliteMemoryStore(tmp_path / "m.sqlite3")
    threads = [
        threading.Thread(target=lambda s=s, k=k: [s.put(1, contract.example(t, t, "t"), 1000) for t in range(k, 60, 2)])
        for k, s in ((0, a), (1, b))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(e.task for e in a.examples(1)) == list(range(60))
    assert b.state(1).changes == 60


def test_stores_opening_one_new_file_at_once_all_get_ready(tmp_path):
    """Switching a new file to WAL from several connections at once makes SQLite answer "locked" without
    waiting; every store must still open (the backend and `tagclip learn` starting together)."""
    rounds, width = 40, 6
    errors: list[BaseException] = []

    def first_write(store: SqliteMemoryStore, task: int, start: threading.Barrier) -> None:
        start.wait()
        try:
            store.put(1, contract.example(task, 1, "t"), 1000)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    for n in range(rounds):
        stores = [SqliteMemoryStore(tmp_path / f"m{n}.sqlite3") for _ in range(width)]
        start = threading.Barrier(width)
        threads = [threading.Thread(target=first_write, args=(s, i, start)) for i, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert stores[0].state(1).changes == width
        for store in stores:
            store.close()
    assert errors == []
