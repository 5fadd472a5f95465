"""An open-loop load generator: requests at a fixed rate, whatever the target does.

Request i is due at `start + i / rate`. The scheduler never waits for an answer, and every
latency is measured from the request's *due* time, not from when it was actually sent, so
time spent queueing anywhere (in the target, in our connection pool, in our own event loop)
is counted: no coordinated omission. When the generator itself cannot keep the schedule its
lateness (actual send minus due time) grows; it is reported, and `behind` is set, so a
saturated generator is visible instead of silently lowering the load.

For each request: time to the first body byte and time to the end of the body. An answer
counts as an error unless it is a 200 with a body, and for a stream, one that ends with
`data: [DONE]`. The first `--warmup` seconds of the schedule open connections and are not
counted.

    python loadtests/openloop.py --url http://127.0.0.1:8080/v1/chat/completions --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import uvloop

DEFAULT_BODY: dict[str, Any] = {
    "model": "mock-gpt",
    "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
}
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
MAX_CONNECTIONS = 1024
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Sample:
    sent: float  # perf_counter() when the request was actually started
    late: float  # seconds between the due time and the actual send
    first_byte: float  # seconds from the due time to the first body byte
    end: float  # seconds from the due time to the end of the body
    error: str | None


async def _one(
    session: aiohttp.ClientSession, url: str, payload: bytes, due: float, stream: bool
) -> Sample:
    sent = time.perf_counter()
    late = sent - due
    first = 0.0
    tail = b""
    try:
        async with session.post(url, data=payload, headers=HEADERS) as reply:
            async for chunk in reply.content.iter_any():
                if not first:
                    first = time.perf_counter()
                tail = (tail + chunk)[-len(_DONE) :]
            status = reply.status
    except TimeoutError:
        return Sample(sent, late, 0.0, 0.0, "timeout")
    except aiohttp.ClientError as e:
        return Sample(sent, late, 0.0, 0.0, type(e).__name__)
    end = time.perf_counter()
    if status != 200:
        return Sample(sent, late, 0.0, 0.0, f"status {status}")
    if not first:
        return Sample(sent, late, 0.0, 0.0, "empty body")
    if stream and tail != _DONE:
        return Sample(sent, late, 0.0, 0.0, "stream without [DONE]")
    return Sample(sent, late, first - due, end - due, None)


async def drive(
    url: str,
    body: dict[str, Any],
    rate: float,
    duration: float,
    warmup: float,
    request_timeout: float,
) -> dict[str, Any]:
    """Run the schedule; the report as a JSON-able dict (milliseconds)."""
    payload = orjson.dumps(body)
    stream = body.get("stream") is True
    skipped, counted = round(warmup * rate), max(1, round(duration * rate))
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    session_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=session_timeout) as session:
        gc.freeze()  # keep the collector off the long-lived setup objects while measuring
        tasks: list[asyncio.Task[Sample]] = []
        start = time.perf_counter() + 0.01
        for i in range(skipped + counted):
            due = start + i / rate
            # Always yield, even when late, so answers keep being read while we catch up.
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_one(session, url, payload, due, stream)))
        done, pending = await asyncio.wait(tasks, timeout=request_timeout + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    samples = [t.result() if t in done else Sample(0.0, 0.0, 0.0, 0.0, "unfinished") for t in tasks]
    return summarize(samples[skipped:], rate, duration, stream)


def summarize(
    samples: list[Sample], rate: float, duration: float, stream: bool, max_late_ms: float = 2.0
) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None]
    errors = Counter(s.error for s in samples if s.error is not None)
    started = [s for s in samples if s.sent]
    lateness = percentiles([s.late for s in started])
    sent = sorted(s.sent for s in started)
    span = sent[-1] - sent[0] if len(sent) > 1 else 0.0
    sent_rate = (len(sent) - 1) / span if span > 0 else rate
    return {
        "rate": rate,
        "duration_s": duration,
        "stream": stream,
        "requests": len(samples),
        "ok": len(ok),
        "errors": dict(errors),
        "lateness_ms": lateness,
        "sent_rate": round(sent_rate, 1),
        "behind": lateness["p99"] > max_late_ms or sent_rate < 0.95 * rate,
        "first_byte_ms": percentiles([s.first_byte for s in ok]),
        "end_ms": percentiles([s.end for s in ok]),
    }


def percentiles(seconds: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99 and max, in milliseconds; zeros when there is nothing."""
    values = sorted(seconds)
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}

    def rank(q: float) -> float:
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    ms = {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": values[-1]}
    return {k: round(v * 1000, 3) for k, v in ms.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description="open-loop HTTP load at a fixed rate")
    parser.add_argument(
        "--url", required=True, help="e.g. http://127.0.0.1:8080/v1/chat/completions"
    )
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent, not counted")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--body", type=orjson.loads, default=DEFAULT_BODY, help="JSON body")
    args = parser.parse_args()
    report = uvloop.run(
        drive(args.url, args.body, args.rate, args.duration, args.warmup, args.timeout)
    )
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
