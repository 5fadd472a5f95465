"""Streams that break after the commit point end with an error event, after every event that
did arrive; a client that leaves stops the upstream call."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from harness import Gateway, Gateways, mock_provider

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def broken(gateways: Gateways) -> Gateway:
    provider = mock_provider
    providers = "".join(
        [
            provider("cut", "cut_after=5;chunks=12;scope=s-cut"),
            provider("short", "truncate;chunks=6;scope=s-trunc"),
            provider("slow", "chunk_delay=0.2;chunks=50;scope=s-slow"),
            provider("usage", "chunks=4;scope=s-usage"),
        ]
    )
    return gateways.start(f"""
version: 1
# one attempt per request: these tests are about what a single upstream call does
retries: {{attempts_per_target: 1}}
breakers: {{fail_max: 1000}}
store: {{path: "{{tmp}}/streaming.db"}}
providers:{providers}
models:
  cut: {{targets: [cut/mock-gpt]}}
  short: {{targets: [short/mock-gpt]}}
  slow: {{targets: [slow/mock-gpt]}}
  slow-usage: {{targets: [usage/mock-gpt]}}
""")


def _content_chunks(chunks: list[object]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]  # type: ignore[attr-defined]


def test_stream_cut_by_the_provider_delivers_what_arrived_then_an_error(broken: Gateway) -> None:
    received: list[object] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in broken.client().chat.completions.create(
            model="cut",
            messages=USER,
            stream=True,  # type: ignore[arg-type]
        ):
            received.append(chunk)
    assert len(_content_chunks(received)) == 5
    assert caught.value.code == "upstream_stream_cut"


def test_stream_ending_without_done_is_an_error_not_a_clean_finish(broken: Gateway) -> None:
    received: list[object] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in broken.client().chat.completions.create(
            model="short",
            messages=USER,
            stream=True,  # type: ignore[arg-type]
        ):
            received.append(chunk)
    assert len(_content_chunks(received)) == 6
    assert caught.value.code == "upstream_stream_truncated"


def test_responses_stream_cut_raises_in_the_sdk(broken: Gateway) -> None:
    deltas = []
    with pytest.raises(openai.APIError) as caught:
        stream = broken.client().responses.create(model="cut", input="hi", stream=True)
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert len(deltas) == 5
    assert caught.value.code == "upstream_stream_cut"


def test_error_after_commit_is_logged_with_status_200_and_its_code(broken: Gateway) -> None:
    r = httpx.post(
        f"{broken.base_url}/chat/completions",
        json={"model": "short", "messages": USER, "stream": True},
    )
    line = broken.log_for(r.headers["x-savepoint-request-id"])
    assert (line["status"], line["error"]) == (200, "upstream_stream_truncated")


def test_client_that_leaves_mid_stream_stops_the_upstream_call(broken: Gateway) -> None:
    with httpx.stream(
        "POST",
        f"{broken.base_url}/chat/completions",
        json={"model": "slow", "messages": USER, "stream": True},
    ) as r:
        request_id = r.headers["x-savepoint-request-id"]
        lines = r.iter_lines()
        next(lines)
        next(lines)
    started = time.monotonic()
    line = broken.log_for(request_id)  # written when the gateway stops relaying
    assert line["status"] == 499
    assert time.monotonic() - started < 3  # not after the 10 s the whole stream would take


def test_a_stream_is_accounted_with_the_providers_usage_even_when_the_client_did_not_ask(
    broken: Gateway, gateways: Gateways
) -> None:
    client = broken.client()
    question = [{"role": "user", "content": "count me"}]
    chunks = list(
        client.chat.completions.create(model="slow-usage", messages=question, stream=True)
    )  # type: ignore[arg-type]
    assert all(c.usage is None for c in chunks)  # the client did not ask: no usage chunk
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    sent = [r for r in gateways.mock.requests() if r["scope"] == "s-usage"][-1]
    assert sent["body"]["stream_options"] == {"include_usage": True}  # the gateway asked
    raw = client.chat.completions.with_raw_response.create(
        model="slow-usage",
        messages=question,
        stream=True,  # type: ignore[arg-type]
    )
    list(raw.parse())
    line = broken.log_for(raw.headers["x-savepoint-request-id"])
    assert line["tokens"]["completion"] == 4 and line["tokens"]["prompt"] > 0  # accounted
    asked = list(client.chat.completions.create(
        model="slow-usage", messages=question, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert asked[-1].choices == [] and asked[-1].usage is not None  # asked: it is there
