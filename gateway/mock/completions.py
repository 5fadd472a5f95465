"""`POST /v1/completions` (legacy): a `text_completion` object, whole or streamed.

Content: `chunks` words hashed from `prompt` (a string, strings or token lists). One choice.
Stream: one chunk per word, a chunk with `text: ""` and `finish_reason: "stop"`, a usage
chunk with `choices: []` only with `stream_options.include_usage`, then `[DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson

from .chat import FINGERPRINT, billed, chat_usage, include_usage
from .plan import Body, Call, Events, InvalidRequest, Plan
from .synth import estimate_tokens, word_pieces
from .wire import DONE, data_event


def _prompt_tokens(prompt: object, seed: bytes) -> int:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return estimate_tokens(len(seed))


def plan_completion(call: Call) -> Plan:
    prompt = call.body.get("prompt")
    if not isinstance(prompt, str | list):
        raise InvalidRequest("'prompt' must be a string or an array.", "prompt")
    seed = orjson.dumps(prompt)
    pieces = word_pieces(seed, call.chunks)
    usage = chat_usage(_prompt_tokens(prompt, seed), len(pieces))
    ident = f"cmpl-{call.ident}"

    def completion(
        choices: list[dict[str, Any]], usage_value: dict[str, Any] | None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": ident,
            "object": "text_completion",
            "created": call.created,
            "model": call.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if usage_value is not None:
            payload["usage"] = usage_value
        return payload

    def choice(text: str, finish: str | None) -> list[dict[str, Any]]:
        return [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]

    if call.body.get("stream") is not True:
        return Body(orjson.dumps(completion(choice("".join(pieces), "stop"), usage)), billed(usage))
    content = tuple(data_event(completion(choice(piece, None), None)) for piece in pieces)
    tail = [data_event(completion(choice("", "stop"), None))]
    with_usage = include_usage(call.body)
    if with_usage:
        tail.append(data_event(completion([], usage)))
    tail.append(DONE)
    malformed = b'data: {"id": "' + ident.encode() + b'", "object": "text_compl\n\n'
    return Events((), content, tuple(tail), malformed, billed(usage) if with_usage else None)
