"""Many streams held open at once: do they all complete, and how much memory does it take?

    python loadtests/bench_held.py [--streams 2000] [--delay 3] [--smoke] [--out FILE]

    CPU 1: mock (waits `--delay` s, then 40 chunks 50 ms apart), the client (aiohttp, no limit)
    CPU 0: one gateway worker (SQLite store, usage ledger on: the default)

The client opens every stream at once and reads each to `[DONE]`; the gateway's RSS is read
from /proc every 0.2 s, from before the first request to after the last. Prints a markdown
table and writes JSON under loadtests/results/. Fails (exit 1) if any stream did not
complete. Issue 6's target: 2,000 streams under 200 MB of RSS for one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from processes import ROOT, Children, free_port, pinned

CHUNKS = 40


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def streams(url: str, n: int, limit_s: float) -> dict[str, Any]:
    body = {"model": "held", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=limit_s)
    ) as session:

        async def one() -> str:
            try:
                async with session.post(url, json=body) as reply:
                    events = 0
                    async for line in reply.content:
                        if line.startswith(b"data:"):
                            events += 1
                    done = reply.status == 200 and events >= CHUNKS
                    return "ok" if done else f"status {reply.status}, {events} events"
            except (aiohttp.ClientError, TimeoutError) as e:
                return type(e).__name__

        started = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(n)))
    failures: dict[str, int] = {}
    for result in results:
        if result != "ok":
            failures[result] = failures.get(result, 0) + 1
    return {"completed": results.count("ok"), "seconds": round(time.monotonic() - started, 2),
            "failures": failures}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=3.0, help="seconds before the mock answers")
    parser.add_argument("--smoke", action="store_true", help="50 streams, 0.5 s: proves it runs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    n, delay = (50, 0.5) if args.smoke else (args.streams, args.delay)
    work = Path(tempfile.mkdtemp(prefix="savepoint-held-"))
    children = Children(work)
    try:
        mock_port, gw_port = free_port(), free_port()
        mock = children.start("mock", pinned(1, [sys.executable, "-m", "gateway", "mock",
                                                 "--port", str(mock_port)]))  # fmt: skip
        mock.wait_listening(mock_port)
        knobs = f"delay={delay};chunk_delay=0.05;chunks={CHUNKS}"
        policy = work / "policy.yaml"
        policy.write_text(json.dumps({
            "version": 1,
            "store": {"path": str(work / "sp.db")},
            "providers": {"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{mock_port}/v1",
                                 "api_key": "sk-held", "max_connections": n + 100,
                                 "headers": {"x-mock": knobs}}},
            "models": {"held": {"targets": ["up/mock-gpt"]}},
        }))  # fmt: skip
        argv = [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port",
                str(gw_port)]  # fmt: skip
        gateway = children.start("gateway", pinned(0, argv))
        gateway.wait_listening(gw_port)
        time.sleep(0.5)
        at_rest = rss_kb(gateway.pid)
        peak = [at_rest]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], rss_kb(gateway.pid))
                sampling.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        result = asyncio.run(streams(url, n, limit_s=delay + 120))
        sampling.set()
        sampler.join()
    finally:
        children.stop_all()
    report = {"streams": n, "mock_delay_s": delay, "rss_at_rest_mb": round(at_rest / 1024, 1),
              "rss_peak_mb": round(peak[0] / 1024, 1), **result}  # fmt: skip
    print("| streams | completed | seconds | RSS at rest MB | RSS peak MB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {n:,} | {result['completed']:,} | {result['seconds']} | {report['rss_at_rest_mb']} "
          f"| {report['rss_peak_mb']} |")  # fmt: skip
    out = args.out or ROOT / "loadtests" / "results" / f"held-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"results: {out}")
    if result["failures"]:
        print(f"bench_held: FAILED: {result['failures']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
