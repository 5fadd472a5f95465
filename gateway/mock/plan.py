"""What an endpoint builder is given (`Call`) and what it returns: a `Plan` of the answer's
bytes before any fault is applied.

A plan is either a `Body` (one JSON document) or `Events` (an SSE stream split into head,
content and tail, so that a fault can stop after the k-th content event or leave the tail
out). Builders are pure: they never touch the clock, the network or the `Call` they got, and
they raise `InvalidRequest` for a request that OpenAI would answer with 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class InvalidRequest(ValueError):
    """The request is not one the endpoint accepts; answered with 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Call:
    body: dict[str, Any]  # the parsed request; builders only read it
    model: str
    chunks: int
    dimensions: int
    ident: str  # unique within the mock process; the suffix of every id in the answer
    created: int  # unix seconds


Billed = tuple[int, int]  # (prompt tokens, completion tokens) an answer reports


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes
    usage: Billed | None = None  # what the answer reports


@dataclass(frozen=True, slots=True)
class Events:
    head: tuple[bytes, ...]  # events before the first content event (role chunk, created...)
    content: tuple[bytes, ...]  # one event per content chunk (text or argument fragment)
    tail: tuple[bytes, ...]  # finish chunk, usage chunk, [DONE] / terminal event
    malformed: bytes  # one event in this stream's framing whose data is invalid JSON
    usage: Billed | None = None  # what the stream reports (None: no usage event)


Plan = Body | Events
