"""The usage ledger contract of the store seam (`usage_append`, `usage_records`,
`usage_daily`), against both implementations. Redis runs on a server of its own: the ledger's
keys are per day, not per test, so the shared server would mix tests' entries."""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis
from harness import OwnRedis

from gateway.stores.base import Store
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore

DAY = 86400.0
KEEP = 30 * DAY
TODAY = time.strftime("%Y-%m-%d", time.gmtime())
YESTERDAY = time.strftime("%Y-%m-%d", time.gmtime(time.time() - DAY))


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, own_redis: OwnRedis) -> Store:
    if request.param == "sqlite":
        return SqliteStore(str(tmp_path / "sp.db"))
    return RedisStore(own_redis.url)


def run(store: Store, body: Callable[[Store], Awaitable[None]]) -> None:
    async def opened() -> None:
        await store.open()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(opened())


def _key(day: str, client: str = "alice") -> tuple[str, str, str, str]:
    return (day, client, "m", "p/gpt")


def test_a_batch_is_applied_once_even_when_sent_again(store: Store) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        records = [(now, b'{"n":1}'), (now, b'{"n":2}')]
        daily = {_key(TODAY): {"requests": 2, "prompt": 30}}
        assert await store.usage_append("b1", records, daily, KEEP, KEEP) is True
        assert await store.usage_append("b1", records, daily, KEEP, KEEP) is False  # a retry
        assert await store.usage_append("b2", [(now, b'{"n":3}')], {_key(TODAY): {"requests": 1}},
                                        KEEP, KEEP) is True  # fmt: skip
        assert sorted(await store.usage_records(now - 1, now + 1)) == [
            b'{"n":1}',
            b'{"n":2}',
            b'{"n":3}',
        ]
        assert await store.usage_daily(TODAY, TODAY) == [
            (_key(TODAY), {"requests": 3, "prompt": 30})
        ]

    run(store, body)


def test_aggregates_are_kept_per_day_client_model_and_target(store: Store) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        await store.usage_append("b1", [], {
            _key(TODAY): {"requests": 1}, _key(TODAY, "bob"): {"requests": 5},
            _key(YESTERDAY): {"requests": 7, "cost": 10**12}}, KEEP, KEEP)  # fmt: skip
        assert sorted(await store.usage_daily(YESTERDAY, TODAY)) == [
            (_key(YESTERDAY), {"requests": 7, "cost": 10**12}),
            (_key(TODAY), {"requests": 1}),
            (_key(TODAY, "bob"), {"requests": 5}),
        ]
        assert await store.usage_daily(YESTERDAY, YESTERDAY) == [
            (_key(YESTERDAY), {"requests": 7, "cost": 10**12})
        ]
        assert await store.usage_records(now - DAY, now + 1) == []

    run(store, body)


def test_records_are_read_back_by_time(store: Store) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        await store.usage_append("b1", [(now - 3600, b"old"), (now, b"new")], {}, KEEP, KEEP)
        recent = await store.usage_records(now - 60, now + 1)
        # SQLite cuts at the times given; Redis returns whole days, the caller cuts them
        assert recent == [b"new"] if isinstance(store, SqliteStore) else b"new" in recent
        both = await store.usage_records(now - 7200, now + 1)
        assert sorted(both) == [b"new", b"old"]

    run(store, body)


def test_concurrent_batches_from_many_writers_all_count(store: Store) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        batches = [(f"b{i}", [(now, b"%d" % i)], {_key(TODAY): {"requests": 1, "prompt": i}})
                   for i in range(50)]  # fmt: skip
        await asyncio.gather(*(store.usage_append(*b, KEEP, KEEP) for b in batches))
        assert await store.usage_daily(TODAY, TODAY) == [
            (_key(TODAY), {"requests": 50, "prompt": sum(range(50))})
        ]
        assert len(await store.usage_records(now - 1, now + 1)) == 50

    run(store, body)


def test_sqlite_purges_entries_past_their_retention_on_append(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        now = time.time()
        await store.usage_append("b1", [(now - 10, b"old")], {}, 5.0, KEEP)
        await store.usage_append("b2", [(now, b"new")], {}, 5.0, KEEP)
        assert await store.usage_records(0, now + 1) == [b"new"]

    run(SqliteStore(str(tmp_path / "sp.db")), body)


def test_redis_day_keys_expire_retention_after_their_day(own_redis: OwnRedis) -> None:
    async def body(store: Store) -> None:
        await store.usage_append("b1", [(time.time(), b"x")], {_key(TODAY): {"requests": 1}},
                                 60, 3600)  # fmt: skip

    run(RedisStore(own_redis.url), body)
    day_start = calendar.timegm(time.strptime(TODAY, "%Y-%m-%d"))
    r = redis.Redis.from_url(own_redis.url)
    for key, keep in ((f"sp:{{usage}}:log:{TODAY}", 60), (f"sp:{{usage}}:day:{TODAY}", 3600)):
        assert r.pexpiretime(key) / 1000 == pytest.approx(day_start + DAY + keep, abs=1)
