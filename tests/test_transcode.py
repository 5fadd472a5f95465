"""A cached answer served in the other form reads, through the real openai SDK, as the answer
the provider gave: streams assemble into the non-streamed body, bodies disassemble into
streams the SDK accumulates back into the same completion. Broken streams do not assemble."""

from __future__ import annotations

import copy
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.mock.chat import plan_chat
from gateway.mock.completions import plan_completion
from gateway.mock.plan import Body, Call, Events
from gateway.mock.responses_api import plan_response
from gateway.model import Endpoint
from gateway.transcode import Assembly, assemble, complete, disassemble

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
USAGE = {"prompt_tokens": 31, "completion_tokens": 42, "total_tokens": 73}
LONG = (
    "The forecast for Paris calls for light rain in the morning, clearing by noon, "
    "with a high of 21 degrees.\nTake an umbrella, and a sweater for the evening breeze "
    "along the river; a_very_long_identifier_without_any_spaces_in_it_at_all ends it."
)


# --- what the mock provider sends, for the same request streamed and not -----------------


def mock_pair(build: Any, body: dict[str, Any]) -> tuple[bytes, bytes]:
    """(non-streamed body, complete stream) the mock sends for `body`."""
    whole = build(Call(body, "mock-gpt", 12, 16, "mockx01", 1700000000))
    events = build(Call({**body, "stream": True}, "mock-gpt", 12, 16, "mockx01", 1700000000))
    assert isinstance(whole, Body) and isinstance(events, Events)
    return whole.data, b"".join(events.head + events.content + events.tail)


CHAT_TEXT = {"messages": [{"role": "user", "content": "Weather in Paris?"}]}
CHAT_TOOL = {**CHAT_TEXT, "tools": [WEATHER_TOOL]}
WITH_USAGE = {"stream_options": {"include_usage": True}}
RESPONSES_TEXT = {"input": "Weather in Paris?", "instructions": "Be brief."}
RESPONSES_TOOL = {
    **RESPONSES_TEXT,
    "tools": [{"type": "function", "name": "get_weather", "parameters": CITY}],
}


def data_of(stream: bytes) -> list[Any]:
    """The JSON of each `data:` line (a test's own reading, independent of the module's)."""
    lines = [line for line in stream.split(b"\n") if line.startswith(b"data: ")]
    return [orjson.loads(line[6:]) for line in lines if line != b"data: [DONE]"]


def sdk_client(stream: bytes) -> openai.OpenAI:
    """The real openai client, answered with `stream` by an in-process transport."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    transport = httpx.MockTransport(answer)
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )


# --- hand-written OpenAI-style examples -------------------------------------------------


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9",
        "object": "chat.completion.chunk",
        "created": 1727000000,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_5f20662549",
        "choices": choices,
        **extra,
    }


def delta(index: int, change: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": change, "logprobs": None, "finish_reason": finish}


def fragment(at: int, arguments: str, **head: Any) -> dict[str, Any]:
    function = {"arguments": arguments, **({"name": head.pop("name")} if "name" in head else {})}
    return {"tool_calls": [{"index": at, **head, "function": function}]}


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    events = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return events + (b"data: [DONE]\n\n" if done else b"")


# n=2, choices interleaved; choice 1 calls two tools, arguments split over several fragments.
TWO_CHOICES_CHUNKS = [
    chunk([delta(0, {"role": "assistant", "content": "", "refusal": None})]),
    chunk([delta(1, {"role": "assistant", "content": None, "refusal": None})]),
    chunk([delta(0, {"content": "It is 21"})]),
    chunk([delta(1, fragment(0, "", id="call_a", type="function", name="get_weather"))]),
    chunk([delta(1, fragment(0, '{"ci'))]),
    chunk([delta(0, {"content": " degrees in Paris."})]),
    chunk([delta(1, fragment(0, 'ty": "Par'))]),
    chunk([delta(1, fragment(1, "", id="call_b", type="function", name="get_time"))]),
    chunk([delta(1, fragment(0, 'is"}'))]),
    chunk([delta(1, fragment(1, '{"tz": "Europe/Paris"}'))]),
    chunk([delta(0, {}, "stop")]),
    chunk([delta(1, {}, "tool_calls")]),
    chunk([], usage=USAGE),
]
TWO_CHOICES_BODY = {
    "id": "chatcmpl-B9", "object": "chat.completion", "created": 1727000000,
    "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_5f20662549", "usage": USAGE,
    "choices": [
        {"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "It is 21 degrees in Paris.", "refusal": None,
            "annotations": []}},
        {"index": 1, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "refusal": None, "annotations": [],
            "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}}]}},
    ],
}  # fmt: skip


def chat_body(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    body = copy.deepcopy(TWO_CHOICES_BODY)
    body["choices"] = [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": finish,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                **message,
            },
        }
    ]
    return {**body, **extra}


def chat_bodies() -> Iterator[Any]:
    yield pytest.param(orjson.loads(mock_pair(plan_chat, CHAT_TEXT)[0]), id="mock-text")
    yield pytest.param(orjson.loads(mock_pair(plan_chat, CHAT_TOOL)[0]), id="mock-tool-call")
    yield pytest.param(TWO_CHOICES_BODY, id="two-choices-two-tool-calls")
    yield pytest.param(chat_body({"content": LONG}), id="long-text")
    yield pytest.param(chat_body({"content": ""}), id="empty-text")
    yield pytest.param(chat_body({"refusal": "I can't help with that."}), id="refusal")
    logprobs = {
        "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}],
        "refusal": None,
    }
    with_logprobs = chat_body({"content": "Hi"})
    with_logprobs["choices"][0]["logprobs"] = logprobs
    yield pytest.param(with_logprobs, id="logprobs")


def calls(tool_calls: list[Any] | None) -> list[tuple[str, str, str, str]]:
    return [(c.id, c.type, c.function.name, c.function.arguments) for c in tool_calls or []]


# --- Chat Completions ----------------------------------------------------------------------


@pytest.mark.parametrize("request_body", [CHAT_TEXT, CHAT_TOOL], ids=["text", "tool-call"])
@pytest.mark.parametrize("usage", [True, False], ids=["include-usage", "no-usage"])
def test_mock_chat_stream_assembles_into_the_mock_body(
    request_body: dict[str, Any], usage: bool
) -> None:
    body, stream = mock_pair(plan_chat, {**request_body, **(WITH_USAGE if usage else {})})
    assembled = assemble(Endpoint.CHAT, stream)
    assert assembled is not None
    expected = orjson.loads(body)
    if not usage:  # without include_usage the stream never says what it cost
        del expected["usage"]
    assert orjson.loads(assembled) == expected
    ChatCompletion.model_validate(orjson.loads(assembled))
    assert complete(Endpoint.CHAT, assembled)


def test_two_interleaved_choices_with_fragmented_tool_calls_assemble_into_one_body() -> None:
    assembled = assemble(Endpoint.CHAT, sse(*TWO_CHOICES_CHUNKS))
    assert assembled is not None
    assert orjson.loads(assembled) == TWO_CHOICES_BODY
    parsed = ChatCompletion.model_validate(orjson.loads(assembled))
    calls = parsed.choices[1].message.tool_calls or []
    assert [c.function.arguments for c in calls] == ['{"city": "Paris"}', '{"tz": "Europe/Paris"}']


def _events(stream: bytes) -> list[bytes]:
    """The stream cut after every event, as a relay passes runs of one event each."""
    return [event + b"\n\n" for event in stream.split(b"\n\n") if event]


@pytest.mark.parametrize(
    ("endpoint", "stream"),
    [
        (Endpoint.CHAT, mock_pair(plan_chat, {**CHAT_TOOL, **WITH_USAGE})[1]),
        (Endpoint.CHAT, sse(*TWO_CHOICES_CHUNKS)),
        (Endpoint.CHAT, sse(*TWO_CHOICES_CHUNKS, done=False)),  # did not end: None both ways
        (Endpoint.COMPLETIONS, mock_pair(plan_completion, {"prompt": "Say hi", **WITH_USAGE})[1]),
        (Endpoint.RESPONSES, mock_pair(plan_response, RESPONSES_TOOL)[1]),
    ],
    ids=["chat-tool", "two-choices", "chat-no-done", "completions", "responses"],
)
def test_a_stream_assembled_event_by_event_gives_the_body_assembled_at_once(
    endpoint: Endpoint, stream: bytes
) -> None:
    assembly = Assembly(endpoint)
    for event in _events(stream):
        assembly.add(event)
    assert assembly.body() == assemble(endpoint, stream)


def test_a_streams_assembly_holds_its_answer_not_its_events() -> None:
    """A capture keeps each cached or journaled stream until it ends: 2,000 streams at once
    are 2,000 assemblies."""
    planned = plan_chat(Call({**CHAT_TEXT, "stream": True}, "mock-gpt", 40, 16, "x", 1700000000))
    assert isinstance(planned, Events)
    stream = b"".join(planned.head + planned.content + planned.tail)  # 40 chunks: 11 KB
    tracemalloc.start()
    try:
        assemblies = [Assembly(Endpoint.CHAT) for _ in range(100)]
        for assembly in assemblies:
            for event in _events(stream):
                assembly.add(event)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / 100 < len(stream) / 4  # the events themselves would be len(stream) each


def test_crlf_line_ends_and_keepalive_comments_do_not_change_the_assembled_body() -> None:
    stream = b": keep-alive\n\n" + sse(*TWO_CHOICES_CHUNKS).replace(b"\n", b"\r\n")
    assembled = assemble(Endpoint.CHAT, stream)
    assert assembled is not None and orjson.loads(assembled) == TWO_CHOICES_BODY


@pytest.mark.parametrize("body", chat_bodies())
def test_chat_body_served_as_a_stream_reads_back_as_the_same_completion(
    body: dict[str, Any],
) -> None:
    stream = disassemble(Endpoint.CHAT, orjson.dumps(body), include_usage=True)
    for data in data_of(stream):
        ChatCompletionChunk.model_validate(data)
    expected = ChatCompletion.model_validate(body)
    with sdk_client(stream).chat.completions.stream(model="m", messages=[]) as events:
        seen = events.get_final_completion()
    assert seen.usage == expected.usage
    for got, want in zip(seen.choices, expected.choices, strict=True):
        assert got.finish_reason == want.finish_reason
        assert got.message.content == want.message.content
        assert got.message.refusal == want.message.refusal
        assert calls(got.message.tool_calls) == calls(want.message.tool_calls)
    assembled = assemble(Endpoint.CHAT, stream)
    assert assembled is not None and orjson.loads(assembled) == body


def test_chat_text_streams_in_pieces_of_twenty_to_forty_characters_cut_before_spaces() -> None:
    stream = disassemble(Endpoint.CHAT, orjson.dumps(chat_body({"content": LONG})), False)
    pieces = [c["choices"][0]["delta"].get("content") for c in data_of(stream)]
    text = [p for p in pieces if p]
    assert "".join(text) == LONG
    assert len(text) >= len(LONG) // 40
    assert all(20 <= len(p) <= 40 for p in text[:-1])
    assert all(p[0] in " \n" for p in text[1:] if "_" not in p)  # words are not cut


def test_first_chunk_has_the_assistant_role_and_empty_content() -> None:
    stream = disassemble(Endpoint.CHAT, orjson.dumps(chat_body({"content": LONG})), False)
    first = data_of(stream)[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}
    assert first["finish_reason"] is None


def test_include_usage_adds_one_last_chunk_with_no_choices_and_null_usage_elsewhere() -> None:
    chunks = data_of(disassemble(Endpoint.CHAT, orjson.dumps(TWO_CHOICES_BODY), True))
    assert chunks[-1] == {**chunk([]), "usage": USAGE}
    assert all(c["usage"] is None and c["choices"] for c in chunks[:-1])


def test_without_include_usage_no_chunk_has_a_usage_field() -> None:
    chunks = data_of(disassemble(Endpoint.CHAT, orjson.dumps(TWO_CHOICES_BODY), False))
    assert all("usage" not in c and c["choices"] for c in chunks)
    stream = disassemble(Endpoint.CHAT, orjson.dumps(TWO_CHOICES_BODY), False)
    assert stream.endswith(b"\n\ndata: [DONE]\n\n")


def test_each_tool_call_streams_as_one_delta_with_id_name_and_full_arguments() -> None:
    chunks = data_of(disassemble(Endpoint.CHAT, orjson.dumps(TWO_CHOICES_BODY), False))
    calls = [d["tool_calls"][0] for c in chunks if "tool_calls" in (d := c["choices"][0]["delta"])]
    assert calls == [
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"index": 1, "id": "call_b", "type": "function",
         "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}},
    ]  # fmt: skip


def test_empty_content_beside_tool_calls_assembles_as_null_content_as_openai_returns_it() -> None:
    stream = sse(
        chunk([delta(0, {"role": "assistant", "content": ""})]),
        chunk([delta(0, fragment(0, '{"city": "Paris"}', id="call_a", name="get_weather"))]),
        chunk([delta(0, {}, "tool_calls")]),
    )
    assembled = assemble(Endpoint.CHAT, stream)
    assert assembled is not None
    message = orjson.loads(assembled)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


def test_token_logprobs_of_every_chunk_add_up_in_the_assembled_choice() -> None:
    def token(text: str) -> dict[str, Any]:
        return {"token": text, "logprob": -0.5, "bytes": list(text.encode()), "top_logprobs": []}

    def with_logprobs(text: str) -> dict[str, Any]:
        return {**delta(0, {"content": text}), "logprobs": {"content": [token(text)]}}

    stream = sse(
        chunk([delta(0, {"role": "assistant", "content": ""})]),
        chunk([with_logprobs("Hello")]),
        chunk([with_logprobs(" world")]),
        chunk([delta(0, {}, "stop")]),
    )
    assembled = assemble(Endpoint.CHAT, stream)
    assert assembled is not None
    parsed = ChatCompletion.model_validate(orjson.loads(assembled))
    logprobs = parsed.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == ["Hello", " world"]


def test_a_stream_that_ran_out_of_tokens_assembles_but_is_not_worth_caching() -> None:
    stream = sse(
        chunk([delta(0, {"role": "assistant", "content": "It is"})]),
        chunk([delta(0, {}, "length")]),
    )
    assembled = assemble(Endpoint.CHAT, stream)
    assert assembled is not None
    assert orjson.loads(assembled)["choices"][0]["finish_reason"] == "length"
    assert not complete(Endpoint.CHAT, assembled)


_WHOLE = sse(*TWO_CHOICES_CHUNKS)


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(sse(*TWO_CHOICES_CHUNKS, done=False), id="no-done"),
        pytest.param(_WHOLE[: _WHOLE.index(b"[DONE]") + 3], id="cut-inside-done"),
        pytest.param(sse(*TWO_CHOICES_CHUNKS[:4]), id="choices-never-finished"),
        pytest.param(sse(*TWO_CHOICES_CHUNKS[:-2], TWO_CHOICES_CHUNKS[-1]), id="one-unfinished"),
        pytest.param(
            sse(  # some proxies still send [DONE] after an error
                *TWO_CHOICES_CHUNKS[:-1],
                {"error": {"message": "overloaded", "type": "server_error", "code": None}},
            ),
            id="error-chunk",
        ),
        pytest.param(
            mock_pair(plan_chat, CHAT_TEXT)[1].replace(b'"content":', b'"cont', 1),
            id="malformed-json",
        ),
        pytest.param(
            sse(chunk([delta(0, fragment(0, "{}"))]), chunk([delta(0, {}, "tool_calls")])),
            id="tool-call-without-id",
        ),
        pytest.param(sse(chunk([])), id="no-choices"),
        pytest.param(b"", id="empty"),
    ],
)
def test_a_chat_stream_that_did_not_end_in_success_does_not_assemble(stream: bytes) -> None:
    assert assemble(Endpoint.CHAT, stream) is None


# --- legacy Completions --------------------------------------------------------------------


@pytest.mark.parametrize("usage", [True, False], ids=["include-usage", "no-usage"])
def test_mock_completions_stream_assembles_into_the_mock_body(usage: bool) -> None:
    request = {"prompt": "Say hi", **(WITH_USAGE if usage else {})}
    body, stream = mock_pair(plan_completion, request)
    assembled = assemble(Endpoint.COMPLETIONS, stream)
    assert assembled is not None
    expected = orjson.loads(body)
    if not usage:
        del expected["usage"]
    assert orjson.loads(assembled) == expected
    Completion.model_validate(orjson.loads(assembled))


def test_completions_body_served_as_a_stream_reads_back_as_the_same_text() -> None:
    body = orjson.loads(mock_pair(plan_completion, {"prompt": "Say hi"})[0])
    body["choices"] = [
        {**body["choices"][0], "text": LONG},
        {**body["choices"][0], "index": 1, "text": "Hi."},
    ]
    stream = disassemble(Endpoint.COMPLETIONS, orjson.dumps(body), include_usage=True)
    chunks = list(sdk_client(stream).completions.create(model="m", prompt="x", stream=True))
    for index, choice in enumerate(body["choices"]):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(c.text for c in mine) == choice["text"]
        assert [c.finish_reason for c in mine][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == Completion.model_validate(body).usage
    assembled = assemble(Endpoint.COMPLETIONS, stream)
    assert assembled is not None and orjson.loads(assembled) == body


# --- Responses API -------------------------------------------------------------------------


@pytest.mark.parametrize("request_body", [RESPONSES_TEXT, RESPONSES_TOOL], ids=["text", "tool"])
def test_mock_responses_stream_assembles_into_the_mock_body(request_body: dict[str, Any]) -> None:
    body, stream = mock_pair(plan_response, request_body)
    assembled = assemble(Endpoint.RESPONSES, stream)
    assert assembled is not None
    assert orjson.loads(assembled) == orjson.loads(body)
    Response.model_validate(orjson.loads(assembled))


def unparsed(dump: Any) -> Any:
    """A dump of the SDK's `ParsedResponse` without the fields parsing added."""
    if isinstance(dump, dict):
        return {k: unparsed(v) for k, v in dump.items() if k not in ("parsed", "parsed_arguments")}
    return [unparsed(v) for v in dump] if isinstance(dump, list) else dump


def responses_bodies() -> Iterator[Any]:
    text = orjson.loads(mock_pair(plan_response, RESPONSES_TEXT)[0])
    tool = orjson.loads(mock_pair(plan_response, RESPONSES_TOOL)[0])
    yield pytest.param(text, id="mock-text")
    yield pytest.param(tool, id="mock-function-call")
    mixed = copy.deepcopy(text)
    message = mixed["output"][0]
    message["content"][0]["text"] = LONG
    message["content"].append({"type": "refusal", "refusal": "Not the time, though."})
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": []}
    call_b = {**tool["output"][0], "id": "fc_2", "call_id": "call_2", "arguments": "{}"}
    mixed["output"] = [reasoning, message, tool["output"][0], call_b]
    yield pytest.param(mixed, id="reasoning-text-refusal-two-calls")


@pytest.mark.parametrize("body", responses_bodies())
def test_responses_body_served_as_a_stream_reads_back_as_the_same_response(
    body: dict[str, Any],
) -> None:
    stream = disassemble(Endpoint.RESPONSES, orjson.dumps(body), include_usage=False)
    events = [STREAM_EVENT.validate_python(e) for e in data_of(stream)]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert stream.count(b"event: ") == len(events)
    assert all(f"event: {e.type}\n".encode() in stream for e in events)
    assert events[-1].type == "response.completed"
    deltas = ("response.output_text.delta", "response.function_call_arguments.delta")
    with sdk_client(stream).responses.stream(model="m", input="x") as seen:
        # What the SDK accumulated from the deltas, per item, by the last delta of each.
        snapshots = {e.item_id: e.snapshot for e in seen if e.type in deltas}
        final = seen.get_final_response()
    assert unparsed(final.model_dump()) == Response.model_validate(body).model_dump()
    for item in body["output"]:
        texts = [p["text"] for p in item.get("content", []) if p["type"] == "output_text"]
        if item["type"] == "function_call":
            texts.append(item["arguments"])
        assert snapshots.get(item["id"], "") == "".join(texts)
    assembled = assemble(Endpoint.RESPONSES, stream)
    assert assembled is not None and orjson.loads(assembled) == body


def test_responses_stream_opens_with_a_response_in_progress_without_output() -> None:
    body = orjson.loads(mock_pair(plan_response, RESPONSES_TEXT)[0])
    events = data_of(disassemble(Endpoint.RESPONSES, orjson.dumps(body), False))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    started = events[0]["response"]
    assert (started["status"], started["output"], started["usage"]) == ("in_progress", [], None)


def test_a_completed_event_with_empty_output_takes_the_items_streamed_before_it() -> None:
    body, stream = mock_pair(plan_response, RESPONSES_TEXT)
    bare = orjson.loads(body)
    last = stream.rindex(b"event: response.completed")
    done = {"type": "response.completed", "sequence_number": 99, "response": {**bare, "output": []}}
    patched = stream[:last] + b"event: response.completed\ndata: " + orjson.dumps(done) + b"\n\n"
    assembled = assemble(Endpoint.RESPONSES, patched)
    assert assembled is not None and orjson.loads(assembled) == bare


def _responses_stream_ending(terminal: dict[str, Any]) -> bytes:
    stream = mock_pair(plan_response, RESPONSES_TEXT)[1]
    head = stream[: stream.rindex(b"event: response.completed")]
    return head + b"event: " + terminal["type"].encode() + b"\ndata: " + orjson.dumps(terminal)


_RESPONSE_STREAM = mock_pair(plan_response, RESPONSES_TEXT)[1]
_FAILED = orjson.loads(mock_pair(plan_response, RESPONSES_TEXT)[0]) | {"status": "failed"}


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(_RESPONSE_STREAM[: _RESPONSE_STREAM.rindex(b"event: ")], id="no-terminal"),
        pytest.param(_RESPONSE_STREAM[:-2], id="terminal-event-cut"),
        pytest.param(
            _responses_stream_ending(
                {
                    "type": "error",
                    "sequence_number": 9,
                    "code": "server_error",
                    "message": "boom",
                    "param": None,
                }
            )
            + b"\n\n",
            id="error-event",
        ),
        pytest.param(
            _responses_stream_ending(
                {"type": "response.failed", "sequence_number": 9, "response": _FAILED}
            )
            + b"\n\n",
            id="response-failed",
        ),
        pytest.param(
            _responses_stream_ending(
                {
                    "type": "response.incomplete",
                    "sequence_number": 9,
                    "response": _FAILED | {"status": "incomplete"},
                }
            )
            + b"\n\n",
            id="response-incomplete",
        ),
        pytest.param(
            _RESPONSE_STREAM.replace(
                b"event: response.completed",
                b'event: error\ndata: {"type": "error", "sequence_number": 8, "message": "boom"}'
                b"\n\nevent: response.completed",
            ),
            id="error-event-before-completed",
        ),
        pytest.param(_RESPONSE_STREAM.replace(b'"delta":', b'"del', 1), id="malformed-json"),
    ],
)
def test_a_responses_stream_that_did_not_complete_does_not_assemble(stream: bytes) -> None:
    assert assemble(Endpoint.RESPONSES, stream) is None


# --- complete() and the endpoints that never stream ----------------------------------------


def _finishes(*reasons: str) -> bytes:
    body = copy.deepcopy(TWO_CHOICES_BODY)
    for choice, reason in zip(body["choices"], reasons, strict=True):
        choice["finish_reason"] = reason
    return orjson.dumps(body)


_RESPONSE = orjson.loads(mock_pair(plan_response, RESPONSES_TEXT)[0])
_EMBEDDINGS = {
    "object": "list",
    "model": "e",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
    "usage": {"prompt_tokens": 1, "total_tokens": 1},
}


@pytest.mark.parametrize(
    ("endpoint", "body", "worth_caching"),
    [
        (Endpoint.CHAT, _finishes("stop", "tool_calls"), True),
        (Endpoint.CHAT, _finishes("stop", "length"), False),
        (Endpoint.CHAT, _finishes("content_filter", "stop"), False),
        (Endpoint.CHAT, orjson.dumps({**TWO_CHOICES_BODY, "choices": []}), False),
        (Endpoint.CHAT, b'{"error": {"message": "overloaded", "type": "server_error"}}', False),
        (Endpoint.CHAT, b'{"id": "chatcmpl-1", "choi', False),
        (Endpoint.CHAT, b"[]", False),
        (Endpoint.COMPLETIONS, mock_pair(plan_completion, {"prompt": "hi"})[0], True),
        (Endpoint.RESPONSES, orjson.dumps(_RESPONSE), True),
        (Endpoint.RESPONSES, orjson.dumps(_RESPONSE | {"status": "incomplete"}), False),
        (Endpoint.RESPONSES, orjson.dumps(_RESPONSE | {"status": "failed"}), False),
        (Endpoint.EMBEDDINGS, orjson.dumps(_EMBEDDINGS), True),
        (Endpoint.EMBEDDINGS, orjson.dumps(_EMBEDDINGS | {"data": []}), False),
    ],
)
def test_complete_accepts_only_finished_successful_answers(
    endpoint: Endpoint, body: bytes, worth_caching: bool
) -> None:
    assert complete(endpoint, body) is worth_caching


@pytest.mark.parametrize(
    ("endpoint", "body", "kept_for_its_key"),
    [
        (Endpoint.CHAT, _finishes("stop", "length"), True),  # the same request stops the same way
        (Endpoint.CHAT, _finishes("content_filter", "stop"), True),
        (Endpoint.CHAT, _finishes("stop", "stop"), True),
        (Endpoint.CHAT, b'{"error": {"message": "overloaded", "type": "server_error"}}', False),
        (Endpoint.CHAT, orjson.dumps({**TWO_CHOICES_BODY, "choices": []}), False),
        (Endpoint.RESPONSES, orjson.dumps(_RESPONSE | {"status": "incomplete"}), True),
        (Endpoint.RESPONSES, orjson.dumps(_RESPONSE | {"status": "failed"}), False),
    ],
)
def test_complete_cut_short_also_accepts_answers_stopped_by_a_limit(
    endpoint: Endpoint, body: bytes, kept_for_its_key: bool
) -> None:
    assert complete(endpoint, body, cut_short=True) is kept_for_its_key


def test_embeddings_never_stream() -> None:
    with pytest.raises(ValueError):
        assemble(Endpoint.EMBEDDINGS, b"data: [DONE]\n\n")
    with pytest.raises(ValueError):
        disassemble(Endpoint.EMBEDDINGS, orjson.dumps(_EMBEDDINGS), include_usage=True)


@pytest.mark.parametrize("body", [b"[1]", b'{"id": "x"}', b"not json"])
def test_disassembling_a_body_of_the_wrong_shape_raises_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        disassemble(Endpoint.CHAT, body, include_usage=False)
    with pytest.raises(ValueError):
        disassemble(Endpoint.RESPONSES, body, include_usage=False)
