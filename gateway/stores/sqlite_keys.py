"""The embedded store's in-memory index of the response cache's keys, so that a lookup of a
key the store does not hold (a miss: most lookups of a cache that sees new prompts) is
answered on the event loop, without a hop to the reader thread and a query.

It is a set of (group, key), never a source of answers: a key in it is looked up in the
file as before (it may have expired or been evicted since). A key not in it is a miss, so
the set must hold every key the file holds, with two bounded exceptions:

- a key another process (a worker, a replica sharing the file) put is added by the next
  refresh, at most `refresh` seconds later: until then a lookup of it here is a miss, as if
  it had arrived a moment earlier. A refresh reads the rows past the highest rowid it saw
  (less a margin: SQLite gives a new row the highest rowid + 1, which is lower than one
  already seen only when the newest rows were deleted meanwhile); a row it still misses is
  found by the next rebuild;
- this process's own puts are added before they are written, and a rebuild keeps those
  made while it read.

Memory: the keys of the live rows (the cache's `max_entries` per group bound them) plus
those written since the last rebuild (every `rebuild` seconds, which drops evicted and
expired keys). Until the first load, and after a store error until the next successful
rebuild, every lookup goes to the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from gateway.stores.base import StoreUnavailable

# load(after): the (group, key) of the rows past rowid `after`, or of every live row when it
# is None; and the highest rowid read
Loader = Callable[[int | None], Awaitable[tuple[set[tuple[str, str]], int]]]

_MARGIN = 1000  # rows read again below the highest rowid seen


class CacheKeys:
    def __init__(self, load: Loader, refresh: float = 1.0, rebuild: float = 60.0):
        self._load = load
        self._refresh, self._rebuild = refresh, rebuild
        self._keys: set[tuple[str, str]] | None = None  # None: not loaded, or lost
        self._puts: set[tuple[str, str]] | None = None  # own puts while a rebuild reads
        self._task: asyncio.Task[None] | None = None

    def may_hold(self, group: str, key: str) -> bool:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep())
        return self._keys is None or (group, key) in self._keys

    def put(self, group: str, key: str) -> None:
        if self._keys is not None:
            self._keys.add((group, key))
        if self._puts is not None:
            self._puts.add((group, key))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep(self) -> None:
        rebuilt, seen = 0.0, 0
        while True:
            started = time.monotonic()
            try:
                if self._keys is None or started - rebuilt >= self._rebuild:
                    self._puts = set()
                    keys, seen = await self._load(None)
                    self._keys, self._puts = keys | self._puts, None
                    rebuilt = started
                else:
                    keys, last = await self._load(max(0, seen - _MARGIN))
                    self._keys |= keys
                    seen = max(seen, last)
            except StoreUnavailable:
                self._keys = self._puts = None  # every lookup reads the file until a rebuild
            await asyncio.sleep(self._refresh)
