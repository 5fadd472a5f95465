"""The mock provider as users run it: a real process (`python -m gateway.mock`) on a real
socket, driven by the real `openai` SDK. Each test gets its own counter scope."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MockServer:
    url: str  # http://127.0.0.1:PORT, without /v1
    log: Path  # the process's stderr

    def get(self, path: str, **params: Any) -> Any:
        return httpx.get(f"{self.url}{path}", params=params).json()


@contextmanager
def running_mock(log: Path, *flags: str) -> Iterator[MockServer]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "gateway.mock", "--host", "127.0.0.1", "--port", "0", *flags]
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline().decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", banner)
        if match is None:
            raise RuntimeError(f"mock did not start: {banner!r}\n{log.read_text()}")
        yield MockServer(f"http://127.0.0.1:{match.group(1)}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def mock_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    with running_mock(tmp_path_factory.mktemp("mock") / "stderr.log") as server:
        yield server


@pytest.fixture
def own_mock(tmp_path: Path) -> Iterator[MockServer]:
    """A mock of this test's own, started with `--chunks 3`: for tests that change the
    server's knobs, which every test sharing `mock_server` would otherwise see."""
    with running_mock(tmp_path / "stderr.log", "--chunks", "3") as server:
        yield server


@pytest.fixture
def scope(request: pytest.FixtureRequest) -> str:
    """A counter scope of this test's own, so request numbers start at 1."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", request.node.name)[-64:]


@pytest.fixture
def client(mock_server: MockServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key="x", base_url=f"{mock_server.url}/v1", max_retries=0, timeout=10.0
    ) as sdk:
        yield sdk
