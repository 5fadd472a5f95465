"""Store calls made on behalf of one feature (the cache, the run journal): a store outage is
one log line when it starts and one when it ends, never an error for the request, and writes
made after the answer are background tasks kept by reference until they finish."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from gateway.breakers import EventSink
from gateway.stores.base import StoreUnavailable

T = TypeVar("T")


class StoreGuard:
    def __init__(self, purpose: str, events: EventSink):
        self._purpose = purpose
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False

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
        """Run a write after the answer has gone out."""

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
