"""The embedded store's WAL checkpoints run on a thread of their own, never inside a write
(gateway/stores/sqlite_checkpoint.py): what a write commits reaches the database file within
a checkpoint period, and never because the writer stopped to copy it there."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.stores.sqlite import SqliteStore
from gateway.stores.sqlite_checkpoint import RESTART, Checkpointer

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


def test_the_wal_stays_bounded_under_writes_that_never_pause(tmp_path: Path) -> None:
    """A passive checkpoint never finds a WAL that commits keep landing in idle, so the WAL
    would never start over; past `restart_pages` the writer's thread makes it start over,
    between two transactions. The writer here is the store's shape: one thread that
    transactions are queued to, back to back."""
    path = tmp_path / "sp.db"
    writer = ThreadPoolExecutor(max_workers=1)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0",
                   "journal_size_limit=1048576"):  # fmt: skip
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE t (v BLOB)")

    def transaction() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO t VALUES (?)", [(_VALUE,)] * 4)
        db.execute("COMMIT")

    async def body() -> list[int]:
        loop = asyncio.get_running_loop()

        async def restart() -> None:
            await loop.run_in_executor(writer, lambda: db.execute(RESTART).fetchone())

        checkpoints = Checkpointer(str(path), 0.05, restart, restart_pages=500)
        checkpoints.start()
        sizes, ends = [], time.monotonic() + 2.0
        try:
            while time.monotonic() < ends:  # 100 transactions queued at a time, again and again
                await asyncio.gather(*(loop.run_in_executor(writer, transaction)
                                       for _ in range(100)))  # fmt: skip
                sizes.append(await loop.run_in_executor(writer, os.path.getsize, f"{path}-wal"))
        finally:
            await checkpoints.close()
        return sizes

    sizes = asyncio.run(body())
    writer.shutdown()
    db.close()
    written = len(sizes) * 100 * 4 * len(_VALUE)
    # The WAL file shrinks only when it starts over (then `journal_size_limit` truncates it);
    # without the restart it only grew: over 150 MB here, 1 GB in a gateway at saturation.
    # How far it grows between restarts depends on how busy the machine is.
    shrinks = sum(after < before for before, after in itertools.pairwise(sizes))
    assert written > 16 * 1024 * 1024
    assert shrinks >= 2
    assert max(sizes) < written / 2
