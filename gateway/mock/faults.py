"""Which fault the mock carries out for the n-th request of a scope, and what it does to
the answer's bytes. Pure: values in, values out; no clock, no sockets.

Selection (`is_picked`): request n (1-based, counted per scope) is picked when n is in
`fail_nth`, or when `fail_ratio` r picks it: n is picked iff floor(n*r) != floor((n-1)*r), so
exactly floor(N*r) of the first N requests are picked, spread evenly. With neither selector
set, every request is picked.

Fault (`decide`): a picked request gets the first fault knob that is set, in the order
hang > status > cut_after > stall_after > error_event_after > malformed > truncate. A
whole-body answer under `stall_after` or `error_event_after` is healthy (use `hang`,
`status`). A selector with no fault knob means status 500, so `--fail-ratio 0.1` alone fails
one request in ten with a server error.

Script (`script_body`, `script_events`): the frames to write after the headers and whether to
end the body cleanly or abort the connection. `truncate` only changes streams; a whole-body
answer under `truncate` is healthy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from .knobs import Knobs
from .plan import Body, Events


@dataclass(frozen=True, slots=True)
class Healthy:
    pass


@dataclass(frozen=True, slots=True)
class Fail:
    status: int
    retry_after: float | None = None
    retry_after_ms: int | None = None
    code: str | None = None  # overrides the error body's code


@dataclass(frozen=True, slots=True)
class Hang:
    pass


@dataclass(frozen=True, slots=True)
class Cut:
    after: int  # content chunks sent before the connection is aborted


@dataclass(frozen=True, slots=True)
class Stall:
    after: int  # content chunks sent before the stream goes silent


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    after: int  # content chunks sent before the stream's error event


@dataclass(frozen=True, slots=True)
class Malformed:
    pass


@dataclass(frozen=True, slots=True)
class Truncate:
    pass


Fault = Healthy | Fail | Hang | Cut | Stall | ErrorEvent | Malformed | Truncate
HEALTHY = Healthy()
_EPSILON = 1e-9  # so that 0.3 * 10 counts as 3, not 2.9999999999999996


def is_picked(n: int, fail_nth: tuple[int, ...], fail_ratio: float | None) -> bool:
    if not fail_nth and fail_ratio is None:
        return True
    if n in fail_nth:
        return True
    if fail_ratio is None:
        return False
    return math.floor(n * fail_ratio + _EPSILON) != math.floor((n - 1) * fail_ratio + _EPSILON)


def _has_fault(k: Knobs) -> bool:
    return (
        k.hang
        or k.status is not None
        or k.cut_after is not None
        or k.stall_after is not None
        or k.error_event_after is not None
        or k.malformed
        or k.truncate
    )


def decide(knobs: Knobs, n: int) -> Fault:
    """The fault for request number `n` of `knobs.scope`."""
    has_selector = bool(knobs.fail_nth) or knobs.fail_ratio is not None
    if not (has_selector or _has_fault(knobs)):
        return HEALTHY
    if not is_picked(n, knobs.fail_nth, knobs.fail_ratio):
        return HEALTHY
    if knobs.hang:
        return Hang()
    if knobs.status is not None or not _has_fault(knobs):
        return Fail(knobs.status or 500, knobs.retry_after, knobs.retry_after_ms, knobs.error_code)
    if knobs.cut_after is not None:
        return Cut(knobs.cut_after)
    if knobs.stall_after is not None:
        return Stall(knobs.stall_after)
    if knobs.error_event_after is not None:
        return ErrorEvent(knobs.error_event_after)
    if knobs.malformed:
        return Malformed()
    return Truncate()


@dataclass(frozen=True, slots=True)
class Script:
    frames: tuple[bytes, ...]  # written in order after the headers
    abort: bool = False  # abort the connection after the frames instead of ending the body
    stall: bool = False  # after the frames, send nothing more until the client leaves
    declared_length: int | None = None  # content-length of a body; None for a chunked stream


def script_body(body: Body, fault: Fault) -> Script:
    """A whole-document answer under a body fault: a cut sends half of it, then aborts."""
    data = body.data
    if isinstance(fault, Cut):
        return Script((data[: len(data) // 2],), abort=True, declared_length=len(data))
    if isinstance(fault, Malformed):
        half = data[: len(data) // 2]
        return Script((half,), declared_length=len(half))
    return Script((data,), declared_length=len(data))


def script_events(events: Events, fault: Fault) -> Script:
    """A stream under a body fault; `Cut(k)` keeps the head and the first k content events."""
    head, content, tail = events.head, events.content, events.tail
    if isinstance(fault, Cut):
        return Script(head + content[: fault.after], abort=True)
    if isinstance(fault, Stall):
        return Script(head + content[: fault.after], stall=True)
    if isinstance(fault, ErrorEvent):
        return Script(head + content[: fault.after] + _error_event(events))
    if isinstance(fault, Malformed):
        return Script(head + content[:1] + (events.malformed,) + content[1:] + tail)
    if isinstance(fault, Truncate):
        return Script(head + content)
    return Script(head + content + tail)


_STREAM_ERROR = {
    "message": "the mock ended this stream with an error (error_event_after)",
    "type": "server_error",
    "param": None,
    "code": "server_error",
}


def _error_event(events: Events) -> tuple[bytes, ...]:
    """How a provider reports an error in the middle of a stream: a typed `error` event
    (Responses), or an event whose data holds `error`, then `[DONE]` (chat, completions)."""
    if events.tail and events.tail[-1].startswith(b"event:"):
        typed = orjson.dumps({**_STREAM_ERROR, "type": "error", "error": _STREAM_ERROR})
        return (b"event: error\ndata: " + typed + b"\n\n",)
    return (b"data: " + orjson.dumps({"error": _STREAM_ERROR}) + b"\n\n", b"data: [DONE]\n\n")
