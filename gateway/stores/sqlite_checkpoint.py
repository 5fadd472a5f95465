"""The embedded store's WAL checkpoints, on a thread of their own.

SQLite in WAL mode appends each commit to the `-wal` file; a checkpoint copies those pages
back into the database file and syncs both to disk. By default the connection that commits
past 1,000 WAL pages runs the checkpoint itself, inside its commit: the store's writer
thread, which every admission, limits settlement and cache put waits for. Its two disk syncs
took 4-7 ms each under load here, once 202 ms, and no request could be admitted meanwhile
(docs/performance.md).

So the writer's connection turns automatic checkpoints off (`wal_autocheckpoint=0`) and this
thread runs a PASSIVE checkpoint every `every` seconds on a connection of its own. A passive
checkpoint takes no lock that a writer waits for: commits go on appending to the WAL while it
copies and syncs, and the WAL starts over from its beginning at the first commit after a
complete one. With several workers sharing the file, each runs its own; one that finds
another running returns at once.

Under sustained writes a passive checkpoint never finds the WAL idle: commits land while it
copies, so it never ends with the whole WAL copied, and the WAL never starts over: it grew by
about 35 MB a second at saturation, to 1 GB in 30 s. So when the WAL holds more than
`restart_pages` pages after a passive checkpoint, `restart` runs a RESTART checkpoint on the
writer's own thread, between two of its transactions (on this thread it would wait for a
writer that never pauses, and give up): it copies what the passive one left (little), syncs,
and makes the next commit start the WAL over. With other workers on the file it waits at
most `RESTART_WAIT_MS` for their transactions, else tries again the next period. That pause
of the writer comes once per `restart_pages` pages of writes (32 MiB) instead of once per
1,000 (4 MiB), and is short, the bulk of the copy having been done beside the writer.

A checkpoint that fails is retried the next period and logged once until one succeeds.
`journal_size_limit` on the writer truncates the WAL file back to `WAL_SIZE_LIMIT` once it
starts over, so a burst does not keep its size. SQLite checkpoints once more when the last
connection to the file closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from gateway.stores.base import StoreUnavailable

log = logging.getLogger("savepoint")

WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file is truncated to when it starts over
RESTART_PAGES = 8192  # WAL pages after a passive checkpoint that call for a restart
RESTART = "PRAGMA wal_checkpoint(RESTART)"  # for `restart` to run on the writer's connection
# How long a RESTART waits for other processes' writers and readers before it gives up until
# the next period: it runs on the writer's thread, so this worker's writes wait as long.
RESTART_WAIT_MS = 50


class Checkpointer:
    def __init__(
        self,
        path: str,
        every: float,
        restart: Callable[[], Awaitable[object]],
        restart_pages: int = RESTART_PAGES,
    ):
        self._path, self._every = path, every
        self._restart, self._restart_pages = restart, restart_pages
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="savepoint-sqlite-c")
        self._db: sqlite3.Connection | None = None  # used on the thread only
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_db)
        self._thread.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._every)
            try:
                pages = await loop.run_in_executor(self._thread, self._checkpoint)
                if pages > self._restart_pages:  # the WAL did not start over: make it
                    await self._restart()
            except (sqlite3.Error, OSError, StoreUnavailable) as e:
                if not self._failing:
                    log.warning("SQLite store %s: checkpoint failed: %s", self._path, e)
                self._failing = True
            else:
                self._failing = False

    def _checkpoint(self) -> int:
        """A passive checkpoint (it never waits for a lock, so its connection needs no busy
        timeout); the pages the WAL holds (-1 if another process's ran)."""
        if self._db is None:
            self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        _, pages, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(pages)

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
