"""The failure classes the provider's error body decides: context window, content filter,
quota; and a stream broken after it started, which still counts against the provider."""

from __future__ import annotations

import httpx
import openai
import pytest
from harness import Gateway, Gateways, mock_provider

USER = [{"role": "user", "content": "hi"}]


def _provider(name: str, knobs: str) -> str:
    return mock_provider(name, knobs, scope=f"fc-{name}")


@pytest.fixture(scope="module")
def gw(gateways: Gateways) -> Gateway:
    providers = "".join([
        _provider("small", "status=400;error_code=context_length_exceeded"),
        _provider("same", ""),
        _provider("big", ""),
        _provider("filtered", "status=400;error_code=content_filter"),
        _provider("filtered2", "status=400;error_code=content_filter"),
        _provider("other", ""),
        _provider("broke", "status=429;error_code=insufficient_quota"),
        _provider("midcut", "cut_after=2;chunks=10"),
        _provider("sluggish", "delay=2"),
    ])  # fmt: skip
    return gateways.start(f"""
version: 1
store: {{path: "{{tmp}}/classes.db"}}
retries: {{backoff_base: 0}}
breakers: {{fail_max: 3, reset_timeout: 30s}}
providers:{providers}
models:
  long-prompt:
    targets:
      - {{provider: small, model: mock-gpt, context_window: 8k}}
      - {{provider: same, model: mock-gpt, context_window: 8000}}
      - {{provider: big, model: mock-gpt, context_window: 128k}}
  long-prompt-nowhere:
    targets: [{{provider: small, model: mock-gpt, context_window: 8k}}, same/mock-gpt]
  filtered: {{targets: [filtered/mock-gpt, other/mock-gpt]}}
  filtered-with-fallback:
    targets: [filtered2/mock-gpt, other/mock-gpt]
    fallback_on: [content_filter]
  broke: {{targets: [broke/mock-gpt]}}
  midcut: {{targets: [midcut/mock-gpt, other/mock-gpt]}}
  sluggish: {{targets: [sluggish/mock-gpt]}}
""")


def _count(gateways: Gateways, name: str) -> int:
    return gateways.mock.scope_count(f"fc-{name}")


def _chat(gw: Gateway, model: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", json={"model": model, "messages": USER})


def test_context_overflow_moves_to_the_first_group_with_a_bigger_window(
    gw: Gateway, gateways: Gateways
) -> None:
    before = [_count(gateways, n) for n in ("small", "same", "big")]
    r = _chat(gw, "long-prompt")
    assert r.status_code == 200
    assert r.headers["x-savepoint-target"] == "big/mock-gpt"
    after = [_count(gateways, n) for n in ("small", "same", "big")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 1]


def test_context_overflow_with_no_bigger_window_returns_the_providers_400(
    gw: Gateway, gateways: Gateways
) -> None:
    before = _count(gateways, "same")
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(model="long-prompt-nowhere", messages=USER)  # type: ignore[arg-type]
    assert caught.value.code == "context_length_exceeded"
    assert _count(gateways, "same") == before


def test_content_filter_is_returned_as_it_is_unless_the_route_says_otherwise(
    gw: Gateway, gateways: Gateways
) -> None:
    before = _count(gateways, "other")
    r = _chat(gw, "filtered")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "content_filter")
    assert _count(gateways, "other") == before
    r = _chat(gw, "filtered-with-fallback")
    assert r.status_code == 200 and r.headers["x-savepoint-target"] == "other/mock-gpt"


def test_quota_is_not_retried_and_benches_the_deployment(gw: Gateway, gateways: Gateways) -> None:
    before = _count(gateways, "broke")
    with pytest.raises(openai.RateLimitError) as caught:
        openai.OpenAI(base_url=gw.base_url, api_key="x").chat.completions.create(
            model="broke",
            messages=USER,  # type: ignore[arg-type]
        )
    assert caught.value.code == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert _count(gateways, "broke") == before + 1  # no retry by the gateway, none by the SDK
    again = _chat(gw, "broke")  # benched for max_cooldown: not even tried
    assert (again.status_code, again.json()["error"]["code"]) == (503, "no_healthy_target")
    assert _count(gateways, "broke") == before + 1


def test_streams_broken_after_they_started_open_the_breaker(
    gw: Gateway, gateways: Gateways
) -> None:
    client = gw.client()
    for _ in range(3):  # each commits (2 chunks of output) and then breaks: 3 failures
        with pytest.raises(openai.APIError):
            for _chunk in client.chat.completions.create(
                model="midcut", messages=USER, stream=True
            ):  # type: ignore[arg-type]
                pass
    rows = {r["target"]: r for r in httpx.get(f"{gw.url}/admin/breakers").json()["breakers"]}
    assert rows["midcut/mock-gpt"]["state"] == "open"
    before = _count(gateways, "midcut")
    r = _chat(gw, "midcut")
    assert r.headers["x-savepoint-target"] == "other/mock-gpt"
    assert _count(gateways, "midcut") == before


def test_an_impatient_client_does_not_open_the_breaker_for_everyone(gw: Gateway) -> None:
    """The SDK's 0.5 s timeout cuts the wait for the first token short: the gateway answers
    before the SDK gives up, and that is the client's deadline, not the provider's fault."""
    client = gw.client(timeout=0.5)
    for _ in range(4):  # more than fail_max
        with pytest.raises(openai.APIStatusError) as caught:
            list(client.chat.completions.create(model="sluggish", messages=USER, stream=True))  # type: ignore[arg-type]
        assert caught.value.status_code == 504
    rows = {r["target"]: r for r in httpx.get(f"{gw.url}/admin/breakers").json()["breakers"]}
    assert rows["sluggish/mock-gpt"]["state"] == "closed"
    assert rows["sluggish/mock-gpt"]["failures"] == 0
