"""The client side of a request, as the stages see it.

`reply` sends a whole answer. `commit` is the commit point of a stream: it sends the status
and headers, after which the status can no longer change, nothing can be retried
transparently, and a failure can only be reported as an error event in the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Downstream(Protocol):
    @property
    def committed(self) -> bool: ...

    @property
    def gone(self) -> bool:
        """The client went away (a write failed)."""
        ...

    async def reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None: ...

    async def commit(self, headers: Mapping[str, str]) -> None:
        """Start a 200 event stream. Raises `ClientDisconnected` if the client is gone."""
        ...

    async def write(self, data: bytes) -> None:
        """Send stream bytes. Raises `ClientDisconnected` if the client is gone."""
        ...

    async def finish(self) -> None: ...
