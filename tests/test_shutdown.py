"""Graceful drain on SIGTERM: in-flight streams finish; past the drain deadline they end with
an error event, never cut silently; new connections are refused."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import openai
import pytest
from harness import PROVIDER_KEY, Gateway, Gateways

USER = [{"role": "user", "content": "hi"}]


def _draining_gateway(gateways: Gateways, drain: str) -> Gateway:
    return gateways.start(
        f"""
version: 1
server: {{drain_timeout: {drain}}}
store: {{path: "{{tmp}}/drain.db"}}
providers:
  slow:
    kind: openai
    base_url: {{mock}}/v1
    api_key: {PROVIDER_KEY}
    headers: {{x-mock: "chunk_delay=0.25;chunks=10;scope=drain"}}
  stuck:
    kind: openai
    base_url: {{mock}}/v1
    api_key: {PROVIDER_KEY}
    headers: {{x-mock: "delay=30;scope=drain-stuck"}}
models:
  slow: {{targets: [slow/mock-gpt]}}
  stuck: {{targets: [stuck/mock-gpt]}}
""",
        shared=False,
    )


def test_sigterm_lets_an_in_flight_stream_finish(gateways: Gateways) -> None:
    gw = _draining_gateway(gateways, "20s")
    stream = gw.client().chat.completions.create(model="slow", messages=USER, stream=True)  # type: ignore[arg-type]
    chunks = iter(stream)
    first = next(chunks)
    gw.proc.signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting new connections
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
    rest = list(chunks)
    words = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert len(words.split()) == 10
    assert rest[-1].choices[0].finish_reason == "stop"
    assert gw.proc.popen.wait(10) == 0


def test_past_the_drain_deadline_streams_get_an_error_event_and_others_a_503(
    gateways: Gateways,
) -> None:
    gw = _draining_gateway(gateways, "1s")
    outcome: dict[str, object] = {}

    def stuck_call() -> None:
        r = httpx.post(
            f"{gw.base_url}/chat/completions", json={"model": "stuck", "messages": USER}, timeout=30
        )
        outcome["stuck"] = (r.status_code, r.json()["error"]["code"])

    stuck_before = gateways.mock.scope_count("drain-stuck")
    waiter = threading.Thread(target=stuck_call)
    waiter.start()
    deadline = time.monotonic() + 5
    while gateways.mock.scope_count("drain-stuck") == stuck_before:  # in flight upstream
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stream = gw.client().chat.completions.create(model="slow", messages=USER, stream=True)  # type: ignore[arg-type]
    chunks = iter(stream)
    next(chunks)
    started = time.monotonic()
    gw.proc.signal(signal.SIGTERM)
    with pytest.raises(openai.APIError) as caught:
        for _ in chunks:
            pass
    assert caught.value.code == "shutting_down"
    assert time.monotonic() - started < 3
    waiter.join(10)
    assert outcome["stuck"] == (503, "shutting_down")
    assert gw.proc.popen.wait(10) == 0
