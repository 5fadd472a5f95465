"""Store calls made on behalf of one feature (the cache, the run journal): a store outage is
one log line when it starts and one when it ends, never an error for the request, and writes
made after the answer are background tasks kept by reference until they finish.

Those tasks are bounded (`server.max_pending_writes` per feature): a store slower than the
traffic would otherwise grow them, and the answers they hold, without limit. Past the bound
a write is dropped, as if the store had been unavailable for it: a `store_backlog` line when
dropping starts, and one with the count when it stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from gateway.breakers import EventSink
from gateway.config.schema import ServerSpec
from gateway.stores.base import StoreUnavailable

T = TypeVar("T")
MAX_PENDING = ServerSpec().max_pending_writes


class StoreGuard:
    def __init__(self, purpose: str, events: EventSink, max_pending: int = MAX_PENDING):
        self._purpose = purpose
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False
        self._max_pending = max_pending
        self._dropped = 0  # writes dropped since the backlog filled up

    async def call(self, operation: Awaitable[T]) -> tuple[bool, T | None]:
        """(True, result), or (False, None) when the store is unavailable."""
        try:
            result = await operation
        except StoreUnavailable as e:
            self._failed(e)
            return False, None
        self._recovered()
        return True, result

    def later(self, operation: Awaitable[object]) -> None:
        """Run a write after the answer has gone out (or drop it, past the bound)."""
        if len(self._tasks) >= self._max_pending:
            if not self._dropped:
                self._events({"event": "store_backlog", "purpose": self._purpose,
                              "pending": len(self._tasks)})  # fmt: skip
            self._dropped += 1
            if asyncio.iscoroutine(operation):
                operation.close()  # never awaited: say so, rather than warn
            return
        if self._dropped:
            self._events({"event": "store_backlog_cleared", "purpose": self._purpose,
                          "dropped": self._dropped})  # fmt: skip
            self._dropped = 0

        async def run() -> None:
            await self.call(operation)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Let pending writes finish (briefly), then cancel what is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _failed(self, error: StoreUnavailable) -> None:
        if not self._failing:
            self._failing = True
            self._events({"event": "store_unavailable", "purpose": self._purpose,
                          "error": str(error)})  # fmt: skip

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self._events({"event": "store_recovered", "purpose": self._purpose})
