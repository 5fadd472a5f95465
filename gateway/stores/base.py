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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class StoreUnavailable(Exception):
    """The store cannot be reached or used right now."""


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
