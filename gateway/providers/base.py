"""The provider seam: one `send` that owns all upstream I/O.

A provider turns an `UpstreamRequest` into an `UpstreamReply` and translates every foreign
exception (aiohttp, OS, timeouts) into `gateway.errors.UpstreamError` subclasses; nothing
above this seam sees a library's exception.

For a stream, `send` returns only once the first event has arrived (or fails with a timeout):
until then nothing has been sent to the client, so the caller can still answer with an error
status, or (later) retry elsewhere. After that, events come through `EventStream.next_run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.config.schema import Timeouts
from gateway.errors import SavepointError
from gateway.model import Endpoint
from gateway.values import value


@value
class UpstreamRequest:
    endpoint: Endpoint
    body: bytes  # JSON, with the model name already rewritten to the upstream's
    stream: bool
    timeouts: Timeouts
    request_id: str  # ours, sent upstream as X-Client-Request-Id for cross-referencing


class EventStream(Protocol):
    """The rest of an upstream SSE stream, as runs of complete events (verbatim bytes)."""

    async def next_run(self) -> bytes:
        """The next complete events; b"" once the terminal event has been passed on. Raises
        `UpstreamError` if the stream breaks, stalls or ends without its terminal event."""
        ...

    def abort(self, reason: SavepointError) -> None:
        """Stop reading now; the pending or next `next_run` raises `reason`."""
        ...

    def close(self) -> None: ...


@value
class UpstreamReply:
    status: int
    headers: Mapping[str, str]  # only the headers worth passing on (request id, retry-after...)
    body: bytes = b""  # the whole body, unless this is a successful stream
    first_run: bytes = b""  # the stream's first events, already received
    events: EventStream | None = None


class Provider(Protocol):
    name: str

    async def send(self, request: UpstreamRequest) -> UpstreamReply: ...

    def scrub(self, body: bytes) -> bytes:
        """`body` with this provider's credentials blanked out, before it is passed on."""
        ...

    async def close(self) -> None: ...
