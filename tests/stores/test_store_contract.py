"""The store contract, run against every implementation (embedded SQLite and Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis
import redis.asyncio
from harness import Gateways, free_port

from gateway.decide.limits import Rate, Verdict
from gateway.stores.base import Store, StoreUnavailable
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore

T = TypeVar("T")


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return SqliteStore(str(tmp_path / "nested" / "sp.db"))
    return RedisStore("redis://127.0.0.1:6379/0")


@pytest.fixture
def own_redis() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A redis-server of our own (password `hunter2`), so stopping it disturbs nothing else."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "hunter2",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port, proc
    proc.terminate()
    proc.wait(10)


def test_store_opens_answers_ping_and_closes(store: Store) -> None:
    async def run() -> None:
        await store.open()
        await store.ping()
        await store.close()

    asyncio.run(run())
    assert store.describe().split()[0] in ("sqlite", "redis")


def test_sqlite_store_creates_its_directory_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "sp.db"

    async def run() -> None:
        s = SqliteStore(str(path))
        await s.open()
        await s.close()

    asyncio.run(run())
    import sqlite3

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_redis_outage_is_store_unavailable_and_the_password_is_never_shown(
    own_redis: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = own_redis
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in store.describe()

    async def ping() -> str:
        try:
            await store.ping()
            return "ok"
        except StoreUnavailable as e:
            return str(e)

    async def run() -> tuple[str, str]:
        await store.open()
        try:
            proc.terminate()
            proc.wait(10)
            down = await ping()
            return down, "hunter2" if "hunter2" in down else "clean"
        finally:
            await store.close()

    down, leaked = asyncio.run(run())
    assert down.startswith("Redis at redis://***@127.0.0.1")
    assert leaked == "clean"


def test_readyz_reports_the_store_but_stays_ready(gateways: Gateways) -> None:
    port = free_port()  # nothing listens here: the Redis store is down from the start
    gw = gateways.start(f"""
version: 1
store: {{kind: redis, url: "redis://127.0.0.1:{port}/0"}}
providers: {{m: {{kind: mock}}}}
models: {{x: {{targets: [m/mock-gpt]}}}}
""")
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["status"] == "ready"
    assert ready["store"].startswith("unavailable: Redis at redis://127.0.0.1")
    assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}
    reply = gw.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content


def test_ejections_are_shared_and_expire(store: Store) -> None:
    target = f"contract-{os.getpid()}-{time.monotonic_ns()}/m"

    async def run() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        await store.open()
        try:
            start = time.time()
            assert await store.ejections([target], start) == {}
            await store.eject(target, 0.3)
            live = await store.ejections([target, "never/ejected"], start)
            await store.eject(target, 0.1)  # a shorter ejection does not cut a longer one
            still = await store.ejections([target], start)
            await asyncio.sleep(0.35)
            return live, still, await store.ejections([target], start)
        finally:
            await store.close()

    live, still, expired = asyncio.run(run())
    assert list(live) == [target] and 0.2 < live[target] <= 0.3
    assert 0.15 < still[target] <= 0.3
    assert expired == {}


# The response cache. Groups are unique per test, so runs against the shared Redis never meet.


def unique_group() -> str:
    return f"contract-{os.getpid()}-{time.monotonic_ns()}"


def cache_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def with_open(store: Store, body: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def test_cache_round_trips_binary_values_and_misses_are_none(store: Store) -> None:
    group, binary = unique_group(), bytes(range(256)) + b"\x00\xff\xfe\x80 not utf-8 \xc3\x28"

    async def body(s: Store) -> None:
        await s.cache_put(cache_key("binary"), binary, 60, group, 10)
        await s.cache_put(cache_key("empty"), b"", 60, group, 10)
        assert await s.cache_get(cache_key("binary"), group) == binary
        assert await s.cache_get(cache_key("empty"), group) == b""
        assert await s.cache_get(cache_key("never put"), group) is None

    with_open(store, body)


def test_cache_round_trips_a_one_mib_value(store: Store) -> None:
    group, big = unique_group(), os.urandom(1 << 20)

    async def body(s: Store) -> None:
        await s.cache_put(cache_key("big"), big, 60, group, 10)
        assert await s.cache_get(cache_key("big"), group) == big

    with_open(store, body)


def test_cache_entry_expires_after_its_ttl(store: Store) -> None:
    group, key = unique_group(), cache_key("short")

    async def body(s: Store) -> None:
        await s.cache_put(key, b"soon gone", 0.2, group, 10)
        assert await s.cache_get(key, group) == b"soon gone"
        await asyncio.sleep(0.3)
        assert await s.cache_get(key, group) is None

    with_open(store, body)


def test_cache_put_of_an_existing_key_replaces_it_and_restarts_its_ttl(store: Store) -> None:
    group, key = unique_group(), cache_key("replaced")

    async def body(s: Store) -> None:
        await s.cache_put(key, b"first", 0.4, group, 10)
        await asyncio.sleep(0.25)
        await s.cache_put(key, b"second", 0.4, group, 10)
        assert await s.cache_get(key, group) == b"second"
        await asyncio.sleep(0.25)  # the first put's TTL has run out, the second's has not
        assert await s.cache_get(key, group) == b"second"

    with_open(store, body)


def test_cache_eviction_keeps_the_newest_entries_of_the_group_only(store: Store) -> None:
    group, other = unique_group(), unique_group()
    keys = [cache_key(f"entry {i}") for i in range(5)]

    async def body(s: Store) -> list[bytes | None]:
        await s.cache_put(keys[0], b"other 0", 60, other, 3)
        await s.cache_put(keys[1], b"other 1", 60, other, 3)
        for i, key in enumerate(keys):
            await s.cache_put(key, f"value {i}".encode(), 60, group, 3)
        values = [await s.cache_get(key, group) for key in keys]
        return [*values, await s.cache_get(keys[0], other), await s.cache_get(keys[1], other)]

    values = with_open(store, body)
    assert values == [None, None, b"value 2", b"value 3", b"value 4", b"other 0", b"other 1"]


def test_a_full_sqlite_cache_evicts_its_oldest_hundredth_at_once(tmp_path: Path) -> None:
    """docs/policies.md: once full, the embedded store holds 99-100% of `max_entries`,
    evicting the overflow and 1% of the limit in one go instead of one row per put."""
    group = unique_group()
    keys = [cache_key(f"entry {i}") for i in range(203)]

    async def body(s: Store) -> tuple[list[bytes | None], list[bytes | None]]:
        async def put(key: str) -> None:
            await s.cache_put(key, key[:4].encode(), 60, group, 200)

        for key in keys[:201]:  # 200 fill it to the limit; the 201st evicts 1 + 200 // 100
            await put(key)
        at_201 = [await s.cache_get(key, group) for key in keys[:201]]
        for key in keys[201:]:  # back up to the limit: nothing evicted
            await put(key)
        return at_201, [await s.cache_get(key, group) for key in keys]

    at_201, at_203 = with_open(SqliteStore(str(tmp_path / "sp.db")), body)
    assert at_201 == [None] * 3 + [key[:4].encode() for key in keys[3:201]]
    assert at_203 == [None] * 3 + [key[:4].encode() for key in keys[3:]]


def test_cache_put_of_an_existing_key_makes_it_the_newest(store: Store) -> None:
    group = unique_group()
    a, b, c, d = (cache_key(name) for name in "abcd")

    async def body(s: Store) -> list[bytes | None]:
        for key in (a, b, c):
            await s.cache_put(key, key[:4].encode(), 60, group, 3)
        await s.cache_put(a, b"a again", 60, group, 3)
        await s.cache_put(d, b"d", 60, group, 3)  # evicts b, now the oldest
        return [await s.cache_get(key, group) for key in (a, b, c, d)]

    assert with_open(store, body) == [b"a again", None, c[:4].encode(), b"d"]


def test_cache_delete_forgets_the_entry_and_frees_its_place(store: Store) -> None:
    group = unique_group()
    a, b, c = (cache_key(name) for name in "abc")

    async def body(s: Store) -> list[bytes | None]:
        await s.cache_put(a, b"a", 60, group, 2)
        await s.cache_put(b, b"b", 60, group, 2)
        await s.cache_delete(b, group)
        await s.cache_delete(cache_key("never put"), group)
        deleted = await s.cache_get(b, group)
        await s.cache_put(c, b"c", 60, group, 2)  # room for c without evicting a
        return [deleted, await s.cache_get(a, group), await s.cache_get(c, group)]

    assert with_open(store, body) == [None, b"a", b"c"]


def test_cache_groups_do_not_see_each_others_keys(store: Store) -> None:
    one, two, key = unique_group(), unique_group(), cache_key("shared name")

    async def body(s: Store) -> list[bytes | None]:
        await s.cache_put(key, b"in one", 60, one, 10)
        unseen = await s.cache_get(key, two)
        await s.cache_put(key, b"in two", 60, two, 10)
        both = [await s.cache_get(key, one), await s.cache_get(key, two)]
        await s.cache_delete(key, two)
        return [unseen, *both, await s.cache_get(key, one), await s.cache_get(key, two)]

    assert with_open(store, body) == [None, b"in one", b"in two", b"in one", None]


def test_sqlite_cache_purges_expired_rows_with_a_write_a_second_later(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"
    group = unique_group()

    async def body(s: Store) -> None:
        for i in range(20):
            await s.cache_put(cache_key(f"old {i}"), b"x", 0.05, group, 100)
        await asyncio.sleep(1.05)  # purges run at most once a second
        await s.cache_put(cache_key("new"), b"y", 60, "another group", 100)

    with_open(SqliteStore(str(path)), body)
    rows = sqlite3.connect(path).execute("SELECT grp, value FROM cache").fetchall()
    assert rows == [("another group", b"y")]


def test_sqlite_grouped_write_that_fails_fails_alone(tmp_path: Path) -> None:
    """Writes that share a group commit each run in a savepoint: a cache put that fails
    (here: its table is gone) does not take the admission committed with it down."""
    rate = Rate(f"c:{unique_group()}:rpm", 60, 1)

    async def body(s: Store) -> tuple[BaseException | object, ...]:
        await s.cache_put(cache_key("first"), b"x", 60, "g", 100)  # opens the file and schema
        sqlite3.connect(tmp_path / "sp.db").execute("DROP TABLE cache_counts")
        return tuple(await asyncio.gather(
            s.cache_put(cache_key("doomed"), b"x", 60, "g", 100),
            s.limits_admit([rate], [], [], "req-1", 30),
            return_exceptions=True,
        ))  # fmt: skip

    put, verdict = with_open(SqliteStore(str(tmp_path / "sp.db")), body)
    assert isinstance(put, StoreUnavailable) and "cache_counts" in str(put)
    assert isinstance(verdict, Verdict) and verdict.allowed


def test_sqlite_answers_a_miss_from_its_key_index_without_a_query(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "sp.db"))
    reads: list[str] = []

    async def body(s: Store) -> tuple[bytes | None, bytes | None]:
        await s.cache_put(cache_key("kept"), b"answer", 60, "g", 100)
        await s.cache_get(cache_key("warm-up"), "g")  # starts loading the index
        await asyncio.sleep(0.2)
        run = store._run

        async def counted(fn: Callable[[], T], read: bool = False) -> T:
            reads.append(getattr(fn, "__qualname__", "?"))
            return await run(fn, read)

        store._run = counted  # type: ignore[method-assign]
        missed = await s.cache_get(cache_key("never stored"), "g")
        assert reads == []  # answered from memory
        return missed, await s.cache_get(cache_key("kept"), "g")

    assert with_open(store, body) == (None, b"answer")
    assert [r for r in reads if "cache_get" in r] == ["SqliteStore.cache_get.<locals>.read"]


def test_sqlite_finds_a_key_another_process_put_within_a_second(tmp_path: Path) -> None:
    """Workers and replicas sharing the file: one's put is a hit for the other once its
    index refreshes (every second); until then, a miss."""
    path = str(tmp_path / "sp.db")

    async def body(s: Store) -> tuple[bytes | None, bytes | None, bytes | None]:
        other = SqliteStore(path)
        await other.open()
        try:
            await s.cache_get(cache_key("warm-up"), "g")
            await asyncio.sleep(0.2)  # the index is loaded
            await other.cache_put(cache_key("theirs"), b"answer", 60, "g", 100)
            at_once = await s.cache_get(cache_key("theirs"), "g")
            await s.cache_put(cache_key("mine"), b"own", 60, "g", 100)
            own = await s.cache_get(cache_key("mine"), "g")
            await asyncio.sleep(1.3)
            return at_once, own, await s.cache_get(cache_key("theirs"), "g")
        finally:
            await other.close()

    assert with_open(SqliteStore(path), body) == (None, b"own", b"answer")


def test_redis_cache_index_stays_bounded_and_expires() -> None:
    group = unique_group()

    async def body(s: Store) -> None:
        await s.cache_put(cache_key("longer"), b"x", 90, group, 2)
        for i in range(5):
            await s.cache_put(cache_key(f"entry {i}"), b"x", 30, group, 2)

    with_open(RedisStore("redis://127.0.0.1:6379/0"), body)
    client = redis.Redis(host="127.0.0.1", port=6379)
    index = f"sp:{{cache:{group}}}:index"
    members = client.zrange(index, 0, -1)
    ttl = client.pttl(index)
    client.close()
    assert members == [
        f"sp:{{cache:{group}}}:{cache_key('entry 3')}".encode(),
        f"sp:{{cache:{group}}}:{cache_key('entry 4')}".encode(),
    ]
    assert 85_000 < ttl <= 90_000  # the longest TTL put into the group, not the last one


def test_redis_cache_put_reloads_its_script_into_a_server_that_lost_it(
    own_redis: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = own_redis
    group, key = unique_group(), cache_key("k")

    async def body(s: Store) -> bytes | None:
        await s.cache_put(key, b"before", 60, group, 10)
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, password="hunter2")
        await client.script_flush()  # as after a restart or a failover
        await client.aclose()
        await s.cache_put(key, b"after", 60, group, 10)
        return await s.cache_get(key, group)

    assert with_open(RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0"), body) == b"after"


def test_redis_cache_outage_is_store_unavailable_and_the_password_is_never_shown(
    own_redis: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = own_redis
    group, key = unique_group(), cache_key("k")

    async def body(s: Store) -> tuple[bytes | None, list[str]]:
        await s.cache_put(key, b"before", 60, group, 10)
        before = await s.cache_get(key, group)
        proc.terminate()
        proc.wait(10)
        errors = []
        for operation in (
            s.cache_get(key, group),
            s.cache_put(key, b"during", 60, group, 10),
            s.cache_delete(key, group),
        ):
            try:
                await operation
                errors.append("no error")
            except StoreUnavailable as e:
                errors.append(str(e))
        return before, errors

    before, errors = with_open(RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0"), body)
    assert before == b"before"
    assert len(errors) == 3
    for error in errors:
        assert error.startswith(f"Redis at redis://***@127.0.0.1:{port}/0: ")
        assert "hunter2" not in error


def test_ejections_published_before_a_replica_started_are_not_its_business(store: Store) -> None:
    target = f"old-{os.getpid()}-{time.monotonic_ns()}/m"

    async def run() -> tuple[dict[str, float], dict[str, float]]:
        await store.open()
        try:
            await store.eject(target, 30)
            later = time.time() + 1
            return await store.ejections([target], later), await store.ejections([target], 0)
        finally:
            await store.close()

    after_start, before_start = asyncio.run(run())
    assert after_start == {}
    assert 29 < before_start[target] <= 30


def test_an_unusable_sqlite_path_is_unavailable_not_fatal_and_recovers(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store wants a directory")
    store = SqliteStore(str(blocked / "sp.db"))

    async def run() -> tuple[str, bytes | None]:
        try:
            await store.open()
        except StoreUnavailable as e:
            failure = str(e)
        blocked.unlink()  # the operator fixes it; the store opens on next use
        await store.cache_put("k" * 64, b"v", 60, "g", 10)
        value = await store.cache_get("k" * 64, "g")
        await store.close()
        return failure, value

    failure, value = asyncio.run(run())
    assert failure.startswith("SQLite store")
    assert value == b"v"


# The run journal. Runs are unique per test, so runs against the shared Redis never meet.


def unique_run() -> str:
    return f"contract:{os.getpid()}.{time.monotonic_ns()}"


def step_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_journal_round_trips_binary_answers_and_misses_are_none(store: Store) -> None:
    run, binary = unique_run(), bytes(range(256)) + b"\x00\xff\xfe\x80 not utf-8 \xc3\x28"

    async def body(s: Store) -> list[bytes | None]:
        await s.journal_put(run, step_id("binary"), binary, b'{"n": 1}', 60)
        await s.journal_put(run, step_id("empty"), b"", b"\x00meta\xff", 60)
        return [
            await s.journal_get(run, step_id("binary")),
            await s.journal_get(run, step_id("empty")),
            await s.journal_get(run, step_id("never put")),
            await s.journal_get(unique_run(), step_id("binary")),
        ]

    assert with_open(store, body) == [binary, b"", None, None]


def test_journal_steps_are_the_metas_in_put_order(store: Store) -> None:
    run = unique_run()

    async def body(s: Store) -> tuple[list[bytes], list[bytes]]:
        unknown = await s.journal_steps(run)
        for i in (3, 1, 2):
            await s.journal_put(run, step_id(f"step {i}"), f"answer {i}".encode(), b"m%d" % i, 60)
        return unknown, await s.journal_steps(run)

    assert with_open(store, body) == ([], [b"m3", b"m1", b"m2"])


def test_journal_put_of_a_recorded_step_replaces_its_answer_and_appends_a_meta(
    store: Store,
) -> None:
    run, step = unique_run(), step_id("again")

    async def body(s: Store) -> tuple[bytes | None, list[bytes], int]:
        await s.journal_put(run, step, b"first", b"meta 1", 60)
        await s.journal_put(run, step, b"second", b"meta 2", 60)
        answer, steps = await s.journal_get(run, step), await s.journal_steps(run)
        return answer, steps, await s.journal_drop(run)

    # the step list is a log of puts; the run still holds a single answer for the step
    assert with_open(store, body) == (b"second", [b"meta 1", b"meta 2"], 1)


def test_journal_counters_count_per_name_and_per_run(store: Store) -> None:
    run, other = unique_run(), unique_run()

    async def body(s: Store) -> list[int]:
        return [
            await s.journal_count(run, "calls", 60),
            await s.journal_count(run, "calls", 60),
            await s.journal_count(run, "retries", 60),
            await s.journal_count(run, "calls", 60),
            await s.journal_count(other, "calls", 60),
            await s.journal_count(run, "retries", 60),
        ]

    assert with_open(store, body) == [1, 2, 1, 3, 1, 2]


def test_journal_run_expires_whole_after_its_ttl(store: Store) -> None:
    run, step = unique_run(), step_id("short")

    async def body(s: Store) -> tuple[list[object], list[object]]:
        await s.journal_put(run, step, b"soon gone", b"meta", 0.3)
        await s.journal_count(run, "calls", 0.3)
        live = [await s.journal_get(run, step), await s.journal_steps(run)]
        await asyncio.sleep(0.4)
        gone = [
            await s.journal_get(run, step),
            await s.journal_steps(run),
            await s.journal_count(run, "calls", 0.3),
            await s.journal_drop(run),
        ]
        return live, gone

    live, gone = with_open(store, body)
    assert live == [b"soon gone", [b"meta"]]
    assert gone == [None, [], 1, 0]


def test_journal_put_refreshes_the_ttl_of_the_whole_run(store: Store) -> None:
    run, first, second = unique_run(), step_id("first"), step_id("second")

    async def body(s: Store) -> list[object]:
        await s.journal_put(run, first, b"one", b"m1", 0.3)
        await s.journal_count(run, "calls", 0.3)
        await asyncio.sleep(0.2)
        await s.journal_put(run, second, b"two", b"m2", 0.3)
        await asyncio.sleep(0.2)  # 0.4 s after the first put, 0.2 s after the last
        alive = [
            await s.journal_get(run, first),
            await s.journal_get(run, second),
            await s.journal_steps(run),
            await s.journal_count(run, "calls", 0.3),
        ]
        await asyncio.sleep(0.4)
        return [*alive, await s.journal_get(run, first), await s.journal_steps(run)]

    assert with_open(store, body) == [b"one", b"two", [b"m1", b"m2"], 2, None, []]


def test_journal_put_after_expiry_starts_the_run_afresh(store: Store) -> None:
    run = unique_run()

    async def body(s: Store) -> list[object]:
        await s.journal_put(run, step_id("old"), b"old", b"m old", 0.1)
        await asyncio.sleep(0.2)
        await s.journal_put(run, step_id("new"), b"new", b"m new", 60)
        return [
            await s.journal_get(run, step_id("old")),
            await s.journal_steps(run),
            await s.journal_drop(run),
        ]

    assert with_open(store, body) == [None, [b"m new"], 1]


def test_journal_drop_deletes_the_run_and_counts_its_answers(store: Store) -> None:
    run, other = unique_run(), unique_run()

    async def body(s: Store) -> list[object]:
        for i in range(3):
            await s.journal_put(run, step_id(f"step {i}"), b"x", b"m", 60)
            await s.journal_count(run, "calls", 60)
        await s.journal_put(other, step_id("step 0"), b"kept", b"m other", 60)
        await s.journal_count(other, "calls", 60)
        dropped = await s.journal_drop(run)
        return [
            dropped,
            await s.journal_drop(run),
            await s.journal_drop(unique_run()),
            await s.journal_get(run, step_id("step 0")),
            await s.journal_steps(run),
            await s.journal_count(run, "calls", 60),
            await s.journal_get(other, step_id("step 0")),
            await s.journal_steps(other),
            await s.journal_count(other, "calls", 60),
        ]

    assert with_open(store, body) == [3, 0, 0, None, [], 1, b"kept", [b"m other"], 2]


def test_journal_runs_do_not_see_each_other(store: Store) -> None:
    one, two, step = unique_run(), unique_run(), step_id("shared step")

    async def body(s: Store) -> list[object]:
        await s.journal_put(one, step, b"in one", b"m one", 60)
        unseen = [await s.journal_get(two, step), await s.journal_steps(two)]
        await s.journal_put(two, step, b"in two", b"m two", 60)
        return [
            *unseen,
            await s.journal_get(one, step),
            await s.journal_get(two, step),
            await s.journal_steps(one),
            await s.journal_steps(two),
        ]

    assert with_open(store, body) == [None, [], b"in one", b"in two", [b"m one"], [b"m two"]]


def test_redis_journal_keys_share_the_run_hash_tag_and_its_deadline() -> None:
    run = unique_run()

    async def body(s: Store) -> None:
        await s.journal_put(run, step_id("a"), b"a", b"m", 30)
        await s.journal_count(run, "calls", 30)
        await s.journal_put(run, step_id("b"), b"b", b"m", 90)

    with_open(RedisStore("redis://127.0.0.1:6379/0"), body)
    client = redis.Redis(host="127.0.0.1", port=6379)
    names = sorted(client.scan_iter(match=f"sp:{{run:{run}}}:*"))
    ttls = [client.pttl(name) for name in names]
    client.delete(*names)
    client.close()
    assert names == sorted(
        f"sp:{{run:{run}}}:{suffix}".encode()
        for suffix in (
            f"step:{step_id('a')}",
            f"step:{step_id('b')}",
            "steps",
            "stepkeys",
            "counters",
        )
    )
    assert all(85_000 < ttl <= 90_000 for ttl in ttls)


def test_sqlite_journal_purges_expired_rows_on_put(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"

    async def body(s: Store) -> None:
        for _ in range(10):
            run = unique_run()
            await s.journal_put(run, step_id("old"), b"x", b"m", 0.05)
            await s.journal_count(run, "calls", 0.05)
        await asyncio.sleep(0.1)
        await s.journal_put("kept", step_id("new"), b"y", b"m", 60)

    with_open(SqliteStore(str(path)), body)
    db = sqlite3.connect(path)
    runs = [
        db.execute(f"SELECT DISTINCT run FROM {t}").fetchall() for t in ("journal", "journal_steps")
    ]
    counters = db.execute("SELECT count(*) FROM journal_counters").fetchone()[0]
    db.close()
    assert runs == [[("kept",)], [("kept",)]]
    assert counters == 0


def test_redis_journal_outage_is_store_unavailable_for_every_operation(
    own_redis: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = own_redis
    run, step = unique_run(), step_id("k")

    async def body(s: Store) -> tuple[bytes | None, list[str]]:
        await s.journal_put(run, step, b"before", b"m", 60)
        before = await s.journal_get(run, step)
        proc.terminate()
        proc.wait(10)
        errors = []
        for operation in (
            s.journal_get(run, step),
            s.journal_put(run, step, b"during", b"m", 60),
            s.journal_steps(run),
            s.journal_count(run, "calls", 60),
            s.journal_drop(run),
        ):
            try:
                await operation
                errors.append("no error")
            except StoreUnavailable as e:
                errors.append(str(e))
        return before, errors

    before, errors = with_open(RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0"), body)
    assert before == b"before"
    assert len(errors) == 5
    for error in errors:
        assert error.startswith(f"Redis at redis://***@127.0.0.1:{port}/0: ")
        assert "hunter2" not in error


def test_sqlite_journal_failure_is_store_unavailable_for_every_operation(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store wants a directory")
    run, step = unique_run(), step_id("k")

    async def body(s: Store) -> list[str]:
        errors = []
        for operation in (
            s.journal_get(run, step),
            s.journal_put(run, step, b"v", b"m", 60),
            s.journal_steps(run),
            s.journal_count(run, "calls", 60),
            s.journal_drop(run),
        ):
            try:
                await operation
                errors.append("no error")
            except StoreUnavailable as e:
                errors.append(str(e))
        return errors

    async def run_it() -> list[str]:
        s = SqliteStore(str(blocked / "sp.db"))
        with contextlib.suppress(StoreUnavailable):
            await s.open()
        try:
            return await body(s)
        finally:
            await s.close()

    errors = asyncio.run(run_it())
    assert len(errors) == 5
    assert all(error.startswith("SQLite store") for error in errors)
