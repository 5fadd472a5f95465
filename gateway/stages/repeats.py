"""The loop guard's count of a request's repeats (`g/<client>/<fingerprint>/<window>`,
`decide.admission`): the first time this worker sees a request, counted here and written to
the store behind it; each time after, until the count reaches the guard's threshold, counted
in the store with its admission, as before; from then on, here and behind it again.

Nearly every request is the first of its fingerprint: counting each in the store on its
admission was a store write per request, for a counter that matters only from its
`guard.repeats`-th time on. Here a first sighting is counted at once in this worker, and the
first sightings of the last `FLUSH` seconds go to the store together, in one call. A repeat
(a fingerprint this worker has counted before) is counted in the store with its admission,
with what this worker had not written yet: exact across every worker and replica, and refused
atomically when the guard blocks.

Once the count has reached the threshold the store is no longer asked: the next request is a
loop whatever the other workers counted (when the guard blocks, it is refused here, and a
refusal counts nothing), so a prompt answered from the cache again and again costs no store
call per request; the count its answers show (`x-savepoint-loop`) is this worker's view.

So a loop is seen as before, except that a request another worker or replica has sent before
but this one has not is taken for a first sighting: a loop that hops between N workers is
flagged or refused at most N-1 repeats late. A count the store could not take is kept here
(fail open: it is not lost for this worker).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from gateway.decide.admission import UNBOUNDED, repeat_status
from gateway.decide.limits import Quota, Status
from gateway.stages.guard import StoreGuard
from gateway.stores.base import Store
from gateway.values import value

FLUSH = 0.05  # seconds between writes of the counts
# Counters held (about 300 bytes each): past it, those with nothing to write are forgotten, and
# a loop among them is seen one repeat later (when its next count comes back from the store).
_MAX_KEYS = 20_000


@value
class Counting:
    """How one request's repeat counter is counted: here (and written behind), or in the
    store with its admission (`in_store`, with what this worker `claimed`: its count not
    written yet). `known`: this worker's count before the request."""

    quota: Quota
    known: float
    claimed: float
    in_store: bool

    @property
    def over(self) -> bool:
        """Counted here and past the counter's limit: the threshold, when the guard blocks."""
        return not self.in_store and self.known + self.quota.cost > self.quota.limit

    def status(self, now: float) -> Status:
        return repeat_status(self.quota, self.known + self.quota.cost, now)


class _Count:
    __slots__ = ("expires_ms", "flushing", "known", "pending")

    def __init__(self, expires_ms: float):
        self.expires_ms = expires_ms  # the end of the counter's window
        self.known = 0.0  # every worker's count, as the store last said (ours included)
        self.flushing = 0.0  # counted here, being written
        self.pending = 0.0  # counted here, not written yet

    def total(self) -> float:
        return self.known + self.flushing + self.pending


class Repeats:
    def __init__(self, store: Store, guard: StoreGuard):
        self._store = store
        self._guard = guard
        self._counts: dict[str, _Count] = {}  # in order of counting: of expiry, nearly
        self._dirty: dict[str, _Count] = {}  # those with a count to write
        self._flush: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None

    def counting(self, quota: Quota, threshold: int) -> Counting:
        """How to count this request (`quota`: its counter, `guard_limits`' first): in the
        store with its admission while it is a repeat below the threshold (the store's count
        decides whether it crosses it), here otherwise: a first sighting, or a loop whose
        count has reached the threshold already (counts only grow within a window).

        While this worker's write of the counter is in flight, the count it knows may hold
        that write twice (a repeat's store count can include it before the write's answer
        is back): then even a count at the threshold is asked of the store, which is exact."""
        count = self._counts.get(quota.key)
        known = count.total() if count is not None else 0.0
        if count is None or known <= 0 or (known >= threshold and not count.flushing):
            return Counting(quota, known, 0.0, False)
        pending, count.pending = count.pending, 0.0  # written with the admission now
        self._dirty.pop(quota.key, None)
        return Counting(replace(quota, cost=quota.cost + pending), known, pending, True)

    def failed(self, counting: Counting) -> None:
        """The request was refused, or the store is away: what it claimed is written behind
        after all."""
        count = self._counts.get(counting.quota.key)
        if counting.claimed and count is not None:
            count.pending += counting.claimed
            self._dirty[counting.quota.key] = count
            self._schedule()

    def counted(
        self, counting: Counting, statuses: tuple[Status, ...], now: float
    ) -> tuple[Status, ...]:
        """The request was admitted (`statuses`: its limits'): count it here, or learn the
        count the store gave. Its limits' statuses, the counter's included."""
        if counting.in_store:
            count = self._counts.get(counting.quota.key)
            for status in statuses:
                if count is not None and status.key == counting.quota.key:
                    # counts only grow: the larger is the later
                    count.known = max(count.known, status.limit - status.remaining)
            return statuses
        self._add(counting.quota)
        return (*statuses, counting.status(now))

    def _add(self, quota: Quota) -> None:
        count = self._counts.get(quota.key)
        if count is None:
            if len(self._counts) >= _MAX_KEYS:
                self._forget()
            count = self._counts[quota.key] = _Count(quota.expires_ms)
        count.pending += quota.cost
        self._dirty[quota.key] = count
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH, self._start_write)

    async def close(self) -> None:
        """Write what is counted and not written yet."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._writing is not None:
            await self._writing
        await self._write()

    def _start_write(self) -> None:
        self._flush = None
        if self._writing is not None and not self._writing.done():
            self._flush = asyncio.get_running_loop().call_later(FLUSH, self._start_write)
            return
        self._writing = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        batch: list[Quota] = []
        for key, count in self._dirty.items():
            count.flushing, count.pending = count.pending, 0.0
            batch.append(Quota(key, UNBOUNDED, count.flushing, count.expires_ms))
        self._dirty = {}
        if not batch:
            return
        _, verdict = await self._guard.call(self._store.limits_admit((), (), batch, "", 0.0))
        written = {s.key: UNBOUNDED - s.remaining for s in verdict.limits} if verdict else {}
        for quota in batch:
            kept = self._counts.get(quota.key)
            if kept is not None:
                total = written.get(quota.key)  # older than a repeat's count meanwhile?
                kept.known = (
                    max(kept.known, total) if total is not None else kept.known + kept.flushing
                )
                kept.flushing = 0.0
        now_ms = time.time() * 1000
        over = []
        for key, count in self._counts.items():  # the oldest first: stop at a live one
            if count.expires_ms > now_ms:
                break
            over.append(key)
        for key in over:
            del self._counts[key]

    def _forget(self) -> None:
        """Make room: drop the counters with nothing left to write (the store keeps them)."""
        for key in [k for k, c in self._counts.items() if not (c.pending or c.flushing)]:
            del self._counts[key]
        if len(self._counts) >= _MAX_KEYS:
            self._counts.clear()
            self._dirty.clear()
