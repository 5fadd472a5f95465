"""The store contract, run against every implementation (embedded SQLite and Redis)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import Gateways, free_port

from gateway.stores.base import Store, StoreUnavailable
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return SqliteStore(str(tmp_path / "nested" / "sp.db"))
    return RedisStore("redis://127.0.0.1:6379/0")


@pytest.fixture
def own_redis() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A redis-server of our own, so stopping it does not disturb anything else."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port, proc
    proc.terminate()
    proc.wait(10)


def test_store_opens_answers_ping_and_closes(store: Store) -> None:
    async def run() -> None:
        await store.open()
        await store.ping()
        await store.close()

    asyncio.run(run())
    assert store.describe().split()[0] in ("sqlite", "redis")


def test_sqlite_store_creates_its_directory_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "sp.db"

    async def run() -> None:
        s = SqliteStore(str(path))
        await s.open()
        await s.close()

    asyncio.run(run())
    import sqlite3

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_redis_outage_is_store_unavailable_and_the_password_is_never_shown(
    own_redis: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = own_redis
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in store.describe()

    async def ping() -> str:
        try:
            await store.ping()
            return "ok"
        except StoreUnavailable as e:
            return str(e)

    async def run() -> tuple[str, str]:
        await store.open()
        try:
            proc.terminate()
            proc.wait(10)
            down = await ping()
            return down, "hunter2" if "hunter2" in down else "clean"
        finally:
            await store.close()

    down, leaked = asyncio.run(run())
    assert down.startswith("Redis at redis://***@127.0.0.1")
    assert leaked == "clean"


def test_readyz_reports_the_store_but_stays_ready(gateways: Gateways) -> None:
    port = free_port()  # nothing listens here: the Redis store is down from the start
    gw = gateways.start(f"""
version: 1
store: {{kind: redis, url: "redis://127.0.0.1:{port}/0"}}
providers: {{m: {{kind: mock}}}}
models: {{x: {{targets: [m/mock-gpt]}}}}
""")
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["status"] == "ready"
    assert ready["store"].startswith("unavailable: Redis at redis://127.0.0.1")
    assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}
    reply = gw.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content


def test_ejections_are_shared_and_expire(store: Store) -> None:
    target = f"contract-{os.getpid()}-{time.monotonic_ns()}/m"

    async def run() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        await store.open()
        try:
            assert await store.ejections([target]) == {}
            await store.eject(target, 0.3)
            live = await store.ejections([target, "never/ejected"])
            await store.eject(target, 0.1)  # a shorter ejection does not cut a longer one
            still = await store.ejections([target])
            await asyncio.sleep(0.35)
            return live, still, await store.ejections([target])
        finally:
            await store.close()

    live, still, expired = asyncio.run(run())
    assert list(live) == [target] and 0.2 < live[target] <= 0.3
    assert 0.15 < still[target] <= 0.3
    assert expired == {}
