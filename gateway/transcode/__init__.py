"""One successful answer in either form: the SSE stream a streamed request got, or the JSON
body the same request gets non-streamed. The response cache stores one and serves both.

Pure: bytes in, bytes out; no I/O, no clock.

- `assemble(endpoint, events)`: the body, from a complete stream; None if the stream is not
  one: no `data: [DONE]` (chat, completions) or `response.completed` (Responses), an error
  event (`event: error`, a `data: {"error": ...}` chunk, `response.failed`,
  `response.incomplete`), a choice that never got a `finish_reason`, a tool call that never
  got an id or name, or JSON that does not parse or has the wrong shape. A stream that ended
  on `finish_reason: "length"` is complete and assembles; `complete()` then says it is not
  worth caching.
- `disassemble(endpoint, body, include_usage)`: a complete stream of that body, in pieces of
  20-40 characters so a client sees it arrive. `include_usage` is `stream_options.include_usage`;
  the Responses API always carries usage in its terminal event and ignores it.
- `complete(endpoint, body)`: whether a body is a finished, successful answer worth caching.

Invariant (tested with the openai SDK's types): `assemble(disassemble(body))` gives the same
answer as `body`, and `disassemble(assemble(stream))` one a client reads as `stream`.
Embeddings never stream: `assemble` / `disassemble` raise ValueError for them. Details of each
format are in `chat.py` and `responses.py`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import jsonbytes
from gateway.model import Endpoint

from . import chat, responses
from .wire import read_events

__all__ = ["Assembly", "assemble", "complete", "disassemble"]

_FINISHED = ("stop", "tool_calls", "function_call")  # a tuple: `in` never hashes the value
_CUT_SHORT = ("length", "content_filter")  # finished, but not by the model's own choice
# What a JSON document of the wrong shape raises when read as an answer.
_SHAPE_ERRORS = (LookupError, TypeError, AttributeError)


def assemble(endpoint: Endpoint, events: bytes) -> bytes | None:
    """The non-streamed body of a complete stream, or None (see the module docstring)."""
    assembly = Assembly(endpoint)
    assembly.add(events)
    return assembly.body()


class Assembly:
    """`assemble` as the stream goes: `add` each run of complete events as it arrives, then
    `body`. It keeps what the body needs (the text, the tool calls, the usage...), not the
    events, which are several times larger."""

    __slots__ = ("_broken", "_fold")

    def __init__(self, endpoint: Endpoint):
        _streams(endpoint)
        self._fold: chat.Assembly | responses.Assembly = (
            responses.Assembly()
            if endpoint.typed_events
            else chat.Assembly(legacy=endpoint is Endpoint.COMPLETIONS)
        )
        self._broken = False

    def add(self, run: bytes) -> None:
        """Complete events (a run ends with an event's blank line)."""
        if self._broken:
            return
        try:
            for name, data in read_events(run):
                self._fold.add(name, data)
        except (orjson.JSONDecodeError, *_SHAPE_ERRORS):
            self._broken = True

    def body(self) -> bytes | None:
        """The body, or None (see the module docstring)."""
        if self._broken:
            return None
        try:
            doc = self._fold.body()
        except _SHAPE_ERRORS:
            return None
        return None if doc is None else jsonbytes.dumps(doc)


def disassemble(endpoint: Endpoint, body: bytes, include_usage: bool) -> bytes:
    """A complete SSE stream of `body`; ValueError if it is not a body of this endpoint."""
    _streams(endpoint)
    doc: Any = orjson.loads(body)
    try:
        if endpoint.typed_events:
            return responses.disassemble(doc)
        return chat.disassemble(doc, include_usage, legacy=endpoint is Endpoint.COMPLETIONS)
    except _SHAPE_ERRORS as e:
        raise ValueError(f"not a {endpoint.path} body: {e!r}") from e


def complete(endpoint: Endpoint, body: bytes, cut_short: bool = False) -> bool:
    """Chat / completions: every choice stopped or called tools (not `length`, not
    `content_filter`, unless `cut_short`); Responses: `status: completed` (or `incomplete`,
    if `cut_short`); embeddings: some `data`. Never a body with an `error`."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return finished(endpoint, doc, cut_short)


def finished(endpoint: Endpoint, doc: Any, cut_short: bool = False) -> bool:
    """`complete`, of a body already parsed."""
    if not isinstance(doc, dict) or doc.get("error") is not None:
        return False
    if endpoint is Endpoint.RESPONSES:
        return doc.get("status") in (("completed", "incomplete") if cut_short else ("completed",))
    if endpoint is Endpoint.EMBEDDINGS:
        data = doc.get("data")
        return isinstance(data, list) and bool(data)
    choices = doc.get("choices")
    finished = _FINISHED + _CUT_SHORT if cut_short else _FINISHED
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and c.get("finish_reason") in finished for c in choices)
    )


def _streams(endpoint: Endpoint) -> None:
    if not endpoint.can_stream:
        raise ValueError(f"{endpoint.path} answers are never streamed")
