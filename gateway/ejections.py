"""Sharing breaker ejections between replicas, through the store.

When a deployment's breaker opens here, the store hears of it in a background task (the
request that tripped it never waits on the store); every `interval` seconds this replica reads
the ejections of the deployments it knows and skips them until they expire. A replica that
never saw the failures thus stops sending to a dead provider within about a second. A store
outage only means ejections are not shared for a while: it is logged once, not per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from gateway.breakers import EventSink, Health
from gateway.stages.guard import StoreGuard
from gateway.stores.base import Store


class EjectionSync:
    def __init__(
        self, store: Store, targets: Sequence[str], events: EventSink, interval: float = 1.0
    ):
        self._store = store
        self._targets = list(targets)
        self._events = events
        self._guard = StoreGuard("ejections", events)
        self._interval = interval
        self._started = time.time()

    def opened(self, target: str, seconds: float) -> None:
        """A breaker opened here: publish it (Health calls this synchronously)."""
        self._guard.later(self._store.eject(target, seconds))

    async def run(self, health: Health) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                _, found = await self._guard.call(
                    self._store.ejections(self._targets, self._started)
                )
            except Exception as e:  # a bug must not end sharing until the next restart
                self._events({"event": "error", "purpose": "ejections", "error": repr(e)})
                continue
            for target, seconds in (found or {}).items():
                health.eject(target, seconds)

    async def stop(self) -> None:
        await self._guard.close()
