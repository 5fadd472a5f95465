"""The hot path's Redis client against a redis-server of its own (password `hunter2`)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from harness import OwnRedis

from gateway.stores.base import StoreUnavailable
from gateway.stores.resp import Address, RespClient, Script


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(test())  # type: ignore[arg-type]


def client(redis: OwnRedis, url: str | None = None, timeout: float = 2.0) -> RespClient:
    address = Address.parse(url or redis.url)
    assert address is not None
    return RespClient(address, "test", timeout)


def cli(redis: OwnRedis, *args: str) -> str:
    argv = ["redis-cli", "-p", str(redis.port), "-a", "hunter2", "--no-auth-warning", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def test_concurrent_commands_share_one_connection_and_each_gets_its_own_reply(
    own_redis: OwnRedis,
) -> None:
    async def test() -> list[Any]:
        redis = client(own_redis)
        await asyncio.gather(*(redis.call("SET", f"k{i}", i) for i in range(300)))
        values = await asyncio.gather(*(redis.call("GET", f"k{i}") for i in range(300)))
        clients = await redis.call("CLIENT", "LIST")
        await redis.close()
        return [values, clients]

    values, clients = run(test)
    assert values == [str(i).encode() for i in range(300)]
    assert clients.count(b"cmd=client") == 1  # one connection, and it is ours


def test_a_script_runs_by_sha_and_is_loaded_again_after_a_flush(own_redis: OwnRedis) -> None:
    script = Script("return {KEYS[1], ARGV[1], 7}")

    async def test() -> list[Any]:
        redis = client(own_redis)
        first = await redis.run(script, ["a"], [b"x"])
        await redis.call("SCRIPT", "FLUSH")
        again = await redis.run(script, ["b"], [2.5])
        await redis.close()
        return [first, again]

    assert run(test) == [[b"a", b"x", 7], [b"b", b"2.5", 7]]


def test_an_error_reply_is_a_store_error_with_redis_message(own_redis: OwnRedis) -> None:
    async def test() -> None:
        redis = client(own_redis)
        await redis.call("SET", "s", "text")
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            await redis.call("LPUSH", "s", "x")
        assert await redis.call("GET", "s") == b"text"  # the connection carries on
        await redis.close()

    run(test)


def test_password_and_database_come_from_the_url(own_redis: OwnRedis) -> None:
    wrong = f"redis://:nope@127.0.0.1:{own_redis.port}/0"
    in_db3 = f"redis://:hunter2@127.0.0.1:{own_redis.port}/3"

    async def test() -> None:
        with pytest.raises(StoreUnavailable) as refused:
            await client(own_redis, wrong).call("PING")
        assert "nope" not in str(refused.value) and "WRONGPASS" in str(refused.value)
        redis = client(own_redis, in_db3)
        await redis.call("SET", "where", "db3")
        await redis.close()

    run(test)
    assert cli(own_redis, "-n", "3", "GET", "where") == "db3"
    assert cli(own_redis, "-n", "0", "EXISTS", "where") == "0"


def test_a_restarted_server_is_reconnected_to(own_redis: OwnRedis) -> None:
    async def test() -> None:
        redis = client(own_redis)
        assert await redis.call("PING") == b"PONG"
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            await redis.call("PING")
        own_redis.start()
        assert await redis.call("PING") == b"PONG"
        await redis.close()

    run(test)


def test_a_server_that_stops_answering_fails_the_calls_within_the_timeout(
    own_redis: OwnRedis,
) -> None:
    async def test() -> float:
        redis = client(own_redis, timeout=0.3)
        await redis.call("PING")
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)  # hung: the socket is open, nothing answers
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"no reply within 0\.3s"):
                await redis.call("PING")
            waited = time.monotonic() - started
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        assert await redis.call("PING") == b"PONG"  # on a new connection
        await redis.close()
        return waited

    assert run(test) < 1.0


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6379/0", Address("127.0.0.1", 6379, None, False, None, None, 0)),
        ("rediss://u:p%40ss@r.internal:6380/2",
         Address("r.internal", 6380, None, True, "u", "p@ss", 2)),
        ("redis://:pw@host?db=4", Address("host", 6379, None, False, None, "pw", 4)),
        ("unix:///run/redis.sock?db=1",
         Address(None, 6379, "/run/redis.sock", False, None, None, 1)),
        ("redis://host:6379/0?socket_timeout=5", None),
        ("http://host", None),
    ],
)  # fmt: skip
def test_urls(url: str, address: Address | None) -> None:
    assert Address.parse(url) == address
