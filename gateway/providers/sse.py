"""Server-sent events framing: bytes as they arrive -> runs of complete events, verbatim.

Events end at a blank line. Line endings are normalised to `\\n` (openai-python accepts
`\\r\\n`, `\\r` and `\\n`); comments (`: keep-alive`) pass through like any other event.

A stream is relayed as *runs*: all the complete events one read delivered, as one bytes
object, forwarded with one write. The checks every run needs (did the stream end? is an
event broken?) are substring scans over the run; only when a scan hits is the run split
into events.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

_DONE = b"data: [DONE]\n\n"
_TERMINAL_TYPES = (
    b"event: response.completed\n",
    b"event: response.failed\n",
    b"event: response.incomplete\n",
    b"event: error\n",
)
_TERMINAL_DATA = tuple(b'"type":"' + t[7:-1] + b'"' for t in _TERMINAL_TYPES)
# Any of these in a run means it may hold a terminal typed event (or mention one in its text).
_TYPED_HINTS = (b"response.completed", b"response.failed", b"response.incomplete", b"error")


class Framer:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        """The complete events received so far and not yet returned (b"" if none)."""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return b""
        self._buffer = buffer[end + 2 :]
        return buffer[: end + 2]

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not ended yet."""
        return self._buffer


def split(run: bytes) -> list[bytes]:
    """The events of a run, each with its blank-line separator."""
    return [event + b"\n\n" for event in run.split(b"\n\n") if event.strip()]


def _events(run: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(run):
        end = run.find(b"\n\n", start)
        end = len(run) if end < 0 else end + 2
        if run[start:end].strip():
            yield run[start:end]
        start = end


def terminal_end(run: bytes, typed: bool) -> int:
    """The offset just past the event that ends the stream, or -1: `[DONE]` for chat and
    completions; `response.completed` / `.failed` / `.incomplete` / `error` for Responses."""
    if not typed:
        i = run.find(_DONE)
        while i > 0 and run[i - 2 : i] != b"\n\n":  # [DONE] must start an event
            i = run.find(_DONE, i + 1)
        return -1 if i < 0 else i + len(_DONE)
    if not any(hint in run for hint in _TYPED_HINTS):
        return -1
    offset = 0
    for event in split(run):
        offset += len(event)
        if is_terminal(event, typed=True):
            return offset
    return -1


def first_malformed(run: bytes) -> int:
    """The offset of the first event whose data is neither JSON nor `[DONE]`, or -1.

    Only the run's last event is looked at on the fast path (does it end like a JSON object,
    or is it `[DONE]`?), which costs nothing whatever the run's size; anything else (a
    truncated object, a comment, odd spacing) makes the whole run be parsed event by event.
    A model streams its tokens as they come, so a run is usually one event and every event
    gets checked; when a provider bursts many events into one read, a broken event in the
    middle of the burst passes through unchecked (scanning every byte of every run costs
    about as much as the rest of the relay)."""
    if run.endswith(b"}\n\n") or run.endswith(_DONE):
        return -1
    offset = 0
    for event in split(run):
        if is_malformed(event):
            return offset
        offset += len(event)
    return -1


_PREAMBLE_TYPES = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.output_item.added",
        "response.content_part.added",
    }
)
_OUTPUT_KEYS = ("content", "tool_calls", "refusal", "function_call")


def is_preamble(run: bytes, typed: bool) -> bool:
    """Whether a run holds only events that carry no generated output yet: the role-only
    first chunk of a chat stream, `response.created` and friends. Until output arrives,
    nothing needs to reach the client, so a failure can still be retried elsewhere.
    Only used before the commit point; stops at the first event with output, so a burst of
    a whole stream in one read costs one or two parses, not one per event."""
    for event in _events(run):
        data = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
        if not data:
            continue  # a comment
        try:
            obj = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        if typed:
            if obj.get("type") not in _PREAMBLE_TYPES:
                return False
            continue
        if obj.get("usage") or not isinstance(obj.get("choices"), list):
            return False
        for choice in obj["choices"]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict) or choice.get("finish_reason") is not None:
                return False
            if any(delta.get(key) for key in _OUTPUT_KEYS):
                return False
    return True


def is_malformed(event: bytes) -> bool:
    data = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not data:
        return False
    payload = data[0] if len(data) == 1 else b"\n".join(data)
    if payload.strip() == b"[DONE]":
        return False
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return True
    return False


def is_terminal(event: bytes, typed: bool) -> bool:
    if typed:
        if event.startswith(_TERMINAL_TYPES):
            return True
        # Providers that send typed events without an `event:` line
        return event.startswith(b"data:") and any(t in event for t in _TERMINAL_DATA)
    return event.startswith(_DONE)
