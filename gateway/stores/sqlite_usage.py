"""The usage ledger in SQLite: three tables, written by `append` in one transaction.

`usage_records` holds one row per request (its time and its entry as opaque bytes), indexed
by time; `usage_daily` holds the aggregates as one row per (day, client, model, target,
counter); `usage_batches` remembers the batches already applied, so that a batch whose write
was reported as failed but did land is not counted twice when it is sent again.

Old rows go a bounded batch at a time on each append: records after `retention`, daily rows
after `daily_retention`, batch ids after a day.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage_records (ts REAL NOT NULL, entry BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS usage_records_by_ts ON usage_records (ts)",
    "CREATE TABLE IF NOT EXISTS usage_daily (day TEXT NOT NULL, client TEXT NOT NULL, "
    "model TEXT NOT NULL, target TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, "
    "PRIMARY KEY (day, client, model, target, name))",
    "CREATE TABLE IF NOT EXISTS usage_batches (id TEXT PRIMARY KEY, ts REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS usage_batches_by_ts ON usage_batches (ts)",
)
_PURGE_BATCH = 1000
_BATCH_MEMORY = 86400.0  # how long an applied batch id is remembered

Daily = Mapping[tuple[str, str, str, str], Mapping[str, int]]


def append(
    db: sqlite3.Connection,
    batch: str,
    records: Sequence[tuple[float, bytes]],
    daily: Daily,
    retention: float,
    daily_retention: float,
) -> bool:
    """Apply a batch once: False (changing nothing) if it was applied before."""
    now = time.time()
    with db:
        db.execute("BEGIN IMMEDIATE")
        if db.execute("SELECT 1 FROM usage_batches WHERE id = ?", (batch,)).fetchone():
            return False
        db.execute("INSERT INTO usage_batches (id, ts) VALUES (?, ?)", (batch, now))
        db.executemany("INSERT INTO usage_records (ts, entry) VALUES (?, ?)", records)
        db.executemany(
            "INSERT INTO usage_daily (day, client, model, target, name, value) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (day, client, model, target, name) "
            "DO UPDATE SET value = value + excluded.value",
            [
                (*key, name, value)
                for key, counters in daily.items()
                for name, value in counters.items()
            ],
        )
        for sql, cutoff in (
            ("DELETE FROM usage_records WHERE rowid IN (SELECT rowid FROM usage_records "
             "WHERE ts < ? LIMIT ?)", now - retention),
            ("DELETE FROM usage_batches WHERE rowid IN (SELECT rowid FROM usage_batches "
             "WHERE ts < ? LIMIT ?)", now - _BATCH_MEMORY),
        ):  # fmt: skip
            db.execute(sql, (cutoff, _PURGE_BATCH))
        oldest = time.strftime("%Y-%m-%d", time.gmtime(now - daily_retention))
        db.execute(
            "DELETE FROM usage_daily WHERE rowid IN "
            "(SELECT rowid FROM usage_daily WHERE day < ? LIMIT ?)",
            (oldest, _PURGE_BATCH),
        )
    return True


def records(db: sqlite3.Connection, since: float, until: float) -> list[bytes]:
    rows = db.execute(
        "SELECT entry FROM usage_records WHERE ts >= ? AND ts < ? ORDER BY ts", (since, until)
    )
    return [bytes(row[0]) for row in rows]


def daily_rows(
    db: sqlite3.Connection, first: str, last: str
) -> list[tuple[tuple[str, str, str, str], dict[str, int]]]:
    out: dict[tuple[str, str, str, str], dict[str, int]] = {}
    rows = db.execute(
        "SELECT day, client, model, target, name, value FROM usage_daily "
        "WHERE day >= ? AND day <= ?",
        (first, last),
    )
    for day, client, model, target, name, value in rows:
        out.setdefault((day, client, model, target), {})[name] = value
    return list(out.items())
