"""`savepoint serve --workers N`: several gateway processes on one port (SO_REUSEPORT), one
supervisor; limits, metrics and shutdown hold across them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import ROOT, Gateways, Proc, free_port, mock_provider
from prometheus_client.parser import text_string_to_metric_families

from gateway.workers import cpus_within

SCOPE = f"workers-{os.getpid()}-{time.monotonic_ns() % 10**8}"
QUESTION = {"messages": [{"role": "user", "content": "hello"}]}


def _policy(gateways: Gateways, tmp: Path, scope: str) -> Path:
    return gateways.policy_file(f"""
version: 1
store: {{path: "{tmp / "workers.db"}"}}
providers:{mock_provider("up", scope=scope)}{mock_provider("lazy", "delay=1", scope=scope + "-lazy")}
models:
  mock-gpt: {{targets: [up/mock-gpt]}}
  limited: {{targets: [up/mock-gpt], limits: {{rpm: 30}}}}
  lazy: {{targets: [lazy/mock-gpt]}}
""")  # noqa: E501


def _start(policy: Path, workers: int = 2) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(["serve", "--policy", str(policy), "--port", str(port), "--workers", str(workers)])
    assert proc.popen.stdout is not None
    banner = proc.popen.stdout.readline()  # printed once every worker listens
    assert f", {workers} workers)" in banner, proc.stderr()
    return proc, f"http://127.0.0.1:{port}"


def _fresh(url: str, model: str = "mock-gpt") -> httpx.Response:
    """One request on a connection of its own (the kernel picks the worker per connection)."""
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return client.post(f"{url}/v1/chat/completions", json={"model": model, **QUESTION})


def _workers_of(proc: Proc) -> set[Any]:
    return {line["worker"] for line in proc.access_log() if line.get("path", "").startswith("/v1")}


def test_workers_share_the_port_the_load_and_the_metrics(
    gateways: Gateways, tmp_path: Path
) -> None:
    proc, url = _start(_policy(gateways, tmp_path, SCOPE))
    try:
        for _ in range(60):
            assert _fresh(url).status_code == 200
        assert _workers_of(proc) == {0, 1}  # both served
        time.sleep(1.5)  # every worker has published its counters since
        for _ in range(4):  # whichever worker takes the scrape, it counts everyone's requests
            text = httpx.get(f"{url}/metrics").text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            served = sum(s.value for s in families["savepoint_requests"].samples
                         if s.name == "savepoint_requests_total")  # fmt: skip
            assert served == 60
    finally:
        assert proc.stop() == 0
    assert proc.loop_stalls() == []


def test_limits_hold_exactly_across_workers(gateways: Gateways, tmp_path: Path) -> None:
    proc, url = _start(_policy(gateways, tmp_path, SCOPE + "-lim"))

    async def burst() -> list[int]:
        async def one() -> int:
            async with httpx.AsyncClient() as client:  # a connection each: both workers take some
                r = await client.post(f"{url}/v1/chat/completions",
                                      json={"model": "limited", **QUESTION})  # fmt: skip
                return r.status_code

        return await asyncio.gather(*(one() for _ in range(100)))

    try:
        started = time.monotonic()
        statuses = asyncio.run(burst())
        refilled = int(time.monotonic() - started) // 2 + 1  # 30/min: one more per 2 s
        assert 30 <= statuses.count(200) <= 30 + refilled
        assert statuses.count(429) == 100 - statuses.count(200)
        assert _workers_of(proc) == {0, 1}
    finally:
        assert proc.stop() == 0


def test_a_dead_worker_is_replaced_and_sigterm_drains_every_worker(
    gateways: Gateways, tmp_path: Path
) -> None:
    proc, url = _start(_policy(gateways, tmp_path, SCOPE + "-life"))
    children = [int(p) for p in Path(f"/proc/{proc.popen.pid}/task/{proc.popen.pid}/children")
                .read_text().split()]  # fmt: skip
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and '"event":"worker_exited"' not in proc.stderr():
        time.sleep(0.1)
    time.sleep(2.5)  # restarted after 1 s, and listening
    assert all(_fresh(url).status_code == 200 for _ in range(20))
    assert _workers_of(proc) == {0, 1}

    async def slow_then_stop() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            pending = asyncio.ensure_future(
                client.post(f"{url}/v1/chat/completions", json={"model": "lazy", **QUESTION})
            )
            await asyncio.sleep(0.3)  # the request is in flight at the mock
            proc.signal(signal.SIGTERM)
            return await pending

    answer = asyncio.run(slow_then_stop())
    assert answer.status_code == 200  # drained, not cut
    assert proc.popen.wait(20) == 0  # once every worker has stopped


def test_a_port_in_use_is_one_clear_line(gateways: Gateways, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = Proc(["serve", "--policy", str(_policy(gateways, tmp_path, SCOPE)), "--port",
                     str(port), "--workers", "2"])  # fmt: skip
        assert proc.popen.wait(20) == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in proc.stderr()


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_must_be_at_least_one(gateways: Gateways, tmp_path: Path, workers: str) -> None:
    proc = Proc(["serve", "--policy", str(_policy(gateways, tmp_path, SCOPE)), "--port",
                 str(free_port()), "--workers", workers])  # fmt: skip
    assert proc.popen.wait(20) == 1
    assert "--workers must be at least 1" in proc.stderr()


@pytest.mark.parametrize(
    ("allowed", "cpu_max", "cfs_quota", "cfs_period", "expected"),
    [
        (8, None, None, None, 8),  # no cgroup files: the affinity
        (8, "max 100000\n", None, None, 8),  # cgroup v2, no quota
        (8, "200000 100000\n", None, None, 2),  # docker run --cpus 2
        (8, "150000 100000\n", None, None, 2),  # 1.5 CPUs: rounded up
        (8, "50000 100000\n", None, None, 1),
        (2, "400000 100000\n", None, None, 2),  # a quota above the affinity does not add CPUs
        (8, None, "-1\n", "100000\n", 8),  # cgroup v1, no quota
        (8, None, "300000\n", "100000\n", 3),  # cgroup v1 quota
        (8, "garbage", None, None, 8),
        (0, None, None, None, 1),  # never fewer than one
    ],
)
def test_default_workers_are_the_cpus_allowed_capped_by_the_cgroup_quota(
    allowed: int, cpu_max: str | None, cfs_quota: str | None, cfs_period: str | None,
    expected: int,
) -> None:  # fmt: skip
    assert cpus_within(allowed, cpu_max, cfs_quota, cfs_period) == expected


def _serve_default(policy: Path, cpus: str) -> tuple[subprocess.Popen[str], str, list[int]]:
    """`taskset -c <cpus> savepoint serve` without --workers: its banner and its children."""
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, sys.executable, "-m", "gateway", "serve", "--policy",
         str(policy), "--port", str(port)],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert _fresh(f"http://127.0.0.1:{port}").status_code == 200
    return proc, banner, [int(c) for c in children]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset")
def test_serve_runs_one_worker_per_usable_cpu_by_default(
    gateways: Gateways, tmp_path: Path
) -> None:
    policy = _policy(gateways, tmp_path, SCOPE + "-default")
    proc, banner, children = _serve_default(policy, "0")
    try:
        assert "listening on" in banner and "workers)" not in banner  # one process, no supervisor
        assert children == []
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the two-worker default cannot be seen here")
    both = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0))[:2])
    proc, banner, children = _serve_default(policy, both)
    try:
        assert banner.rstrip().endswith(", 2 workers)")
        assert len(children) == 2
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_several_workers_need_a_fixed_port(gateways: Gateways, tmp_path: Path) -> None:
    proc = Proc(["serve", "--policy", str(_policy(gateways, tmp_path, SCOPE)), "--port", "0",
                 "--workers", "2"])  # fmt: skip
    assert proc.popen.wait(20) == 1
    assert "--workers needs a fixed --port" in proc.stderr()
