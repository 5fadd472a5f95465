"""The embedded store's WAL checkpoints run on a thread of their own, never inside a write
(gateway/stores/sqlite_checkpoint.py): what a write commits reaches the database file within
a checkpoint period, and never because the writer stopped to copy it there."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.stores.sqlite import SqliteStore

_VALUE = b"x" * 4000  # about a page of WAL per row


def in_database_file(path: Path) -> int:
    """Cache rows in the database file itself, not counting the WAL's (immutable: SQLite
    reads the file alone)."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM cache").fetchone()[0])
    except sqlite3.OperationalError:  # the schema itself is still in the WAL
        return 0
    finally:
        db.close()


def test_writes_reach_the_database_file_within_a_checkpoint_period(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"

    async def body() -> tuple[int, int]:
        store = SqliteStore(str(path), checkpoint_every=0.2)
        await store.open()
        try:
            await asyncio.gather(
                *(store.cache_put(f"key {i}", _VALUE, 60, "group", 1000) for i in range(20))
            )
            at_once = in_database_file(path)
            await asyncio.sleep(1.0)
            return at_once, in_database_file(path)
        finally:
            await store.close()

    at_once, after_a_period = asyncio.run(body())
    assert (at_once, after_a_period) == (0, 20)


def test_the_writer_never_stops_to_checkpoint_however_large_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"

    async def body() -> tuple[int, int]:
        store = SqliteStore(str(path), checkpoint_every=3600)  # not during the test
        await store.open()
        try:
            # past SQLite's own threshold (1,000 pages), where the committing connection
            # would have checkpointed inside its commit
            await asyncio.gather(
                *(store.cache_put(f"key {i}", _VALUE, 60, "group", 5000) for i in range(1500))
            )
            values = [await store.cache_get(f"key {i}", "group") for i in range(1500)]
            return sum(value == _VALUE for value in values), in_database_file(path)
        finally:
            await store.close()

    written, in_file = asyncio.run(body())
    assert (written, in_file) == (1500, 0)
    assert in_database_file(path) == 1500  # the last connection's close checkpoints
