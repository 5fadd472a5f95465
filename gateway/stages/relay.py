"""Relaying an upstream answer to the client: whole, or as a stream past the commit point.

A stream is relayed run by run (the complete events one upstream read delivered), never
buffered whole. Once `commit` has sent the 200 and its headers, a failure can only end the
stream with an OpenAI-shaped error event, never a clean finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from gateway.decide.usage import (
    estimated_usage,
    streamed_chars,
    usage_from_body,
    usage_from_run,
    without_usage_chunk,
)
from gateway.downstream import Downstream
from gateway.errors import (
    ClientDisconnected,
    SavepointError,
    UpstreamError,
    error_object,
    shape_of,
    stream_error_event,
)
from gateway.lifecycle import Drain
from gateway.model import Call, Trace
from gateway.providers.base import Provider, UpstreamReply
from gateway.stages.capture import Capture

JSON = "application/json"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell a reverse proxy in front of us not to buffer the stream
}


def reply_headers(reply: UpstreamReply, trace: Trace, extra: Mapping[str, str]) -> dict[str, str]:
    headers = dict(reply.headers)
    headers.setdefault("x-request-id", trace.request_id)
    headers["x-savepoint-request-id"] = trace.request_id
    headers.update(trace.extra_headers)
    headers.update(extra)
    return headers


async def relay_whole(
    reply: UpstreamReply,
    parsed: Any,
    headers: dict[str, str],
    trace: Trace,
    downstream: Downstream,
    capture: Capture | None,
) -> None:
    """A complete 200 answer, passed on byte for byte (`parsed` is its JSON, for usage)."""
    trace.status = 200
    trace.usage = usage_from_body(parsed)
    headers = {**headers, "Content-Type": JSON}
    if capture is not None:
        capture.status, capture.headers = 200, headers
        capture.body, capture.parsed, capture.complete = reply.body, parsed, True
    await downstream.reply(200, headers, reply.body)


async def relay_error(
    provider: Provider,
    reply: UpstreamReply,
    headers: dict[str, str],
    trace: Trace,
    downstream: Downstream,
    capture: Capture | None,
) -> None:
    """An upstream error answer, with its status."""
    trace.status = reply.status
    body = upstream_error_body(provider, reply)
    headers = {**headers, "Content-Type": JSON}
    if capture is not None:
        capture.status, capture.headers, capture.body = reply.status, headers, body
    await downstream.reply(reply.status, headers, body)


async def relay_stream(
    call: Call,
    reply: UpstreamReply,
    headers: dict[str, str],
    trace: Trace,
    downstream: Downstream,
    drain: Drain,
    on_end: Callable[[UpstreamError | None], None],
    capture: Capture | None,
) -> None:
    """Relay a stream past the commit point. `on_end` gets the upstream's verdict once: None
    when the stream reached its final event, the error when the upstream broke it; not at
    all when the client went away or the gateway cut the stream (drain)."""
    events = reply.events
    assert events is not None
    try:
        # ---- the commit point: from here on the status is 200, whatever happens upstream ----
        headers = {**headers, **SSE_HEADERS}
        if capture is not None:
            capture.status, capture.headers = 200, headers
        client_here = await _send(downstream.commit(headers), capture)
        trace.status, trace.first_byte = 200, time.monotonic()
        drain.streaming(asyncio.current_task(), events)
        run = reply.first_run
        while run:
            usage = usage_from_run(call.endpoint, run)
            if usage is not None:
                trace.usage = usage
            elif trace.usage is None:
                trace.streamed_chars += streamed_chars(run)
            sent = without_usage_chunk(run) if call.usage_hidden else run
            if capture is not None:
                capture.add_run(run, sent)
            if client_here and sent:
                client_here = await _send(downstream.write(sent), capture)
            run = await events.next_run()
    except SavepointError as error:
        trace.error_code = shape_of(error).code
        if isinstance(error, UpstreamError):
            on_end(error)
        if downstream.gone:
            return
        await downstream.write(stream_error_event(error, call.endpoint.typed_events))
    else:
        on_end(None)
        if capture is not None:
            capture.complete = True
    finally:
        events.close()
        if trace.usage is None and trace.streamed_chars:  # the provider reported no usage
            trace.usage, trace.estimated = estimated_usage(call.body, trace.streamed_chars), True
    if not downstream.gone:
        await _send(downstream.finish(), capture)


async def _send(sending: Awaitable[None], capture: Capture | None) -> bool:
    """Send to the client; False once it has gone away and the stream is to be read on to
    its end anyway (detach), for the answer someone will retry for."""
    try:
        await sending
    except ClientDisconnected:
        if capture is None or not capture.detach:
            raise  # nobody will want this answer: stop paying for it
        return False
    return True


def upstream_error_body(provider: Provider, reply: UpstreamReply) -> bytes:
    """The upstream's own error body when it is OpenAI-shaped, else one in OpenAI's shape that
    quotes it; never with our provider key in it."""
    body = provider.scrub(reply.body)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return body
    excerpt = body[:300].decode("utf-8", "replace").strip()
    error = UpstreamError(
        f"provider `{provider.name}` answered {reply.status}: {excerpt or '(empty body)'}"
    )
    obj = error_object(error)
    obj["type"] = "invalid_request_error" if reply.status < 500 else "server_error"
    return orjson.dumps({"error": obj})
