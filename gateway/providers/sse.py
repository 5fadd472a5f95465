"""Server-sent events framing: bytes as they arrive -> complete events, forwarded verbatim.

Events end at a blank line. Line endings are normalised to `\\n` (openai-python accepts
`\\r\\n`, `\\r` and `\\n`); comments (`: keep-alive`) pass through like any other event.
"""

from __future__ import annotations

import orjson

_DONE = b"data: [DONE]"
_TERMINAL_TYPES = (
    b"event: response.completed",
    b"event: response.failed",
    b"event: response.incomplete",
    b"event: error",
)
_TERMINAL_DATA = tuple(b'"type":"' + t[7:] + b'"' for t in _TERMINAL_TYPES)


class Framer:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 2 :]
        return [event + b"\n\n" for event in buffer[:end].split(b"\n\n") if event.strip()]

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not ended yet."""
        return self._buffer


def is_malformed(event: bytes) -> bool:
    """Whether the event's data is neither JSON nor `[DONE]` (comments have no data)."""
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
    """Whether this event ends the stream: `[DONE]` for chat and completions, a terminal
    typed event (`response.completed`, `response.failed`, ...) for the Responses API."""
    if typed:
        if event.startswith(_TERMINAL_TYPES):
            return True
        # Providers that send typed events without an `event:` line
        return event.startswith(b"data:") and any(t in event for t in _TERMINAL_DATA)
    return event.startswith(_DONE)
