"""The HTTP/1.1 front: the generation routes on a lean protocol of their own, every other
request on aiohttp.

aiohttp's server costs about a fifth of a request's CPU with a production policy (a request
object, a multidict of headers, a middleware chain, a response object, its writer;
measured in docs/performance.md: the same pipeline behind this protocol does about a fifth
more requests a second). So every connection starts on `Front`, which looks at the request
line of each request:

- `POST` to `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` or `/v1/responses`
  (a query string allowed) is parsed here with httptools (llhttp, the parser aiohttp itself
  uses) and handed to the same `Pipeline` through the same `Inbound` and `Downstream` that
  `server.generation` builds: same stages, same errors (`server.error_reply`), same records.
- Anything else (`GET /v1/models`, the admin routes, `/metrics`, probes, 404s, 405s, bad
  request lines) hands the connection, with the bytes read so far, to aiohttp's own protocol
  for the rest of its life. A generation request that follows on that connection is served
  by aiohttp's route, which behaves the same (the tests run both).

What the front does itself, as aiohttp did: keep-alive (a connection that sends nothing
for `KEEPALIVE` seconds while no answer is being written is closed), HTTP/1.0 (closed after
each answer; a stream is sent unchunked), `Expect: 100-continue`, chunked request bodies,
the body limit (`server.max_body_bytes`: 413, after auth, as before), back-pressure on
streams (a slow reader pauses the writer), and a client that goes away cancels its request
(`handler_cancellation`: the pipeline's detach rules apply). A request head over `MAX_HEAD`
bytes is refused with 431 and a malformed one (or an `Upgrade`) with 400, both closing the
connection. Pipelined requests (sent before the answer to the one before) are answered in
order when they arrive in separate reads (reading pauses until the answer is out); a
pipelined request in the same read as a generation request is not answered: the connection
closes after the first answer (no client sends POSTs pipelined).
"""

from __future__ import annotations

import asyncio
import http
import logging
import os
import time
from collections.abc import Callable, Mapping

import httptools

from gateway.decide.auth import key_from_headers
from gateway.errors import ClientDisconnected, HeadTooLarge, InvalidRequest, SavepointError
from gateway.metrics import refused_limit
from gateway.model import Endpoint, Trace
from gateway.pipeline import Inbound, Pipeline
from gateway.server import INTERNAL_ERROR, check_json, error_reply, run_generation, too_large

log = logging.getLogger("savepoint")

KEEPALIVE = 75.0  # seconds an idle connection is kept open (aiohttp's default)
MAX_HEAD = 64 * 1024  # bytes of request line and headers
_ROUTES = {f"/v1{e.path}".encode(): e for e in Endpoint}
_LINES = tuple(b"POST " + path for path in _ROUTES)
_LONGEST = max(map(len, _LINES)) + 1  # the request line's bytes that decide: path and after
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class Shared:
    """What every connection of one worker shares: the pipeline and where requests are
    written, the limits, aiohttp's protocol factory, and the open connections."""

    def __init__(
        self,
        pipeline: Pipeline,
        records: Callable[[Trace, float, str | None], None],
        max_body: int,
        aiohttp_protocol: Callable[[], asyncio.Protocol],
    ):
        self.pipeline = pipeline
        self.records = records
        self.max_body = max_body
        self.aiohttp_protocol = aiohttp_protocol
        self.connections: set[Front] = set()

    def close_all(self) -> None:
        for front in list(self.connections):
            front.close()


def _route(start: bytes) -> bool | None:
    """Whether a request starting with these bytes is the front's (True), aiohttp's (False),
    or not known yet (None: too few bytes)."""
    for line in _LINES:
        if start.startswith(line):
            if len(start) == len(line):
                return None
            return start[len(line)] in b" ?"
        if line.startswith(start):
            return None
    return False


class Front(asyncio.Protocol):
    """One client connection, while its requests are generation requests."""

    def __init__(self, shared: Shared):
        self._shared = shared
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending = b""  # bytes of a request not routed yet, or not started yet
        self._in_message = False  # the parser is inside a request
        self._answering = False  # a request has been read and its answer is not out yet
        self._pipelined = False  # a request arrived in the same read as the one before
        self._closing = False  # close once the answer is out
        self._paused: asyncio.Future[None] | None = None  # set while the writer is paused
        self._idle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._url = b""
        self._head = 0
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport
        self._shared.connections.add(self)
        self._rest()

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self._in_message:
            data = self._pending + data
            if self._answering:  # the next request, before this answer is out: later
                self._pending = data
                if self._transport is not None:
                    self._transport.pause_reading()  # until then, the socket holds the rest
                return
            route = _route(data[:_LONGEST])
            if route is None:
                self._pending = data
                self._rest()
                return
            self._pending = b""
            if not route:
                self._hand_over(data)
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, HeadTooLarge):
                raise
            self._refuse(e.__context__)
        except httptools.HttpParserError as e:
            self._refuse(InvalidRequest(f"malformed HTTP request: {e}", code="malformed_request"))
        except httptools.HttpParserUpgrade:
            self._refuse(
                InvalidRequest("protocol upgrades are not supported", code="malformed_request")
            )
        if not self._answering:  # part of a request: it has KEEPALIVE seconds to send more
            self._rest()

    def connection_lost(self, exc: Exception | None) -> None:
        self._shared.connections.discard(self)
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        self.resume_writing()  # a stream waiting to write finds the client gone
        if self._answering and self._task is not None:
            self._task.cancel()  # the client went away: its request stops (or detaches)

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    # httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        if self._answering:
            self._pipelined = True  # in the same read as the request being answered
        self._url, self._head, self._headers, self._body, self._size = b"", 0, {}, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value))
        self._headers.setdefault(name.lower(), value)  # the first of a repeated header

    def on_headers_complete(self) -> None:
        expect = self._headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and not self._pipelined:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= self._shared.max_body:  # past it, read and dropped: 413
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._pipelined:
            self._closing = True  # not answered: the connection closes after the answer
            return
        path = self._url.partition(b"?")[0]
        endpoint = _ROUTES.get(path)
        if endpoint is None:  # the path was routed here: only a parser oddity gets this
            self._refuse(InvalidRequest("malformed request line", code="malformed_request"))
            return
        keep = self._parser.should_keep_alive() and not self._closing
        chunked = self._parser.get_http_version() != "1.0"
        body = b"".join(self._body) if self._size <= self._shared.max_body else None
        self._answering = True
        self._task = self._loop.create_task(
            self._answer(endpoint, path.decode("latin-1"), self._headers, body, keep, chunked)
        )

    # Answering ----------------------------------------------------------------------------

    async def _answer(
        self,
        endpoint: Endpoint,
        path: str,
        headers: Mapping[bytes, bytes],
        body: bytes | None,
        keep: bool,
        chunked: bool,
    ) -> None:
        """What `server.errors_and_access_log` and `server.generation` do for aiohttp."""
        trace = Trace(os.urandom(16).hex(), "POST", path, time.monotonic())
        reply = _Reply(self, keep, chunked)
        limit = self._shared.max_body

        def header(name: bytes) -> str | None:
            value = headers.get(name)
            return value.decode("latin-1") if value is not None else None

        async def read_body() -> bytes:
            check_json(header(b"content-type"))
            if body is None:
                raise too_large(limit)
            return body

        inbound = Inbound(
            endpoint=endpoint,
            api_key=key_from_headers(header(b"authorization"), header(b"x-api-key")),
            read_timeout=header(b"x-stainless-read-timeout"),
            cache_control=header(b"cache-control"),
            run=header(b"x-savepoint-run"),
            attempt=header(b"x-savepoint-attempt"),
            idempotency_key=header(b"idempotency-key"),
            read_body=read_body,
        )
        refused: str | None = None
        try:
            await run_generation(self._shared.pipeline, inbound, reply, trace)
            trace.status = trace.status or reply.status
        except SavepointError as error:
            refused = refused_limit(error)
            await reply.reply(*error_reply(error, trace))
        except ClientDisconnected:
            trace.status = 499
            self.close()
        except asyncio.CancelledError:
            if not trace.detached:
                trace.status = 499  # the client went away
            raise
        except Exception:
            log.exception("internal error on POST %s (request %s)", path, trace.request_id)
            trace.status, trace.error_code = 500, "internal_error"
            await reply.reply(500, {"Content-Type": "application/json"}, INTERNAL_ERROR)
        finally:
            if self._answering and self._task is asyncio.current_task():
                self._closing = True  # its answer never went out: nothing may follow it
                self.answered()
            if not trace.detached:
                self._shared.records(trace, time.monotonic(), refused)

    def answered(self) -> None:
        """The answer is out: close, or take the next request (already read, or to come)."""
        self._answering = False
        self._task = None
        if self._closing:
            self.close()
        elif self._pending:
            if self._transport is not None:
                self._transport.resume_reading()
            self.data_received(b"")
        else:
            self._rest()

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drained(self) -> None:
        """Wait while the client reads slower than the answer is written."""
        if self._paused is not None:
            await self._paused

    @property
    def gone(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._answering:
            self._transport.close()

    # Helpers ------------------------------------------------------------------------------

    def _rest(self) -> None:
        """Waiting for a request, or the rest of one: closed after `KEEPALIVE` seconds
        without a byte."""
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self._loop.call_later(KEEPALIVE, self.close)

    def _grow(self, size: int) -> None:
        self._head += size
        if self._head > MAX_HEAD:
            raise HeadTooLarge(
                f"the request's line and headers are over {MAX_HEAD} bytes; send less in headers"
            )

    def _hand_over(self, data: bytes) -> None:
        """The rest of this connection is aiohttp's, from the request that starts `data`."""
        assert self._transport is not None
        self._shared.connections.discard(self)
        protocol = self._shared.aiohttp_protocol()
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        protocol.data_received(data)
        self._transport = None

    def _refuse(self, error: SavepointError) -> None:
        """A request the front cannot read: answered (when nothing else is being answered)
        with an OpenAI-shaped error, and the connection closed."""
        self._closing = True
        if self._answering:
            return
        trace = Trace(os.urandom(16).hex(), "POST", "", time.monotonic())
        status, headers, body = error_reply(error, trace)
        self.write(_head(status, headers, len(body), False, False) + body)
        self.close()


class _Reply:
    """`Downstream` over a `Front` connection. A stream's head goes out with its first bytes
    (one write, as aiohttp does)."""

    __slots__ = ("_chunked", "_front", "_head", "_keep", "committed", "status")

    def __init__(self, front: Front, keep: bool, chunked: bool):
        self._front = front
        self._keep = keep
        self._chunked = chunked
        self._head = b""  # a committed stream's head, until its first bytes
        self.committed = False
        self.status = 0

    @property
    def gone(self) -> bool:
        return self._front.gone

    async def reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        keep = self._keep and not self._front.gone
        self._front.write(_head(status, headers, len(body), keep, False) + body)
        if not keep:
            self._front.close()
        self._front.answered()

    async def commit(self, headers: Mapping[str, str]) -> None:
        if self._front.gone:
            raise ClientDisconnected()
        self.status = 200
        keep = self._keep and self._chunked
        self._head = _head(200, headers, None, keep, self._chunked)
        if not keep:
            self._front.close()
        self.committed = True

    async def write(self, data: bytes) -> None:
        if self._front.gone:
            raise ClientDisconnected()
        if not data:
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._front.write(self._head + data if self._head else data)
        self._head = b""
        await self._front.drained()

    async def finish(self) -> None:
        if self._front.gone:
            raise ClientDisconnected()
        self._front.write(self._head + b"0\r\n\r\n" if self._chunked else self._head)
        self._head = b""
        self._front.answered()


def _head(
    status: int, headers: Mapping[str, str], length: int | None, keep: bool, chunked: bool
) -> bytes:
    """A response's status line and headers; `length` None: a stream (chunked, or ended by
    closing the connection)."""
    lines = [b"HTTP/1.1 %d %b" % (status, _PHRASES.get(status, b"Unknown"))]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    elif chunked:
        lines.append(b"Transfer-Encoding: chunked")
    lines.append(b"Connection: keep-alive" if keep else b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def serve(shared: Shared, host: str, port: int, reuse_port: bool) -> asyncio.Server:
    """Listen: every connection starts on a `Front`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Front(shared), host, port, backlog=2048, reuse_port=reuse_port or None
    )
