"""The embedded store: one SQLite file in WAL mode, used only from a worker thread."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from gateway.stores.base import StoreUnavailable


class SqliteStore:
    def __init__(self, path: str):
        self._path = path
        # One thread owns the connection: SQLite calls never run on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="savepoint-sqlite")
        self._db: sqlite3.Connection | None = None

    def describe(self) -> str:
        return f"sqlite {self._path}"

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        directory = os.path.dirname(self._path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=2000")
        db.execute("CREATE TABLE IF NOT EXISTS ejections (target TEXT PRIMARY KEY, until REAL)")
        self._db = db

    async def ping(self) -> None:
        await self._run(self._ping)

    def _ping(self) -> None:
        if self._db is None:
            raise StoreUnavailable("the SQLite store is not open")
        self._db.execute("SELECT 1").fetchone()

    async def eject(self, target: str, seconds: float) -> None:
        until = time.time() + seconds
        await self._run(lambda: self._execute(
            "INSERT INTO ejections VALUES (?, ?) ON CONFLICT(target) DO UPDATE SET "
            "until = max(until, excluded.until)", (target, until)))  # fmt: skip

    async def ejections(self, targets: Sequence[str]) -> dict[str, float]:
        found: dict[str, float] = {}

        def read() -> None:
            now = time.time()
            marks = ",".join("?" * len(targets))
            rows = self._execute(
                f"SELECT target, until FROM ejections WHERE until > ? AND target IN ({marks})",
                (now, *targets),
            )
            found.update({target: until - now for target, until in rows})

        if targets:
            await self._run(read)
        return found

    def _execute(self, sql: str, args: tuple[object, ...]) -> list[tuple[str, float]]:
        if self._db is None:
            raise StoreUnavailable("the SQLite store is not open")
        return list(self._db.execute(sql, args).fetchall())

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, fn)
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"SQLite store {self._path}: {e}") from None
