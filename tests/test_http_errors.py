"""Bad input gets a clear, OpenAI-shaped error with the right status; upstream errors pass
through as the provider sent them, never with the provider's key."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from harness import PROVIDER_KEY, Gateway, Gateways, free_port, mock_provider

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def faulty(gateways: Gateways) -> Gateway:
    providers = "".join(
        [
            mock_provider("up", "scope=errors-ok"),
            mock_provider("rejects", "status=400;scope=errors-400"),
            mock_provider("down", "status=503;retry_after=7;scope=errors-503"),
            mock_provider("garbled", "malformed;chunk_delay=0.02;scope=errors-malformed"),
            mock_provider("html", "scope=errors-html", base="{mock}/not-an-api"),
            mock_provider("closed", "scope=none", base=f"http://127.0.0.1:{free_port()}/v1"),
        ]
    )
    return gateways.start(f"""
version: 1
# one attempt per request: these tests are about what a single upstream call does
retries: {{attempts_per_target: 1}}
breakers: {{fail_max: 1000}}
server: {{max_body_bytes: 4096}}
store: {{path: "{{tmp}}/errors.db"}}
providers:{providers}
models:
  gpt-test: {{targets: [up/mock-gpt]}}
  rejected: {{targets: [rejects/mock-gpt]}}
  unavailable: {{targets: [down/mock-gpt]}}
  garbled: {{targets: [garbled/mock-gpt]}}
  html: {{targets: [html/mock-gpt]}}
  unreachable: {{targets: [closed/mock-gpt]}}
""")


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return dict(error)


def test_invalid_json_is_400(faulty: Gateway) -> None:
    r = httpx.post(
        f"{faulty.base_url}/chat/completions",
        content=b'{"model": "gpt-test",',
        headers={"content-type": "application/json"},
    )
    assert "not valid JSON" in _error(r, 400, "invalid_json")["message"]


def test_missing_field_is_400_naming_it(faulty: Gateway) -> None:
    r = httpx.post(f"{faulty.base_url}/chat/completions", json={"model": "gpt-test"})
    error = _error(r, 400, "invalid_field")
    assert error["param"] == "messages" and "`messages`" in error["message"]


def test_sdk_sees_bad_request_error_for_wrong_field(faulty: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        faulty.client().chat.completions.create(model="gpt-test", messages=[], max_tokens=0)
    assert caught.value.code == "invalid_field"


def test_unknown_model_is_404_model_not_found(faulty: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        faulty.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"
    assert "GET /v1/models" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        faulty.client().models.retrieve("no-such-model")


def test_unknown_url_is_404_listing_the_routes(faulty: Gateway) -> None:
    r = httpx.post(f"{faulty.base_url}/chat/complete", json=CHAT)
    assert "/v1/chat/completions" in _error(r, 404, "unknown_url")["message"]


def test_wrong_method_is_405_with_allow(faulty: Gateway) -> None:
    r = httpx.get(f"{faulty.base_url}/chat/completions")
    _error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_body_over_the_limit_is_413_and_names_the_setting(faulty: Gateway) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{faulty.base_url}/chat/completions", json=big)
    assert "server.max_body_bytes" in _error(r, 413, "payload_too_large")["message"]


def test_non_json_content_type_is_415(faulty: Gateway) -> None:
    r = httpx.post(
        f"{faulty.base_url}/chat/completions",
        content=b"hello",
        headers={"content-type": "text/plain"},
    )
    _error(r, 415, "unsupported_media_type")


def test_upstream_4xx_passes_through_with_its_status_and_body(faulty: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        faulty.client().chat.completions.create(
            model="rejected", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"  # the mock's own error type


def test_upstream_503_passes_through_with_retry_after(faulty: Gateway) -> None:
    r = httpx.post(f"{faulty.base_url}/chat/completions", json={**CHAT, "model": "unavailable"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "server_error"


def test_upstream_error_that_is_not_json_is_wrapped_in_openai_shape(faulty: Gateway) -> None:
    r = httpx.post(f"{faulty.base_url}/chat/completions", json={**CHAT, "model": "html"})
    error = _error(r, 404, "upstream_error")
    assert "provider `html` answered 404" in error["message"]


def test_upstream_200_with_broken_json_is_502(faulty: Gateway) -> None:
    r = httpx.post(f"{faulty.base_url}/chat/completions", json={**CHAT, "model": "garbled"})
    _error(r, 502, "upstream_bad_response")


def test_broken_json_mid_stream_ends_with_an_error_event(faulty: Gateway) -> None:
    stream = faulty.client().chat.completions.create(
        model="garbled", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert received, "the events before the broken one still arrive"
    assert caught.value.code == "upstream_bad_response"


def test_unreachable_provider_is_502_without_its_key(faulty: Gateway) -> None:
    r = httpx.post(f"{faulty.base_url}/chat/completions", json={**CHAT, "model": "unreachable"})
    error = _error(r, 502, "upstream_unreachable")
    assert "cannot connect to provider `closed`" in error["message"]
    assert PROVIDER_KEY not in r.text


def test_no_log_line_contains_a_key(faulty: Gateway) -> None:
    faulty.client(api_key="sk-client-secret-abcdef").chat.completions.create(**CHAT)  # type: ignore[call-overload]
    log = faulty.proc.stderr()
    assert PROVIDER_KEY not in log
    assert "sk-client-secret-abcdef" not in log
    assert '"status":200' in log
