"""Test harness: runs the gateway and the mock provider as they run in production: real
processes (`python -m gateway ...`), real sockets, the real `openai` SDK as the client."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from redis.exceptions import RedisError

from gateway.stores.base import StoreUnavailable

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KEY = "sk-provider-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A `python -m gateway ...` child; stdout is the banner, stderr the logs."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.args = args
        fd, self._stderr_path = tempfile.mkstemp(prefix="savepoint-", suffix=".log")
        # asyncio debug mode logs every callback that holds the event loop for more than
        # 100 ms ("Executing ... took 0.2 seconds"): `loop_stalls` turns those into failures.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONASYNCIODEBUG": "1", **(env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=fd,
            text=True,
        )
        os.close(fd)

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.args} exited {self.popen.returncode}:\n{self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.args} did not listen on {port}:\n{self.stderr()}")

    def stderr(self) -> str:
        return Path(self._stderr_path).read_text()

    def access_log(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def loop_stalls(self) -> list[str]:
        """Lines where asyncio reported a blocking call on the event loop: a callback that ran
        for more than 0.1 s. Not the timer callbacks that only wake a sleeping task or fire a
        timeout (`_set_result_unless_cancelled`, aiohttp's `_weakref_handle`): they cannot
        block, so one reported slow means the process was not running (a busy or virtual
        machine), which is not what this check is about."""
        return [line for line in self.stderr().splitlines()
                if line.startswith("Executing <") and not _TRIVIAL_TIMER.search(line)]  # fmt: skip

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


_TRIVIAL_TIMER = re.compile(
    r"^Executing <TimerHandle (cancelled )?(_set_result_unless_cancelled|_weakref_handle) "
)


class Mock:
    def __init__(self, proc: Proc, port: int):
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_mock/stats").json())

    def scope_count(self, scope: str) -> int:
        return int(self.stats()["by_scope"].get(scope, 0))

    def requests(self, limit: int = 200) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/_mock/requests", params={"limit": limit}).json())


class Gateway:
    def __init__(self, proc: Proc, port: int):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"

    def client(self, api_key: str = "unused", **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(api_key=api_key, base_url=self.base_url, **kwargs)

    def async_client(self, api_key: str = "unused", **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(api_key=api_key, base_url=self.base_url, **kwargs)

    def log_for(self, request_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in self.proc.access_log():
                if line.get("request_id") == request_id:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no access log line for {request_id}")


def running_mock() -> Iterator[Mock]:
    """A mock provider process, for the length of a fixture."""
    port = free_port()
    proc = Proc(["mock", "--port", str(port)])
    proc.wait_port(port)
    yield Mock(proc, port)
    proc.stop()


@pytest.fixture(scope="session")
def mock() -> Iterator[Mock]:
    yield from running_mock()


def mock_provider(
    name: str, knobs: str = "", *, scope: str = "", base: str = "{mock}/v1", extra: str = ""
) -> str:
    """A `providers:` entry (YAML) for the test mock with fixed fault knobs: its `headers` send
    `x-mock` upstream on every call; `scope` names its request counter at the mock."""
    header = ";".join(part for part in (knobs, f"scope={scope}" if scope else "") if part)
    lines = [
        f"  {name}:",
        "    kind: openai",
        f"    base_url: {base}",
        f"    api_key: {PROVIDER_KEY}",
    ]
    if header:
        lines.append(f'    headers: {{x-mock: "{header}"}}')
    if extra:
        lines.append(f"    {extra}")
    return "\n" + "\n".join(lines)


def basic_policy(mock_url: str, store: Path, extra: str = "") -> str:
    """A gateway in front of the mock, auth off; `extra` adds YAML (e.g. `clients:`)."""
    return f"""
version: 1
store: {{path: "{store}"}}
providers:
  up:
    kind: openai
    base_url: {mock_url}/v1
    api_key: {PROVIDER_KEY}
models:
  gpt-test:
    targets: [up/mock-gpt]
  embed-test:
    targets: [up/mock-embed]
{extra}
"""


class Gateways:
    """Starts gateways on demand (one per distinct policy) and stops them at the end."""

    def __init__(self, tmp: Path, mock: Mock):
        self._tmp = tmp
        self.mock = mock
        self._running: dict[tuple[str, tuple[str, ...]], Gateway] = {}
        self._started: list[Gateway] = []  # shared or not: every one is stopped at the end

    def policy_file(self, text: str) -> Path:
        path = self._tmp / f"policy-{abs(hash(text))}.yaml"
        path.write_text(text.replace("{mock}", self.mock.url).replace("{tmp}", str(self._tmp)))
        return path

    def start(
        self,
        policy: str,
        *args: str,
        env: dict[str, str] | None = None,
        shared: bool = True,
    ) -> Gateway:
        key = (policy, args)
        if shared and key in self._running:
            return self._running[key]
        port = free_port()
        path = self.policy_file(policy)
        # one process unless the test asks for more: tests read one process's access log
        workers = () if "--workers" in args else ("--workers", "1")
        proc = Proc(["serve", "--policy", str(path), "--port", str(port), *workers, *args], env=env)
        proc.wait_port(port)
        gateway = Gateway(proc, port)
        self._started.append(gateway)
        if shared:
            self._running[key] = gateway
        return gateway

    def basic(self, extra: str = "") -> Gateway:
        return self.start(basic_policy("{mock}", self._tmp / "store.db", extra))

    def stop_all(self) -> list[str]:
        """Stop every gateway still running (a test that started one of its own may have
        left it); returns the event-loop stalls the shared ones reported."""
        for gateway in self._started:
            gateway.proc.stop()
        return [stall for g in self._running.values() for stall in g.proc.loop_stalls()]


@pytest.fixture(scope="session")
def gateways(mock: Mock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    factory = Gateways(tmp_path_factory.mktemp("gateways"), mock)
    yield factory
    stalls = factory.stop_all()
    assert stalls == [], "blocking calls held the gateway's event loop:\n" + "\n".join(stalls)


@pytest.fixture(scope="session")
def gateway(gateways: Gateways) -> Gateway:
    """The plain gateway: auth off, one provider (the mock)."""
    return gateways.basic()


class OwnRedis:
    """A redis-server of our own (password `hunter2`) that a test can stop and start again on
    the same port, so stopping it disturbs nothing else."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:hunter2@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                "hunter2",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A redis-server of our own, started; stopped at the end whatever the test did to it."""
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def store_error(operation: Awaitable[object]) -> str:
    """What a store call raised, as its message ("no error" if nothing): only ever the
    seam's own `StoreUnavailable`, never the client library's exception."""
    try:
        await operation
    except StoreUnavailable as e:
        assert type(e) is StoreUnavailable and not isinstance(e, RedisError)
        return str(e)
    return "no error"
