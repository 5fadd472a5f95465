"""Each upstream timeout, driven by the mock's fault knobs: before the first byte a 504, after
it an error event; never a fake finish."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from harness import Gateway, Gateways, mock_provider

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full, so a connect to it hangs (no RST, no SYN-ACK)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    yield port
    for s in fillers:
        s.close()
    server.close()


@pytest.fixture(scope="module")
def slow(gateways: Gateways, blackhole: int) -> Gateway:
    def provider(name: str, knobs: str, timeouts: str, base: str = "{mock}/v1") -> str:
        return mock_provider(name, knobs, base=base, extra=f"timeouts: {timeouts}")

    providers = "".join(
        [
            provider("late", "delay=3;scope=t-late", "{first_byte: 0.5, total: 10}"),
            provider("stalls", "stall_after=2;chunks=5;scope=t-stall", "{idle: 0.5, total: 10}"),
            provider("mute", "chunk_delay=3;chunks=3;scope=t-mute", "{idle: 0.5, total: 10}"),
            provider("long", "chunk_delay=0.3;chunks=20;scope=t-long", "{idle: 1, total: 1.5}"),
            provider("hangs", "hang;scope=t-hang", "{total: 0.7}"),
            provider("tardy", "delay=6;scope=t-tardy", "{total: 30}"),
            provider(
                "blackhole", "scope=none", "{connect: 0.5}", base=f"http://127.0.0.1:{blackhole}/v1"
            ),
        ]
    )
    return gateways.start(f"""
version: 1
# one attempt per request: these tests are about what a single upstream call does
retries: {{attempts_per_target: 1}}
breakers: {{fail_max: 1000}}
store: {{path: "{{tmp}}/timeouts.db"}}
providers:{providers}
models:
  late: {{targets: [late/mock-gpt]}}
  stalls: {{targets: [stalls/mock-gpt]}}
  mute: {{targets: [mute/mock-gpt]}}
  long: {{targets: [long/mock-gpt]}}
  hangs: {{targets: [hangs/mock-gpt]}}
  tardy: {{targets: [tardy/mock-gpt]}}
  blackhole: {{targets: [blackhole/mock-gpt]}}
""")


def _timed(fn: object) -> float:
    started = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - started


def test_no_first_token_in_time_is_a_504_before_any_byte(slow: Gateway) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        slow.client().chat.completions.create(model="late", messages=USER, stream=True)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.5
    assert caught.value.status_code == 504
    assert caught.value.code == "first_byte_timeout"
    assert "timeouts.first_byte" in caught.value.message


def test_silence_mid_stream_ends_with_an_idle_timeout_event(slow: Gateway) -> None:
    stream = slow.client().chat.completions.create(model="stalls", messages=USER, stream=True)  # type: ignore[arg-type]
    received = []
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert time.monotonic() - started < 2.5
    assert caught.value.code == "idle_timeout"
    assert [c.choices[0].delta.content is not None for c in received].count(True) == 3
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)


def test_silence_before_any_output_is_a_504_not_a_started_stream(slow: Gateway) -> None:
    """The role chunk alone does not commit the stream: nothing the client can use came yet,
    so the failure is still a plain HTTP error (and, with retries, retryable)."""
    with pytest.raises(openai.APIStatusError) as caught:
        slow.client().chat.completions.create(model="mute", messages=USER, stream=True)  # type: ignore[arg-type]
    assert caught.value.status_code == 504
    assert caught.value.code == "first_byte_timeout"
    assert "timeouts.idle" in caught.value.message


def test_stream_over_its_total_deadline_is_cut_with_an_error_event(slow: Gateway) -> None:
    r = httpx.post(
        f"{slow.base_url}/chat/completions",
        json={"model": "long", "messages": USER, "stream": True},
        timeout=10,
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert '"deadline_exceeded"' in events[-1]
    assert "data: [DONE]" not in r.text
    assert '"finish_reason":"stop"' not in r.text.replace(" ", "")


def test_no_answer_within_total_is_504(slow: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        slow.client().chat.completions.create(model="hangs", messages=USER)  # type: ignore[arg-type]
    assert caught.value.status_code == 504
    assert caught.value.code == "deadline_exceeded"


def test_connect_timeout_is_504_connect_timeout(slow: Gateway) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        slow.client().chat.completions.create(model="blackhole", messages=USER)  # type: ignore[arg-type]
    assert time.monotonic() - started < 3
    assert caught.value.status_code == 504
    assert caught.value.code == "connect_timeout"


def test_gateway_answers_before_the_sdk_read_timeout_fires(slow: Gateway) -> None:
    """The SDK sends its timeout (x-stainless-read-timeout); the gateway gives up a little
    earlier so the client gets a real error instead of its own timeout."""
    client = slow.client(timeout=2.0)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tardy", messages=USER)  # type: ignore[arg-type]
    assert 1.5 < time.monotonic() - started < 2.0
    assert caught.value.status_code == 504
