"""Sharing breaker ejections between replicas, through the store.

When a deployment's breaker opens here, the store hears of it in a background task (the
request that tripped it never waits on the store); every `interval` seconds this replica reads
the ejections of the deployments it knows and skips them until they expire. A replica that
never saw the failures thus stops sending to a dead provider within about a second. A store
outage only means ejections are not shared for a while: it is logged once, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from gateway.breakers import EventSink, Health
from gateway.stores.base import Store, StoreUnavailable


class EjectionSync:
    def __init__(
        self, store: Store, targets: Sequence[str], events: EventSink, interval: float = 1.0
    ):
        self._store = store
        self._targets = list(targets)
        self._events = events
        self._interval = interval
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False
        self._started = time.time()

    def opened(self, target: str, seconds: float) -> None:
        """A breaker opened here: publish it (Health calls this synchronously)."""
        task = asyncio.get_running_loop().create_task(self._publish(target, seconds))
        self._tasks.add(task)  # kept by reference until done; cancelled on shutdown
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, target: str, seconds: float) -> None:
        try:
            await self._store.eject(target, seconds)
            self._recovered()
        except StoreUnavailable as e:
            self._failed(e)

    async def run(self, health: Health) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                found = await self._store.ejections(self._targets, self._started)
            except StoreUnavailable as e:
                self._failed(e)
                continue
            except Exception as e:  # a bug must not end sharing until the next restart
                self._events({"event": "error", "purpose": "ejections", "error": repr(e)})
                continue
            self._recovered()
            for target, seconds in found.items():
                health.eject(target, seconds)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _failed(self, error: StoreUnavailable) -> None:
        if not self._failing:
            self._failing = True
            self._events(
                {"event": "store_unavailable", "purpose": "ejections", "error": str(error)}
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self._events({"event": "store_recovered", "purpose": "ejections"})
