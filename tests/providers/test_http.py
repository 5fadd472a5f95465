"""The upstream HTTP client against a real socket server that answers byte for byte as told,
on both event loops the gateway may run on (uvloop's transports are not asyncio's)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from gateway.providers import http

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"),
         pytest.param(uvloop.new_event_loop, id="uvloop")]  # fmt: skip


class Server:
    """Counts connections and requests; `answer` writes each request's answer."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


def answering(*parts: bytes, close: bool = False, pause: float = 0.0, delay: float = 0.0) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if close:
            writer.close()

    return answer


OK_HEADERS = {"content-type": "application/json", "content-length": "11"}
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def run(loop: Callable[[], asyncio.AbstractEventLoop], test: Awaitable[Any]) -> Any:
    with asyncio.Runner(loop_factory=loop) as runner:
        return runner.run(test)  # type: ignore[arg-type]


async def post(pool: http.HttpPool, body: bytes = b"{}") -> tuple[int, dict[str, str], bytes]:
    response = await pool.post(b"/v1/chat/completions", b"X-Test: 1\r\n", body, 5.0)
    data = await response.read()
    response.release()
    return response.status, response.headers, data


@pytest.mark.parametrize("loop", LOOPS)
def test_requests_one_after_another_share_one_connection(loop: Any) -> None:
    async def test() -> None:
        async with Server(answering(OK)) as server:
            pool = http.HttpPool(server.url, 10)
            for _ in range(3):
                assert await post(pool) == (200, OK_HEADERS, b'{"ok":true}')
            await pool.close()
        assert server.connections == 1
        assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nX-Test: 1\r\n" in server.requests[0]
        assert server.requests[0].endswith(b"Content-Length: 2\r\n\r\n{}")

    run(loop, test())


@pytest.mark.parametrize("loop", LOOPS)
def test_chunked_close_delimited_and_gzip_bodies_are_read_whole(loop: Any) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n")  # fmt: skip
    packed = gzip.compress(b"hello world")
    zipped = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
              % (len(packed), packed))  # fmt: skip
    until_close = (b"HTTP/1.1 200 OK\r\n\r\nhello", b" world")

    async def test() -> None:
        for parts, close in ((chunked, False), ((zipped,), False), (until_close, True)):
            async with Server(answering(*parts, close=close, pause=0.01)) as server:
                pool = http.HttpPool(server.url, 10)
                assert (await post(pool))[2] == b"hello world"
                await pool.close()

    run(loop, test())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stream_is_read_as_it_arrives_and_a_cut_is_an_error_after_the_bytes(loop: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def test() -> None:
        async with Server(answering(head, b"3\r\none\r\n", b"3\r\ntwo\r\n", close=True,
                                    pause=0.05)) as server:  # fmt: skip
            pool = http.HttpPool(server.url, 10)
            response = await pool.post(b"/s", b"", b"{}", 5.0)
            assert await response.readany() == b"one"
            assert await response.readany() == b"two"
            with pytest.raises(http.Disconnected):
                await response.readany()
            response.close()
            await pool.close()

    run(loop, test())


@pytest.mark.parametrize("loop", LOOPS)
def test_no_more_than_max_connections_are_open_and_every_request_is_answered(loop: Any) -> None:
    async def test() -> None:
        async with Server(answering(OK, pause=0.02)) as server:
            pool = http.HttpPool(server.url, 2)
            answers = await asyncio.gather(*(post(pool) for _ in range(10)))
            await pool.close()
        assert [status for status, _, _ in answers] == [200] * 10
        assert server.most_open == 2

    run(loop, test())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_request_does_not_leave_its_connection_for_the_next(loop: Any) -> None:
    async def test() -> None:
        async with Server(answering(OK, delay=0.3)) as server:
            pool = http.HttpPool(server.url, 1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await post(pool)
            assert await post(pool) == (200, OK_HEADERS, b'{"ok":true}')
            await pool.close()
        assert server.connections == 2  # the first answer's late bytes went nowhere

    run(loop, test())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_the_server_closed_while_idle_is_not_reused(loop: Any) -> None:
    async def test() -> None:
        async with Server(answering(OK, close=True)) as server:
            pool = http.HttpPool(server.url, 10)
            for _ in range(3):
                assert (await post(pool))[0] == 200
                await asyncio.sleep(0.05)  # the close reaches the client
            await pool.close()
        assert server.connections == 3

    run(loop, test())


@pytest.mark.parametrize("loop", LOOPS)
def test_failures_are_typed(loop: Any) -> None:
    async def test() -> None:
        async with Server(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",
                                    close=True)) as server:  # fmt: skip
            pool = http.HttpPool(server.url, 10)
            with pytest.raises(http.Disconnected):
                await post(pool)
            await pool.close()
        async with Server(answering(b"SMTP ready\r\n\r\n")) as server:
            pool = http.HttpPool(server.url, 10)
            with pytest.raises(http.BadResponse):
                await post(pool)
            await pool.close()
        free = server.url  # closed now: nothing listens there
        pool = http.HttpPool(free, 10)
        with pytest.raises(http.ConnectFailed) as failed:
            await post(pool)
        assert failed.value.error.errno is not None
        await pool.close()

    run(loop, test())


def test_a_header_cannot_smuggle_a_line_break() -> None:
    assert http.header_block({"A": "1", "B-c": "two"}) == b"A: 1\r\nB-c: two\r\n"
    for bad in ({"A": "1\r\nX-Evil: 1"}, {"A\n": "1"}, {"A:B": "1"}):
        with pytest.raises(ValueError, match="line break"):
            http.header_block(bad)
