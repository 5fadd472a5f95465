"""The embedded store: one SQLite file in WAL mode, used only from worker threads: one writes,
one reads (so reads never queue behind writes), and one checkpoints the WAL every second
(`sqlite_checkpoint.py`), so that writes never wait for a checkpoint's disk syncs.

The response cache is one table keyed by (group, key). Expired rows are ignored on read and
purged a bounded batch at a time at most once a second; the group's eviction runs in the
put's transaction, so a group never shows more than its `max_entries` live rows to a reader.
Puts are grouped with limits operations (below). A lookup of a key the file does not hold
is answered from an in-memory index of its keys (`sqlite_keys.py`), without a query.

The run journal is three tables: `journal` (answers by run and step), `journal_steps` (metas,
ordered by an AUTOINCREMENT sequence) and `journal_counters`. Every row carries its run's
`expires`; a put sets it on all the run's rows in its transaction, after deleting the run's
already expired rows so that a refresh never brings them back. Expired rows are ignored on read
and purged a bounded batch per table on each put.

Idempotency records are one table, one row per key, the log a BLOB that writes append to.
Expired rows are ignored on read and purged a bounded batch at a time on each claim.

Limits are three tables, times in epoch ms: `limit_rates` (a bucket's TAT), `limit_slots`
(one row per lease) and `limit_quotas` (a counter and the end of its period). An admission
or a settlement reads the rows of its keys (a summary of a concurrency key's leases: how
many run, the earliest expiry, the request's own), decides with `gateway.decide.limits` and
writes what changed, inside a write transaction (BEGIN IMMEDIATE), which makes it atomic across
connections and processes sharing the file. The writes on every request's path (limits
operations and cache puts) that arrive while one transaction runs share the next (group
commit): one after the other, each in a savepoint of its own (its failure is its own) and
seeing what the one before it wrote, so a burst pays for one commit and one hop to the
writer thread. Idle rows (a full bucket, a lapsed lease, an ended period) are ignored by the
decision and purged at most once a second, in bounded batches while they come back full.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar, cast

from gateway.decide import limits
from gateway.decide.ledger import DayKey
from gateway.decide.limits import Quota, Rate, Slots, Tally, Verdict
from gateway.stores import sqlite_usage
from gateway.stores.base import IdemRecord, StoreUnavailable
from gateway.stores.sqlite_checkpoint import (
    RESTART,
    RESTART_WAIT_MS,
    WAL_SIZE_LIMIT,
    Checkpointer,
)
from gateway.stores.sqlite_keys import CacheKeys

T = TypeVar("T")

_PURGE_BATCH = 100  # expired rows a journal put or an idempotency claim deletes on its way
_IDLE_BATCH = 1000  # idle limits rows and expired cache rows the purge deletes at a time...
_IDLE_BATCHES = 20  # ...and at most this many batches of each, once a second
_BUSY_TIMEOUT_MS = 2000  # how long a statement waits for another process's lock
# How long a write nobody waits for (a cache put, a settlement's token correction) waits for a
# write someone does wait for (an admission), to share its transaction: at a few hundred
# requests a second, one transaction and one hop to the writer thread per request, not three.
_LAZY_WRITES = 0.010

_CACHE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cache (grp TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
    "expires REAL NOT NULL, created REAL NOT NULL, PRIMARY KEY (grp, key))",
    # eviction takes a group's oldest rows first
    "CREATE INDEX IF NOT EXISTS cache_by_age ON cache (grp, created, expires)",
    # rows per group, kept in step with `cache` in the same transactions, so that eviction
    # deletes just the oldest rows beyond the limit instead of walking the whole group
    "CREATE TABLE IF NOT EXISTS cache_counts (grp TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    # the purge finds expired rows without scanning the table
    "CREATE INDEX IF NOT EXISTS cache_by_expiry ON cache (expires)",
)

# A new entry costs one statement; a refresh of one there already, two.
_CACHE_INSERT = (
    "INSERT INTO cache (value, expires, created, grp, key) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (grp, key) DO NOTHING"
)
_CACHE_REPLACE = "UPDATE cache SET value = ?, expires = ?, created = ? WHERE grp = ? AND key = ?"
# A full group evicts this fraction of its limit beyond the overflow (1/100), so that a full
# cache evicts once every hundred puts rather than on each.
_EVICT_MARGIN = 100

_JOURNAL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS journal (run TEXT NOT NULL, step TEXT NOT NULL, "
    "value BLOB NOT NULL, expires REAL NOT NULL, PRIMARY KEY (run, step))",
    "CREATE INDEX IF NOT EXISTS journal_by_expiry ON journal (expires)",
    "CREATE TABLE IF NOT EXISTS journal_steps (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "run TEXT NOT NULL, meta BLOB NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS journal_steps_by_run ON journal_steps (run, seq)",
    "CREATE INDEX IF NOT EXISTS journal_steps_by_expiry ON journal_steps (expires)",
    "CREATE TABLE IF NOT EXISTS journal_counters (run TEXT NOT NULL, counter TEXT NOT NULL, "
    "n INTEGER NOT NULL, expires REAL NOT NULL, PRIMARY KEY (run, counter))",
    "CREATE INDEX IF NOT EXISTS journal_counters_by_expiry ON journal_counters (expires)",
)
_JOURNAL_TABLES = ("journal", "journal_steps", "journal_counters")

_IDEM_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, fp TEXT NOT NULL, "
    "owner TEXT NOT NULL, state TEXT NOT NULL, meta BLOB NOT NULL, data BLOB NOT NULL, "
    "lease REAL NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires)",
)
_IDEM_COLUMNS = "fp, owner, state, meta, data, lease"

_LIMITS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS limit_rates (key TEXT PRIMARY KEY, tat REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS limit_rates_by_tat ON limit_rates (tat)",
    "CREATE TABLE IF NOT EXISTS limit_slots (key TEXT NOT NULL, request TEXT NOT NULL, "
    "expires REAL NOT NULL, PRIMARY KEY (key, request))",
    "CREATE INDEX IF NOT EXISTS limit_slots_by_expiry ON limit_slots (expires)",
    "CREATE TABLE IF NOT EXISTS limit_quotas (key TEXT PRIMARY KEY, used REAL NOT NULL, "
    "expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS limit_quotas_by_expiry ON limit_quotas (expires)",
)
# Each limits table and the column past which a row is idle.
_LIMITS_IDLE = (("limit_rates", "tat"), ("limit_slots", "expires"), ("limit_quotas", "expires"))


class SqliteStore:
    def __init__(self, path: str, checkpoint_every: float = 1.0):
        self._path = path
        # SQLite calls never run on the event loop: one thread writes, one reads, each on a
        # connection of its own, so that a read never waits behind a write: WAL lets readers
        # run alongside the writer (and checkpoints run on a third, `Checkpointer`'s).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="savepoint-sqlite-w")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="savepoint-sqlite-r")
        self._here = threading.local()  # each thread's connection
        # Writes under way, by what they write: a read of the same entry waits for them, so
        # that a caller reads its own writes, as it would with one thread doing both.
        self._writing: dict[str, asyncio.Event] = {}
        # Writes waiting for the next group commit, and the task committing them.
        self._group: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._group_commits: asyncio.Task[None] | None = None
        self._lazy: asyncio.TimerHandle | None = None  # commits lazy writes nothing else took
        self._purged = 0.0  # when idle limits and expired cache rows were last purged (epoch s)
        self._cache_keys = CacheKeys(self._load_cache_keys)  # misses answered without a hop
        self._checkpoints = Checkpointer(path, checkpoint_every, self._restart_wal)

    def describe(self) -> str:
        return f"sqlite {self._path}"

    async def open(self) -> None:
        await self._run(self._connection)
        self._checkpoints.start()

    async def _restart_wal(self) -> None:
        """Between two write transactions, on the writer's connection (`Checkpointer`)."""

        def restart() -> None:
            db = self._connection()
            db.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
            try:
                db.execute(RESTART).fetchone()
            finally:
                db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")

        await self._run(restart)

    def _open(self) -> sqlite3.Connection:
        """This thread's connection; the writer's also creates the file and its schema."""
        writer = threading.current_thread().name.startswith("savepoint-sqlite-w")
        if writer and (directory := os.path.dirname(self._path)):
            os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            if not writer:
                return db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's thread does them
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS ejections "
                "(target TEXT PRIMARY KEY, until REAL, since REAL)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(ejections)")}
            if "since" not in columns:  # a file written before ejections had a time
                db.execute("ALTER TABLE ejections ADD COLUMN since REAL DEFAULT 0")
            for statement in (
                *_CACHE_SCHEMA,
                *_JOURNAL_SCHEMA,
                *_IDEM_SCHEMA,
                *_LIMITS_SCHEMA,
                *sqlite_usage.SCHEMA,
            ):
                db.execute(statement)
        except BaseException:
            db.close()
            raise
        return db

    async def ping(self) -> None:
        await self._run(self._ping)

    def _ping(self) -> None:
        self._connection().execute("SELECT 1").fetchone()

    async def eject(self, target: str, seconds: float) -> None:
        now = time.time()
        await self._run(lambda: self._execute(
            "INSERT INTO ejections VALUES (?, ?, ?) ON CONFLICT(target) DO UPDATE SET "
            "until = max(until, excluded.until), since = excluded.since",
            (target, now + seconds, now)))  # fmt: skip

    async def ejections(self, targets: Sequence[str], since: float) -> dict[str, float]:
        found: dict[str, float] = {}

        def read() -> None:
            now = time.time()
            marks = ",".join("?" * len(targets))
            rows = self._execute(
                "SELECT target, until FROM ejections WHERE until > ? AND since >= ? "
                f"AND target IN ({marks})",
                (now, since, *targets),
            )
            found.update({target: until - now for target, until in rows})

        if targets:
            await self._run(read, read=True)
        return found

    async def cache_get(self, key: str, group: str) -> bytes | None:
        if not self._cache_keys.may_hold(group, key):
            return None

        def read() -> bytes | None:
            sql = "SELECT value FROM cache WHERE grp = ? AND key = ? AND expires > ?"
            row = self._connection().execute(sql, (group, key, time.time())).fetchone()
            return None if row is None else bytes(row[0])

        return await self._read(f"cache:{group}:{key}", read)

    async def cache_put(
        self, key: str, value: bytes, ttl: float, group: str, max_entries: int
    ) -> None:
        def put(db: sqlite3.Connection) -> None:
            now = time.time()
            row = (value, now + ttl, now, group, key)
            if not db.execute(_CACHE_INSERT, row).rowcount:  # there already: a refresh
                db.execute(_CACHE_REPLACE, row)
                return
            rows = _count(db, group, 1)
            if rows > max_entries:  # the oldest rows beyond the limit, and a 1% margin
                evicted = db.execute(
                    "DELETE FROM cache WHERE rowid IN (SELECT rowid FROM cache "
                    "WHERE grp = ? ORDER BY created ASC LIMIT ?)",
                    (group, rows - max_entries + max_entries // _EVICT_MARGIN),
                ).rowcount
                _count(db, group, -evicted)

        self._cache_keys.put(group, key)
        await self._scoped(f"cache:{group}:{key}", self._grouped(put, soon=False))

    async def _load_cache_keys(self, after: int | None) -> tuple[set[tuple[str, str]], int]:
        def read() -> tuple[set[tuple[str, str]], int]:
            if after is None:
                sql, arg = "SELECT rowid, grp, key FROM cache WHERE expires > ?", time.time()
            else:
                sql, arg = "SELECT rowid, grp, key FROM cache WHERE rowid > ?", after
            rows = self._connection().execute(sql, (arg,)).fetchall()
            return {(grp, key) for _, grp, key in rows}, max((r[0] for r in rows), default=0)

        return await self._run(read, read=True)

    async def cache_delete(self, key: str, group: str) -> None:
        def delete() -> None:
            db = self._connection()
            with db:
                db.execute("BEGIN IMMEDIATE")
                gone = db.execute(
                    "DELETE FROM cache WHERE grp = ? AND key = ?", (group, key)
                ).rowcount
                if gone:
                    _count(db, group, -gone)

        await self._write(f"cache:{group}:{key}", delete)

    async def journal_get(self, run: str, step: str) -> bytes | None:
        def read() -> bytes | None:
            sql = "SELECT value FROM journal WHERE run = ? AND step = ? AND expires > ?"
            row = self._connection().execute(sql, (run, step, time.time())).fetchone()
            return None if row is None else bytes(row[0])

        return await self._read(f"run:{run}", read)

    async def journal_put(self, run: str, step: str, value: bytes, meta: bytes, ttl: float) -> None:
        def write() -> None:
            db, now = self._connection(), time.time()
            expires = now + ttl
            with db:  # commits, or rolls back on an exception
                db.execute("BEGIN IMMEDIATE")
                for table in _JOURNAL_TABLES:
                    db.execute(
                        f"DELETE FROM {table} WHERE rowid IN "
                        f"(SELECT rowid FROM {table} WHERE expires <= ? LIMIT ?)",
                        (now, _PURGE_BATCH),
                    )
                    # this run's expired rows go now, whatever the batch left: the refresh
                    # below must not revive them
                    db.execute(f"DELETE FROM {table} WHERE run = ? AND expires <= ?", (run, now))
                db.execute(
                    "INSERT INTO journal VALUES (?, ?, ?, ?) ON CONFLICT (run, step) "
                    "DO UPDATE SET value = excluded.value",
                    (run, step, value, expires),
                )
                db.execute(
                    "INSERT INTO journal_steps (run, meta, expires) VALUES (?, ?, ?)",
                    (run, meta, expires),
                )
                for table in _JOURNAL_TABLES:
                    db.execute(f"UPDATE {table} SET expires = ? WHERE run = ?", (expires, run))

        await self._write(f"run:{run}", write)

    async def journal_steps(self, run: str) -> list[bytes]:
        def read() -> list[bytes]:
            sql = "SELECT meta FROM journal_steps WHERE run = ? AND expires > ? ORDER BY seq"
            rows = self._connection().execute(sql, (run, time.time())).fetchall()
            return [bytes(row[0]) for row in rows]

        return await self._read(f"run:{run}", read)

    async def journal_count(self, run: str, counter: str, ttl: float) -> int:
        def write() -> int:
            db, now = self._connection(), time.time()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "DELETE FROM journal_counters WHERE run = ? AND expires <= ?", (run, now)
                )
                row = db.execute(
                    "INSERT INTO journal_counters VALUES (?, ?, 1, ?) ON CONFLICT (run, counter) "
                    "DO UPDATE SET n = n + 1 RETURNING n",
                    (run, counter, now + ttl),
                ).fetchone()
                db.execute(
                    "UPDATE journal_counters SET expires = ? WHERE run = ?", (now + ttl, run)
                )
            return int(row[0])

        return await self._write(f"run:{run}", write)

    async def journal_drop(self, run: str) -> int:
        def delete() -> int:
            db, now = self._connection(), time.time()
            with db:
                db.execute("BEGIN IMMEDIATE")
                live = db.execute(
                    "DELETE FROM journal WHERE run = ? AND expires > ?", (run, now)
                ).rowcount
                for table in _JOURNAL_TABLES:
                    db.execute(f"DELETE FROM {table} WHERE run = ?", (run,))
            return live

        return await self._write(f"run:{run}", delete)

    async def idem_claim(
        self, key: str, fingerprint: str, owner: str, lease: float, ttl: float
    ) -> IdemRecord | None:
        def claim() -> IdemRecord | None:
            db, now = self._connection(), time.time()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "DELETE FROM idempotency WHERE rowid IN "
                    "(SELECT rowid FROM idempotency WHERE expires <= ? LIMIT ?)",
                    (now, _PURGE_BATCH),
                )
                row = db.execute(
                    f"SELECT {_IDEM_COLUMNS} FROM idempotency WHERE key = ? AND expires > ?",
                    (key, now),
                ).fetchone()
                if row is not None and (row[2] == "done" or (row[2] == "running" and row[5] > now)):
                    return _record(row, now)
                db.execute(
                    "INSERT OR REPLACE INTO idempotency "
                    "VALUES (?, ?, ?, 'running', x'', x'', ?, ?)",
                    (key, fingerprint, owner, now + lease, now + ttl),
                )
            return None

        return await self._run(claim)

    async def idem_read(self, key: str, offset: int) -> IdemRecord | None:
        def read() -> IdemRecord | None:
            now = time.time()
            row = (
                self._connection()
                .execute(
                    "SELECT fp, owner, state, meta, coalesce(substr(data, ? + 1), x''), lease "
                    "FROM idempotency "
                    "WHERE key = ? AND expires > ?",
                    (offset, key, now),
                )
                .fetchone()
            )
            return None if row is None else _record(row, now)

        return await self._run(read, read=True)

    async def idem_write(
        self,
        key: str,
        owner: str,
        meta: bytes,
        data: bytes,
        lease: float,
        at: int | None = None,
    ) -> bool:
        def write(db: sqlite3.Connection, now: float, data: bytes) -> None:
            db.execute(
                "UPDATE idempotency SET meta = CASE WHEN length(?) > 0 THEN ? ELSE meta END, "
                "data = CAST(data || ? AS BLOB), lease = ?, expires = max(expires, ?) "
                "WHERE key = ?",
                (meta, meta, data, now + lease, now + lease, key),
            )

        return await self._run(lambda: self._owned(key, owner, data, at, write))

    async def idem_end(
        self,
        key: str,
        owner: str,
        state: str,
        meta: bytes,
        data: bytes,
        ttl: float,
        at: int | None = None,
    ) -> bool:
        def end(db: sqlite3.Connection, now: float, data: bytes) -> None:
            db.execute(
                "UPDATE idempotency SET state = ?, meta = ?, data = CAST(data || ? AS BLOB), "
                "expires = ? WHERE key = ?",
                (state, meta, data, now + ttl, key),
            )

        return await self._run(lambda: self._owned(key, owner, data, at, end))

    async def limits_admit(
        self,
        rates: Sequence[Rate],
        slots: Sequence[Slots],
        quotas: Sequence[Quota],
        request_id: str,
        lease: float,
    ) -> Verdict:
        limits.check_distinct(rates, slots, quotas)
        if not (rates or slots or quotas):
            return Verdict(True, ())

        def admit(db: sqlite3.Connection) -> Verdict:
            now = time.time() * 1000
            state = _limit_state(db, rates, slots, quotas, now, request_id)
            decision = limits.admit(state, rates, slots, quotas, request_id, lease * 1000, now)
            if decision.state is not None:
                _write_limits(db, state, decision.state)
            return decision.verdict

        return await self._grouped(admit)

    async def limits_settle(
        self,
        rates: Sequence[Rate],
        quotas: Sequence[Quota],
        slots: Sequence[Slots],
        request_id: str,
    ) -> None:
        limits.check_distinct(rates, slots, quotas)
        if not (rates or slots or quotas):
            return

        def settle(db: sqlite3.Connection) -> None:
            # the request's leases go by key and id: no need to read the others (lapsed ones
            # are purged with the idle rows)
            now = time.time() * 1000
            state = _limit_state(db, rates, (), quotas, now)
            _write_limits(db, state, limits.settle(state, rates, quotas, (), request_id, now))
            if slots:
                keys = [slot.key for slot in slots]
                marks = ",".join("?" * len(keys))
                sql = f"DELETE FROM limit_slots WHERE request = ? AND key IN ({marks})"
                db.execute(sql, (request_id, *keys))

        await self._grouped(settle, soon=bool(slots))  # a slot given back is waited for

    async def _grouped(self, op: Callable[[sqlite3.Connection], T], soon: bool = True) -> T:
        """Run a write in the next group commit: the writes (limits operations, cache puts)
        that arrive while one transaction runs share the next one, each in a savepoint of its
        own and in arrival order (each reads what the one before it wrote), so a burst costs
        one executor hop and one commit, not one per request, and one write's failure is its
        own. A write that is not `soon` waits up to `_LAZY_WRITES` for one that is."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._group.append((op, done))
        if soon:
            self._commit_soon()
        elif self._lazy is None:
            self._lazy = loop.call_later(_LAZY_WRITES, self._commit_soon)
        return cast(T, await done)

    def _commit_soon(self) -> None:
        self._drop_lazy()
        if self._group_commits is None or self._group_commits.done():
            self._group_commits = asyncio.get_running_loop().create_task(self._commit_group())

    def _drop_lazy(self) -> None:
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None

    async def _commit_group(self) -> None:
        while self._group:
            batch, self._group = self._group, []
            self._drop_lazy()  # its writes are in this batch
            try:
                results = await self._run(partial(self._apply_group, [op for op, _ in batch]))
            except Exception as e:  # the whole transaction: every write in it failed
                results = [e] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                if done.done():  # its caller may have been cancelled meanwhile
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)

    def _apply_group(self, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """One write transaction for a batch of writes, in their order. Each reads the clock
        once the write lock is held: a transaction of another connection that went first must
        never be in its future. Idle limits rows and expired cache rows are purged at most
        once a second."""
        db = self._connection()
        results: list[Any] = []
        with db:  # commits, or rolls back on an exception
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            if now - self._purged >= 1.0:
                self._purged = now
                _purge(db, now)
            for op in ops:
                db.execute("SAVEPOINT op")
                try:
                    results.append(op(db))
                except sqlite3.Error as e:
                    db.execute("ROLLBACK TO op")
                    results.append(StoreUnavailable(f"SQLite store {self._path}: {e}"))
                db.execute("RELEASE op")
        return results

    async def usage_append(
        self,
        batch: str,
        records: Sequence[tuple[float, bytes]],
        daily: Mapping[DayKey, Mapping[str, int]],
        retention: float,
        daily_retention: float,
    ) -> bool:
        return await self._run(lambda: sqlite_usage.append(
            self._connection(), batch, records, daily, retention, daily_retention))  # fmt: skip

    async def usage_records(self, since: float, until: float) -> list[bytes]:
        return await self._run(
            lambda: sqlite_usage.records(self._connection(), since, until), read=True
        )

    async def usage_daily(self, first: str, last: str) -> list[tuple[DayKey, dict[str, int]]]:
        return await self._run(
            lambda: sqlite_usage.daily_rows(self._connection(), first, last), read=True
        )

    def _owned(
        self,
        key: str,
        owner: str,
        data: bytes,
        at: int | None,
        change: Callable[[sqlite3.Connection, float, bytes], None],
    ) -> bool:
        """Apply `change` to a running record `owner` owns, with the part of `data` (the log
        from byte `at`) that the log does not hold yet; False if it is not `owner`'s."""
        db, now = self._connection(), time.time()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT length(data) FROM idempotency WHERE key = ? AND owner = ? "
                "AND state = 'running' AND expires > ?",
                (key, owner, now),
            ).fetchone()
            if row is None:
                return False
            if at is not None:
                have = row[0] - at
                if have < 0:
                    return False
                data = data[have:]
            change(db, now, data)
        return True

    def _execute(self, sql: str, args: tuple[object, ...]) -> list[tuple[str, float]]:
        return list(self._connection().execute(sql, args).fetchall())

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._here, "db", None)
        if db is None:  # first use, or opening failed before (say, an unwritable directory)
            db = self._here.db = self._open()
        return db

    def _close_here(self) -> None:
        db = getattr(self._here, "db", None)
        if db is not None:
            db.close()
            self._here.db = None

    async def close(self) -> None:
        if self._group:  # lazy writes still waiting for company
            self._commit_soon()
        if self._group_commits is not None:
            await asyncio.wait([self._group_commits])
        await self._cache_keys.close()
        await self._checkpoints.close()
        for read in (True, False):
            with contextlib.suppress(StoreUnavailable):
                await self._run(self._close_here, read=read)
        self._reader.shutdown(wait=False)
        self._writer.shutdown(wait=False)

    async def _write(self, scope: str, fn: Callable[[], T]) -> T:
        return await self._scoped(scope, self._run(fn))

    async def _scoped(self, scope: str, write: Awaitable[T]) -> T:
        """Await a write that a read of the same `scope` waits for."""
        done = self._writing[scope] = asyncio.Event()
        try:
            return await write
        finally:
            done.set()
            if self._writing.get(scope) is done:
                del self._writing[scope]

    async def _read(self, scope: str, fn: Callable[[], T]) -> T:
        writing = self._writing.get(scope)
        if writing is not None:  # the writer runs in order: the last write is the one to wait for
            await writing.wait()
        return await self._run(fn, read=True)

    async def _run(self, fn: Callable[[], T], read: bool = False) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader if read else self._writer, fn)
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"SQLite store {self._path}: {e}") from None


def _purge(db: sqlite3.Connection, now: float) -> None:
    """Delete idle limits rows and expired cache rows, a batch at a time while batches come
    back full, up to `_IDLE_BATCHES` of each a second: the loop guard writes a row per
    distinct request and window, thousands a second under load, which one batch a second
    would never catch up with."""
    for table, column in _LIMITS_IDLE:
        for _ in range(_IDLE_BATCHES):
            gone = db.execute(
                f"DELETE FROM {table} WHERE rowid IN "
                f"(SELECT rowid FROM {table} WHERE {column} <= ? LIMIT ?)",
                (now * 1000, _IDLE_BATCH),
            ).rowcount
            if gone < _IDLE_BATCH:
                break
    expired = db.execute(
        "SELECT rowid, grp FROM cache WHERE expires <= ? LIMIT ?", (now, _IDLE_BATCH)
    ).fetchall()
    if expired:
        marks = ",".join("?" * len(expired))
        db.execute(f"DELETE FROM cache WHERE rowid IN ({marks})", [rowid for rowid, _ in expired])
        for grp, gone in Counter(grp for _, grp in expired).items():
            _count(db, grp, -gone)


def _record(row: tuple[Any, ...], now: float) -> IdemRecord:
    fp, owner, state, meta, data, lease = row
    return IdemRecord(fp, owner, state, bytes(meta), bytes(data), lease - now)


def _count(db: sqlite3.Connection, group: str, delta: int) -> int:
    """Change a group's row count by `delta` and return it (counted afresh the first time,
    for a file written before counts were kept)."""
    row = db.execute(
        "UPDATE cache_counts SET n = n + ? WHERE grp = ? RETURNING n", (delta, group)
    ).fetchone()
    if row is not None:
        return int(row[0])
    (n,) = db.execute("SELECT count(*) FROM cache WHERE grp = ?", (group,)).fetchone()
    db.execute("INSERT INTO cache_counts VALUES (?, ?)", (group, n))
    return int(n)


def _limit_state(
    db: sqlite3.Connection,
    rates: Sequence[Rate],
    slots: Sequence[Slots],
    quotas: Sequence[Quota],
    now_ms: float,
    request_id: str = "",
) -> limits.State:
    """What the rows of these limits' keys hold: idle rates and quotas included (the decision
    ignores them), leases only while they run (lapsed ones are purged with the idle rows)."""

    def rows(sql: str, keys: list[str]) -> list[Any]:
        if not keys:
            return []
        return db.execute(sql.format(",".join("?" * len(keys))), keys).fetchall()

    tats = dict(rows("SELECT key, tat FROM limit_rates WHERE key IN ({})", [r.key for r in rates]))
    leases: dict[str, dict[str, float]] = {slot.key: {} for slot in slots}
    if slots:
        # A summary of each key's running leases instead of every row (a busy key holds one
        # per request in flight): the decision only needs how many there are, whether this
        # request holds one, and the earliest expiry; the others stand in as that many
        # anonymous leases, which the write leaves as they are.
        marks = ",".join("?" * len(leases))
        sql = (
            "SELECT key, COUNT(*), MIN(expires), MAX(CASE WHEN request = ? THEN expires END) "
            f"FROM limit_slots WHERE key IN ({marks}) AND expires > ? GROUP BY key"
        )
        for key, count, earliest, own in db.execute(sql, (request_id, *leases, now_ms)):
            held = leases[key]
            if own is not None:
                held[request_id], count = own, count - 1
            held.update((f"\x00{i}", earliest) for i in range(count))
    sql = "SELECT key, used, expires FROM limit_quotas WHERE key IN ({})"
    tallies = {
        key: Tally(used, expires) for key, used, expires in rows(sql, [q.key for q in quotas])
    }
    return limits.State(tats, leases, tallies)


def _write_limits(db: sqlite3.Connection, before: limits.State, after: limits.State) -> None:
    """Write the rows that differ between the state read and the one decided (one statement
    per kind of change, none for a change with no rows)."""
    gone, slots = [], []
    for key, leases in after.leases.items():
        held = before.leases.get(key, {})
        gone += [(key, request) for request in held if request not in leases]
        slots += [(key, r, e) for r, e in leases.items() if held.get(r) != e]
    for sql, rows in (
        ("INSERT INTO limit_rates VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
         "tat = excluded.tat", list(after.tats.items())),
        ("DELETE FROM limit_slots WHERE key = ? AND request = ?", gone),
        ("INSERT INTO limit_slots VALUES (?, ?, ?) ON CONFLICT (key, request) DO UPDATE SET "
         "expires = excluded.expires", slots),
        ("INSERT INTO limit_quotas VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
         "used = excluded.used, expires = excluded.expires",
         [(key, tally.used, tally.expires_ms) for key, tally in after.quotas.items()]),
    ):  # fmt: skip
        if rows:
            db.executemany(sql, rows)
