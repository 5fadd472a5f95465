"""What a client asked for: raw body + headers -> a validated `Call`, or a 400 naming the field.

Only what the gateway itself relies on is checked here (the model, streaming, the fields an
endpoint cannot work without); everything else is the provider's to judge, and its 400 is
passed through unchanged.
"""

from __future__ import annotations

from typing import Any, NoReturn

import orjson

from gateway import jsonbytes
from gateway.errors import InvalidRequest
from gateway.model import Call, Endpoint


def parse_call(endpoint: Endpoint, raw: bytes, read_timeout_header: str | None) -> Call:
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(
            f"the request body is not valid JSON: {e}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        _fail("model", 'is required and must be a non-empty string (e.g. "mock-gpt")', model)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        _fail("stream", "must be true or false", stream)
    if stream and not endpoint.can_stream:
        _fail("stream", f"{endpoint.path} does not stream; remove `stream`", stream)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            _fail("stream_options", "must be an object", options)
        if not stream:
            _fail("stream_options", "is only allowed when `stream` is true", options)
    _check_fields(endpoint, body)
    hidden = stream and not endpoint.typed_events and not (options or {}).get("include_usage")
    return Call(endpoint, body, model, stream, _seconds(read_timeout_header), hidden)


def upstream_body(call: Call, raw: bytes, model: str) -> bytes:
    """What goes upstream: the client's own bytes when they can be, else its body with the
    deployment's model name and, for a stream whose client did not ask for usage,
    `stream_options.include_usage` (every stream is accounted with the provider's numbers)."""
    if model == call.model and not call.usage_hidden:
        return raw
    body = {**call.body, "model": model}
    if call.usage_hidden:
        options = call.body.get("stream_options") or {}
        body["stream_options"] = {**options, "include_usage": True}
    return jsonbytes.dumps(body)  # kept while the call is in flight


def _check_fields(endpoint: Endpoint, body: dict[str, Any]) -> None:
    if endpoint is Endpoint.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            _fail("messages", "is required and must be a non-empty array of messages", messages)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                _fail(f"messages[{i}]", "must be an object with a string `role`", message)
    elif endpoint is Endpoint.COMPLETIONS:
        if "prompt" not in body:
            _fail("prompt", "is required", None)
    elif endpoint is Endpoint.EMBEDDINGS:
        value = body.get("input")
        if not isinstance(value, str | list) or (isinstance(value, list) and not value):
            _fail("input", "is required: a string or a non-empty array", value)
        fmt = body.get("encoding_format")
        if fmt is not None and fmt not in ("float", "base64"):
            _fail("encoding_format", 'must be "float" or "base64"', fmt)
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens", "n"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            _fail(name, "must be a positive integer", value)


def _fail(param: str, problem: str, value: Any) -> NoReturn:
    shown = orjson.dumps(value).decode()[:80] if value is not None else "nothing"
    raise InvalidRequest(f"`{param}` {problem}; got {shown}", param=param, code="invalid_field")


def _seconds(header: str | None) -> float | None:
    if not header:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return value if value > 0 else None
