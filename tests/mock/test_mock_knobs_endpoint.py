"""`GET` / `POST /_mock/knobs`: changing a running mock's knobs, on a real process of the
test's own (started with `--chunks 3`), driven by the real `openai` SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import openai
import pytest

if TYPE_CHECKING:
    from conftest import MockServer  # tests/mock/conftest.py

MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def sdk(own_mock: MockServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key="x", base_url=f"{own_mock.url}/v1", max_retries=0, timeout=10.0
    ) as client:
        yield client


def set_knobs(mock: MockServer, body: str | dict[str, Any]) -> httpx.Response:
    url = f"{mock.url}/_mock/knobs"
    if isinstance(body, dict):
        return httpx.post(url, json=body)
    return httpx.post(url, content=body.encode())


def words(sdk: openai.OpenAI, **headers: str) -> int:
    answer = sdk.chat.completions.create(model="mock-gpt", messages=MESSAGES, extra_headers=headers)
    content = answer.choices[0].message.content
    assert content is not None
    return len(content.split())


def test_get_shows_the_knobs_the_server_was_started_with(own_mock: MockServer) -> None:
    knobs = own_mock.get("/_mock/knobs")
    assert knobs["chunks"] == 3
    assert knobs["status"] is None and knobs["hang"] is False and knobs["fail_nth"] == []
    assert set(knobs) >= {"delay", "cut_after", "fail_ratio", "scope", "models"}


def test_posted_knobs_apply_to_later_requests_and_the_header_still_wins(
    own_mock: MockServer, sdk: openai.OpenAI
) -> None:
    answer = set_knobs(own_mock, "status=503;retry_after=2")
    assert answer.status_code == 200
    assert answer.json()["status"] == 503 and answer.json()["chunks"] == 3
    assert own_mock.get("/_mock/knobs") == answer.json()
    with pytest.raises(openai.InternalServerError) as failed:
        words(sdk)
    assert failed.value.status_code == 503
    assert failed.value.response.headers["retry-after"] == "2"
    assert words(sdk, **{"x-mock": "status=none"}) == 3  # a request's own header overrides


def test_each_post_starts_from_the_start_knobs_and_an_empty_body_restores_them(
    own_mock: MockServer, sdk: openai.OpenAI
) -> None:
    set_knobs(own_mock, "status=503")
    replaced = set_knobs(own_mock, "chunks=5").json()
    assert replaced["status"] is None and replaced["chunks"] == 5  # not 503 and 5
    assert words(sdk) == 5
    assert set_knobs(own_mock, "").json() == own_mock.get("/_mock/knobs")
    assert own_mock.get("/_mock/knobs")["chunks"] == 3
    assert words(sdk) == 3


async def read_stream(url: str) -> bytes:
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as r:
        return await r.read()


def test_json_knobs_cut_streams_mid_body(own_mock: MockServer) -> None:
    answer = set_knobs(own_mock, {"cut_after": 2, "chunks": 20, "fail_nth": [1]})
    assert answer.json()["fail_nth"] == [1] and answer.json()["cut_after"] == 2
    url = f"{own_mock.url}/v1/chat/completions"
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(read_stream(url))
    whole = asyncio.run(read_stream(url))  # request 2 is not picked
    assert whole.endswith(b"data: [DONE]\n\n") and whole.count(b'"content"') == 1 + 20


@pytest.mark.parametrize(
    ("body", "param", "named"),
    [
        ("bogus=1", "bogus", "'bogus'"),
        ("status=200", "status", "'status'"),
        ({"delay": "soon"}, "delay", "'delay'"),
        ({"fail_nth": {"n": 1}}, "fail_nth", "'fail_nth'"),
        ("{not json", None, "not valid JSON"),
    ],
)
def test_bad_knobs_get_an_openai_shaped_400_and_change_nothing(
    own_mock: MockServer, body: str | dict[str, Any], param: str | None, named: str
) -> None:
    before = own_mock.get("/_mock/knobs")
    answer = set_knobs(own_mock, body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert named in error["message"]
    assert own_mock.get("/_mock/knobs") == before


def test_knob_changes_are_not_counted_as_requests(own_mock: MockServer) -> None:
    set_knobs(own_mock, "delay=0")
    own_mock.get("/_mock/knobs")
    assert own_mock.get("/_mock/stats")["total"] == 0
