"""SSE framing for the transcoder: complete events in, events out, and text cut into pieces.

Read as openai-python's `SSEDecoder` reads: `\\r\\n` and `\\r` count as `\\n`, comment lines
(`: keep-alive`) are skipped, several `data:` lines join with `\\n`. An event counts only
once its blank line has arrived, so bytes after the last blank line (a stream cut mid-event)
are dropped.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
_PIECE_MIN = 20
_PIECE_MAX = 40


def read_events(stream: bytes) -> list[tuple[str, bytes]]:
    """(event name or "", data) of every complete event that carries data."""
    if b"\r" in stream:
        stream = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    found = []
    for block in stream.split(b"\n\n")[:-1]:
        if block.startswith(b"data: ") and b"\n" not in block:  # most events: one data line
            found.append(("", block[6:]))
            continue
        name, data = "", []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value.decode(errors="replace")
            elif field == b"data":
                data.append(value)
        if data:
            found.append((name, b"\n".join(data)))
    return found


def data_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def typed_event(payload: dict[str, Any]) -> bytes:
    kind: str = payload["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def pieces(text: str) -> list[str]:
    """`text` in pieces of 20-40 characters, cut before a space or newline where the window
    has one (so pieces start with the space, like model tokens), hard at 40 where it has none;
    no pieces for "". The last piece may be shorter."""
    found, start = [], 0
    while len(text) - start > _PIECE_MAX:
        window = text[start + _PIECE_MIN : start + _PIECE_MAX]
        cut = max(window.rfind(" "), window.rfind("\n"))
        end = start + _PIECE_MIN + cut if cut >= 0 else start + _PIECE_MAX
        found.append(text[start:end])
        start = end
    if start < len(text):
        found.append(text[start:])
    return found
