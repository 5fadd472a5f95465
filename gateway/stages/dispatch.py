"""Dispatch: send the call to its target and relay the answer to the client.

Non-streamed answers and upstream errors are relayed whole, with the upstream status. A
stream is relayed event by event, never buffered whole. Before the commit point (the first
event reaching the client) a failure is an ordinary error reply; after it, a failure ends
the stream with an OpenAI-shaped error event, never a clean finish.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson

from gateway.config.schema import ModelSpec
from gateway.decide.deadlines import effective_timeouts
from gateway.decide.usage import usage_from_body, usage_from_run
from gateway.downstream import Downstream
from gateway.errors import (
    SavepointError,
    UpstreamBadResponse,
    UpstreamError,
    error_object,
    shape_of,
    stream_error_event,
)
from gateway.lifecycle import Drain
from gateway.model import Call, Trace
from gateway.providers.base import Provider, UpstreamReply, UpstreamRequest

_JSON = "application/json"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell a reverse proxy in front of us not to buffer the stream
}


async def dispatch(
    providers: Mapping[str, Provider],
    spec: ModelSpec,
    call: Call,
    raw: bytes,
    trace: Trace,
    downstream: Downstream,
    drain: Drain,
) -> None:
    target = spec.targets[0]  # retries and fallbacks over the other targets: issue 3
    provider = providers[target.provider]
    trace.target = target.label
    request = UpstreamRequest(
        endpoint=call.endpoint,
        body=_with_model(call, raw, target.model),
        stream=call.stream,
        timeouts=effective_timeouts(target.timeouts, call.read_timeout, call.stream),
        request_id=trace.request_id,
    )
    reply = await provider.send(request)
    trace.upstream_request_id = reply.headers.get("x-request-id")
    headers = _reply_headers(reply, trace.request_id)
    if reply.events is None:
        trace.status = reply.status
        if reply.status == 200:
            try:
                trace.usage = usage_from_body(orjson.loads(reply.body))
            except orjson.JSONDecodeError:
                raise UpstreamBadResponse(
                    f"provider `{provider.name}` answered 200 with a body that is not JSON",
                    code="upstream_bad_response",
                ) from None
            await downstream.reply(200, {**headers, "Content-Type": _JSON}, reply.body)
        else:
            body = _upstream_error_body(provider, reply)
            await downstream.reply(reply.status, {**headers, "Content-Type": _JSON}, body)
        return
    await _relay(call, reply, headers, trace, downstream, drain)


async def _relay(
    call: Call,
    reply: UpstreamReply,
    headers: dict[str, str],
    trace: Trace,
    downstream: Downstream,
    drain: Drain,
) -> None:
    events = reply.events
    assert events is not None
    try:
        # ---- the commit point: from here on the status is 200, whatever happens upstream ----
        await downstream.commit({**headers, **_SSE_HEADERS})
        trace.status, trace.first_byte = 200, time.monotonic()
        drain.streaming(events)
        run = reply.first_run
        while run:
            usage = usage_from_run(call.endpoint, run)
            if usage is not None:
                trace.usage = usage
            await downstream.write(run)
            run = await events.next_run()
    except SavepointError as error:
        trace.error_code = shape_of(error).code
        await downstream.write(stream_error_event(error, call.endpoint.typed_events))
    finally:
        events.close()
    await downstream.finish()


def _with_model(call: Call, raw: bytes, upstream_model: str) -> bytes:
    if upstream_model == call.model:
        return raw
    return orjson.dumps({**call.body, "model": upstream_model})


def _reply_headers(reply: UpstreamReply, request_id: str) -> dict[str, str]:
    headers = dict(reply.headers)
    headers.setdefault("x-request-id", request_id)
    headers["x-savepoint-request-id"] = request_id
    return headers


def _upstream_error_body(provider: Provider, reply: UpstreamReply) -> bytes:
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
