"""What one worker holds in memory is bounded by the policy: requests in flight
(`server.max_in_flight`), store writes waiting after their answers (`max_pending_writes`),
access-log lines waiting for stderr (`max_log_backlog`). Past each bound the gateway says
so, clearly, instead of growing."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from harness import PROVIDER_KEY, Gateways

from gateway.accesslog import AccessLog
from gateway.config.load import PolicyError, parse_policy
from gateway.stages.guard import StoreGuard
from gateway.stores.base import StoreUnavailable

USER = [{"role": "user", "content": "hi"}]


def test_past_max_in_flight_a_request_gets_a_503_overloaded_that_says_to_retry(
    gateways: Gateways,
) -> None:
    gw = gateways.start(
        f"""
version: 1
server: {{max_in_flight: 2}}
store: {{path: "{{tmp}}/bounds.db"}}
providers:
  slow:
    kind: openai
    base_url: {{mock}}/v1
    api_key: {PROVIDER_KEY}
    headers: {{x-mock: "delay=1.5;scope=bounds"}}
models:
  slow: {{targets: [slow/mock-gpt]}}
""",
        shared=False,
    )
    client = gw.client()

    def call(_: int) -> Any:
        try:
            return client.chat.completions.create(model="slow", messages=USER)  # type: ignore[arg-type]
        except openai.APIStatusError as e:
            return e

    try:
        with ThreadPoolExecutor(4) as pool:
            held = [pool.submit(call, i) for i in range(2)]
            while gateways.mock.scope_count("bounds") < 2:  # both are upstream, in flight
                threading.Event().wait(0.02)
            refused = call(3)
            answers = [f.result() for f in held]
        after = call(4)  # and room is made again
    finally:
        gw.proc.stop()
    assert isinstance(refused, openai.APIStatusError)
    assert refused.status_code == 503
    assert refused.response.headers["retry-after"] == "1"
    error = refused.response.json()["error"]
    assert error["code"] == "overloaded"
    assert "server.max_in_flight" in error["message"]
    assert all(a.choices[0].message.content for a in answers)  # the two in flight finished
    assert after.choices[0].message.content


def test_background_writes_past_the_bound_are_dropped_and_logged_once() -> None:
    events: list[dict[str, Any]] = []

    async def main() -> list[str]:
        release = asyncio.Event()
        done: list[str] = []
        guard = StoreGuard("cache", events.append, max_pending=2)

        async def write(name: str) -> None:
            await release.wait()
            done.append(name)

        for name in ("a", "b", "c", "d"):
            guard.later(write(name))
        release.set()
        await asyncio.sleep(0.01)
        guard.later(write("e"))  # the backlog has drained: accepted, and the drops reported
        await guard.close()
        return done

    assert asyncio.run(main()) == ["a", "b", "e"]
    assert events == [
        {"event": "store_backlog", "purpose": "cache", "pending": 2},
        {"event": "store_backlog_cleared", "purpose": "cache", "dropped": 2},
    ]


def test_a_failed_background_write_is_one_log_line_not_an_error() -> None:
    events: list[dict[str, Any]] = []

    async def main() -> None:
        guard = StoreGuard("cache", events.append, max_pending=2)

        async def fail() -> None:
            raise StoreUnavailable("down")

        guard.later(fail())
        guard.later(fail())
        await guard.close()

    asyncio.run(main())
    assert [e["event"] for e in events] == ["store_unavailable"]


class _StuckStream(io.StringIO):
    """stderr that blocks until released, like a terminal nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(10)
        return super().write(s)


def test_access_log_lines_past_the_backlog_are_dropped_and_counted() -> None:
    stream = _StuckStream()
    log = AccessLog(stream, max_backlog=3)
    log.start()
    log.event({"event": "first"})  # taken by the writer thread, which then blocks on stderr
    threading.Event().wait(0.2)
    for i in range(10):
        log.event({"event": "line", "i": i})
    stream.release.set()
    threading.Event().wait(0.2)
    log.event({"event": "after"})
    log.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    names = [(line["event"], line.get("i", line.get("lines"))) for line in lines]
    assert names == [
        ("first", None),
        ("line", 0),
        ("line", 1),
        ("line", 2),
        ("access_log_dropped", 7),
        ("after", None),
    ]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("server: {max_in_flight: 0}", "server.max_in_flight: expected an integer >= 1"),
        ("server: {max_pending_writes: lots}", "server.max_pending_writes: expected an integer"),
        ("usage: {max_queued: -1}", "usage.max_queued: expected an integer >= 1"),
        ("idempotency: {memory: huge}", "idempotency.memory: expected a size in bytes"),
    ],
)
def test_a_bad_bound_is_refused_with_its_place_in_the_policy(section: str, message: str) -> None:
    with pytest.raises(PolicyError) as failed:
        parse_policy(f"version: 1\n{section}\n", "bounds.yaml", {})
    assert message in str(failed.value)
