"""The store seam. Every shared or durable state goes through a `Store`.

Implementations translate their library's exceptions into `StoreUnavailable`, and never block
the event loop (SQLite runs in a worker thread; Redis uses redis.asyncio). Today it holds the
ejections that replicas share (a deployment whose breaker opened in one replica is skipped by
all) and the response cache; idempotency records, run journals, limits and the usage ledger
add their operations here.

The response cache is partitioned into groups (the gateway uses the model name). An entry is
identified by its group and its key, so the same key in two groups is two entries. Each group
holds at most `max_entries` live entries, evicting the oldest by put time; an entry also
expires after its TTL. Values are opaque bytes.

The run journal records durable agent runs. A run (an opaque id, `[A-Za-z0-9_.:-]{1,200}`)
holds answers keyed by step (a 64-character hex digest), an ordered list of step metas (opaque
bytes the gateway writes, one per put), and named counters. The answers and metas of a run live
and die together: each put restarts the TTL of the whole run, counters included, so a run
expires `ttl` seconds after its last put. Counting restarts the TTL of the run's counters.

An idempotency record holds one request's answer under a key (an opaque hex digest): the
request's fingerprint, its owner (the gateway request executing it), a state (`running`,
`done` or `failed`), a meta (opaque bytes: status and headers) and a log (bytes appended by
the owner: the answer so far). A running record's owner holds a lease that it renews; once
the lease lapses, or once the record has failed, the next claim takes the record over, with
an empty log. Only the owner can write to or end a record, and only while it runs.

Limits (rates, concurrency slots, quotas: `gateway.decide.limits`, whose arithmetic both
implementations follow) are admitted all at once: `limits_admit` checks every limit of a
request against the state shared by every process and replica using the store, atomically,
and either takes the request's share of each or changes nothing. Time is the store's: the
wall clock of the SQLite process, the Redis server's `TIME` (replicas with skewed clocks
agree). Idle state expires by itself: a full bucket, a lapsed lease, a quota whose period
ended.

The usage ledger is appended a batch at a time: the entries (opaque bytes, each with its
epoch time) and the batch's increments to the daily aggregates, keyed by (day, client, model,
target) and counter name. A batch is applied whole and at most once: appending a batch id
already applied changes nothing and returns False (a retry of a write that did land).
Entries are kept `retention` seconds, daily aggregates `daily_retention`; both are read back
by time (entries) or by day (aggregates), whatever process or replica wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.decide.ledger import DayKey
from gateway.decide.limits import Quota, Rate, Slots, Verdict
from gateway.values import value


class StoreUnavailable(Exception):
    """The store cannot be reached or used right now."""


@value
class IdemRecord:
    fingerprint: str
    owner: str
    state: str  # "running" | "done" | "failed"
    meta: bytes  # b"" until the owner writes one
    data: bytes  # the log, from the offset that was asked for
    lease: float  # seconds left on a running record's lease (<= 0: lapsed)


class Store(Protocol):
    def describe(self) -> str:
        """One line for the start banner, e.g. `sqlite .savepoint/savepoint.db`."""
        ...

    async def open(self) -> None: ...

    async def ping(self) -> None:
        """Raises `StoreUnavailable` if the store cannot serve requests."""
        ...

    async def close(self) -> None: ...

    async def eject(self, target: str, seconds: float) -> None:
        """Tell the other replicas that `target` is ejected (its breaker opened) for `seconds`."""
        ...

    async def ejections(self, targets: Sequence[str], since: float) -> dict[str, float]:
        """Seconds left on each of these targets' ejections, for those ejected and published
        at or after `since` (epoch seconds): a replica ignores what happened before it
        started, including its own previous life's ejections."""
        ...

    async def cache_get(self, key: str, group: str) -> bytes | None:
        """The value cached under `key` in `group`, or None if it is absent or expired."""
        ...

    async def cache_put(
        self, key: str, value: bytes, ttl: float, group: str, max_entries: int
    ) -> None:
        """Cache `value` under `key` in `group` for `ttl` seconds.

        Putting a key that is already there replaces its value and restarts its TTL and its
        age. Afterwards `group` holds at most `max_entries` live entries: the oldest by put time
        beyond that are evicted. Other groups are untouched. `key` is an opaque hex digest.
        """
        ...

    async def cache_delete(self, key: str, group: str) -> None:
        """Forget `key` in `group`; nothing happens if it is not cached."""
        ...

    async def journal_get(self, run: str, step: str) -> bytes | None:
        """The answer recorded for `step` of `run`, or None if absent or the run expired."""
        ...

    async def journal_put(self, run: str, step: str, value: bytes, meta: bytes, ttl: float) -> None:
        """Record `value` as the answer of `step` in `run` and append `meta` to its steps.

        Putting a step that is already recorded replaces its answer (the run still holds one
        answer for it) and still appends `meta`: the step list is a log of puts, not of steps.
        Afterwards the whole run (answers, metas, counters) expires `ttl` seconds from now; a
        run that had already expired starts afresh.
        """
        ...

    async def journal_steps(self, run: str) -> list[bytes]:
        """The metas of `run`'s puts, oldest first; [] for an unknown or expired run."""
        ...

    async def journal_count(self, run: str, counter: str, ttl: float) -> int:
        """Atomically add one to `counter` of `run` and return its new value (1 at first).

        Counters of a run are independent of each other and of other runs' counters. All the
        run's counters then expire `ttl` seconds from now (a put refreshes them too); an
        expired counter counts from 1 again.
        """
        ...

    async def journal_drop(self, run: str) -> int:
        """Delete `run` entirely (answers, metas, counters) and return how many live answers
        it held; 0 for an unknown or expired run."""
        ...

    async def idem_claim(
        self, key: str, fingerprint: str, owner: str, lease: float, ttl: float
    ) -> IdemRecord | None:
        """Atomically take `key` for `owner` and return None, or return the record that holds
        it (its whole log) and change nothing.

        `key` is taken when it is absent or expired, when its record failed, or when it runs
        on a lapsed lease (taken over). It then runs, with `fingerprint`, an empty meta and log,
        a lease of `lease` seconds, and expires `ttl` seconds from now.
        """
        ...

    async def idem_read(self, key: str, offset: int) -> IdemRecord | None:
        """The record under `key` with its log from byte `offset` on; None if absent."""
        ...

    async def idem_write(
        self,
        key: str,
        owner: str,
        meta: bytes,
        data: bytes,
        lease: float,
        at: int | None = None,
    ) -> bool:
        """As the owner of a running record: set its meta (unless `meta` is b""), append
        `data` to its log, renew its lease for `lease` seconds and keep the record at least
        that long. False, changing nothing, if the record is absent, not running, or `owner`
        no longer owns it.

        With `at`, `data` is the log from byte `at` on: the part of it the log already holds
        (a write reported as failed that did land) is not appended again; a log shorter than
        `at` changes nothing and gives False.
        """
        ...

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
        """As the owner of a running record: set its state (`done` or `failed`) and meta,
        append `data` to its log (`at` as in `idem_write`), and make it expire `ttl` seconds
        from now. False, changing nothing, under the same conditions as `idem_write`."""
        ...

    async def limits_admit(
        self,
        rates: Sequence[Rate],
        slots: Sequence[Slots],
        quotas: Sequence[Quota],
        request_id: str,
        lease: float,
    ) -> Verdict:
        """Atomically admit a request through all of these limits, or through none.

        Admitted: each rate's TAT moves ahead by its cost, the request holds a lease of
        `lease` seconds on each slots limit (until `limits_settle` releases it, or the lease
        lapses), and each quota's counter grows by its cost. Refused: nothing changes, and the
        verdict names the limit that blocked and when to retry. Exact under any concurrency,
        across processes and replicas: no two calls see the same state. Keys must be distinct
        within a kind (else ValueError). With no limits at all, the request is admitted
        without a call to the store. One round trip (one script call) on Redis.
        """
        ...

    async def limits_settle(
        self,
        rates: Sequence[Rate],
        quotas: Sequence[Quota],
        slots: Sequence[Slots],
        request_id: str,
    ) -> None:
        """Once a request is over: correct each rate and quota by its `cost`, which here is
        the delta `actual - reserved` (negative: a credit), never refusing (a debit may put a
        bucket in debt), and release the request's leases on `slots`. A quota correction for
        a period that already ended is dropped. Atomic; one round trip on Redis.
        """
        ...

    async def usage_append(
        self,
        batch: str,
        records: Sequence[tuple[float, bytes]],
        daily: Mapping[DayKey, Mapping[str, int]],
        retention: float,
        daily_retention: float,
    ) -> bool:
        """Append `records` (time, entry) and add `daily` to the aggregates, atomically and
        once per `batch` id: False, changing nothing, if that batch was applied before.
        Entries older than `retention` and aggregates older than `daily_retention` go."""
        ...

    async def usage_records(self, since: float, until: float) -> list[bytes]:
        """The entries appended with a time in [since, until), in no promised order; on
        Redis also others of the same UTC days (the caller filters by the time inside)."""
        ...

    async def usage_daily(self, first: str, last: str) -> list[tuple[DayKey, dict[str, int]]]:
        """The daily aggregates of the days from `first` to `last` (YYYY-MM-DD, inclusive)."""
        ...
