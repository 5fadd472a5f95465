"""The store seam. Every shared or durable state goes through a `Store`.

Implementations translate their library's exceptions into `StoreUnavailable`, and never block
the event loop (SQLite runs in a worker thread; Redis uses redis.asyncio). Today it holds the
ejections that replicas share (a deployment whose breaker opened in one replica is skipped by
all); the cache, idempotency records, run journals, limits and the usage ledger add their
operations here.
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

    async def ejections(self, targets: Sequence[str]) -> dict[str, float]:
        """Seconds left on each of these targets' ejections, for those ejected."""
        ...
