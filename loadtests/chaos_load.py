"""The chaos run's load: an open-loop client that keeps every answer's routing headers, and
switches the primary's faults between phases.

Request i is due at `start + i / rate`; a phase of S seconds takes the next `rate * S` of
them. The schedule never waits for an answer, and each latency runs from the due time (no
coordinated omission). When the first request of a phase is due, the generator reads both
mocks' `/_mock/stats` (the phase boundary for the upstream counts) and the gateway's
`/admin/breakers`, then POSTs the phase's knobs to the primary's `/_mock/knobs`, and only
then sends it: every request of a phase meets the primary in that phase's state. Requests of
the previous phase still in flight (waiting, retrying) meet the new state too.

A request succeeds when the client gets what the openai SDK would accept without raising: a
200 whose JSON has a message, or a 200 stream whose every event is JSON without an `error`
key and that ends with `data: [DONE]`. Everything the client can see is kept: status, the
`x-savepoint-*` headers (target, attempts, fallback, request id) and what went wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

MODEL = "chaos-gpt"
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello to the chaos run."},
]
_DONE = b"[DONE]"
_MAX_CONNECTIONS = 2048


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    knobs: str  # the primary's knobs, as POSTed to /_mock/knobs ("" = as started: healthy)
    seconds: float


@dataclass(frozen=True, slots=True)
class Outcome:
    index: int
    phase: int
    stream: bool
    due: float  # seconds from the start of the run (perf_counter)
    late: float  # seconds between the due time and the actual send
    latency: float  # seconds from the due time to the end of the answer (or the failure)
    status: int  # 0 when no HTTP answer came
    error: str | None  # None: the client got a complete, valid answer
    request_id: str | None  # the gateway's, to find the request in its access log
    target: str | None  # x-savepoint-target
    attempts: int | None  # x-savepoint-attempts
    fallback: bool  # x-savepoint-fallback: true


@dataclass(frozen=True, slots=True)
class Boundary:
    """The moment a phase began: both mocks' request totals, the primary's breaker and the
    wall clock."""

    phase: int
    wall: float  # time.time(), to place the gateway's log lines
    at: float  # seconds from the start of the run
    primary_total: int
    fallback_total: int
    breaker: str  # the primary's breaker as the gateway reports it: closed, open, half-open


@dataclass(frozen=True, slots=True)
class LoadRun:
    outcomes: list[Outcome]
    boundaries: list[Boundary]  # one per phase, then one at the end
    switch_seconds: list[float]  # per phase: reading counters and switching knobs took this


def is_stream(i: int, share: float) -> bool:
    """Spreads `share` of the requests evenly over the schedule, deterministically."""
    return int((i + 1) * share + 1e-9) != int(i * share + 1e-9)


def body(stream: bool) -> bytes:
    payload: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return orjson.dumps(payload)


def check_whole(data: bytes) -> str | None:
    try:
        parsed = orjson.loads(data)
        content = parsed["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return "200 with a body that is not a chat completion"
    return None if isinstance(content, str) and content else "200 without content"


def check_stream(data: bytes) -> str | None:
    """What is wrong with a streamed answer, as the openai SDK would see it; None if nothing."""
    events = [e for e in data.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    if not events:
        return "stream with no event"
    for event in events:
        payload = b"\n".join(
            line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if payload == _DONE:
            continue
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "stream event that is not JSON"
        if isinstance(parsed, dict) and parsed.get("error"):
            error = parsed["error"]
            code = error.get("code") if isinstance(error, dict) else None
            return f"stream error event: {code or 'no code'}"
    if not events[-1].rstrip().endswith(b"data: " + _DONE):
        return "stream without [DONE]"
    return None


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    index: int,
    phase: int,
    stream: bool,
    due: float,
    origin: float,
) -> Outcome:
    late = time.perf_counter() - due
    status, error = 0, None
    seen: Mapping[str, str] = {}
    try:
        async with session.post(url, data=body(stream), headers=headers) as reply:
            status, seen = reply.status, reply.headers
            data = await reply.read()
        if status != 200:
            code = _error_code(data)
            error = f"status {status}" + (f" {code}" if code else "")
        else:
            error = check_stream(data) if stream else check_whole(data)
    except TimeoutError:
        error = "client timeout"
    except aiohttp.ClientError as e:
        error = type(e).__name__
    attempts = seen.get("x-savepoint-attempts")
    return Outcome(
        index=index,
        phase=phase,
        stream=stream,
        due=due - origin,
        late=late,
        latency=time.perf_counter() - due,
        status=status,
        error=error,
        request_id=seen.get("x-savepoint-request-id") or seen.get("x-request-id"),
        target=seen.get("x-savepoint-target"),
        attempts=int(attempts) if attempts and attempts.isdigit() else None,
        fallback=seen.get("x-savepoint-fallback") == "true",
    )


def _error_code(data: bytes) -> str | None:
    try:
        error = orjson.loads(data)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if code else None


async def _total(session: aiohttp.ClientSession, mock_url: str) -> int:
    async with session.get(f"{mock_url}/_mock/stats") as reply:
        reply.raise_for_status()
        return int((await reply.json())["total"])


async def set_knobs(session: aiohttp.ClientSession, mock_url: str, knobs: str) -> None:
    async with session.post(f"{mock_url}/_mock/knobs", data=knobs.encode()) as reply:
        if reply.status != 200:
            raise RuntimeError(f"{mock_url} refused knobs {knobs!r}: {await reply.text()}")


async def _breaker(session: aiohttp.ClientSession, gateway: str, label: str) -> str:
    async with session.get(f"{gateway}/admin/breakers") as reply:
        reply.raise_for_status()
        states = {b["target"]: b["state"] for b in (await reply.json())["breakers"]}
    return str(states.get(label, "closed"))  # not listed: never called yet


async def _boundary(
    session: aiohttp.ClientSession,
    phase: int,
    origin: float,
    urls: tuple[str, str, str],
    label: str,
) -> Boundary:
    gateway, primary, fallback = urls
    p, f, breaker = await asyncio.gather(
        _total(session, primary), _total(session, fallback), _breaker(session, gateway, label)
    )
    return Boundary(phase, time.time(), time.perf_counter() - origin, p, f, breaker)


async def drive(
    gateway_url: str,
    primary: str,
    fallback: str,
    primary_label: str,
    phases: Sequence[Phase],
    rate: float,
    stream_share: float,
    request_timeout: float,
) -> LoadRun:
    """Run every phase back to back under one schedule."""
    url = f"{gateway_url}/v1/chat/completions"
    # What the openai SDK sends: the gateway keeps its whole route within this read timeout.
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer sk-chaos",
        "x-stainless-read-timeout": str(request_timeout),
    }
    plan = [i for i, phase in enumerate(phases) for _ in range(max(1, round(rate * phase.seconds)))]
    urls = (gateway_url, primary, fallback)
    connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS)
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    boundaries: list[Boundary] = []
    switched: list[float] = []  # seconds each phase's first request waited for the switch
    tasks: list[asyncio.Task[Outcome]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        origin = time.perf_counter() + 0.05
        try:
            for index, phase in enumerate(plan):
                due = origin + index / rate
                # Always yield, even when late, so answers keep being read while we catch up.
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                if index == 0 or plan[index - 1] != phase:  # the phase begins: count, switch
                    boundaries.append(await _boundary(session, phase, origin, urls, primary_label))
                    await set_knobs(session, primary, phases[phase].knobs)
                    switched.append(time.perf_counter() - due)
                stream = is_stream(index, stream_share)
                tasks.append(asyncio.create_task(
                    _one(session, url, headers, index, phase, stream, due, origin)
                ))  # fmt: skip
            # Every request is bounded by the client timeout; this only guards against a bug.
            await asyncio.wait(tasks, timeout=request_timeout + 2.0)
            boundaries.append(await _boundary(session, len(phases), origin, urls, primary_label))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = [
        task.result()
        if not task.cancelled()
        else _unfinished(index, plan[index], rate, stream_share)
        for index, task in enumerate(tasks)
    ]
    return LoadRun(outcomes, boundaries, switched)


def _unfinished(index: int, phase: int, rate: float, share: float) -> Outcome:
    stream = is_stream(index, share)
    return Outcome(index, phase, stream, index / rate, 0.0, 0.0, 0, "unfinished", None, None, None,
                   False)  # fmt: skip
