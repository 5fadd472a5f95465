"""`POST /v1/chat/completions`: the answer as one `chat.completion` or as a stream of
`chat.completion.chunk` events.

Content: `chunks` words hashed from the whole `messages` array (placeholder JSON split in
`chunks` pieces under a `json_schema` / `json_object` `response_format`). With function tools
and a last message that is not a `tool` result, the answer is one call to the chosen
function (`finish_reason: "tool_calls"`) whose arguments are the content pieces. `n` is
ignored: there is always one choice.

Stream: a role chunk (`content: ""`, or the first tool-call fragment with id, type and name),
one chunk per content piece, a chunk with `finish_reason`, then, only with
`stream_options.include_usage`, a usage chunk with `choices: []` (every other chunk then
carries `usage: null`), then `[DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson

from .plan import Body, Call, Events, InvalidRequest, Plan
from .synth import answer_pieces, estimate_tokens, split_evenly
from .tools import FunctionCall, choose_function
from .wire import DONE, data_event

FINGERPRINT = "fp_mock"


def chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The `CompletionUsage` object of Chat Completions and legacy Completions."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def billed(usage: dict[str, Any]) -> tuple[int, int]:
    return usage["prompt_tokens"], usage.get("completion_tokens", 0)


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def plan_chat(call: Call) -> Plan:
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", "messages")
    seed = orjson.dumps(messages)
    last = messages[-1]
    answered_tool = isinstance(last, dict) and last.get("role") == "tool"
    fn = None if answered_tool else choose_function(body.get("tools"), body.get("tool_choice"))
    if fn is not None:
        pieces = split_evenly(fn.arguments, call.chunks)
    else:
        rf = body.get("response_format")
        rf = rf if isinstance(rf, dict) else {}
        js = rf.get("json_schema")
        pieces = answer_pieces(
            seed, call.chunks, rf.get("type"), js.get("schema") if isinstance(js, dict) else None
        )
    usage = chat_usage(estimate_tokens(len(seed)), len(pieces))
    if body.get("stream") is True:
        return _stream(call, fn, pieces, usage)
    return Body(orjson.dumps(_completion(call, fn, pieces, usage)), billed(usage))


def _tool_call(call: Call, fn: FunctionCall, arguments: str) -> dict[str, Any]:
    return {
        "id": f"call_{call.ident}",
        "type": "function",
        "function": {"name": fn.name, "arguments": arguments},
    }


def _completion(
    call: Call, fn: FunctionCall | None, pieces: tuple[str, ...], usage: dict[str, Any]
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
    }
    if fn is None:
        message["content"] = "".join(pieces)
    else:
        message["tool_calls"] = [_tool_call(call, fn, fn.arguments)]
    return {
        "id": f"chatcmpl-{call.ident}",
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop" if fn is None else "tool_calls",
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }


def _stream(
    call: Call, fn: FunctionCall | None, pieces: tuple[str, ...], usage: dict[str, Any]
) -> Events:
    with_usage = include_usage(call.body)
    ident = f"chatcmpl-{call.ident}"

    def event(choices: list[dict[str, Any]], usage_value: dict[str, Any] | None) -> bytes:
        payload: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": call.model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if with_usage:
            payload["usage"] = usage_value
        return data_event(payload)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return event(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], None
        )

    if fn is None:
        head = chunk({"role": "assistant", "content": "", "refusal": None})
        content = tuple(chunk({"content": piece}) for piece in pieces)
    else:
        first = {"index": 0, **_tool_call(call, fn, "")}
        head = chunk({"role": "assistant", "content": None, "tool_calls": [first]})
        content = tuple(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in pieces
        )
    tail = [chunk({}, "stop" if fn is None else "tool_calls")]
    if with_usage:
        tail.append(event([], usage))
    tail.append(DONE)
    malformed = (
        b'data: {"id": "' + ident.encode() + b'", "object": "chat.completion.chunk", "choi\n\n'
    )
    return Events((head,), content, tuple(tail), malformed, billed(usage) if with_usage else None)
