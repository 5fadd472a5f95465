"""The usage ledger's writer: one entry per request, written to the store in batches.

`record` runs once per request, when it is truly over (a detached call, when its upstream call
ends): it makes the entry (`gateway.decide.ledger`) and queues it, nothing else. A background
task writes the queue every `usage.flush` seconds as one store call that appends the entries
and adds them to the daily aggregates, atomically and once (a batch that failed is sent again
under the same id, so a write that did land is not counted twice).

What can be lost: a gateway killed outright (SIGKILL, OOM, power) loses the entries queued
since the last write, at most `usage.flush` seconds of traffic, plus the requests it was
serving. A graceful stop writes everything. A store outage keeps entries in memory, up to
`usage.max_queued` (in batches); past that the oldest are dropped and counted in a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from typing import Any

from gateway import jsonbytes
from gateway.breakers import EventSink
from gateway.config.schema import Policy, PriceSpec
from gateway.decide import ledger
from gateway.decide.cost import deployment_prices
from gateway.decide.ledger import DayKey
from gateway.decide.reports import UsageQuery, daily_rows, entry_rows, report
from gateway.model import Endpoint, Trace
from gateway.stores.base import Store, StoreUnavailable

_GENERATION = frozenset("/v1" + endpoint.path for endpoint in Endpoint)
_MAX_BATCH = 5000  # entries per store call


class UsageLedger:
    def __init__(self, policy: Policy, store: Store, events: EventSink):
        self._spec = policy.usage
        self._store = store
        self._events = events
        self._prices = deployment_prices(policy.prices, policy.models.values())
        # a stored answer's savings are priced as if the model's first deployment had answered
        self._model_prices: dict[str | None, PriceSpec | None] = {
            name: self._prices.get(m.targets[0].label) if m.targets else None
            for name, m in policy.models.items()
        }
        self._batches: deque[_Batch] = deque([_Batch()])  # the last one is being filled
        self._batch_size = min(_MAX_BATCH, self._spec.max_queued)
        self._max_batches = -(-self._spec.max_queued // self._batch_size)  # held at most
        self._failing = False
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, trace: Trace, ended: float) -> None:
        """Queue the entry of a request that is over (`ended`: monotonic time)."""
        if not self._spec.enabled or trace.client is None or trace.path not in _GENERATION:
            return  # not a generation call, or nobody's (refused before authentication)
        price, saved_price = self._prices.get(trace.target), self._model_prices.get(trace.model)
        e = ledger.entry(trace, ended, price, saved_price, time.time())
        batch = self._batches[-1]
        batch.add(e)
        if batch.size >= self._batch_size:
            self._batches.append(_Batch())
            if len(self._batches) > self._max_batches:  # the store has been away a long time
                self._dropped += self._batches.popleft().size

    def start(self) -> None:
        if self._spec.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the writer and write what is queued (giving up after a few seconds)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while self._batches[0].size and await self.flush():
                    pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._spec.flush)
            while await self.flush() and len(self._batches) > 1:
                pass  # a backlog (after an outage): write it out batch by batch

    async def flush(self) -> bool:
        """Write the oldest batch; False if the store failed (it is sent again next time,
        under the same id)."""
        batch = self._batches[0]
        if not batch.size:
            return True
        if len(self._batches) == 1:
            self._batches.append(_Batch())  # entries from now on go to the next batch
        try:
            await self._store.usage_append(
                batch.id, batch.records, batch.daily, self._spec.retention,
                self._spec.daily_retention,
            )  # fmt: skip
        except StoreUnavailable as e:
            if not self._failing:
                self._failing = True
                self._events({"event": "store_unavailable", "purpose": "usage", "error": str(e),
                              "queued": sum(b.size for b in self._batches)})  # fmt: skip
            return False
        if self._batches[0] is batch:
            self._batches.popleft()
        if self._failing or self._dropped:
            self._events({"event": "store_recovered", "purpose": "usage",
                          "dropped_entries": self._dropped})  # fmt: skip
            self._failing, self._dropped = False, 0
        return True


class _Batch:
    """Entries to write in one store call: serialised and folded as they come, so that a
    write costs the event loop nothing but the call."""

    __slots__ = ("daily", "id", "records")

    def __init__(self) -> None:
        self.id = os.urandom(12).hex()
        self.records: list[tuple[float, bytes]] = []
        self.daily: dict[DayKey, dict[str, int]] = {}

    @property
    def size(self) -> int:
        return len(self.records)

    def add(self, e: ledger.Entry) -> None:
        self.records.append((e.ts, jsonbytes.dumps(e)))  # kept until written
        ledger.add(self.daily.setdefault(ledger.day_key(e), {}), ledger.counters(e))


async def usage_report(store: Store, q: UsageQuery) -> dict[str, Any]:
    """The report a query asks for, from the daily aggregates when they can answer it, else
    from the entries (parsed and summed in a thread: a month of entries is a lot of JSON)."""
    if q.daily:
        rows = await store.usage_daily(*q.days)
        return report(q, daily_rows(q, rows), "daily")
    raw = await store.usage_records(q.start, q.end)
    return await asyncio.to_thread(
        lambda: report(q, entry_rows(q, map(ledger.from_json, raw)), "entries")
    )
