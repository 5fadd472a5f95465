"""The loop guard's repeat counter when its written-behind count and a repeat's store count
cross (`stages/repeats.py`), on a real SQLite store: the write lands in the store first and
its answer comes back last, after a repeat counted in the store meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.decide.admission import UNBOUNDED
from gateway.decide.limits import Quota, Rate, Slots, Status, Verdict
from gateway.stages.guard import StoreGuard
from gateway.stages.repeats import Repeats
from gateway.stores.sqlite import SqliteStore

THRESHOLD = 3


class _LateAnswers(SqliteStore):
    """The store, except that the answer to a written-behind batch (request id "") is held
    until `release` is set: the write itself has landed by then."""

    release: asyncio.Event
    landed: asyncio.Event

    async def limits_admit(
        self,
        rates: Sequence[Rate],
        slots: Sequence[Slots],
        quotas: Sequence[Quota],
        request_id: str,
        lease: float,
    ) -> Verdict:
        verdict = await super().limits_admit(rates, slots, quotas, request_id, lease)
        if request_id == "":
            self.landed.set()
            await self.release.wait()
        return verdict


async def _count(store: SqliteStore, repeats: Repeats, quota: Quota) -> float:
    """One request's count, as the admission takes it: the count its answer shows."""
    counting = repeats.counting(quota, THRESHOLD)
    statuses: tuple[Status, ...] = ()
    if counting.in_store:
        verdict = await store.limits_admit((), (), (counting.quota,), "req", 60.0)
        statuses = verdict.limits
    seen = repeats.counted(counting, statuses, time.time())
    mine = [s for s in seen if s.key == quota.key]
    return mine[0].limit - mine[0].remaining


def test_a_write_answered_after_a_repeat_neither_loses_nor_doubles_the_count(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[list[float], float]:
        store = _LateAnswers(str(tmp_path / "guard.db"))
        store.release, store.landed = asyncio.Event(), asyncio.Event()
        await store.open()
        repeats = Repeats(store, StoreGuard("limits", lambda e: None))
        quota = Quota("g/alice/fp/1", UNBOUNDED, 1, (time.time() + 60) * 1000)
        try:
            shown = [await _count(store, repeats, quota)]  # a first sighting, counted here
            await asyncio.wait_for(store.landed.wait(), 5)  # written; its answer held
            shown.append(await _count(store, repeats, quota))  # a repeat, in the store: 2
            # The worker knows 2 from the store and 1 in flight: the 3rd must not be taken
            # for a loop already past its threshold on that doubled count.
            shown.append(await _count(store, repeats, quota))
            store.release.set()
            await asyncio.sleep(0.2)  # the write's answer (the count was 1 then) is in
            after = repeats.counting(quota, THRESHOLD).known
            return shown, after
        finally:
            store.release.set()
            await repeats.close()
            await store.close()

    shown, after = asyncio.run(main())
    assert shown == [1, 2, 3]
    assert after == 3  # not 1: the older answer does not overwrite the newer count
