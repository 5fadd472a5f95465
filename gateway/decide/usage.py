"""Token usage as the upstream reported it, read from a body or a stream event."""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.model import Endpoint, Usage


def without_usage_chunk(run: bytes) -> bytes:
    """A run of chat or completions events without the usage chunk (`choices: []` and a
    `usage`), for a client that did not ask for it. Other events are kept byte for byte."""
    if b'"usage":{' not in run and b'"usage": {' not in run:
        return run
    kept = []
    for event in run.split(b"\n\n"):
        # only an event with a usage object may be it (the others say "usage":null, or nothing)
        if (
            event.startswith(b"data:")
            and (b'"usage":{' in event or b'"usage": {' in event)
            and _is_usage_chunk(event[5:])
        ):
            continue
        kept.append(event)
    return b"\n\n".join(kept)


def _is_usage_chunk(data: bytes) -> bool:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and obj.get("usage") is not None


def usage_from_body(body: Any) -> Usage | None:
    """Usage of a parsed non-streamed answer (chat, completions, embeddings, Responses)."""
    return _usage(body.get("usage")) if isinstance(body, dict) else None


def usage_from_run(endpoint: Endpoint, run: bytes) -> Usage | None:
    """Usage carried by a run of SSE events, if any (chat: the include_usage chunk;
    Responses: the terminal event's `response.usage`). Most runs carry none and cost one scan:
    chunks without usage say `"usage":null`, or nothing."""
    at = run.rfind(b'"usage":{')
    if at < 0:
        at = run.rfind(b'"usage": {')
        if at < 0:
            return None
    start = run.rfind(b"\n", 0, at) + 1  # the data line holding it
    end = run.find(b"\n", at)
    line = run[start : end if end >= 0 else len(run)]
    return _usage_of_data(endpoint, line[5:]) if line.startswith(b"data:") else None


def _usage_of_data(endpoint: Endpoint, data: bytes) -> Usage | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if endpoint.typed_events:
        response = obj.get("response")
        return _usage(response.get("usage")) if isinstance(response, dict) else None
    return _usage(obj.get("usage"))


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens", raw.get("input_tokens")))
    completion = _int(raw.get("completion_tokens", raw.get("output_tokens")))
    prompt_details = raw.get("prompt_tokens_details") or raw.get("input_tokens_details") or {}
    output_details = raw.get("completion_tokens_details") or raw.get("output_tokens_details") or {}
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_int(raw.get("total_tokens")) or prompt + completion,
        cached_tokens=_int(prompt_details.get("cached_tokens"))
        if isinstance(prompt_details, dict)
        else 0,
        reasoning_tokens=_int(output_details.get("reasoning_tokens"))
        if isinstance(output_details, dict)
        else 0,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# The text a stream carries: chat `content` and tool `arguments`, completions `text`,
# Responses `delta` (JSON-escaped; an escape counts as one character or two, close enough).
_STREAMED_TEXT = re.compile(rb'"(?:content|arguments|text|delta)":"((?:[^"\\]|\\.)*)"')
_TEXT_FIELDS = ("content", "text", "arguments")
CHARS_PER_TOKEN = 4  # the rule of thumb for English text, for estimates only


def streamed_chars(run: bytes) -> int:
    """How many characters of generated text a run of stream events carries."""
    return sum(len(m) for m in _STREAMED_TEXT.findall(run))


def estimated_usage(body: dict[str, Any], completion_chars: int) -> Usage:
    """Usage for a stream whose provider reported none: the prompt's text and the streamed
    text at `CHARS_PER_TOKEN` characters a token. The ledger marks it as an estimate."""
    prompt = -(
        -_text_length(body.get("messages", body.get("prompt", body.get("input"))))
        // CHARS_PER_TOKEN
    )
    completion = -(-completion_chars // CHARS_PER_TOKEN)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _text_length(value: Any) -> int:
    """The characters of every string in a prompt (messages, content parts, a bare string)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    if isinstance(value, dict):
        return sum(
            _text_length(v) for k, v in value.items() if k in ("content", "text", "arguments")
        )
    return 0
