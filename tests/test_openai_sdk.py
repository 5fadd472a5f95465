"""The real openai SDK, pointed at the gateway, gets what it would get from OpenAI."""

from __future__ import annotations

import asyncio
import base64
import struct

import httpx
from harness import PROVIDER_KEY, Gateway, Mock

USER = [{"role": "user", "content": "What is a save point?"}]


def test_chat_completion_answers_with_the_upstream_body(gateway: Gateway, mock: Mock) -> None:
    reply = gateway.client().chat.completions.create(model="gpt-test", messages=USER)
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_model_name_is_rewritten_and_client_credentials_are_not_forwarded(
    gateway: Gateway, mock: Mock
) -> None:
    client = gateway.client(api_key="sk-client-key-should-stay-here")
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "rewrite check 1"}]
    )
    sent = next(
        r
        for r in mock.requests()
        if r["body"].get("messages") == [{"role": "user", "content": "rewrite check 1"}]
    )
    assert sent["model"] == "mock-gpt"
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "sk-client-key-should-stay-here" not in str(sent["headers"])
    assert headers["x-client-request-id"] == reply.headers["x-savepoint-request-id"]


def test_streamed_chat_arrives_chunk_by_chunk_with_usage_last(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="gpt-test", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 8  # the mock's default answer length
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_and_non_stream_give_the_same_text(gateway: Gateway) -> None:
    client = gateway.client()
    whole = client.chat.completions.create(model="gpt-test", messages=USER)
    parts = client.chat.completions.create(model="gpt-test", messages=USER, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert streamed == whole.choices[0].message.content


def test_tool_calls_pass_through_streamed_and_not(gateway: Gateway) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    client = gateway.client()
    reply = client.chat.completions.create(model="gpt-test", messages=USER, tools=tools)  # type: ignore[arg-type]
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=USER,
        tools=tools,
        stream=True,  # type: ignore[arg-type]
    )
    args = ""
    names = []
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function and delta.function.name:
                names.append(delta.function.name)
            args += (delta.function.arguments or "") if delta.function else ""
    assert names == ["get_weather"]
    assert args == call.function.arguments  # type: ignore[union-attr]


def test_response_format_is_passed_to_the_provider(gateway: Gateway, mock: Mock) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    gateway.client().chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "format check"}],
        response_format=schema,  # type: ignore[arg-type]
    )
    sent = [r for r in mock.requests() if r["body"].get("response_format")]
    assert sent[-1]["body"]["response_format"] == schema


def test_legacy_completions_stream_and_not(gateway: Gateway) -> None:
    client = gateway.client()
    whole = client.completions.create(model="gpt-test", prompt="Say hi")
    assert whole.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="gpt-test", prompt="Say hi", stream=True)
        if c.choices
    )
    assert streamed == whole.choices[0].text


def test_embeddings_default_base64_is_decoded_by_the_sdk(gateway: Gateway) -> None:
    reply = gateway.client().embeddings.create(model="embed-test", input=["one", "two"])
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 16
    assert reply.data[0].embedding != reply.data[1].embedding


def test_embeddings_float_and_dimensions(gateway: Gateway) -> None:
    client = gateway.client()
    floats = client.embeddings.create(
        model="embed-test", input="one", encoding_format="float", dimensions=4
    )
    assert len(floats.data[0].embedding) == 4
    raw = httpx.post(
        f"{gateway.base_url}/embeddings",
        json={"model": "embed-test", "input": "one", "encoding_format": "base64", "dimensions": 4},
    )
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack("<4f", packed)) == floats.data[0].embedding


def test_models_list_and_retrieve(gateway: Gateway) -> None:
    client = gateway.client()
    assert sorted(m.id for m in client.models.list()) == ["embed-test", "gpt-test"]
    model = client.models.retrieve("gpt-test")
    assert (model.id, model.object) == ("gpt-test", "model")


def test_raw_response_carries_request_ids(gateway: Gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-test", messages=USER
    )
    assert raw.headers["x-request-id"].startswith("mock-")  # the upstream's id, forwarded
    assert len(raw.headers["x-savepoint-request-id"]) == 32
    assert raw.parse().choices[0].message.content
    line = gateway.log_for(raw.headers["x-savepoint-request-id"])
    assert line["upstream_request_id"] == raw.headers["x-request-id"]
    assert line["tokens"]["total"] == raw.parse().usage.total_tokens  # type: ignore[union-attr]


def test_responses_api_stream_and_not(gateway: Gateway) -> None:
    client = gateway.client()
    whole = client.responses.create(model="gpt-test", input="Hello there")
    assert whole.status == "completed" and whole.output_text
    deltas = []
    final = None
    with client.responses.create(model="gpt-test", input="Hello there", stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
    assert "".join(deltas) == whole.output_text
    assert final is not None and final.usage is not None and final.usage.output_tokens > 0


def test_async_client_streams_concurrently(gateway: Gateway) -> None:
    async def run() -> list[str]:
        client = gateway.async_client()

        async def one(i: int) -> str:
            stream = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": f"q{i}"}], stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        try:
            return await asyncio.gather(*(one(i) for i in range(20)))
        finally:
            await client.close()

    texts = asyncio.run(run())
    assert all(len(t.split()) == 8 for t in texts)
    assert len(set(texts)) > 1  # different questions, different answers


def test_async_client_embeddings_and_responses(gateway: Gateway) -> None:
    async def run() -> tuple[int, str]:
        client = gateway.async_client()
        try:
            emb = await client.embeddings.create(model="embed-test", input="x")
            resp = await client.responses.create(model="gpt-test", input="y")
            return len(emb.data[0].embedding), resp.output_text
        finally:
            await client.close()

    size, text = asyncio.run(run())
    assert size == 16 and text
