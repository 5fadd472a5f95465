"""The mock as a real HTTP server, driven by the real `openai` SDK (and raw HTTP clients where
the SDK would hide what went over the wire)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import openai
import pytest

if TYPE_CHECKING:
    from conftest import MockServer  # tests/mock/conftest.py

MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
}
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
RESPONSES_TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
WEATHER_ARGS = {"city": "mock", "unit": "celsius"}


def knobs(scope: str, more: str = "") -> dict[str, str]:
    return {"x-mock": f"scope={scope};{more}"}


def chat(client: openai.OpenAI, scope: str, more: str = "", **kwargs: Any) -> Any:
    kwargs.setdefault("messages", MESSAGES)
    return client.chat.completions.create(
        model="mock-gpt", extra_headers=knobs(scope, more), **kwargs
    )


def text_of(client: openai.OpenAI, scope: str, messages: list[Any]) -> str:
    content = chat(client, scope, messages=messages).choices[0].message.content
    assert isinstance(content, str)
    return content


# --- Chat Completions -------------------------------------------------------------------


def test_chat_answer_is_the_same_for_the_same_conversation_and_differs_otherwise(
    client: openai.OpenAI, scope: str
) -> None:
    first = chat(client, scope)
    again = chat(client, scope)
    other = chat(client, scope, messages=[{"role": "user", "content": "And of Spain?"}])
    text = first.choices[0].message.content
    assert text == again.choices[0].message.content
    assert text != other.choices[0].message.content
    assert len(text.split()) == 8
    assert first.model == "mock-gpt"
    assert first.id.startswith("chatcmpl-") and first.id != again.id
    assert first.choices[0].finish_reason == "stop"
    usage = first.usage
    assert usage.completion_tokens == 8 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_chunks_knob_sets_the_number_of_words(client: openai.OpenAI, scope: str) -> None:
    answer = chat(client, scope, "chunks=3")
    assert len(answer.choices[0].message.content.split()) == 3
    assert answer.usage.completion_tokens == 3


def test_chat_stream_carries_usage_only_on_a_final_chunk_without_choices(
    client: openai.OpenAI, scope: str
) -> None:
    chunks = list(chat(client, scope, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text_of(client, scope, MESSAGES)
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-2]] == [None] * (len(chunks) - 2)


def test_chat_stream_without_include_usage_has_no_usage_chunk(
    client: openai.OpenAI, scope: str
) -> None:
    chunks = list(chat(client, scope, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert len(chunks) == 1 + 8 + 1  # role, words, finish


def test_chat_calls_the_first_function_tool_then_answers_the_tool_result(
    client: openai.OpenAI, scope: str
) -> None:
    answer = chat(client, scope, tools=CHAT_TOOLS)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    history = [
        *MESSAGES,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    after = chat(client, scope, messages=history, tools=CHAT_TOOLS)
    assert after.choices[0].finish_reason == "stop"
    assert len(after.choices[0].message.content.split()) == 8


def test_chat_stream_tool_call_fragments_add_up_to_the_arguments(
    client: openai.OpenAI, scope: str
) -> None:
    chunks = list(chat(client, scope, stream=True, tools=CHAT_TOOLS))
    first = chunks[0].choices[0].delta.tool_calls[0]
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
    assert first.id.startswith("call_")
    fragments = [
        tc.function.arguments
        for c in chunks[1:]
        for tc in c.choices[0].delta.tool_calls or []
        if tc.function and tc.function.arguments
    ]
    assert len(fragments) == 8
    assert json.loads("".join(fragments)) == WEATHER_ARGS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- legacy Completions, embeddings, models ------------------------------------------------


def test_legacy_completion_streamed_text_equals_the_whole_text(
    client: openai.OpenAI, scope: str
) -> None:
    whole = client.completions.create(model="mock-gpt", prompt="Say hi", extra_headers=knobs(scope))
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "stop"
    assert len(whole.choices[0].text.split()) == 8
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    chunks = list(
        client.completions.create(
            model="mock-gpt",
            prompt="Say hi",
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=knobs(scope),
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_embeddings_from_default_base64_are_unit_vectors_of_the_default_size(
    client: openai.OpenAI, scope: str, mock_server: MockServer
) -> None:
    result = client.embeddings.create(
        model="mock-embed", input=["alpha", "beta"], extra_headers=knobs(scope)
    )
    sent = mock_server.get("/_mock/requests", limit=1)[-1]["body"]
    assert sent["encoding_format"] == "base64"  # the SDK's default, decoded by the SDK
    alpha, beta = (d.embedding for d in result.data)
    assert [d.index for d in result.data] == [0, 1]
    assert len(alpha) == 16 and alpha != beta
    assert math.isclose(math.sqrt(sum(v * v for v in alpha)), 1.0, rel_tol=1e-5)
    again = client.embeddings.create(model="mock-embed", input="alpha", extra_headers=knobs(scope))
    assert again.data[0].embedding == alpha
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_embeddings_as_floats_honour_dimensions_and_match_base64(
    client: openai.OpenAI, scope: str
) -> None:
    floats = client.embeddings.create(
        model="mock-embed",
        input="alpha",
        dimensions=5,
        encoding_format="float",
        extra_headers=knobs(scope),
    )
    packed = client.embeddings.create(
        model="mock-embed", input="alpha", dimensions=5, extra_headers=knobs(scope)
    )
    assert len(floats.data[0].embedding) == 5
    assert floats.data[0].embedding == packed.data[0].embedding
    tokens = client.embeddings.create(
        model="mock-embed", input=[[1, 2, 3], [4, 5]], extra_headers=knobs(scope)
    )
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5


def test_models_lists_the_mock_models_and_serves_any_id(client: openai.OpenAI) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["mock-gpt", "mock-gpt-large", "mock-embed"]
    assert all(m.owned_by == "savepoint-mock" and m.object == "model" for m in listed.data)
    assert client.models.retrieve("org/any-model").id == "org/any-model"
    more = client.models.list(extra_headers={"x-mock": "models=mock-extra,mock-gpt"})
    assert [m.id for m in more.data] == ["mock-gpt", "mock-gpt-large", "mock-embed", "mock-extra"]


# --- Responses API ------------------------------------------------------------------------


def respond(client: openai.OpenAI, scope: str, more: str = "", **kwargs: Any) -> Any:
    kwargs.setdefault("input", "Hello there")
    return client.responses.create(model="mock-gpt", extra_headers=knobs(scope, more), **kwargs)


def test_responses_answer_text_with_usage(client: openai.OpenAI, scope: str) -> None:
    answer = respond(client, scope, instructions="Be brief.")
    assert answer.status == "completed" and answer.model == "mock-gpt"
    assert answer.id.startswith("resp_")
    assert len(answer.output_text.split()) == 8
    assert answer.output_text == respond(client, scope, instructions="Be brief.").output_text
    assert answer.output_text != respond(client, scope, instructions="Be long.").output_text
    usage = answer.usage
    assert usage.input_tokens > 0 and usage.output_tokens == 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream_deltas_add_up_to_the_completed_text(
    client: openai.OpenAI, scope: str
) -> None:
    events = list(respond(client, scope, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 8
    done = events[-1].response
    assert "".join(deltas) == done.output_text == respond(client, scope).output_text
    assert done.usage.output_tokens == 8


def test_responses_call_a_function_until_its_output_is_in_the_input(
    client: openai.OpenAI, scope: str
) -> None:
    first = respond(client, scope, tools=RESPONSES_TOOLS)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == WEATHER_ARGS
    inputs = [
        {"role": "user", "content": "Hello there"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    after = respond(client, scope, input=inputs, tools=RESPONSES_TOOLS)
    assert after.output[0].type == "message" and len(after.output_text.split()) == 8
    events = list(respond(client, scope, tools=RESPONSES_TOOLS, stream=True))
    streamed = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert json.loads(streamed) == WEATHER_ARGS
    assert events[-1].response.output[0].arguments == streamed


# --- faults -------------------------------------------------------------------------------


def test_status_fault_reaches_the_sdk_with_retry_after_headers(
    client: openai.OpenAI, scope: str
) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        chat(client, scope, "status=429;retry_after=1.5;retry_after_ms=1500")
    error = limited.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.response.headers["retry-after"] == "1.5"
    assert error.response.headers["retry-after-ms"] == "1500"
    assert error.request_id == f"mock-{scope}-1"
    with pytest.raises(openai.InternalServerError) as failed:
        respond(client, scope, "status=503")
    assert failed.value.status_code == 503 and failed.value.type == "server_error"
    assert "retry-after" not in failed.value.response.headers


def outcomes(client: openai.OpenAI, scope: str, more: str, count: int) -> list[object]:
    seen: list[object] = []
    for _ in range(count):
        try:
            chat(client, scope, more)
            seen.append("ok")
        except openai.APIStatusError as e:
            seen.append(e.status_code)
    return seen


def test_fail_nth_fails_exactly_those_requests_of_the_scope(
    client: openai.OpenAI, scope: str
) -> None:
    assert outcomes(client, scope, "status=503;fail_nth=1,2", 4) == [503, 503, "ok", "ok"]
    assert outcomes(client, f"{scope}-b", "fail_nth=2", 3) == ["ok", 500, "ok"]


def test_fail_ratio_fails_its_share_of_requests(client: openai.OpenAI, scope: str) -> None:
    seen = outcomes(client, scope, "status=502;fail_ratio=0.25", 8)
    assert seen == ["ok", "ok", "ok", 502, "ok", "ok", "ok", 502]


def test_hang_keeps_the_client_waiting_until_its_timeout(client: openai.OpenAI, scope: str) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(client.with_options(timeout=0.5), scope, "hang;fail_nth=1")
    assert time.monotonic() - started >= 0.5
    assert len(chat(client, scope, "hang;fail_nth=1").choices[0].message.content.split()) == 8


def test_cut_after_aborts_the_stream_after_that_many_chunks(
    client: openai.OpenAI, scope: str
) -> None:
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(client, scope, "cut_after=3", stream=True):
            received.append(chunk)
    words = text_of(client, scope, MESSAGES).split(" ")
    assert [c.choices[0].delta.content for c in received] == [
        "",
        words[0],
        f" {words[1]}",
        f" {words[2]}",
    ]


async def read_raw(url: str, body: dict[str, Any], header: dict[str, str]) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=header) as r,
    ):
        return await r.read()


def test_cut_after_makes_an_aiohttp_reader_fail_mid_body(
    mock_server: MockServer, scope: str
) -> None:
    url = f"{mock_server.url}/v1/chat/completions"
    body = {"model": "mock-gpt", "messages": MESSAGES}
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(read_raw(url, {**body, "stream": True}, knobs(scope, "cut_after=2")))
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(read_raw(url, body, knobs(scope, "cut_after=2")))


def test_cut_whole_answer_is_a_connection_error_for_the_sdk(
    client: openai.OpenAI, scope: str
) -> None:
    with pytest.raises(openai.APIConnectionError):
        chat(client, scope, "cut_after=0")


def test_malformed_answer_and_stream_event_make_the_sdk_raise(
    client: openai.OpenAI, scope: str, mock_server: MockServer
) -> None:
    with pytest.raises(ValueError):
        chat(client, scope, "malformed")
    raw = httpx.post(
        f"{mock_server.url}/v1/chat/completions",
        json={"model": "mock-gpt", "messages": MESSAGES},
        headers=knobs(scope, "malformed"),
    )
    assert raw.status_code == 200
    with pytest.raises(ValueError):
        json.loads(raw.content)
    received: list[Any] = []
    with pytest.raises(ValueError):
        for chunk in chat(client, scope, "malformed", stream=True):
            received.append(chunk)
    assert len(received) == 2  # the role chunk and the first word


def stream_lines(
    mock_server: MockServer, path: str, body: dict[str, Any], header: dict[str, str]
) -> list[str]:
    with httpx.stream("POST", f"{mock_server.url}{path}", json=body, headers=header) as r:
        assert r.status_code == 200
        return [line for line in r.iter_lines() if line]


def test_truncated_stream_ends_cleanly_without_finish_or_done(
    mock_server: MockServer, scope: str
) -> None:
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True}
    lines = stream_lines(mock_server, "/v1/chat/completions", body, knobs(scope, "truncate"))
    assert "data: [DONE]" not in lines
    assert len(lines) == 1 + 8
    assert all(json.loads(line[6:])["choices"][0]["finish_reason"] is None for line in lines)
    body = {"model": "mock-gpt", "input": "hi", "stream": True}
    lines = stream_lines(mock_server, "/v1/responses", body, knobs(scope, "truncate"))
    assert lines[-1].startswith('data: {"type":"response.output_text.delta"')
    assert not any("response.completed" in line for line in lines)


def test_error_event_after_ends_a_stream_as_a_provider_reports_a_failure(
    client: openai.OpenAI, mock_server: MockServer, scope: str
) -> None:
    received: list[Any] = []
    with pytest.raises(openai.APIError, match="ended this stream with an error"):
        for chunk in chat(client, scope, "error_event_after=2", stream=True):
            received.append(chunk)
    assert len(received) == 3  # the role chunk and two words
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True}
    lines = stream_lines(
        mock_server, "/v1/chat/completions", body, knobs(scope, "error_event_after=1")
    )
    assert json.loads(lines[-2][6:])["error"]["code"] == "server_error"
    assert lines[-1] == "data: [DONE]"
    body = {"model": "mock-gpt", "input": "hi", "stream": True}
    lines = stream_lines(mock_server, "/v1/responses", body, knobs(scope, "error_event_after=1"))
    assert lines[-2:] == ["event: error", lines[-1]]
    assert json.loads(lines[-1][6:])["type"] == "error"
    assert not any("response.completed" in line for line in lines)
    assert chat(client, scope, "error_event_after=1").choices[0].message.content  # whole: fine


# --- bookkeeping --------------------------------------------------------------------------


def test_stats_and_request_log_show_what_the_client_sent(
    client: openai.OpenAI, scope: str, mock_server: MockServer
) -> None:
    chat(client, scope)
    respond(client, scope, input="logged")
    stats = mock_server.get("/_mock/stats")
    assert stats["by_scope"][scope] == 2
    assert stats["by_model"]["mock-gpt"] >= 2
    assert stats["by_path"]["/v1/responses"] >= 1
    mine = [r for r in mock_server.get("/_mock/requests") if r["scope"] == scope]
    assert [r["path"] for r in mine] == ["/v1/chat/completions", "/v1/responses"]
    assert mine[-1]["headers"]["authorization"] == "Bearer x"
    assert mine[-1]["headers"]["x-mock"] == f"scope={scope};"
    assert mine[-1]["body"]["input"] == "logged" and mine[-1]["model"] == "mock-gpt"
    assert len(mock_server.get("/_mock/requests", limit=1)) == 1


def test_reset_clears_counts_and_restarts_request_numbers(
    client: openai.OpenAI, scope: str, mock_server: MockServer
) -> None:
    assert outcomes(client, scope, "status=503;fail_nth=1", 2) == [503, "ok"]
    assert httpx.post(f"{mock_server.url}/_mock/reset").status_code == 200
    assert mock_server.get("/_mock/stats") == {
        "total": 0,
        "by_path": {},
        "by_model": {},
        "by_scope": {},
    }
    assert mock_server.get("/_mock/requests") == []
    assert outcomes(client, scope, "status=503;fail_nth=1", 1) == [503]


def test_bad_knob_header_and_bad_bodies_get_openai_shaped_400s(
    client: openai.OpenAI, scope: str, mock_server: MockServer
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        chat(client, scope, "bogus=1")
    assert bad.value.param == "x-mock" and "'bogus'" in bad.value.message
    url = f"{mock_server.url}/v1/chat/completions"
    not_json = httpx.post(url, content=b"{nope", headers=knobs(scope))
    no_model = httpx.post(url, json={"messages": MESSAGES}, headers=knobs(scope))
    for answer in (not_json, no_model):
        assert answer.status_code == 400
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert no_model.json()["error"]["param"] == "model"


def test_answers_carry_request_ids_and_openai_content_types(
    client: openai.OpenAI, scope: str, mock_server: MockServer
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock-gpt", messages=MESSAGES, extra_headers=knobs(scope)
    )
    assert raw.headers["x-request-id"] == f"mock-{scope}-1"
    assert raw.headers["content-type"] == "application/json"
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", f"{mock_server.url}/v1/chat/completions", json=body, headers=knobs(scope)
    ) as r:
        assert r.headers["x-request-id"] == f"mock-{scope}-2"
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"


def test_delay_and_chunk_delay_slow_the_answer_down(client: openai.OpenAI, scope: str) -> None:
    started = time.monotonic()
    chat(client, scope, "delay=0.3")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    chunks = list(chat(client, scope, "chunks=3;chunk_delay=0.05", stream=True))
    assert time.monotonic() - started >= 0.05 * 4  # role, 3 words, finish, [DONE]: 5 gaps
    assert len(chunks) == 5


def test_server_log_stays_clean_after_hangs_cuts_and_disconnects(
    client: openai.OpenAI, scope: str, mock_server: MockServer
) -> None:
    with pytest.raises(openai.APITimeoutError):
        chat(client.with_options(timeout=0.2), scope, "hang")
    with pytest.raises(openai.APIConnectionError):
        list(chat(client, scope, "cut_after=1", stream=True))
    with pytest.raises(openai.APITimeoutError):
        list(chat(client.with_options(timeout=0.2), scope, "chunk_delay=0.5", stream=True))
    with pytest.raises(openai.APITimeoutError):
        chat(client.with_options(timeout=0.2), scope, "delay=0.5")
    time.sleep(0.8)  # let the server notice every departed client
    log = mock_server.log.read_text()
    assert "Traceback" not in log and "Error" not in log, log
