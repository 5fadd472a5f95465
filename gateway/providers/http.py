"""A lean HTTP/1.1 client for the upstream side: one keep-alive connection pool per provider.

Owns: connections to one origin (TCP or TLS), their reuse, the request's bytes on the wire,
and the answer's status, headers and body (httptools' llhttp parser: Content-Length,
chunked, read-until-close). It knows nothing of OpenAI, timeouts other than the connect
timeout, or our error types: `providers.openai` translates its four exceptions.

Why not aiohttp's client: the gateway sends one kind of request (a POST of a JSON body it
already holds as bytes) to a handful of origins, and aiohttp's general client spent about
115-165 µs of CPU per request doing it, against 32-40 µs here (a loop of requests to the mock,
`python loadtests/profile_path.py` shows the whole path). No cookies, redirects, proxies or
Expect: 100-continue, which an LLM API does not use; no Accept-Encoding is sent, so answers
come uncompressed (gzip and deflate are still decoded if a server compresses anyway).

A connection goes back to the pool only once its answer was read to the end and the server
did not ask to close it; anything else (a cancelled request, an answer abandoned halfway, a
parse error) closes it. Idle connections are dropped after `idle_seconds` (15 s, as aiohttp),
before a server that closes idle connections is likely to have done so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import zlib
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

_PAUSE_AT: Final = 256 * 1024  # a stream's unread bytes past which the socket stops being read
_CHUNK_MARK: Final = "chunked"


class HttpError(Exception):
    """The base of what the pool raises."""


class ConnectFailed(HttpError):
    def __init__(self, host: str, port: int, error: OSError):
        super().__init__(f"cannot connect to {host}:{port}: {error}")
        self.host, self.port, self.error = host, port, error


class ConnectTimedOut(HttpError):
    pass


class Disconnected(HttpError):
    """The server closed the connection (or reset it) before the answer was complete."""


class BadResponse(HttpError):
    """The server's bytes are not an HTTP/1.1 answer we can read."""


def header_block(headers: dict[str, str]) -> bytes:
    """Header lines (`Name: value\\r\\n` each) for `HttpPool.post`; refuses a line break in a
    name or value (it would let the value write headers or requests of its own)."""
    lines = []
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
            raise ValueError(f"header {name!r} holds a line break, NUL or colon")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class HttpPool:
    """Keep-alive connections to one origin (`base_url`'s scheme, host and port), at most
    `max_connections` open at once: past that, a request waits for one to be released."""

    def __init__(self, base_url: str, max_connections: int, idle_seconds: float = 15.0):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        default = self.port == (443 if url.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"Host: {host if default else f'{host}:{self.port}'}\r\n".encode()
        self._max = max_connections
        self._idle_seconds = idle_seconds
        self._idle: collections.deque[_Connection] = collections.deque()  # newest on the right
        self._open = 0  # connections open or being opened, idle ones included
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def post(
        self, target: bytes, headers: bytes, body: bytes, connect_timeout: float
    ) -> HttpResponse:
        """Send `POST target` with `headers` (see `header_block`) and `body`; the response once
        its status and headers have arrived (its body is read from it)."""
        connection = await self._acquire(connect_timeout)
        try:
            connection.send(
                b"POST %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n"
                % (target, self._host_line, headers, len(body)),
                body,
            )
            return await connection.response()
        except BaseException:
            connection.close()
            raise

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed(self.host, self.port, OSError("pool closed")))

    async def _acquire(self, connect_timeout: float) -> _Connection:
        if self._closed:
            raise ConnectFailed(self.host, self.port, OSError("pool closed"))
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and now - connection.idle_since < self._idle_seconds:
                connection.busy = True
                return connection
            connection.close()  # its slot is given back by `_gone`
        if self._open >= self._max:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # a slot or an idle connection was handed over
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake()  # handed over to us as we were cancelled: pass it on
                elif not waiter.done():
                    self._waiters.remove(waiter)
                raise
            return await self._acquire(connect_timeout)
        self._open += 1
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port,
                    ssl=self._ssl, server_hostname=self.host if self._ssl else None,
                )  # fmt: skip
        except TimeoutError:
            self._gone()
            raise ConnectTimedOut(f"no connection to {self.host}:{self.port} in time") from None
        except OSError as e:
            self._gone()
            raise ConnectFailed(self.host, self.port, e) from None
        except BaseException:
            self._gone()
            raise
        connection.busy = True
        return connection

    def _release(self, connection: _Connection) -> None:
        """A connection whose answer was read to its end, and that may be reused."""
        connection.busy = False
        connection.idle_since = asyncio.get_running_loop().time()
        if self._closed:
            connection.close()
            return
        self._idle.append(connection)
        self._wake()

    def _gone(self) -> None:
        """A connection closed (or failed to open): its slot is free."""
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _forget(self, connection: _Connection) -> None:
        """An idle connection the server closed."""
        with contextlib.suppress(ValueError):  # it was not idle
            self._idle.remove(connection)


class HttpResponse:
    """An answer's status and headers (names lower-case), and its body to read."""

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, connection: _Connection, status: int, headers: dict[str, str]):
        self._connection: _Connection | None = connection
        self.status = status
        self.headers = headers

    async def read(self) -> bytes:
        """The whole body."""
        assert self._connection is not None, "read after release"
        return await self._connection.read_all()

    async def readany(self) -> bytes:
        """The body's bytes that have arrived (waiting for some); b"" at its end."""
        assert self._connection is not None, "read after release"
        return await self._connection.read_some()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if the body was read
        to its end and may be reused, else it is closed."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finish()

    def close(self) -> None:
        """Done with the answer, whatever is left of it: its connection is closed."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class _Connection(asyncio.Protocol):
    """One connection, and the answer to its current request (parser callbacks below)."""

    def __init__(self, pool: HttpPool):
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.idle_since = 0.0
        self._gone = False
        self._head: asyncio.Future[HttpResponse] | None = None
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._to_close = False  # the server closes the connection after this answer
        self._until_close = False  # no length and not chunked: the body ends with the connection
        self._error: HttpError | None = None
        self._paused = False
        self._whole = False  # the body is read whole: never stop reading the socket
        self._inflate: zlib._Decompress | None = None

    @property
    def usable(self) -> bool:
        return not self._gone and self._error is None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._head is None and not self.busy:  # bytes nobody asked for: not reusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(BadResponse(f"unreadable HTTP answer: {e}"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport (no half-open connections)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._gone:
            return
        self._gone = True
        if self._until_close and self._head is None and not self._complete:
            self._end()  # a body without a length ends with the connection
        elif not self._complete or self._head is not None:
            reason = f": {exc}" if exc is not None else ""
            self._fail(Disconnected(f"the server closed the connection{reason}"))
        if not self.busy:
            self._pool._forget(self)
        self._pool._gone()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        headers, self._headers = self._headers, {}
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        if not self._parser.should_keep_alive():
            self._to_close = True
        if "content-length" not in headers and _CHUNK_MARK not in headers.get(
            "transfer-encoding", ""
        ):
            self._until_close = self._to_close = True
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(wbits=47)  # gzip or zlib header, found out
        elif encoding != "identity":
            self._fail(BadResponse(f"the answer's body is {encoding}-encoded, not decodable"))
            return
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(HttpResponse(self, status, headers))

    def on_body(self, body: bytes) -> None:
        if self._inflate is not None:
            try:
                body = self._inflate.decompress(body)
            except zlib.error as e:
                self._fail(BadResponse(f"the answer's compressed body is corrupt: {e}"))
                self.close()
                return
        if body:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > _PAUSE_AT and not self._whole and not self._paused:
                self._paused = True
                assert self._transport is not None
                self._transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self._head is not None:  # the end of an interim answer
            return
        self._end()

    # the request side

    def send(self, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        self._head = asyncio.get_running_loop().create_future()
        self._chunks, self._buffered, self._complete = [], 0, False
        self._whole = self._paused = False
        self._inflate = None
        self._transport.writelines((head, body))

    async def response(self) -> HttpResponse:
        assert self._head is not None
        if self._error is not None:
            raise self._error
        return await self._head

    async def read_all(self) -> bytes:
        self._whole = True
        self._resume()
        while not self._complete:
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return body

    async def read_some(self) -> bytes:
        while not self._chunks:
            if self._complete:
                return b""
            await self._wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        self._resume()
        return data

    def finish(self) -> None:
        """The answer is done with: reuse the connection if it was read to its end."""
        if self._complete and not self._chunks and not self._to_close and self.usable:
            self._pool._release(self)
        else:
            self.close()

    def close(self) -> None:
        if self._transport is not None and not self._gone:
            self._transport.close()  # connection_lost follows, and gives the slot back
        self.busy = False

    # inner workings

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._complete:
            raise self._error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._transport is not None and not self._gone:
                self._transport.resume_reading()

    def _end(self) -> None:
        if self._inflate is not None:
            rest = self._inflate.flush()
            if rest:
                self._chunks.append(rest)
        self._complete = True
        self._wake()

    def _fail(self, error: HttpError) -> None:
        if self._error is None:
            self._error = error
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)  # _wait raises the error
