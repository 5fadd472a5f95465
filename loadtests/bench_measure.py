"""The measurements of `bench.py`, each against one target, each a child process on the load
CPU: saturation (wrk), latency at a fixed rate (open loop), held streams (all at once).

    saturate()   wrk -t1 -cN with `replay.lua` (unique bodies, Idempotency-Key): requests/s,
                 the target's CPU use and CPU time per answer, requests the mock saw
    open_loop()  `bench_replay.py --openloop-child`: `openloop.py`'s method (latency from each
                 request's due time) with headers and unique bodies; streams must end with
                 [DONE]; plus the target's CPU time per request
    held()       this file as a child (`--held SPEC`): N streams opened at once and read to
                 their end, while the target's RSS is read from /proc every 0.1 s

Every answer that is not a 200 is counted as an error; `bench.py` fails the run on any.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import wrk
from bench_targets import KEY, Target, mock_total
from processes import Children, cpu_busy, pinned

HERE = Path(__file__).resolve().parent
MARKER = "@N@"  # replaced by a counter in every request's body (unique bodies)
_MESSAGES_SYSTEM = {"role": "system", "content": "You are a terse assistant."}


class Bodies:
    """Request bodies. A unique body gets a fresh prefix on every use, so no two load runs (nor
    two benchmark runs against one Redis) share a body, and `MARKER` for the per-request
    counter; a fixed one is the same for every request of a scenario (cache hits, replays)."""

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self._uses = 0

    def make(self, model: str, scenario: str, stream: bool, unique: bool) -> str:
        text = f"Say hello to the benchmark. {self.nonce} {scenario}"
        if unique:
            self._uses += 1
            text += f" {self._uses}-{MARKER}"
        body: dict[str, Any] = {
            "model": model,
            "messages": [_MESSAGES_SYSTEM, {"role": "user", "content": text}],
        }
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return json.dumps(body)


def saturate(
    children: Children,
    target: Target,
    body: str,
    seconds: float,
    connections: int,
    load_cpu: int | None,
    mock_url: str,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One wrk run; with the target's CPU use, each CPU's and the mock's request count."""
    env = {"SAVEPOINT_BENCH_BODY": body}
    if MARKER in body:
        env["SAVEPOINT_BENCH_UNIQUE"] = MARKER
    if headers and "Idempotency-Key" in headers:
        env["SAVEPOINT_BENCH_IDEMPOTENCY_KEY"] = headers["Idempotency-Key"]
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["-s", str(HERE / "replay.lua"), target.url]
    seen, own, busy = mock_total(mock_url), target.process.cpu_seconds(), cpu_busy()
    started = time.monotonic()
    output = children.run("wrk", pinned(load_cpu, argv), timeout=seconds + 30, env=env)
    elapsed = time.monotonic() - started
    report = wrk.parse(output)
    own = target.process.cpu_seconds() - own
    return {
        **report.to_json(),
        "sut_cpu_pct": round(100 * own / elapsed, 1),
        # CPU time per answer: unlike requests/s, barely moved by other load on the machine.
        "cpu_us_per_request": round(1e6 * own / max(1, report.requests), 1),
        "cpu_busy_pct": [
            round(100 * (b - a) / elapsed, 1) for a, b in zip(busy, cpu_busy(), strict=True)
        ],
        "mock_requests": mock_total(mock_url) - seen,
    }


def open_loop(
    children: Children,
    target: Target,
    body: str,
    rate: float,
    seconds: float,
    warmup: float,
    load_cpu: int | None,
    mock_url: str,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    spec = {
        "url": target.url,
        "rate": rate,
        "duration": seconds,
        "warmup": warmup,
        "body": body,
        "headers": {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
        | (headers or {}),
        "marker": MARKER if MARKER in body else None,
        "stream": '"stream": true' in body,
        "timeout": timeout,
    }
    argv = [sys.executable, str(HERE / "bench_replay.py"), "--openloop-child", json.dumps(spec)]
    seen, own = mock_total(mock_url), target.process.cpu_seconds()
    out = children.run("openloop", pinned(load_cpu, argv), seconds + warmup + timeout + 30)
    result: dict[str, Any] = json.loads(out)
    own = target.process.cpu_seconds() - own
    result["cpu_us_per_request"] = round(1e6 * own / max(1, result["requests_sent"]), 1)
    result["mock_requests"] = mock_total(mock_url) - seen
    return result


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def held(
    children: Children,
    target: Target,
    body: str,
    streams: int,
    chunks: int,
    limit_s: float,
    load_cpu: int | None,
) -> dict[str, Any]:
    """`streams` streaming requests at once, each read to its end; the target's RSS at rest and
    at its peak meanwhile."""
    pid = target.process.pid
    at_rest = rss_kb(pid)
    peak = [at_rest]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    spec = {"url": target.url, "body": body, "streams": streams, "chunks": chunks, "limit": limit_s}
    argv = [sys.executable, str(Path(__file__).resolve()), "--held", json.dumps(spec)]
    try:
        out = children.run("held", pinned(load_cpu, argv), timeout=limit_s + 30)
    finally:
        stop.set()
        sampler.join()
    result: dict[str, Any] = json.loads(out)
    return {
        "streams": streams,
        **result,
        "rss_at_rest_mb": round(at_rest / 1024, 1),
        "rss_peak_mb": round(peak[0] / 1024, 1),
    }


async def _streams(spec: dict[str, Any]) -> dict[str, Any]:
    """Open every stream at once; each must be a 200 with at least `chunks` events, ending
    with [DONE]. A unique body per stream (so a cache never answers one)."""
    head, _, tail = spec["body"].partition(MARKER)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=spec["limit"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> str:
            try:
                payload = f"{head}{i}{tail}".encode()
                async with session.post(spec["url"], data=payload, headers=headers) as reply:
                    events, last = 0, b""
                    async for line in reply.content:
                        if line.startswith(b"data:"):
                            events += 1
                            last = line
                    done = reply.status == 200 and events >= spec["chunks"]
                    if done and last.strip() == b"data: [DONE]":
                        return "ok"
                    return f"status {reply.status}, {events} events"
            except (aiohttp.ClientError, TimeoutError) as e:
                return type(e).__name__

        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(spec["streams"])))
    failures: dict[str, int] = {}
    for result in results:
        if result != "ok":
            failures[result] = failures.get(result, 0) + 1
    seconds = round(time.monotonic() - started, 2)
    return {"completed": results.count("ok"), "seconds": seconds, "failures": failures}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--held"]:
        import uvloop

        sys.stdout.write(json.dumps(uvloop.run(_streams(json.loads(sys.argv[2])))) + "\n")
