"""A lean Redis client for the hot path: one connection, every command pipelined on it.

Owns: the connection (TCP, TLS or a Unix socket; AUTH and SELECT on connect), the commands'
bytes (RESP), the replies (hiredis' parser) and Lua scripts by SHA. What it raises is
`StoreUnavailable`, as the store's other calls.

Why: redis-py's asyncio client spent about 110 µs of the event loop per command (its pool,
retry wrapper, timeout context and command packing in Python), and a request that is admitted
by limits and misses the cache sends four. Here a command costs a packed write and a future:
commands issued in the same loop iteration go out in one write, and their replies come back
in order on the same connection, so concurrent requests pipeline without asking to.

A command that waits longer than `timeout` for its reply (Redis hung, or the network gone
silent) closes the connection, failing every command on it; the next one reconnects. Redis
answers commands on one connection in order, so one slow command (a big value) delays those
behind it: the values here are small, and a script's work is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from gateway.stores.base import StoreUnavailable

Arg = str | bytes | int | float

_PLAIN_QUERY: Final = frozenset(("db",))


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script, called by its SHA1 (loaded on the first NOSCRIPT)."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class Address:
    host: str | None
    port: int
    path: str | None  # a Unix socket
    tls: bool
    username: str | None
    password: str | None
    db: int

    @staticmethod
    def parse(url: str) -> Address | None:
        """The address of a redis://, rediss:// or unix:// URL; None for a URL that carries
        options this client does not implement (redis-py's own query parameters)."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme not in ("redis", "rediss", "unix") or set(query) - _PLAIN_QUERY:
            return None
        db = int(query["db"][0]) if "db" in query else 0
        if parts.scheme != "unix" and parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        return Address(
            host=parts.hostname if parts.scheme != "unix" else None,
            port=parts.port or 6379,
            path=unquote(parts.path) if parts.scheme == "unix" else None,
            tls=parts.scheme == "rediss",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=db,
        )


class RespClient:
    def __init__(self, address: Address, describe: str, timeout: float = 2.0):
        self._address = address
        self._describe = describe  # for messages: the URL without its password
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def call(self, *args: Arg) -> Any:
        """One command's reply; StoreUnavailable if Redis cannot be reached or answers an
        error."""
        return self._checked(await (await self._connected()).send(args))

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """A script's reply (EVALSHA, or EVAL the first time this server sees it)."""
        connection = await self._connected()
        reply = await connection.send(("EVALSHA", script.sha, len(keys), *keys, *args))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await connection.send(("EVAL", script.source, len(keys), *keys, *args))
        return self._checked(reply)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _checked(self, reply: Any) -> Any:
        if isinstance(reply, hiredis.ReplyError):
            raise StoreUnavailable(f"Redis at {self._describe}: {reply}")
        return reply

    async def _connected(self) -> _Connection:
        """The connection, (re)opened once however many calls are waiting for it."""
        if self._connection is not None and not self._connection.closed:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            opening = asyncio.ensure_future(self._open())
            opening.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, opening: asyncio.Future[_Connection]) -> None:
        waiting, self._connecting = self._connecting, None
        assert waiting is not None
        if opening.cancelled():
            waiting.set_exception(StoreUnavailable(f"Redis at {self._describe}: cancelled"))
        elif (error := opening.exception()) is not None:
            waiting.set_exception(error)
        else:
            self._connection = opening.result()
            waiting.set_result(self._connection)
        if not waiting.cancelled():
            waiting.exception()  # retrieved: no "never retrieved" warning if nobody waits

    async def _open(self) -> _Connection:
        a, loop = self._address, asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                if a.path is not None:
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self._timeout, self._describe), a.path
                    )
                else:
                    context = ssl.create_default_context() if a.tls else None
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self._timeout, self._describe),
                        a.host or "localhost", a.port, ssl=context,
                    )  # fmt: skip
                hello: list[tuple[Arg, ...]] = []
                if a.password is not None:
                    hello.append(("AUTH", *([a.username] if a.username else []), a.password))
                if a.db:
                    hello.append(("SELECT", a.db))
                for command in hello:
                    reply = await connection.send(command)
                    if isinstance(reply, hiredis.ReplyError):
                        connection.close()
                        raise StoreUnavailable(f"Redis at {self._describe}: {reply}")
        except TimeoutError:
            raise StoreUnavailable(
                f"Redis at {self._describe}: no connection within {self._timeout:g}s"
            ) from None
        except OSError as e:
            raise StoreUnavailable(f"Redis at {self._describe}: {e}") from None
        return connection


class _Connection(asyncio.Protocol):
    """Commands out in order, replies back in order, matched by a queue of futures."""

    def __init__(self, timeout: float, describe: str):
        self._timeout = timeout
        self._describe = describe
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False
        self._error = "the connection is closed"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as e:
                self._fail(f"unreadable reply: {e}")
                return
            if reply is False:
                return
            if not self._waiting:
                self._fail("a reply nobody asked for")
                return
            future, _ = self._waiting.popleft()
            if not future.done():  # its caller may have been cancelled
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"the connection was lost: {exc}" if exc else "the connection was closed")

    def send(self, args: Sequence[Arg]) -> asyncio.Future[Any]:
        if self.closed:
            raise StoreUnavailable(f"Redis at {self._describe}: {self._error}")
        future = self._loop.create_future()
        self._waiting.append((future, self._loop.time()))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(_pack(args))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout, self._check)
        return future

    def close(self) -> None:
        self._fail("the connection was closed")

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.closed:
            self._transport.write(b"".join(out))

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        waited = self._loop.time() - self._waiting[0][1]
        if waited >= self._timeout:
            self._fail(f"no reply within {self._timeout:g}s")
        else:
            self._watchdog = self._loop.call_later(self._timeout - waited, self._check)

    def _fail(self, reason: str) -> None:
        if not self.closed:
            self.closed, self._error = True, reason
            if self._transport is not None:
                self._transport.close()
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable(f"Redis at {self._describe}: {reason}"))


def _pack(args: Sequence[Arg]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
