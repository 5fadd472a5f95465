"""The idempotency-record contract of the store seam (`idem_claim`, `idem_read`, `idem_write`,
`idem_end`), run against every implementation (embedded SQLite and Redis).

Keys are unique per test (uuid4 hex), so runs against the shared Redis never meet.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from harness import OwnRedis, store_error

from gateway.stores.base import IdemRecord, Store
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore

T = TypeVar("T")

SHARED_REDIS = "redis://127.0.0.1:6379/0"
BINARY = b"\x00" + bytes(range(256)) + b"\xff\xfe\x80 not utf-8 \xc3\x28\x00"


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return SqliteStore(str(tmp_path / "nested" / "sp.db"))
    return RedisStore(SHARED_REDIS)


def with_open(store: Store, body: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def new_key() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex digits, like a digest


def assert_running(
    record: IdemRecord | None, fingerprint: str, owner: str, meta: bytes, data: bytes
) -> IdemRecord:
    assert record is not None
    assert (record.fingerprint, record.owner, record.state) == (fingerprint, owner, "running")
    assert (record.meta, record.data) == (meta, data)
    return record


async def observe(s: Store, key: str) -> IdemRecord:
    """The record of a key that is held (running on a live lease, or done), seen through the
    claim of a third party, which returns the whole record and changes nothing."""
    record = await s.idem_claim(key, "fp-observer", "observer", 30, 60)
    assert record is not None, "the observer took the key: it was not held"
    return record


# Claims.


def test_claim_of_an_absent_key_takes_it_and_a_second_claim_returns_the_record(
    store: Store,
) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        # an absent key: nothing to read, write or end
        assert await s.idem_read(key, 0) is None
        assert await s.idem_write(key, "owner-a", b"meta", b"data", 30) is False
        assert await s.idem_end(key, "owner-a", "done", b"meta", b"data", 30) is False
        assert await s.idem_read(key, 0) is None

        assert await s.idem_claim(key, "fp-a", "owner-a", 30, 60) is None

        # another owner, with the same or another fingerprint, gets the record, and nothing
        # changes: same owner, fingerprint, empty meta and log
        for fingerprint, owner in (("fp-a", "owner-b"), ("fp-other", "owner-c")):
            held = await s.idem_claim(key, fingerprint, owner, 5, 60)
            held = assert_running(held, "fp-a", "owner-a", b"", b"")
            assert 25 < held.lease <= 30  # the first claim's lease, not the 5 s asked for
        # even the owner claiming again gets its own record back
        again = assert_running(await s.idem_claim(key, "fp-a", "owner-a", 30, 60), "fp-a",
                               "owner-a", b"", b"")  # fmt: skip
        assert 0 < again.lease <= 30
        # the owner still owns it; the would-be owners do not
        assert await s.idem_write(key, "owner-b", b"", b"theirs", 30) is False
        assert await s.idem_write(key, "owner-c", b"", b"theirs", 30) is False
        assert await s.idem_write(key, "owner-a", b"", b"mine", 30) is True
        assert_running(await s.idem_read(key, 0), "fp-a", "owner-a", b"", b"mine")

    with_open(store, body)


def test_claim_returns_the_whole_log_and_meta_of_the_record_that_holds_the_key(
    store: Store,
) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp", "owner-a", 30, 60) is None
        assert await s.idem_write(key, "owner-a", b"status 200", b"first ", 30) is True
        assert await s.idem_write(key, "owner-a", b"", b"second", 30) is True
        held = await s.idem_claim(key, "fp", "owner-b", 30, 60)
        assert_running(held, "fp", "owner-a", b"status 200", b"first second")

    with_open(store, body)


# Writes and reads.


def test_write_appends_in_order_sets_meta_only_when_given_and_reads_from_an_offset(
    store: Store,
) -> None:
    key = new_key()
    chunks = [b"\x00", b'data: {"a": 1}\n\n', BINARY, b"", b"\xc3\x28 end"]
    log = b"".join(chunks)

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp", "owner-a", 30, 60) is None
        assert await s.idem_write(key, "owner-a", b"\x00meta one\xff", chunks[0], 30) is True
        assert_running(await s.idem_read(key, 0), "fp", "owner-a", b"\x00meta one\xff", chunks[0])
        # b"" keeps the old meta
        assert await s.idem_write(key, "owner-a", b"", chunks[1], 30) is True
        assert (await s.idem_read(key, 0)).meta == b"\x00meta one\xff"  # type: ignore[union-attr]
        # a non-empty meta replaces it
        assert await s.idem_write(key, "owner-a", b"meta two", chunks[2], 30) is True
        # a write with no data still sets the meta and leaves the log alone
        assert await s.idem_write(key, "owner-a", b"meta three", chunks[3], 30) is True
        assert await s.idem_write(key, "owner-a", b"", chunks[4], 30) is True

        whole = assert_running(await s.idem_read(key, 0), "fp", "owner-a", b"meta three", log)
        assert 0 < whole.lease <= 30
        middle = 1 + len(chunks[1]) + 7
        assert (await s.idem_read(key, middle)).data == log[middle:]  # type: ignore[union-attr]
        assert (await s.idem_read(key, 1)).data == log[1:]  # type: ignore[union-attr]
        at_end = assert_running(await s.idem_read(key, len(log)), "fp", "owner-a",
                                b"meta three", b"")  # fmt: skip
        assert at_end.data == b""
        beyond = assert_running(await s.idem_read(key, len(log) + 100), "fp", "owner-a",
                                b"meta three", b"")  # fmt: skip
        assert beyond.data == b""
        # the claim of someone else returns the whole binary log
        held = await s.idem_claim(key, "fp", "owner-b", 30, 60)
        assert_running(held, "fp", "owner-a", b"meta three", log)

    with_open(store, body)


def test_read_of_a_record_with_an_empty_log_returns_empty_data(store: Store) -> None:
    # What a waiting request sees when it polls a record whose owner has not written yet, or
    # that ended with no data.
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp", "owner-a", 30, 60) is None
        assert_running(await s.idem_read(key, 0), "fp", "owner-a", b"", b"")
        assert_running(await s.idem_read(key, 3), "fp", "owner-a", b"", b"")
        assert await s.idem_write(key, "owner-a", b"meta", b"", 30) is True
        assert_running(await s.idem_read(key, 0), "fp", "owner-a", b"meta", b"")
        assert await s.idem_end(key, "owner-a", "done", b"meta", b"", 60) is True
        done = await s.idem_read(key, 0)
        assert done is not None
        assert (done.state, done.meta, done.data) == ("done", b"meta", b"")

    with_open(store, body)


def test_write_by_another_owner_is_refused_and_changes_nothing(store: Store) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp", "owner-a", 30, 60) is None
        assert await s.idem_write(key, "owner-a", b"meta a", b"from a", 30) is True
        assert await s.idem_write(key, "owner-b", b"meta b", b"from b", 30) is False
        assert await s.idem_write(key, "owner-b", b"", b"", 30) is False
        assert await s.idem_end(key, "owner-b", "done", b"meta b", b"from b", 30) is False
        assert await s.idem_end(key, "owner-b", "failed", b"", b"", 30) is False
        assert_running(await s.idem_read(key, 0), "fp", "owner-a", b"meta a", b"from a")
        assert await s.idem_write(key, "owner-a", b"", b" again", 30) is True
        assert_running(await s.idem_read(key, 0), "fp", "owner-a", b"meta a", b"from a again")

    with_open(store, body)


def test_write_renews_the_lease(store: Store) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp", "owner-a", 0.3, 60) is None
        await asyncio.sleep(0.2)
        nearly = await s.idem_claim(key, "fp-b", "owner-b", 0.3, 60)
        assert nearly is not None and 0 < nearly.lease <= 0.1
        assert await s.idem_write(key, "owner-a", b"", b"tick", 0.3) is True
        renewed = await s.idem_read(key, 0)
        assert renewed is not None and 0.2 < renewed.lease <= 0.3
        await asyncio.sleep(0.2)  # 0.4 s after the claim: its lease alone would have lapsed
        held = await s.idem_claim(key, "fp-b", "owner-b", 0.3, 60)
        held = assert_running(held, "fp", "owner-a", b"", b"tick")
        assert 0 < held.lease <= 0.1
        assert await s.idem_write(key, "owner-a", b"", b" tock", 0.3) is True
        assert_running(await s.idem_read(key, 0), "fp", "owner-a", b"", b"tick tock")

    with_open(store, body)


# Lapsed leases.


def test_a_lapsed_lease_lets_another_owner_take_the_record_over(store: Store) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp-a", "owner-a", 0.2, 60) is None
        assert await s.idem_write(key, "owner-a", b"meta a", b"partial answer", 0.2) is True
        await asyncio.sleep(0.35)
        lapsed = assert_running(await s.idem_read(key, 0), "fp-a", "owner-a", b"meta a",
                                b"partial answer")  # fmt: skip
        assert lapsed.lease <= 0

        assert await s.idem_claim(key, "fp-b", "owner-b", 30, 60) is None
        # the new owner, the new fingerprint, an empty meta and log, a fresh lease; a third
        # owner cannot take it from the new one, whose lease holds
        taken = assert_running(await observe(s, key), "fp-b", "owner-b", b"", b"")
        assert 25 < taken.lease <= 30

        # the old owner has lost it
        assert await s.idem_write(key, "owner-a", b"meta a", b" more", 30) is False
        assert await s.idem_end(key, "owner-a", "done", b"meta a", b" end", 30) is False
        assert await s.idem_end(key, "owner-a", "failed", b"", b"", 30) is False
        assert_running(await observe(s, key), "fp-b", "owner-b", b"", b"")
        assert await s.idem_write(key, "owner-b", b"meta b", b"fresh", 30) is True
        assert_running(await s.idem_read(key, 0), "fp-b", "owner-b", b"meta b", b"fresh")

    with_open(store, body)


# Ends.


def test_end_done_keeps_the_record_for_every_later_claim_until_its_ttl(store: Store) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp-a", "owner-a", 0.2, 60) is None
        assert await s.idem_write(key, "owner-a", b"meta while running", b"head ", 0.2) is True
        assert await s.idem_end(key, "owner-a", "done", b"\x00final meta", b"\x00tail", 0.5)
        done = await s.idem_read(key, 0)
        assert done is not None
        assert (done.fingerprint, done.owner, done.state) == ("fp-a", "owner-a", "done")
        assert (done.meta, done.data) == (b"\x00final meta", b"head \x00tail")
        assert (await s.idem_read(key, 5)).data == b"\x00tail"  # type: ignore[union-attr]

        await asyncio.sleep(0.25)  # past the lease: a done record is never taken over
        for fingerprint, owner in (("fp-a", "owner-b"), ("fp-other", "owner-c")):
            held = await s.idem_claim(key, fingerprint, owner, 30, 60)
            assert held is not None
            assert (held.fingerprint, held.owner, held.state) == ("fp-a", "owner-a", "done")
            assert (held.meta, held.data) == (b"\x00final meta", b"head \x00tail")

        # the record no longer runs: nobody writes to or ends it, its owner included
        assert await s.idem_write(key, "owner-a", b"late", b"late", 30) is False
        assert await s.idem_end(key, "owner-a", "done", b"again", b"again", 60) is False
        assert await s.idem_end(key, "owner-a", "failed", b"", b"", 60) is False
        assert await s.idem_end(key, "owner-b", "done", b"b", b"b", 60) is False
        after = await s.idem_read(key, 0)
        assert after is not None and after.state == "done"
        assert (after.meta, after.data) == (b"\x00final meta", b"head \x00tail")

        await asyncio.sleep(0.35)  # 0.6 s after the end: its ttl of 0.5 s is over
        assert await s.idem_read(key, 0) is None
        assert await s.idem_claim(key, "fp-d", "owner-d", 30, 60) is None
        assert_running(await observe(s, key), "fp-d", "owner-d", b"", b"")

    with_open(store, body)


def test_end_failed_lets_the_next_claim_take_the_record_over(store: Store) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp-a", "owner-a", 30, 60) is None
        assert await s.idem_write(key, "owner-a", b"meta a", b"half an answer", 30) is True
        assert await s.idem_end(key, "owner-a", "failed", b"error meta", b" + error", 60)
        failed = await s.idem_read(key, 0)
        assert failed is not None
        assert (failed.owner, failed.state) == ("owner-a", "failed")
        assert (failed.meta, failed.data) == (b"error meta", b"half an answer + error")
        # no more writes or ends on a failed record
        assert await s.idem_write(key, "owner-a", b"", b"more", 30) is False
        assert await s.idem_end(key, "owner-a", "done", b"", b"", 60) is False

        # the lease (30 s) has not lapsed, yet the failed record is taken over at once
        assert await s.idem_claim(key, "fp-b", "owner-b", 30, 60) is None
        taken = assert_running(await observe(s, key), "fp-b", "owner-b", b"", b"")
        assert 25 < taken.lease <= 30
        assert await s.idem_write(key, "owner-a", b"", b"old owner", 30) is False
        assert await s.idem_write(key, "owner-b", b"", b"new answer", 30) is True
        assert_running(await s.idem_read(key, 0), "fp-b", "owner-b", b"", b"new answer")

    with_open(store, body)


def test_a_running_record_expires_after_the_ttl_given_to_claim(store: Store) -> None:
    key, renewed = new_key(), new_key()

    async def body(s: Store) -> None:
        # a lease longer than the ttl: the ttl still ends a record nobody writes to
        assert await s.idem_claim(key, "fp-a", "owner-a", 30, 0.3) is None
        # ... while a write keeps a record at least its lease (a long request outlives ttl)
        assert await s.idem_claim(renewed, "fp-a", "owner-a", 30, 0.3) is None
        assert await s.idem_write(renewed, "owner-a", b"meta", b"data", 1.0) is True
        assert_running(await s.idem_read(key, 0), "fp-a", "owner-a", b"", b"")
        await asyncio.sleep(0.4)
        assert await s.idem_read(key, 0) is None
        assert await s.idem_write(key, "owner-a", b"meta", b"late", 30) is False
        assert await s.idem_end(key, "owner-a", "done", b"meta", b"late", 30) is False
        assert await s.idem_claim(key, "fp-b", "owner-b", 30, 60) is None
        assert_running(await observe(s, key), "fp-b", "owner-b", b"", b"")
        assert_running(await s.idem_read(renewed, 0), "fp-a", "owner-a", b"meta", b"data")
        await asyncio.sleep(0.7)
        assert await s.idem_read(renewed, 0) is None

    with_open(store, body)


def test_a_write_at_an_offset_never_appends_twice(store: Store) -> None:
    key = new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp", "owner-a", 30, 60) is None
        assert await s.idem_write(key, "owner-a", b"m", b"AAA", 30, at=0) is True
        # the writer was told that write failed (it had landed): it sends it again, and more
        assert await s.idem_write(key, "owner-a", b"", b"AAABB", 30, at=0) is True
        assert await s.idem_write(key, "owner-a", b"", b"CC", 30, at=5) is True
        assert (await s.idem_read(key, 0)).data == b"AAABBCC"  # type: ignore[union-attr]
        # a gap (the log is shorter than the writer thinks): refused, nothing changes
        assert await s.idem_write(key, "owner-a", b"", b"ZZ", 30, at=9) is False
        assert await s.idem_end(key, "owner-a", "done", b"m", b"Z", 60, at=8) is False
        assert await s.idem_end(key, "owner-a", "done", b"m", b"CCDD", 60, at=5) is True
        done = await s.idem_read(key, 0)
        assert done is not None and done.state == "done" and done.data == b"AAABBCCDD"

    with_open(store, body)


def test_keys_are_independent_of_each_other(store: Store) -> None:
    one, two, three = new_key(), new_key(), new_key()

    async def body(s: Store) -> None:
        assert await s.idem_claim(one, "fp", "owner-a", 30, 60) is None
        assert await s.idem_claim(two, "fp", "owner-b", 30, 60) is None  # same fingerprint
        assert await s.idem_write(one, "owner-a", b"meta one", b"log one", 30) is True
        assert await s.idem_write(two, "owner-b", b"meta two", b"log two", 30) is True
        # an owner of one key has no say over another
        assert await s.idem_write(two, "owner-a", b"x", b"x", 30) is False
        assert await s.idem_end(one, "owner-b", "done", b"x", b"x", 30) is False
        assert await s.idem_read(three, 0) is None

        assert await s.idem_end(one, "owner-a", "failed", b"failed one", b"", 60) is True
        assert_running(await s.idem_read(two, 0), "fp", "owner-b", b"meta two", b"log two")
        assert await s.idem_claim(one, "fp", "owner-c", 30, 60) is None  # takes one only
        assert_running(await observe(s, one), "fp", "owner-c", b"", b"")
        held = await s.idem_claim(two, "fp", "owner-c", 30, 60)
        assert_running(held, "fp", "owner-b", b"meta two", b"log two")
        assert await s.idem_end(two, "owner-b", "done", b"done two", b"!", 60) is True
        assert_running(await observe(s, one), "fp", "owner-c", b"", b"")
        assert await s.idem_read(three, 0) is None

    with_open(store, body)


# Redis only.


def test_redis_idem_keys_share_the_hash_tag_and_the_deadline() -> None:
    key = new_key()
    record, log = f"sp:{{idem:{key}}}", f"sp:{{idem:{key}}}:log"
    client = redis.Redis(host="127.0.0.1", port=6379)

    async def body(s: Store) -> None:
        assert await s.idem_claim(key, "fp", "owner-a", 30, 60) is None
        assert await s.idem_write(key, "owner-a", b"meta", b"some data", 30) is True
        assert client.exists(record) == 1 and client.exists(log) == 1
        assert 55_000 < client.pttl(record) <= 60_000
        assert abs(client.pttl(record) - client.pttl(log)) < 1_000
        assert await s.idem_end(key, "owner-a", "done", b"meta", b" and more", 30) is True

    try:
        with_open(RedisStore(SHARED_REDIS), body)
        names = sorted(client.scan_iter(match=f"sp:{{idem:{key}}}*"))
        ttls = [client.pttl(record), client.pttl(log)]
        stored = client.get(log)
    finally:
        client.delete(record, log)
        client.close()
    assert names == [record.encode(), log.encode()]
    assert stored == b"some data and more"
    assert all(25_000 < ttl <= 30_000 for ttl in ttls), ttls
    assert abs(ttls[0] - ttls[1]) < 1_000


def test_redis_idem_outage_is_store_unavailable_and_the_store_recovers(
    own_redis: OwnRedis,
) -> None:
    key, other = new_key(), new_key()

    async def body(s: Store) -> tuple[list[str], list[object]]:
        assert await s.idem_claim(key, "fp", "owner-a", 30, 60) is None
        assert await s.idem_write(key, "owner-a", b"meta", b"before", 30) is True
        own_redis.stop()
        errors = [
            await store_error(s.idem_claim(key, "fp", "owner-b", 30, 60)),
            await store_error(s.idem_read(key, 0)),
            await store_error(s.idem_write(key, "owner-a", b"", b"during", 30)),
            await store_error(s.idem_end(key, "owner-a", "done", b"meta", b"during", 60)),
        ]
        own_redis.start()  # a fresh server on the same port: the old records are gone
        after = [
            await s.idem_read(key, 0),
            await s.idem_claim(other, "fp", "owner-c", 30, 60),
            await s.idem_write(other, "owner-c", b"meta c", b"after", 30),
            await s.idem_read(other, 0),
            await s.idem_end(other, "owner-c", "done", b"meta c", b"!", 60),
            await s.idem_claim(other, "fp", "owner-d", 30, 60),
        ]
        return errors, after

    errors, after = with_open(RedisStore(own_redis.url), body)
    assert len(errors) == 4
    for error in errors:
        assert error.startswith(f"Redis at redis://***@127.0.0.1:{own_redis.port}/0: ")
        assert "hunter2" not in error
    gone, claimed, written, read, ended, done = after
    assert gone is None
    assert claimed is None and written is True and ended is True
    assert_running(read, "fp", "owner-c", b"meta c", b"after")  # type: ignore[arg-type]
    assert isinstance(done, IdemRecord)
    assert (done.owner, done.state, done.data) == ("owner-c", "done", b"after!")


# SQLite only.


def test_sqlite_idem_purges_expired_rows_on_claim(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"
    kept = new_key()

    async def body(s: Store) -> None:
        for i in range(5):
            key = new_key()
            assert await s.idem_claim(key, "fp", f"owner-{i}", 30, 0.1) is None
            if i % 2:
                assert await s.idem_end(key, f"owner-{i}", "done", b"m", b"d", 0.1) is True
        await asyncio.sleep(0.2)
        assert await s.idem_claim(kept, "fp", "owner-kept", 30, 60) is None

    with_open(SqliteStore(str(path)), body)
    db = sqlite3.connect(path)
    rows = db.execute("SELECT key, owner FROM idempotency").fetchall()
    db.close()
    assert rows == [(kept, "owner-kept")]


def test_sqlite_idem_records_survive_a_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "sp.db")
    done, running = new_key(), new_key()

    async def before(s: Store) -> None:
        assert await s.idem_claim(done, "fp", "owner-a", 30, 60) is None
        assert await s.idem_write(done, "owner-a", b"", BINARY, 30) is True
        assert await s.idem_end(done, "owner-a", "done", b"final meta", b"!", 60) is True
        assert await s.idem_claim(running, "fp-r", "owner-r", 30, 60) is None
        assert await s.idem_write(running, "owner-r", b"meta r", b"partial", 30) is True

    async def after(s: Store) -> list[IdemRecord | None]:
        read = await s.idem_read(done, 0)
        claimed = await s.idem_claim(done, "fp", "owner-b", 30, 60)
        held = await s.idem_claim(running, "fp-r", "owner-b", 30, 60)
        return [read, claimed, held]

    with_open(SqliteStore(path), before)
    read, claimed, held = with_open(SqliteStore(path), after)
    for record in (read, claimed):
        assert record is not None
        assert (record.fingerprint, record.owner, record.state) == ("fp", "owner-a", "done")
        assert (record.meta, record.data) == (b"final meta", BINARY + b"!")
    held = assert_running(held, "fp-r", "owner-r", b"meta r", b"partial")
    assert 25 < held.lease <= 30
