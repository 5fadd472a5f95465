"""`POST /v1/responses` (the Responses API, the OpenAI Agents SDK's default): a `response`
object, whole or as typed SSE events.

Content: `chunks` words hashed from `instructions` and `input` (placeholder JSON under a
`text.format` of `json_schema` / `json_object`). With a function tool and an `input` that does
not end with a `function_call_output` item, the single output item is a `function_call`.

Stream: `response.created`, `response.in_progress`, `response.output_item.added`,
(`response.content_part.added`), one `response.output_text.delta` (or
`response.function_call_arguments.delta`) per content piece, the matching `.done` events,
`response.output_item.done`, `response.completed` with usage. Every event is
`event: <type>` + `data: {"type", "sequence_number", ...}`; there is no `[DONE]`.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from .plan import Body, Call, Events, InvalidRequest, Plan
from .synth import answer_pieces, estimate_tokens, split_evenly
from .tools import FunctionCall, choose_function
from .wire import typed_event


def plan_response(call: Call) -> Plan:
    body = call.body
    given = body.get("input")
    if given is not None and not isinstance(given, str | list):
        raise InvalidRequest("'input' must be a string or an array of input items.", "input")
    seed = orjson.dumps([body.get("instructions"), given])
    last = given[-1] if isinstance(given, list) and given else None
    answered_tool = isinstance(last, dict) and last.get("type") == "function_call_output"
    fn = None if answered_tool else choose_function(body.get("tools"), body.get("tool_choice"))
    if fn is not None:
        pieces = split_evenly(fn.arguments, call.chunks)
    else:
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        fmt = fmt if isinstance(fmt, dict) else {}
        pieces = answer_pieces(seed, call.chunks, fmt.get("type"), fmt.get("schema"))
    prompt = estimate_tokens(len(seed))
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": len(pieces),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + len(pieces),
    }
    done = _response(call, "completed", [_item(call, fn, "".join(pieces), "completed")], usage)
    if body.get("stream") is not True:
        return Body(orjson.dumps(done), (prompt, len(pieces)))
    return _stream(call, fn, pieces, done)


def _item(call: Call, fn: FunctionCall | None, text: str, status: str) -> dict[str, Any]:
    if fn is not None:
        return {
            "id": f"fc_{call.ident}",
            "type": "function_call",
            "status": status,
            "call_id": f"call_{call.ident}",
            "name": fn.name,
            "arguments": text,
        }
    content = [_part(text)] if status == "completed" else []
    return {
        "id": f"msg_{call.ident}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response(
    call: Call, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    b = call.body
    return {
        "id": f"resp_{call.ident}",
        "object": "response",
        "created_at": call.created,
        "status": status,
        "completed_at": call.created if status == "completed" else None,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": b.get("instructions"),
        "max_output_tokens": b.get("max_output_tokens"),
        "model": call.model,
        "output": output,
        "parallel_tool_calls": b.get("parallel_tool_calls", True),
        "previous_response_id": b.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": b.get("store", True),
        "temperature": b.get("temperature", 1.0),
        "text": b.get("text") or {"format": {"type": "text"}},
        "tool_choice": b.get("tool_choice", "auto"),
        "tools": b.get("tools") or [],
        "top_p": b.get("top_p", 1.0),
        "truncation": b.get("truncation", "disabled"),
        "usage": usage,
        "user": b.get("user"),
        "metadata": b.get("metadata") or {},
    }


def _stream(
    call: Call, fn: FunctionCall | None, pieces: tuple[str, ...], done: dict[str, Any]
) -> Events:
    numbers = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return typed_event({"type": kind, "sequence_number": next(numbers), **fields})

    started = _response(call, "in_progress", [], None)
    item = done["output"][0]
    at = {"item_id": item["id"], "output_index": 0}
    head = [
        event("response.created", response=started),
        event("response.in_progress", response=started),
        event(
            "response.output_item.added", output_index=0, item=_item(call, fn, "", "in_progress")
        ),
    ]
    if fn is None:
        text = "".join(pieces)
        delta_kind = "response.output_text.delta"
        head.append(event("response.content_part.added", **at, content_index=0, part=_part("")))
        content = tuple(
            event(delta_kind, **at, content_index=0, delta=p, logprobs=[]) for p in pieces
        )
        tail = [
            event("response.output_text.done", **at, content_index=0, text=text, logprobs=[]),
            event("response.content_part.done", **at, content_index=0, part=_part(text)),
        ]
    else:
        delta_kind = "response.function_call_arguments.delta"
        content = tuple(event(delta_kind, **at, delta=p) for p in pieces)
        tail = [
            event(
                "response.function_call_arguments.done", **at, name=fn.name, arguments=fn.arguments
            )
        ]
    tail.append(event("response.output_item.done", output_index=0, item=item))
    tail.append(event("response.completed", response=done))
    malformed = (
        b"event: "
        + delta_kind.encode()
        + b'\ndata: {"type": "'
        + delta_kind.encode()
        + b'", "seq\n\n'
    )
    usage = done["usage"]
    return Events(
        tuple(head),
        content,
        tuple(tail),
        malformed,
        (usage["input_tokens"], usage["output_tokens"]),
    )
